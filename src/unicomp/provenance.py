"""What produced a run, recorded in its metrics.json: the unicomp and transformers versions
and, when unicomp runs from a git checkout (an editable install), the commit and whether its
files differ from it."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from unicomp.version import __version__

_PACKAGE = Path(__file__).resolve().parent


def _git(*args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(
            ["git", "-C", str(_PACKAGE), *args], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):  # no git, or too slow
        return None


def git_commit() -> tuple[str | None, bool | None]:
    """(HEAD, whether unicomp's tracked files differ from it) of the checkout this package
    is in; (None, None) where it is not a tracked file of one (an installed wheel, a
    package copied into some other repository's folder) or git is missing."""
    tracked = _git("ls-files", "--error-unmatch", "__init__.py")
    head = _git("rev-parse", "HEAD") if tracked and tracked.returncode == 0 else None
    if head is None or head.returncode != 0:
        return None, None
    diff = _git("diff", "--quiet", "HEAD", "--", ".")
    dirty = None if diff is None or diff.returncode not in (0, 1) else diff.returncode == 1
    return head.stdout.strip(), dirty


@functools.cache
def provenance() -> dict:
    """``unicomp_version``, ``transformers_version``, ``git_commit``, ``git_dirty`` (None
    where unknown); computed once per process."""
    try:
        transformers_version = version("transformers")
    except PackageNotFoundError:
        transformers_version = None
    commit, dirty = git_commit()
    return {
        "unicomp_version": __version__,
        "transformers_version": transformers_version,
        "git_commit": commit,
        "git_dirty": dirty,
    }


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16_flags() -> list[str]:
    """The flags of this CPU that multiply bf16 natively (AMX, AVX512-BF16), from
    /proc/cpuinfo; empty where there are none or the file cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])  # fmt: skip
    return [f for f in ("amx_bf16", "avx512_bf16") if f in flags]


def bf16_flags() -> str:
    """The bf16 flags as a record states them."""
    return ", ".join(cpu_bf16_flags()) or "none (no amx_bf16, no avx512_bf16)"


def machine() -> str:
    """``AMD EPYC, 2 cores, GPU none``: what every published figure names as its machine."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return f"{cpu_model()}, {os.cpu_count()} cores, GPU {gpu}"
