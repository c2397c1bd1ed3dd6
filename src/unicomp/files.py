"""Atomic file writes: a temporary file in the same folder, fsync, then rename.

A crash or a full disk during a write leaves the previous file intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from unicomp.errors import UnicompError


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call ``write(fileobj)`` on a temporary file, then atomically replace ``path``."""
    path = Path(path)
    try:  # a read-only or missing folder is one line, like a full disk
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise UnicompError(f"could not write {path}: {err.strerror or err}") from err
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a plain file gets the umask
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise UnicompError(
            f"could not write {path}: {err.strerror or err}; "
            f"the previous version, if any, is intact"
        ) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


# --- file modes --------------------------------------------------------------------------------
_UMASK: list[int] = []


def _umask() -> int:
    """The process umask (read once: os.umask can only be read by setting it)."""
    if not _UMASK:
        mask = os.umask(0o022)
        os.umask(mask)
        _UMASK.append(mask)
    return _UMASK[0]


# --- run folders: claimed by one process at a time ----------------------------------------------
LOCK_NAME = ".unicomp.lock"
# What a start that fails before its first checkpoint may have written; removed again so that
# the folder is left as it was (or not at all) and a retry is accepted.
START_FILES = ("config.yaml", "curve.csv", "best.safetensors")
RUN_FILES = ("checkpoint.pt", "metrics.json")  # a folder holding one of these holds a run


def _lock_holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return "another process"
    pid, _, host = text.partition(" ")
    return f"process {pid} on {host}" if pid.isdigit() and host else "another process"


def _take_lock(out: Path) -> int:
    """Open and flock ``out/.unicomp.lock``; the kernel drops the lock when the process dies,
    so a killed run's lock never blocks. Raise UnicompError naming the holder if it is held."""
    import fcntl
    import socket

    path = out / LOCK_NAME
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UnicompError(
                f"run folder {out} is in use by {_lock_holder(path)}; wait for it to finish "
                "or choose another --out"
            ) from None
        try:  # the file we locked is still the one at the path (not unlinked by its holder)
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
            return fd
        os.close(fd)
    raise UnicompError(f"run folder {out}: could not take {path}")


def _release_lock(out: Path, fd: int) -> None:
    Path(out / LOCK_NAME).unlink(missing_ok=True)  # while still holding it
    os.close(fd)


@contextlib.contextmanager
def claim_run_folder(out: Path, resume: bool, enabled: bool = True) -> Iterator[None]:
    """Hold ``out`` for one run: create it, lock it (a second run into it is refused while
    this one lives), refuse a new run where one already is (before anything is written),
    remove temporaries that a killed writer left. If the body fails before the run wrote its
    first checkpoint, what the start wrote is removed again (and the folder, if created here).
    ``enabled=False`` (ranks other than 0 under torchrun): nothing is done."""
    if not enabled:
        yield
        return
    if resume and not (out / "checkpoint.pt").is_file():
        raise UnicompError(f"nothing to resume: {out / 'checkpoint.pt'} does not exist")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = _take_lock(out)
    except OSError as err:  # --out names a file, or a folder we may not create or write
        if created and out.is_dir():
            with contextlib.suppress(OSError):
                out.rmdir()
        raise UnicompError(
            f"run folder {out}: cannot create it or write in it ({err.strerror})"
        ) from None
    try:
        if not resume and any((out / name).exists() for name in RUN_FILES):
            raise UnicompError(
                f"{out} already holds a run; pass --resume to continue it or choose another --out"
            )
        for tmp in out.glob(".*.tmp"):  # left by a process killed mid-write
            tmp.unlink(missing_ok=True)
        try:
            yield
        except BaseException:
            if not resume and not (out / "checkpoint.pt").exists():
                _undo_start(out)
            raise
    finally:
        if out.is_dir():
            _release_lock(out, fd)
        else:
            os.close(fd)
        if created and not resume and out.is_dir() and not any(out.iterdir()):
            with contextlib.suppress(OSError):
                out.rmdir()


def _undo_start(out: Path) -> None:
    for name in START_FILES:
        (out / name).unlink(missing_ok=True)
    for tmp in out.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
