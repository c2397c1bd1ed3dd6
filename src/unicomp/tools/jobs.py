"""Many runs from one command: the job runner of ``unicomp fpt ablate`` and ``unicomp reproduce``.

A job (:class:`Cell`) is one run folder and the config that makes it. One rule says what to do
with its folder (:func:`plan`): skip it when it holds the finished run asked for, resume it
from its checkpoint, or start it new; a folder holding a run with other settings is refused.
One way uses the cores (:func:`run_cells`): ``jobs`` child processes at a time, each the
family's ordinary ``unicomp <family> train --config ... --out ...`` with ``threads`` threads
and its output in a log of its own, each stopped when the command that started it dies (its
re-run then resumes the runs from their checkpoints).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from unicomp.errors import UnicompError


@dataclass
class Cell:
    """One run folder of a grid (``cfg.out``) and the config that makes it."""

    key: str  # <row slug>/s<seed>[/lr<lr>]
    row: str  # row label ("" for prepare runs)
    table: str
    seed: int
    cfg: Any  # FPTConfig, DTConfig or PerceiverConfig
    needs: list[str] = field(default_factory=list)  # keys of cells run first
    lr: float | None = None
    status: str = "pending"  # pending | done | failed | skipped (finished before)
    error: str = ""
    metrics: dict = field(default_factory=dict)

    @property
    def file_stem(self) -> str:
        """The cell's key as one file name (its request YAML and log in the logs folder)."""
        return self.key.replace("/", "__")


@dataclass
class Finished:
    """A cell the runner is through with. ``what``: 'skipped' (finished before), 'done',
    'failed' (the reason in ``cell.error``) or 'not run' (a cell it needs failed); ``log``:
    the log of its training process, where one was started."""

    cell: Cell
    what: str
    seconds: float = 0.0
    log: Path | None = None


def family(cfg: Any) -> str:
    """The command family that trains ``cfg`` (``unicomp <family> train``): its kind
    (unicomp.experiments.kinds)."""
    kind = getattr(type(cfg), "kind", None)
    if kind is None:
        raise UnicompError(f"no train command for a {type(cfg).__name__}")
    return kind


def config_changes(cfg: Any, folder: Path) -> tuple[dict, dict]:
    """experiments.common.config_changes, where attention asked as "auto" matches the one the run
    measured and saved."""
    from unicomp.experiments.common import config_changes as changes
    from unicomp.experiments.fpt import ATTENTION_CHOSEN_AT_START

    diffs, refused = changes(cfg, folder)
    if getattr(cfg, "attn_implementation", None) in ATTENTION_CHOSEN_AT_START:  # (FPT runs)
        diffs.pop("attn_implementation", None)
        refused.pop("attn_implementation", None)
    return diffs, refused


def _listed(changes: dict) -> str:
    return "; ".join(f"{k} {saved!r} -> {asked!r}" for k, (saved, asked) in changes.items())


def plan(cell: Cell) -> str:
    """What to do with a cell's folder: 'skip' (finished), 'resume', 'new'; stale starts of
    a killed run (no checkpoint yet) are cleared. Raises if the folder holds another run."""
    from unicomp.files import START_FILES, folder_lock

    folder = Path(cell.cfg.out)
    if not (folder / "config.yaml").is_file():
        return "new"
    diffs, refused = config_changes(cell.cfg, folder)
    if refused:
        raise UnicompError(
            f"cell {cell.key}: {folder} holds a run with other settings ({_listed(refused)}); "
            "delete it or choose another --out"
        )
    if (folder / "metrics.json").is_file():
        # a changed budget trains on from the checkpoint
        return "resume" if "train.steps" in diffs else "skip"
    if (folder / "checkpoint.pt").is_file():
        return "resume"
    with folder_lock(folder):  # refuses if a live run holds it
        for name in START_FILES:
            (folder / name).unlink(missing_ok=True)
    return "new"


def finished_metrics(cell: Cell) -> dict | None:
    """The metrics.json of a cell that finished (done now or before), else None."""
    path = Path(cell.cfg.out) / "metrics.json"
    if cell.status in ("done", "skipped") and path.is_file():
        return json.loads(path.read_text())
    return None


