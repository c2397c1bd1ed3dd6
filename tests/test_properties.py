"""Property-based tests of the readers of outside data (hypothesis): valid files written here
read back exactly, and damaged or random input raises DataError/UnicompError, never another
exception. The ListOps generator and evaluator have their own property tests in
test_listops.py; here only the TSV reader is tested."""

from __future__ import annotations

import gzip
import json
import re
import string
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from unicomp.cli import build_parser
from unicomp.config import DTConfig, FPTConfig, TrainConfig, from_dict, resolve
from unicomp.data.images import read_idx
from unicomp.data.proteins import N_FOLDS, read_fasta, read_fold_table, read_tape_json
from unicomp.errors import DataError, UnicompError
from unicomp.experiments.common import task_defaults
from unicomp.experiments.dt import dt_task_defaults
from unicomp.tasks.listops import OPERATORS, apply_operator, detokenize, read_tsv
from unicomp.tasks.proteins import AMINO_ACIDS, decode, encode, tape_records

h5py = pytest.importorskip("h5py")

# Modest budgets: the whole file runs in seconds. deadline=None: file writes vary in speed.
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One folder for every example of the module (each example overwrites its files)."""
    return tmp_path_factory.mktemp("properties")


def _data_error_or(fn: Any) -> Any:
    """``fn()``'s result, or None where it raised a one-line DataError. Any other exception
    propagates and fails the test."""
    try:
        return fn()
    except DataError as err:
        assert "\n" not in str(err), str(err)
        return None


# --- IDX (MNIST) -------------------------------------------------------------------------------
def idx_bytes(arr: np.ndarray) -> bytes:
    """LeCun's IDX format of unsigned bytes, written independently of the reader."""
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


IDX_ARRAYS = hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6))


@SETTINGS
@given(arr=IDX_ARRAYS, gz=st.booleans())
def test_idx_round_trip(scratch, arr, gz):
    path = scratch / ("round.idx.gz" if gz else "round.idx")
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if gz else data)
    back = read_idx(path, arr.ndim)
    assert back.dtype == np.uint8 and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


@SETTINGS
@given(arr=IDX_ARRAYS, how=st.sampled_from(["raw", "gz-of-cut", "cut-of-gz"]), data=st.data())
def test_idx_truncated_is_a_data_error(scratch, arr, how, data):
    raw = idx_bytes(arr)
    if how == "cut-of-gz":
        packed = gzip.compress(raw)
        content = packed[: data.draw(st.integers(0, len(packed) - 1), label="cut")]
    else:
        cut = raw[: data.draw(st.integers(0, len(raw) - 1), label="cut")]
        content = gzip.compress(cut) if how == "gz-of-cut" else cut
    path = scratch / ("cut.idx" if how == "raw" else "cut.idx.gz")
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_idx(path, arr.ndim)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@SETTINGS
@given(
    arr=IDX_ARRAYS,
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    ndim=st.integers(1, 3),
    tail=st.binary(max_size=4),
)
def test_idx_corrupted_reads_or_is_a_data_error(scratch, arr, flips, ndim, tail):
    content = bytearray(idx_bytes(arr))
    for pos, value in flips:
        content[pos % len(content)] = value
    path = scratch / "corrupt.idx"
    path.write_bytes(bytes(content) + tail)
    back = _data_error_or(lambda: read_idx(path, ndim))
    if back is not None:  # a damaged pixel still reads; the header must then be consistent
        assert back.dtype == np.uint8 and back.ndim == ndim


@SETTINGS
@given(content=st.binary(max_size=64), ndim=st.integers(1, 3), gz=st.booleans())
def test_idx_random_bytes_never_crash(scratch, content, ndim, gz):
    path = scratch / ("random.idx.gz" if gz else "random.idx")
    path.write_bytes(content)
    _data_error_or(lambda: read_idx(path, ndim))


