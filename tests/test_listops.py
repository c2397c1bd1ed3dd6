"""ListOps: reference evaluator, generator properties, tokeniser, fixed splits, cache, LRA's
TSV files (good and malformed), and one CLI run."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.conftest import cli_train
from unicomp.errors import DataError
from unicomp.tasks.listops import (
    DIGITS,
    OPERATORS,
    VOCAB,
    ListOps,
    detokenize,
    evaluate,
    generate,
    max_possible_length,
    tokenize,
)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Every test gets its own cache and no data root."""
    monkeypatch.setenv("UNICOMP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("UNICOMP_DATA", raising=False)


# --- an independent evaluator: recursive descent over a parse tree ------------------------------
def parse_tree(tokens: list[str]):
    """Bare tokens (no parentheses) -> nested (operator, [children]) / int tree."""
    pos = 0

    def node():
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok in DIGITS:
            return int(tok)
        assert tok in OPERATORS, tok
        children = []
        while tokens[pos] != "]":
            children.append(node())
        pos += 1
        return (tok, children)

    tree = node()
    assert pos == len(tokens), "trailing tokens"
    return tree


def value_of(tree) -> int:
    if isinstance(tree, int):
        return tree
    op, children = tree
    vals = [value_of(c) for c in children]
    return {
        "[MIN": min,
        "[MAX": max,
        "[MED": lambda v: int(statistics.median(v)),  # LRA: int(np.median(v))
        "[SM": lambda v: sum(v) % 10,
    }[op](vals)


def lra_string(tree) -> str:
    """LRA's written form: left-nested tuples (op, a0), ((op, a0), a1), ..., (t, ']'), each
    tuple printed as '( left right )'."""
    if isinstance(tree, int):
        return str(tree)
    op, children = tree
    text = op
    for child in children:
        text = f"( {text} {lra_string(child)} )"
    return f"( {text} ] )"


def tree_stats(tree, depth=1):
    """(operator nesting depth, [argument counts])."""
    if isinstance(tree, int):
        return 0, []
    _, children = tree
    deepest, counts = 0, [len(children)]
    for c in children:
        d, cs = tree_stats(c, depth + 1)
        deepest, counts = max(deepest, d), counts + cs
    return deepest + 1, counts


# --- evaluator ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("[MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]", 5),
        ("[SM 7 8 9 ]", 4),
        ("[MIN 3 [MAX 9 0 ] [SM 2 5 ] ]", 3),
        ("[MED 1 2 ]", 1),  # int(np.median([1, 2])) = int(1.5) = 1
        ("[MED 3 8 1 6 ]", 4),  # (3 + 6) / 2 = 4.5 -> 4
        ("[MED 9 9 0 ]", 9),
        ("[SM [SM 9 9 ] [MAX 1 [MIN 7 8 ] ] 5 ]", 0),  # 8 + 7 + 5 = 20
        ("( ( ( [MAX 2 ) 9 ) ] )", 9),  # LRA's TSV form
        ("( ( ( ( [MIN 5 ) ( ( ( [SM 4 ) 9 ) ] ) ) 7 ) ] )", 3),
        ("7", 7),
    ],
)
def test_evaluator_on_hand_written_expressions(expr, value):
    assert evaluate(expr.split()) == value


@pytest.mark.parametrize(
    "expr",
    [
        "",
        "[MAX 1 2",
        "[MAX 1 2 ] ]",
        "] 1",
        "[MAX ]",
        "[FIRST 1 2 ]",
        "( [MAX 1 2 ]",
        "[MAX 1 2 ] )",
        "1 2",
        "[MAX 1 2 ] [MIN 3 4 ]",
        "[MAX 10 2 ]",
    ],
)
def test_evaluator_rejects_malformed_expressions(expr):
    with pytest.raises(ValueError):
        evaluate(expr.split())


@given(st.lists(st.integers(0, 9), min_size=1, max_size=12))
def test_median_matches_numpy(values):
    expr = "[MED " + " ".join(map(str, values)) + " ]"
    assert evaluate(expr.split()) == int(np.median(values))


