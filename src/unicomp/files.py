"""Atomic file writes: a temporary file in the same folder, fsync, then rename.

A crash or a full disk during a write leaves the previous file intact. A temporary is named
``.<name>.<random>.tmp`` and locked (``flock``) by its writer while it exists; the kernel drops
the lock when the writer dies, so a temporary nobody holds is a killed writer's leftover, and
writers remove such leftovers when they start (:func:`sweep_temporaries`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from unicomp.errors import RunFolderError, UnicompError


def atomic_write(
    path: str | Path, write: Callable[[Any], None], mode: str = "wb", own_folder: bool = False
) -> None:
    """Call ``write(fileobj)`` on a temporary file, then atomically replace ``path``.

    Leftover temporaries of ``path`` (a killed writer's) are removed first; with
    ``own_folder`` (a folder only unicomp writes in, e.g. a cache) those of every name."""
    path = Path(path)
    try:  # a read-only or missing folder is one line, like a full disk
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_temporaries(path.parent, None if own_folder else path.name)
        fd, tmp = _locked_temporary(path.parent, path.name, tempfile.mkstemp)
    except OSError as err:
        why = err.strerror or str(err)
        if isinstance(err, FileExistsError) and not os.path.isdir(path.parent):
            why = f"{path.parent} is a file, not a folder"  # (mkdir says "File exists")
        raise UnicompError(f"could not write {path}: {why}") from err
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a plain file gets the umask
            os.fsync(f.fileno())
            os.replace(tmp, path)  # before closing: the lock marks the temporary as live
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise UnicompError(
            f"could not write {path}: {err.strerror or err}; "
            f"the previous version, if any, is intact"
        ) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- temporaries: live while their writer holds their lock -------------------------------------
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]+\.tmp")  # .<name>.<mkstemp's letters>.tmp


def _locked_temporary(folder: Path, name: str, make: Callable[..., Any]) -> tuple[int, str]:
    """A new temporary ``folder/.<name>.<random>.tmp`` made by ``make`` (tempfile.mkstemp or
    mkdtemp) and flocked: (an open descriptor holding the lock, its path). A sweeper that
    removed it between its creation and our lock (it holds the lock while it removes) is
    seen (the path no longer names what we locked) and we make another."""
    import fcntl

    for _ in range(10):
        made = make(dir=folder, prefix=f".{name}.", suffix=".tmp")
        tmp = made[1] if isinstance(made, tuple) else made
        fd = made[0] if isinstance(made, tuple) else os.open(tmp, os.O_RDONLY)
        with contextlib.suppress(OSError):  # a file system without flock: never swept
            fcntl.flock(fd, fcntl.LOCK_EX)
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(tmp).st_ino:
                return fd, tmp
        os.close(fd)
    raise OSError(f"could not make a temporary for {name} in {folder}")


def sweep_temporaries(folder: Path, name: str | None = None) -> list[Path]:
    """Remove the temporaries (files or folders named ``.<name>.<random>.tmp``; any name if
    ``name`` is None) in ``folder`` that no live process holds: a killed writer's leftovers.
    One held by its writer, or one we cannot lock, is left alone. Returns what was removed."""
    import fcntl

    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.fullmatch(entry.name)
        if not match or (name is not None and match["name"] != name):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino != os.stat(entry.path).st_ino:
                continue  # renamed into place meanwhile, the name now someone else's
            if os.path.isdir(entry.path) and not os.path.islink(entry.path):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass  # held by a live writer, or not ours to remove
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def temporary_folder(parent: Path, name: str) -> Iterator[Path]:
    """A new, locked folder ``parent/.<name>.<random>.tmp`` for building something that is
    then renamed into place; removed at the end however the body ends (a killed process's is
    swept by the next writer of ``name``). OSError if ``parent`` cannot be written."""
    parent.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(parent, name)
    fd, tmp = _locked_temporary(parent, name, tempfile.mkdtemp)
    try:
        yield Path(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(fd)


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """UnicompError if ``folder``'s file system has fewer than ``needed`` bytes free."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise UnicompError(
            f"not enough space for {what}: it needs at least {needed / 1e6:.1f} MB and "
            f"{folder.parent} has {free / 1e6:.1f} MB free; nothing was written"
        )


_CHILD_ERROR = "unicomp-child-error: "


