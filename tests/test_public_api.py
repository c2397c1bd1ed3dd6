"""The public Python API (``unicomp/__init__.py``): ``import unicomp`` loads no torch, every
name it lists resolves, ``load_backbone`` works from a fresh process, and the README's
"Python API" examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _fresh(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=cwd
    )


def test_public_api_from_a_fresh_process():
    """``import unicomp`` loads no torch; the registries fill on first lookup;
    ``unicomp.load_backbone`` works without importing the catalogue first; every listed name
    resolves to what its module defines."""
    code = (
        "import sys, unicomp\n"
        "assert 'torch' not in sys.modules, 'import unicomp loaded torch'\n"
        "assert 'bit-xor' in unicomp.TASKS and 'paper' in unicomp.FREEZE_POLICIES.names()\n"
        "b = unicomp.load_backbone('random:minilm-l6')\n"
        "print(b.name, sum(p.numel() for p in b.parameters()))\n"
        "missing = [n for n in unicomp.__all__ if getattr(unicomp, n, None) is None]\n"
        "print('missing:', missing)\n"
    )
    out = _fresh(code)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split("\n")
    name, params = lines[0].split()
    assert name == "random:minilm-l6" and 22_000_000 < int(params) < 23_000_000
    assert lines[1] == "missing: []"
    import unicomp

    for name in ("run_fpt", "run_perceiver", "run_dt", "load_run", "register_task"):
        assert name in unicomp.__all__ and callable(getattr(unicomp, name)), name
    with pytest.raises(AttributeError):
        unicomp.no_such_thing  # noqa: B018


def readme_api_examples() -> list[str]:
    """The ```python blocks of the README's "## Python API" section, in order."""
    text = README.read_text()
    start = text.index("\n## Python API\n")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], re.S)


def test_the_readme_api_examples_run_as_written(tmp_path):
    """One fresh process runs the section's examples one after the other, in an empty
    folder (they write runs/ and data/ there); a second process runs them again there, over
    the first one's runs."""
    blocks = readme_api_examples()
    assert len(blocks) >= 3, "the README's Python API section lost its examples"
    first = _fresh("\n".join(blocks), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    out = _fresh("\n".join(blocks), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    for run in ("api-fpt", "api-perceiver", "api-dt"):
        assert (tmp_path / "runs" / run / "metrics.json").is_file(), run
    assert "DecisionTransformer" in out.stdout and "\nTrue\n" in out.stdout, out.stdout


def test_a_module_imported_on_its_own_sees_every_registered_entry():
    """The offline-RL methods and run: are registered by unicomp.experiments; a module imported
    on its own (below it, or a tool) must still see them, in a fresh process."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from unicomp.config import DTConfig, check_config\n"
        "check_config(DTConfig(data='x', algo='bc'))\n"
        "from unicomp.registry import OFFLINE_RL_METHODS\n"
        "assert {'dt', 'bc', 'pbc'} <= set(OFFLINE_RL_METHODS.names())\n"
        "assert 'torch' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