# --- tokeniser ------------------------------------------------------------------------------
@given(st.lists(st.sampled_from(VOCAB[1:]), max_size=40))
def test_tokenizer_keeps_every_symbol_and_round_trips(symbols):
    text = " ".join(symbols)
    ids = tokenize(text)
    assert len(ids) == len(symbols) and all(0 < i < len(VOCAB) for i in ids)
    assert detokenize(ids) == text


def test_tokenizer_rejects_unknown_symbols():
    assert len(set(tokenize("[MIN [MAX [MED [SM ] ( ) 0 1 2 3 4 5 6 7 8 9"))) == 17
    for bad in ("[MEDIAN 1 ]", "MAX 1 ]", "<pad>", "[max 1 ]"):
        with pytest.raises(ValueError):
            tokenize(bad)


# --- generator properties -------------------------------------------------------------------
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10**6),
    max_depth=st.integers(3, 6),
    max_args=st.integers(3, 6),
    # Windows that the 0.25 operator probability reaches quickly: very narrow or very long
    # windows are valid but can take many thousands of draws (the bound check still applies).
    min_len=st.integers(4, 14),
    extra=st.integers(10, 100),
    parens=st.booleans(),
)
def test_generated_expressions_respect_every_bound(
    seed, max_depth, max_args, min_len, extra, parens
):
    max_len = min_len + extra
    assume(min_len <= max_possible_length(max_depth, max_args) // 2)
    seqs, labels = generate(6, seed, min_len, max_len, max_depth, max_args, parens)
    assert len(set(seqs)) == 6  # all distinct
    for seq, label in zip(seqs, labels, strict=True):
        tokens = detokenize(seq).split()
        assert evaluate(tokens) == label  # the reference evaluator agrees
        bare = [t for t in tokens if t not in ("(", ")")]
        # balanced brackets: every prefix closes no more than it opened, and all close
        depth = 0
        for t in bare:
            depth += t in OPERATORS
            depth -= t == "]"
            assert depth >= 0
        assert depth == 0
        tree = parse_tree(bare)
        assert value_of(tree) == label  # an independent evaluation agrees
        nesting, arg_counts = tree_stats(tree)
        assert 1 <= nesting <= max_depth - 1  # LRA: the root is depth 1, depth max_depth is a digit
        assert all(2 <= n <= max_args for n in arg_counts)
        assert min_len <= len(bare) <= max_len  # LRA counts lengths without parentheses
        if parens:
            assert " ".join(tokens) == lra_string(tree)  # exactly LRA's written form
        else:
            assert tokens == bare


def test_generator_is_seeded():
    a = generate(5, "s", 10, 50)
    assert a == generate(5, "s", 10, 50)
    assert a != generate(5, "t", 10, 50)


def test_impossible_bounds_are_clear_errors():
    with pytest.raises(ValueError, match="unreachable"):
        generate(1, 0, min_len=100, max_len=200, max_depth=2, max_args=10)
    with pytest.raises(ValueError, match="min_len"):
        generate(1, 0, min_len=50, max_len=10)
    with pytest.raises(ValueError, match="distinct"):
        generate(1000, 0, min_len=4, max_len=4, max_depth=2, max_args=2)  # only 400 exist


# --- the task: splits, cache, padding ---------------------------------------------------------
SMALL = {"n_train": 60, "n_val": 12, "n_test": 12, "min_len": 10, "max_len": 40}


def _rows(batch) -> set[tuple[int, ...]]:
    return {tuple(x[m.bool()].tolist()) for x, m in zip(batch.x, batch.mask, strict=True)}


def test_splits_are_fixed_per_seed_disjoint_and_cached(tmp_path, monkeypatch):
    a = ListOps(**SMALL)
    assert "cached in" in a.data_source and "generated" in a.data_source
    b = ListOps(**SMALL)  # from the cache
    assert "read from the cache" in b.data_source
    monkeypatch.setenv("UNICOMP_CACHE", str(tmp_path / "fresh"))
    c = ListOps(**SMALL)  # generated again, without the cache
    for split in ("val", "test"):
        assert torch.equal(a.split(split).x, b.split(split).x)
        assert torch.equal(a.split(split).x, c.split(split).x)
        assert torch.equal(a.split(split).y, c.split(split).y)
    assert torch.equal(a.train_batch(3, 8, 0).x, c.train_batch(3, 8, 0).x)
    train = _rows(a.sequences["train"].to_batch())
    val, test = _rows(a.split("val")), _rows(a.split("test"))
    assert len(train) == 60 and len(val) == 12 and len(test) == 12
    assert not (train & val or train & test or val & test)
    # Another seed gives other data; another n_train keeps val and test.
    assert not torch.equal(ListOps(**{**SMALL, "seed": 1}).split("test").x, a.split("test").x)
    more = ListOps(**{**SMALL, "n_train": 80})
    assert torch.equal(more.split("test").x, a.split("test").x)
    assert torch.equal(more.split("val").x, a.split("val").x)


def test_batches_are_padded_and_masked():
    task = ListOps(**SMALL)
    assert task.spec.vocab_size == len(VOCAB) and task.spec.n_classes == 10
    test = task.split("test")
    assert task.split_sizes() == {"train": 60, "val": 12, "test": 12}
    lengths = test.mask.sum(1)
    assert test.x.shape[1] == int(lengths.max()) <= task.spec.max_len <= 40
    assert (test.x[test.mask == 0] == 0).all() and (test.x[test.mask == 1] > 0).all()
    # right padding: the mask is a prefix of ones
    assert torch.equal(test.mask, (torch.arange(test.x.shape[1]) < lengths[:, None]).long())
    for x, m, y in zip(test.x, test.mask, test.y, strict=True):
        assert evaluate(detokenize(x[m.bool()].tolist()).split()) == int(y)
    batch = task.train_batch(0, 16, seed=0)
    assert batch.x.shape[1] == int(batch.mask.sum(1).max())  # trimmed to its longest sequence
    assert batch.x.dtype == torch.long and len(batch) == 16


def test_max_tokens_cuts_and_says_so():
    task = ListOps(**SMALL, max_tokens=15)
    assert task.spec.max_len == 15
    assert "max_tokens" in task.data_source and "sequences cut" in task.data_source


def test_bad_generator_arguments():
    with pytest.raises(ValueError):
        ListOps(**{**SMALL, "n_val": 0})
    with pytest.raises(ValueError):
        ListOps(source="nope")


# --- LRA's TSV files ----------------------------------------------------------------------------
ROWS = {
    "train": [("( ( ( [MAX 2 ) 9 ) ] )", 9), ("( ( ( [SM 7 ) 8 ) ] )", 5)],
    "val": [("( ( ( ( [MIN 5 ) ( ( ( [SM 4 ) 9 ) ] ) ) 7 ) ] )", 3)],
    "test": [("( ( ( [MED 1 ) 2 ) ] )", 1)],
}


def write_tsvs(folder, rows=ROWS, header="Source\tTarget"):
    folder.mkdir(parents=True, exist_ok=True)
    for split, items in rows.items():
        lines = [header, *(f"{src}\t{tgt}" for src, tgt in items)]
        (folder / f"basic_{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


def test_tsv_reader_keeps_every_symbol(tmp_path):
    write_tsvs(tmp_path / "lra_release" / "listops-1000")
    task = ListOps(data_root=str(tmp_path))
    assert "basic_train.tsv" in task.data_source and "every symbol kept" in task.data_source
    assert task.split_sizes() == {"train": 2, "val": 1, "test": 1}
    val = task.split("val")
    assert detokenize(val.x[0].tolist()) == ROWS["val"][0][0]
    assert val.y.tolist() == [3]
    assert task.spec.max_len == len(ROWS["val"][0][0].split())
    again = ListOps(data_root=str(tmp_path))  # parsed token ids come from the cache
    assert "read from the cache" in again.data_source
    assert torch.equal(again.split("val").x, val.x)
    dropped = ListOps(data_root=str(tmp_path), parens=False)
    assert detokenize(dropped.split("val").x[0].tolist()) == "[MIN 5 [SM 4 9 ] 7 ]"
    assert "dropped" in dropped.data_source


def test_tsv_found_through_unicomp_data_and_target_mismatch_noted(tmp_path, monkeypatch):
    rows = {**ROWS, "test": [("[MED 1 2 ]", 7)]}  # the file's label wins, and is noted
    write_tsvs(tmp_path / "listops", rows)
    monkeypatch.setenv("UNICOMP_DATA", str(tmp_path))
    task = ListOps()
    assert task.split("test").y.tolist() == [7]
    assert "1 basic_test.tsv Targets differ" in task.data_source
    # source=generate ignores the TSVs
    assert "generated" in ListOps(source="generate", **SMALL).data_source


def test_unicomp_data_without_tsvs_generates(tmp_path, monkeypatch):
    monkeypatch.setenv("UNICOMP_DATA", str(tmp_path))
    assert "generated" in ListOps(**SMALL).data_source


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty file"),
        ("Src\tTgt\n[MAX 1 2 ]\t2\n", "header"),
        ("Source\tTarget\n[MAX 1 2 ]\tx\n", "line 2: Target 'x' is not a digit"),
        ("Source\tTarget\n[MAX 1 2 ]\t12\n", "not a digit"),
        ("Source\tTarget\n[MAX 1 2\t2\n", "line 2: malformed expression"),
        ("Source\tTarget\n( [MAX 1 2 ]\t2\n", "line 2: malformed expression"),
        ("Source\tTarget\n[MAX 1 2 ] ]\t2\n", "malformed expression"),
        ("Source\tTarget\n[MAXX 1 2 ]\t2\n", "unknown symbol"),
        ("Source\tTarget\n[MAX 1 2 ]\n", "line 2: 1 tab-separated fields"),
        ("Source\tTarget\n", "no rows"),
    ],
)
def test_malformed_tsv_is_a_one_line_data_error(tmp_path, content, message):
    write_tsvs(tmp_path)
    (tmp_path / "basic_val.tsv").write_text(content)
    with pytest.raises(DataError, match=message) as info:
        ListOps(data_root=str(tmp_path))
    assert "basic_val.tsv" in str(info.value) and "\n" not in str(info.value)