def threads_per_job(jobs: int) -> int:
    """The cores shared out between ``jobs`` processes (at least one thread each)."""
    return max(1, (os.cpu_count() or 1) // jobs)


@dataclass
class _Running:
    cell: Cell
    proc: subprocess.Popen
    log: IO[str]
    path: Path
    started: float


def _start(cell: Cell, how: str, logs: Path, threads: int) -> _Running:
    """Train the cell in a child process (``how``: 'new' or 'resume', from :func:`plan`)."""
    from unicomp.config import save_yaml

    request = logs / f"{cell.file_stem}.yaml"
    save_yaml(cell.cfg, request)
    argv = [sys.executable, "-m", "unicomp", family(cell.cfg), "train", "--config", str(request)]
    argv += ["--out", cell.cfg.out] + (["--resume"] if how == "resume" else [])
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
    }
    path = logs / f"{cell.file_stem}.log"
    log = open(path, "a")  # noqa: SIM115 (closed by run_cells)
    log.write(f"$ {' '.join(argv)}\n")
    log.flush()
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_stop_with(os.getpid())
    )
    return _Running(cell, proc, log, path, time.time())


def _stop_with(parent: int) -> Callable[[], None] | None:
    """Where the OS allows it (Linux), a ``preexec_fn`` that makes the cell's process get
    SIGKILL when ``parent``, the command that started it, dies. A killed command's cells used
    to train on, holding their folders' locks, so that the re-run found them "in use"; now they
    stop with it, and the re-run resumes them from their checkpoints (a SIGKILLed run resumes
    exactly). Elsewhere None: cells outlive a killed parent."""
    import ctypes
    import ctypes.util
    import signal

    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1  # <linux/prctl.h>

    def stop_with_parent() -> None:  # runs in the child, between fork and exec
        prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the call: no signal will come
            os._exit(1)

    return stop_with_parent


def _ended(job: _Running) -> Finished:
    job.log.close()
    cell = job.cell
    if job.proc.returncode == 0 and (Path(cell.cfg.out) / "metrics.json").is_file():
        cell.status = "done"
    else:
        tail = job.path.read_text().strip().splitlines()
        cell.status, cell.error = "failed", (tail[-1] if tail else "no output")
    return Finished(cell, cell.status, time.time() - job.started, job.path)


def run_cells(
    cells: list[Cell], logs: Path, jobs: int, threads: int | None = None
) -> Iterator[Finished]:
    """Run cells, ``jobs`` at a time with ``threads`` threads each (default: the cores shared
    out), a cell once the cells it needs are done; logs and request YAMLs go to ``logs``.
    Each cell is planned (:func:`plan`) as soon as it may run, so finished ones are reported
    first; yields each cell as the runner is through with it, its status set."""
    logs.mkdir(parents=True, exist_ok=True)
    threads = threads or threads_per_job(jobs)
    by_key = {c.key: c for c in cells}
    pending = list(cells)
    ready: list[tuple[Cell, str]] = []
    running: list[_Running] = []
    while pending or ready or running:
        for job in [j for j in running if j.proc.poll() is not None]:
            running.remove(job)
            yield _ended(job)
        for cell in list(pending):
            waits = [by_key[n] for n in cell.needs if n in by_key]
            if any(w.status == "failed" for w in waits):
                pending.remove(cell)
                cell.status, cell.error = "failed", f"needs {cell.needs[0]}, which failed"
                yield Finished(cell, "not run")
                continue
            if any(w.status not in ("done", "skipped") for w in waits):
                continue
            pending.remove(cell)
            try:
                how = plan(cell)
            except UnicompError as err:
                cell.status, cell.error = "failed", str(err)
                yield Finished(cell, "failed")
                continue
            if how == "skip":
                cell.status = "skipped"
                yield Finished(cell, "skipped")
            else:
                ready.append((cell, how))
        while ready and len(running) < jobs:
            cell, how = ready.pop(0)
            try:
                running.append(_start(cell, how, logs, threads))
            except UnicompError as err:
                cell.status, cell.error = "failed", str(err)
                yield Finished(cell, "failed")
        if running:
            time.sleep(0.5)