# --- FASTA (SCOP, DeepSF) ----------------------------------------------------------------------
_ID = st.text(string.ascii_letters + string.digits + "_", min_size=1, max_size=10)
_SCCS = st.lists(
    st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=3), min_size=2, max_size=4
).map(".".join)
_SEQ = st.text(AMINO_ACIDS + AMINO_ACIDS.lower(), min_size=1, max_size=60)
_NOTE = st.text(string.ascii_letters + string.digits + " ():;{}[]-_.", max_size=30)
FASTA_RECORDS = st.lists(st.tuples(_ID, _SCCS, _SEQ, _NOTE), min_size=1, max_size=6)


@SETTINGS
@given(records=FASTA_RECORDS, wrap=st.integers(0, 13), blank=st.booleans())
def test_fasta_round_trip(scratch, records, wrap, blank):
    lines = []
    for domain, sccs, seq, note in records:
        lines.append(f">{domain} {sccs} {note}".rstrip())
        lines += [seq[i : i + wrap] for i in range(0, len(seq), wrap)] if wrap else [seq]
        if blank:
            lines.append("")
    path = scratch / "round.fasta"
    path.write_text("\n".join(lines) + "\n")
    back = read_fasta(path)
    assert [(r.domain, r.sccs, r.sequence) for r in back] == [r[:3] for r in records]
    for rec in back:
        assert decode(encode(rec.sequence, str(path))) == rec.sequence.upper()


@SETTINGS
@given(
    text=st.text(max_size=200)
    | st.lists(
        st.sampled_from([">d1 a.1.1.1", ">d2", ">x a", "MKV", "mk*v", "", " ", ">", "> a.1"])
        | st.text(max_size=12),
        max_size=8,
    ).map("\n".join)
)
def test_fasta_random_text_parses_or_is_a_data_error(scratch, text):
    path = scratch / "random.fasta"
    path.write_text(text)
    records = _data_error_or(lambda: read_fasta(path))
    for rec in records or []:
        assert rec.sequence and rec.domain and len(rec.sccs.split(".")) >= 2
        ids = _data_error_or(lambda rec=rec: encode(rec.sequence, f"{path}: {rec.domain}"))
        assert ids is None or len(ids) == len(rec.sequence)


@SETTINGS
@given(content=st.binary(max_size=80))
def test_fasta_random_bytes_parse_or_are_a_data_error(scratch, content):
    path = scratch / "bytes.fasta"
    path.write_bytes(content)
    _data_error_or(lambda: read_fasta(path))


_LABELS = st.sampled_from(["0", "7", "1194", "1195", "-1", "\u00b2", "\u0663", "x"]) | st.text(
    max_size=4
)
FOLD_ROWS = st.lists(st.tuples(st.text("abc.123", max_size=4), _LABELS), max_size=5).map(
    lambda rows: "Fold\tLabel\n" + "".join(f"{fold}\t{label}\n" for fold, label in rows)
)


@SETTINGS
@given(text=FOLD_ROWS | st.text(max_size=60))
def test_fold_table_random_text_parses_or_is_a_data_error(scratch, text):
    """DeepSF's fold_label_relation2.txt; labels include non-ASCII digits such as '\u00b2',
    which str.isdigit accepts and int() does not."""
    path = scratch / "folds.txt"
    path.write_text(text)
    table = _data_error_or(lambda: read_fold_table(path))
    assert table is None or all(0 <= label < N_FOLDS for label in table.values())


# --- LRA ListOps TSV ---------------------------------------------------------------------------
EXPRESSIONS = st.recursive(
    st.integers(0, 9),
    lambda child: st.tuples(st.sampled_from(OPERATORS), st.lists(child, min_size=1, max_size=4)),
    max_leaves=16,
)


def _render(node: Any, parens: bool) -> tuple[list[str], int]:
    """Tokens (LRA's written form with parentheses, or without) and the value of a tree."""
    if isinstance(node, int):
        return [str(node)], node
    op, args = node
    tokens, values = (["("] * (len(args) + 1) if parens else []) + [op], []
    for arg in args:
        sub, value = _render(arg, parens)
        tokens += sub + ([")"] if parens else [])
        values.append(value)
    return tokens + ["]"] + ([")"] if parens else []), apply_operator(op, values)