def test_missing_tsv_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="no LRA TSV files"):
        ListOps(data_root=str(tmp_path))  # a named folder must hold them
    with pytest.raises(DataError, match="no LRA TSV files"):
        ListOps(source="tsv")
    write_tsvs(tmp_path)
    (tmp_path / "basic_test.tsv").unlink()
    with pytest.raises(DataError, match="lacks basic_test.tsv"):
        ListOps(data_root=str(tmp_path))


# --- end to end -------------------------------------------------------------------------------
def test_cli_trains_on_listops(tmp_path, tiny_gpt2):
    out = tmp_path / "run"
    args = ["n_train=32", "n_val=8", "n_test=8", "min_len=10", "max_len=60"]
    task_args = (x for a in args for x in ("--task-arg", a))
    metrics = cli_train(out, "--task", "listops", *task_args, "--backbone", tiny_gpt2)
    assert metrics["steps"] == 2 and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["data_source"].startswith("generated (LRA grammar")
    assert metrics["split_sizes"] == {"train": 32, "val": 8, "test": 8}


@pytest.mark.parametrize("preset", ["quick", "paper"])
def test_presets_parse(preset):
    import inspect

    from unicomp.config import FPTConfig, from_dict, load_yaml

    path = Path(__file__).parents[1] / "configs" / f"listops-{preset}.yaml"
    cfg = from_dict(FPTConfig, load_yaml(path))
    assert cfg.task == "listops"
    inspect.signature(ListOps).bind(**cfg.task_args)  # every task argument exists
