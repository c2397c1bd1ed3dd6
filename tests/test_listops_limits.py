"""ListOps rows are bounded (issue 14): a row nested 200,000 deep made the run hang (the reader
accepted its 400,002 tokens and the model's attention, quadratic in the row length, never
finished). Now the reader refuses rows longer than MAX_ROW_TOKENS or nesting more than
MAX_NESTING operators with one line naming the file, the row and the limit, in seconds."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.test_listops import ROWS, write_tsvs
from unicomp.errors import DataError
from unicomp.tasks.listops import MAX_NESTING, MAX_ROW_TOKENS, ListOps, evaluate, read_tsv


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNICOMP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("UNICOMP_DATA", raising=False)


def nested(depth: int) -> str:
    """``[MAX [MAX ... 1 2 ] ... ]``: ``depth`` operators open at once, value 2."""
    return "[MAX " * depth + "1 2 " + "] " * depth


def test_a_row_nested_200000_deep_is_refused_in_seconds(tmp_path):
    rows = {**ROWS, "train": [*ROWS["train"], (nested(200_000).strip(), 2)]}
    folder = write_tsvs(tmp_path / "listops", rows)
    start = time.perf_counter()
    with pytest.raises(DataError) as err:
        read_tsv(folder / "basic_train.tsv")
    seconds = time.perf_counter() - start
    message = str(err.value)
    assert "basic_train.tsv: line 4: 400002 tokens" in message, message
    assert f"limited to {MAX_ROW_TOKENS}" in message and "\n" not in message
    assert seconds < 5, seconds


def test_the_deep_row_through_the_command_line_is_one_line_and_writes_nothing(tmp_path, tiny_gpt2):
    """The whole command (in a child process, so that a hang fails the test instead of
    stalling it): exit 2, one stderr line, no run folder."""
    rows = {**ROWS, "val": [(nested(200_000).strip(), 2)]}
    write_tsvs(tmp_path / "data" / "listops", rows)
    out = tmp_path / "run"
    argv = ["fpt", "train", "--task", "listops", "--task-arg", f"data_root={tmp_path / 'data'}"]
    argv += ["--backbone", tiny_gpt2, "--steps", "2", "--out", str(out), "--no-progress"]
    done = subprocess.run(
        [sys.executable, "-m", "unicomp", *argv], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unicomp: error: "), lines[-5:]
    assert "basic_val.tsv: line 2: 400002 tokens" in lines[0], lines[0]
    assert not out.exists()


@pytest.mark.parametrize("depth", [MAX_NESTING, MAX_NESTING + 1])
def test_nesting_is_bounded_at_the_limit_and_not_before(tmp_path, depth):
    rows = {**ROWS, "test": [(nested(depth).strip(), 2)]}
    folder = write_tsvs(tmp_path / "listops", rows)
    if depth <= MAX_NESTING:
        seqs, mismatches = read_tsv(folder / "basic_test.tsv")
        assert len(seqs) == 1 and mismatches == 0
        assert evaluate(nested(depth).split()) == 2
        return
    with pytest.raises(DataError, match=rf"basic_test.tsv: line 2: .*more than {MAX_NESTING}"):
        read_tsv(folder / "basic_test.tsv")


def test_a_row_at_the_length_limit_is_read(tmp_path):
    # [SM followed by digits: MAX_ROW_TOKENS tokens in all, the largest row accepted
    source = "[SM " + "1 " * (MAX_ROW_TOKENS - 2) + "]"
    rows = {**ROWS, "test": [(source, (MAX_ROW_TOKENS - 2) % 10)]}
    folder = write_tsvs(tmp_path / "listops", rows)
    seqs, mismatches = read_tsv(folder / "basic_test.tsv")
    assert int(seqs.lengths[0]) == MAX_ROW_TOKENS and mismatches == 0
    longer = {**ROWS, "test": [(source.replace("[SM ", "[SM 1 "), 0)]}
    with pytest.raises(DataError, match=f"{MAX_ROW_TOKENS + 1} tokens"):
        read_tsv(write_tsvs(tmp_path / "longer", longer) / "basic_test.tsv")


@pytest.mark.parametrize(
    "args", [{"max_depth": MAX_NESTING + 2}, {"max_len": MAX_ROW_TOKENS + 1}], ids=str
)
def test_generator_settings_beyond_the_limits_are_refused(args):
    with pytest.raises(ValueError, match="<="):
        ListOps(source="generate", n_train=4, n_val=2, n_test=2, min_len=5, **args)