@SETTINGS
@given(trees=st.lists(EXPRESSIONS, min_size=1, max_size=5), parens=st.booleans())
def test_tsv_round_trip(scratch, trees, parens):
    rows = [_render(tree, parens) for tree in trees]
    path = scratch / "round.tsv"
    body = "".join(f"{' '.join(tokens)}\t{value}\n" for tokens, value in rows)
    path.write_text("Source\tTarget\n" + body)
    seqs, mismatches = read_tsv(path)
    assert mismatches == 0 and seqs.labels.tolist() == [value for _, value in rows]
    for i, (tokens, _) in enumerate(rows):
        assert detokenize(seqs.sequence(i).tolist()) == " ".join(tokens)
    dropped, _ = read_tsv(path, keep_parens=False)
    for i, (tokens, _) in enumerate(rows):
        expected = [t for t in tokens if t not in "()"]
        assert detokenize(dropped.sequence(i).tolist()) == " ".join(expected)


_TSV_PIECES = st.sampled_from(["[MAX", "[MIN", "[MED", "[SM", "]", "(", ")", "3", "\t", "\n", " "])


@SETTINGS
@given(
    body=st.text(max_size=120)
    | st.lists(_TSV_PIECES | st.text(max_size=3), max_size=30).map(" ".join),
    header=st.booleans(),
)
def test_tsv_random_text_parses_or_is_a_data_error(scratch, body, header):
    path = scratch / "random.tsv"
    path.write_text(("Source\tTarget\n" if header else "") + body)
    result = _data_error_or(lambda: read_tsv(path))
    if result is not None:
        seqs, _ = result
        assert len(seqs) >= 1 and all(0 <= y <= 9 for y in seqs.labels.tolist())


@SETTINGS
@given(content=st.binary(max_size=80))
def test_tsv_random_bytes_parse_or_are_a_data_error(scratch, content):
    path = scratch / "bytes.tsv"
    path.write_bytes(b"Source\tTarget\n" + content)
    _data_error_or(lambda: read_tsv(path))


# --- TAPE JSON ---------------------------------------------------------------------------------
TAPE_RECORDS = st.lists(
    st.fixed_dictionaries(
        {"primary": _SEQ, "fold_label": st.integers(0, N_FOLDS - 1)},
        optional={"id": st.text(max_size=8), "protein_length": st.integers(0, 99)},
    ),
    min_size=1,
    max_size=8,
)


@SETTINGS
@given(records=TAPE_RECORDS, max_len=st.integers(1, 70))
def test_tape_json_round_trip(scratch, records, max_len):
    path = scratch / "round.json"
    path.write_text(json.dumps(records))
    seqs, cut = tape_records(read_tape_json(path), path, max_len, "error", Counter())
    assert seqs.labels.tolist() == [r["fold_label"] for r in records]
    assert cut == sum(len(r["primary"]) > max_len for r in records)
    for i, rec in enumerate(records):
        assert decode(seqs.sequence(i).tolist()) == rec["primary"].upper()[:max_len]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda child: st.lists(child, max_size=4) | st.dictionaries(st.text(max_size=6), child),
    max_leaves=12,
)
TAPE_LIKE = st.lists(
    st.dictionaries(
        st.sampled_from(["primary", "fold_label", "id"]) | st.text(max_size=4),
        JSON_VALUES | _SEQ | st.integers(-5, N_FOLDS + 5),
        max_size=4,
    )
    | JSON_VALUES,
    max_size=5,
)


@SETTINGS
@given(value=TAPE_LIKE | JSON_VALUES)
def test_tape_json_random_values_parse_or_are_a_data_error(scratch, value):
    path = scratch / "random.json"
    path.write_text(json.dumps(value))

    def read() -> Any:
        return tape_records(read_tape_json(path), path, 50, "error", Counter())

    result = _data_error_or(read)
    if result is not None:
        seqs, _ = result
        assert all(0 <= y < N_FOLDS for y in seqs.labels.tolist())