def write_in_child(write: Callable[[], None], what: str) -> None:
    """Run ``write()`` in a forked child process and wait for it. Some writers in C end the
    whole process on an I/O error (h5py, closing a file after its writes failed on a full
    disk, segfaults once it has printed a traceback per failed write): in a child that ends
    only the child, whose stderr is read here and summed up in one UnicompError line
    (``could not write <what>: <reason>``). A UnicompError raised by ``write`` keeps its
    message. Nothing ``write`` changes in memory reaches this process."""
    import faulthandler
    import signal

    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: reports through its exit status and stderr, never returns
        code = 1
        try:
            os.close(read_end)
            os.dup2(write_end, 2)
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 (unraisable errors too)
            if faulthandler.is_enabled():  # its report of a crash goes to the pipe too
                faulthandler.enable(sys.stderr)
            write()
            code = 0
        except UnicompError as err:
            os.write(2, f"\n{_CHILD_ERROR}{err}\n".encode())
            code = 3
        except OSError as err:
            os.write(2, f"\n{_CHILD_ERROR}{err.strerror or err}\n".encode())
        except BaseException as err:
            os.write(2, f"\n{_CHILD_ERROR}{type(err).__name__}: {err}\n".encode())
        finally:
            os._exit(code)
    os.close(write_end)
    status = None
    try:
        with os.fdopen(read_end, "rb") as f:
            text = f.read().decode(errors="replace")
        status = os.waitpid(pid, 0)[1]
    finally:
        if status is None:  # interrupted while waiting: the child goes too
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    if status == 0:
        return
    said = [line.partition(_CHILD_ERROR)[2] for line in text.splitlines()]
    said = [line for line in said if line]
    if said and os.waitstatus_to_exitcode(status) == 3:
        raise UnicompError(said[-1])
    # HDF5 names the system error of each failed write: "..., error message = 'No space ...'"
    system = re.findall(r"error message = '([^']*)'", text)
    reason = system[0] if system else said[-1] if said else "the writer failed"
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        crashed = f"the writer then crashed: {name}"
        reason = f"{system[0]} ({crashed})" if system else f"the writer crashed ({name})"
    raise UnicompError(f"could not write {what}: {reason}; nothing was written")


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
START_FOLDERS = ("tensorboard", "wandb")  # experiment trackers' logs (unicomp.tracking)


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
def folder_lock(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock for the body (another process that holds it is named in the error;
    the lock of a killed holder never blocks)."""
    fd = _take_lock(out)
    try:
        yield
    finally:
        _release_lock(out, fd)


def run_taken(out: Path) -> RunFolderError:
    """The error for a new run into a folder that holds one, in Python's terms and the CLI's."""
    return RunFolderError(
        f"{out} already holds a run; resume=True continues it, overwrite=True replaces it, or "
        "choose another cfg.out",
        f"{out} already holds a run; pass --resume to continue it, --overwrite to replace it, "
        "or choose another --out",
    )


# What ``overwrite`` removes: a run's own files and folders (nothing else of the folder's).
RUN_OUTPUTS = ("eval.json", "examples.png")


def remove_run(out: Path) -> None:
    """Remove the run in ``out``: its files (START_FILES, RUN_FILES, RUN_OUTPUTS) and the
    trackers' folders; anything else in the folder stays."""
    for name in (*START_FILES, *RUN_FILES, *RUN_OUTPUTS):
        (out / name).unlink(missing_ok=True)
    for name in START_FOLDERS:
        shutil.rmtree(out / name, ignore_errors=True)


@contextlib.contextmanager
def claim_run_folder(
    out: Path, resume: bool, enabled: bool = True, overwrite: bool = False
) -> Iterator[None]:
    """Hold ``out`` for one run: create it, lock it (a second run into it is refused while
    this one lives), refuse a new run where one already is (before anything is written;
    ``overwrite``: remove that run first, once the folder is locked),
    remove temporaries that a killed writer left. If the body fails before the run wrote its
    first checkpoint, what the start wrote is removed again (and the folder, if created here).
    ``enabled=False`` (ranks other than 0 under torchrun): nothing is done."""
    if not enabled:
        yield
        return
    if resume and not (out / "checkpoint.pt").is_file():
        raise UnicompError(f"nothing to resume: {out / 'checkpoint.pt'} does not exist")
    created = False
    try:
        created = not out.exists()  # (raises for a name the file system refuses: too long)
        out.mkdir(parents=True, exist_ok=True)
        fd = _take_lock(out)
    except OSError as err:  # --out names a file, or a folder we may not create or write
        if created and os.path.isdir(out):
            with contextlib.suppress(OSError):
                out.rmdir()
        raise UnicompError(
            f"run folder {out}: cannot create it or write in it ({err.strerror})"
        ) from None
    try:
        if overwrite and not resume:
            remove_run(out)
        if not resume and any((out / name).exists() for name in RUN_FILES):
            raise run_taken(out)
        sweep_temporaries(out)  # left by a process killed mid-write
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
    for name in START_FOLDERS:
        shutil.rmtree(out / name, ignore_errors=True)
    sweep_temporaries(out)


def _curve_value(key: str, text: str | None) -> float | None:
    """One cell of curve.csv: a number; an empty accuracy cell is None (a task that counts
    none); anything else (a cut row: a missing cell) raises ValueError."""
    if text == "" and key in ("train_accuracy", "val_accuracy"):
        return None
    if text is None:
        raise ValueError(f"row ends before {key}")
    return float(text)


def read_curve(path: Path, upto: int) -> list[dict]:
    """The curve up to step ``upto``; a damaged file (the run folder's own) is one line."""
    if not path.exists():
        return []
    try:
        with path.open() as f:
            rows = [{k: _curve_value(k, v) for k, v in r.items()} for r in csv.DictReader(f)]
        return [{**r, "step": int(r["step"])} for r in rows if r["step"] <= upto]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, csv.Error) as err:
        raise UnicompError(
            f"{path}: damaged learning curve ({type(err).__name__}: {err})"
        ) from None


def read_record(path: Path) -> dict:
    """A run's JSON record (metrics.json, eval.json): a mapping, else a one-line error."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UnicompError(f"{path} does not exist: not a finished run folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        why = "nested too deeply" if isinstance(err, RecursionError) else err
        raise UnicompError(f"{path}: not readable JSON ({why})") from None
    if not isinstance(data, dict):
        raise UnicompError(
            f"{path}: expected a JSON object (a run's record), got a {type(data).__name__}"
        )
    return data