@SETTINGS
@given(content=st.binary(max_size=60) | st.text(max_size=60).map(str.encode))
def test_tape_json_random_bytes_parse_or_are_a_data_error(scratch, content):
    path = scratch / "bytes.json"
    path.write_bytes(content)
    _data_error_or(lambda: tape_records(read_tape_json(path), path, 50, "error", Counter()))


# --- D4RL HDF5 ---------------------------------------------------------------------------------
EPISODES = st.lists(
    st.tuples(st.integers(1, 6), st.sampled_from(["terminal", "timeout"])), min_size=1, max_size=5
)


def _flat_d4rl(episodes: list[tuple[int, str]], open_end: int, seed: int) -> dict[str, Any]:
    """Flat D4RL arrays for episodes of the given lengths and ends, plus ``open_end`` steps
    of an episode the file cuts off."""
    lengths = [n for n, _ in episodes] + ([open_end] if open_end else [])
    n = sum(lengths)
    rng = np.random.default_rng(seed)
    terminals, timeouts = np.zeros(n, bool), np.zeros(n, bool)
    end = 0
    for length, how in episodes:
        end += length
        (terminals if how == "terminal" else timeouts)[end - 1] = True
    return {
        "observations": rng.normal(size=(n, 3)).astype(np.float32),
        "next_observations": rng.normal(size=(n, 3)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
        "lengths": lengths,
    }


def _write_h5(path: Path, fields: dict[str, Any]) -> None:
    with h5py.File(path, "w") as f:
        for key, value in fields.items():
            if key != "lengths":
                f[key] = value


@SETTINGS
@given(
    episodes=EPISODES, open_end=st.integers(0, 4), next_obs=st.booleans(), seed=st.integers(0, 9)
)
def test_d4rl_episodes_concatenate_to_the_file(scratch, episodes, open_end, next_obs, seed):
    from unicomp.rl.d4rl_io import read_d4rl_hdf5

    flat = _flat_d4rl(episodes, open_end, seed)
    if not next_obs:
        del flat["next_observations"]
    path = scratch / "round.hdf5"
    _write_h5(path, flat)
    ds = read_d4rl_hdf5(path)
    assert [len(e) for e in ds.episodes] == flat["lengths"]
    np.testing.assert_array_equal(
        np.concatenate([e.states for e in ds.episodes]), flat["observations"]
    )
    for name, key in (
        ("actions", "actions"),
        ("rewards", "rewards"),
        ("terminations", "terminals"),
    ):
        got = np.concatenate([getattr(e, name) for e in ds.episodes])
        np.testing.assert_array_equal(got, flat[key])
    ends = np.cumsum(flat["lengths"]) - 1
    for e, last in zip(ds.episodes, ends, strict=True):
        assert e.terminations[-1] or e.truncations[-1]  # every episode ends somehow
        if next_obs:  # the final observation is the next observation of the last step
            np.testing.assert_array_equal(e.observations[-1], flat["next_observations"][last])
    assert bool(ds.episodes[-1].truncations[-1]) == (open_end > 0 or episodes[-1][1] == "timeout")


@SETTINGS
@given(
    episodes=EPISODES,
    key=st.sampled_from(
        ["observations", "next_observations", "actions", "rewards", "terminals", "timeouts"]
    ),
    delta=st.sampled_from([-2, -1, 1, 3]),
)
def test_d4rl_length_mismatch_is_a_data_error(scratch, episodes, key, delta):
    from unicomp.rl.d4rl_io import read_d4rl_hdf5

    flat = _flat_d4rl(episodes, 0, 0)
    n = len(flat["rewards"])
    values = flat[key]
    flat[key] = (
        values[: max(n + delta, 0)]
        if delta < 0
        else np.concatenate([values, values[:1].repeat(delta, 0)])
    )
    path = scratch / "mismatch.hdf5"
    _write_h5(path, flat)
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: field '\w+'") as err:
        read_d4rl_hdf5(path)
    assert f"'{key}'" in str(err.value)  # the changed field, or the one it is compared with


@SETTINGS
@given(
    episodes=EPISODES,
    key=st.sampled_from(["observations", "next_observations", "actions", "rewards"]),
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
    data=st.data(),
)
def test_d4rl_nan_or_inf_names_field_and_row(scratch, episodes, key, bad, data):
    from unicomp.rl.d4rl_io import read_d4rl_hdf5

    flat = _flat_d4rl(episodes, 0, 0)
    row = data.draw(st.integers(0, len(flat["rewards"]) - 1), label="row")
    flat[key][row] = bad
    path = scratch / "nan.hdf5"
    _write_h5(path, flat)
    message = rf"{re.escape(str(path))}: field '{key}' holds NaN or inf \(first at row {row}\)"
    with pytest.raises(DataError, match=message):
        read_d4rl_hdf5(path)


# --- YAML configs and CLI arguments ------------------------------------------------------------
_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_VALUES = st.recursive(
    _SCALARS,
    lambda child: (
        st.lists(child, max_size=3)
        | st.dictionaries(_SCALARS.filter(lambda k: k is not None), child, max_size=3)
    ),
    max_leaves=6,
)
_FPT_KEYS = ["task", "backbone", "freeze", "readout", "backbone_dropout", "task_args", "out"]
_TRAIN_KEYS = [f for f in TrainConfig.__dataclass_fields__]
_TRAIN = st.dictionaries(
    st.sampled_from(_TRAIN_KEYS) | _SCALARS.filter(lambda k: k is not None), _VALUES, max_size=4
)
CONFIGS = st.dictionaries(
    st.sampled_from(_FPT_KEYS) | st.text(max_size=6) | st.integers(),
    st.sampled_from(["bit-xor", "mnist", "nope", "paper", "last"]) | _VALUES,
    max_size=5,
) | st.builds(
    lambda c, t: {**c, "train": t},
    st.dictionaries(st.sampled_from(_FPT_KEYS), _VALUES, max_size=2),
    _TRAIN | _VALUES,
)


def _resolve(cls: type, argv: list[str]) -> Any:
    args = build_parser().parse_args(argv)
    return resolve(cls, args, dt_task_defaults if cls is DTConfig else task_defaults)


@SETTINGS
@given(mapping=CONFIGS, cls=st.sampled_from([FPTConfig, DTConfig]))
def test_config_files_resolve_or_are_unicomp_errors(scratch, mapping, cls):
    path = scratch / "config.yaml"
    path.write_text(yaml.safe_dump(mapping, sort_keys=False))  # keys of mixed types
    command = ["fpt", "train"] if cls is FPTConfig else ["dt", "train"]
    try:
        cfg = _resolve(cls, [*command, "--config", str(path)])
    except UnicompError as err:
        assert "\n" not in str(err), str(err)
        return
    assert isinstance(cfg, cls) and isinstance(cfg.train, TrainConfig)
    assert set(mapping) <= {f for f in cls.__dataclass_fields__}  # unknown keys never pass


@SETTINGS
@given(mapping=CONFIGS)
def test_from_dict_raises_only_unicomp_errors(mapping):
    try:
        cfg = from_dict(FPTConfig, mapping, "test")
    except UnicompError as err:
        assert str(err).startswith("test") and "\n" not in str(err)
        return
    for key, value in mapping.items():
        if key != "train":
            assert getattr(cfg, key) == value or (value != value)  # NaN is never equal


@SETTINGS
@given(
    items=st.lists(
        st.text(max_size=12).filter(lambda s: not s.startswith("-")), min_size=1, max_size=3
    )
)
def test_task_args_resolve_or_are_unicomp_errors(items):
    argv = ["fpt", "train", *(x for item in items for x in ("--task-arg", item))]
    try:
        cfg = _resolve(FPTConfig, argv)
    except UnicompError as err:
        assert "\n" not in str(err), str(err)
        return
    assert set(cfg.task_args) == {item.partition("=")[0] for item in items}
