"""Remote homology: the amino-acid tokeniser, TAPE's JSON and LMDB files, DeepSF's SCOP FASTA
files and our split of them, malformed inputs, and one CLI run. Tiny files written here; the
real SCOP files are read only by the slow test."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import cli_train
from unicomp.cli import main
from unicomp.data.proteins import N_FOLDS
from unicomp.errors import DataError
from unicomp.tasks.proteins import AMINO_ACIDS, UNK, VOCAB, RemoteHomology, decode, encode

_USER_DATA = os.environ.get("UNICOMP_DATA")  # for the slow test, read before the fixture


@pytest.fixture(autouse=True)
def _no_data_root(monkeypatch):
    monkeypatch.delenv("UNICOMP_DATA", raising=False)


# --- tokeniser --------------------------------------------------------------------------------
def test_tokenizer_covers_the_iupac_letters_and_round_trips():
    ids = encode(AMINO_ACIDS, "x")
    assert ids.tolist() == list(range(2, 27)) and len(VOCAB) == 27
    assert encode(AMINO_ACIDS.lower(), "x").tolist() == ids.tolist()  # lowercase accepted
    assert decode(ids) == AMINO_ACIDS


@pytest.mark.parametrize("bad", ["MK*V", "MK-V", "MK1V", "MK V", "MKéV"])
def test_unknown_characters_are_errors_or_unk(bad):
    with pytest.raises(DataError, match=r"f.json: record 3: character .* at residue 3"):
        encode(bad, "f.json: record 3")
    counts: Counter = Counter()
    ids = encode(bad, "f.json: record 3", unknown="unk", counts=counts)
    assert ids[2] == UNK and sum(counts.values()) == 1


# --- TAPE -------------------------------------------------------------------------------------
def _records(n: int, offset: int = 0) -> list[dict]:
    rng = np.random.default_rng(offset)
    out = []
    for i in range(n):
        seq = "".join(rng.choice(list(AMINO_ACIDS[:20]), size=int(rng.integers(5, 40))))
        out.append({"id": f"d{offset + i}", "primary": seq, "fold_label": int((offset + i) % 7)})
    return out


SPLIT_FILES = {
    "train": _records(12),
    "valid": _records(4, 100),
    "test_fold_holdout": _records(3, 200),
    "test_superfamily_holdout": _records(5, 300),
    "test_family_holdout": _records(6, 400),
}


def write_json(folder: Path, files: dict = SPLIT_FILES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, records in files.items():
        (folder / f"remote_homology_{name}.json").write_text(json.dumps(records))
    return folder


def write_lmdb(folder: Path, files: dict = SPLIT_FILES, count: bool = True) -> Path:
    lmdb = pytest.importorskip("lmdb")
    folder.mkdir(parents=True, exist_ok=True)
    for name, records in files.items():
        env = lmdb.open(str(folder / f"remote_homology_{name}.lmdb"), map_size=1 << 22)
        with env.begin(write=True) as txn:  # TAPE's layout: pickled dicts under b'0', b'1', ...
            for i, rec in enumerate(records):
                txn.put(str(i).encode(), pickle.dumps(rec))
            if count:
                txn.put(b"num_examples", pickle.dumps(len(records)))
        env.close()
    return folder


def _check_tape(task: RemoteHomology, test_name: str = "test_fold_holdout") -> None:
    assert task.spec.n_classes == task.spec.d_out == N_FOLDS == 1195
    assert task.spec.vocab_size == 27
    sizes = {"train": 12, "val": 4, "test": len(SPLIT_FILES[test_name])}
    assert task.split_sizes() == sizes
    test = task.split("test")
    assert test.y.tolist() == [r["fold_label"] for r in SPLIT_FILES[test_name]]
    for x, m, rec in zip(test.x, test.mask, SPLIT_FILES[test_name], strict=True):
        assert decode(x[m.bool()].tolist()) == rec["primary"]
    assert (test.x[test.mask == 0] == 0).all()
    assert f"remote_homology_{test_name}" in task.data_source
    batch = task.train_batch(0, 5, seed=0)
    assert batch.x.shape[1] == int(batch.mask.sum(1).max()) and batch.x.dtype == torch.long


def test_tape_json(tmp_path):
    root = tmp_path / "data"
    write_json(root / "remote_homology")
    _check_tape(RemoteHomology(data_root=str(root)))
    superfamily = RemoteHomology(data_root=str(root), test_split="superfamily")
    _check_tape(superfamily, "test_superfamily_holdout")
    task = RemoteHomology(data_root=str(root), test_split="family")
    assert len(task.split("test")) == 6 and "(json)" in task.data_source


def test_tape_lmdb(tmp_path):
    write_lmdb(tmp_path)
    task = RemoteHomology(data_root=str(tmp_path))
    assert "(lmdb)" in task.data_source
    _check_tape(task)
    write_lmdb(tmp_path / "nocount", count=False)  # no num_examples key: read keys in order
    _check_tape(RemoteHomology(data_root=str(tmp_path / "nocount"), source="lmdb"))


def test_lmdb_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    write_lmdb(tmp_path)
    monkeypatch.setitem(sys.modules, "lmdb", None)  # import lmdb now raises ImportError
    with pytest.raises(DataError, match="pip install lmdb"):
        RemoteHomology(data_root=str(tmp_path))


def test_long_sequences_are_cut_and_counted(tmp_path):
    task = RemoteHomology(data_root=str(write_json(tmp_path)), max_len=10)
    assert task.spec.max_len == 10
    cut = sum(len(r["primary"]) > 10 for r in SPLIT_FILES["train"])
    assert f"cut to it: {cut} train" in task.data_source


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty file"),
        ("[{", "not valid JSON: .* line 1"),
        ('{"primary": "MK"}', "expected a JSON list"),
        ("[]", "no records"),
        ('[{"fold_label": 1}]', "record 0: missing field 'primary'"),
        ('[{"id": "x7", "primary": "MK"}]', r"record 0 \(id x7\): missing field 'fold_label'"),
        ('[{"primary": "MK", "fold_label": 1195}]', "outside 0..1194"),
        ('[{"primary": "MK", "fold_label": -1}]', "outside 0..1194"),
        ('[{"primary": "MK", "fold_label": "3"}]', "is not an integer"),
        ('[{"primary": "MK", "fold_label": true}]', "is not an integer"),
        ('[{"primary": "", "fold_label": 3}]', "non-empty string"),
        (
            '[{"primary": "MK", "fold_label": 1}, {"primary": "MJ", "fold_label": 1}]',
            "record 1: character 'J' at residue 2",
        ),
        ("[3]", "record 0: expected a mapping"),
        ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
        (
            '[{"id": "a\\nb", "primary": "MJ", "fold_label": 1}]',
            r"record 0 \(id a b\): character 'J'",
        ),
        ('[{"primary": "MK", "fold_label": NaN}]', "'fold_label' nan is not an integer"),
        ('[{"primary": "MK", "fold_label": 3.0}]', "'fold_label' 3.0 is not an integer"),
    ],
)
def test_malformed_tape_json_is_a_one_line_data_error(tmp_path, content, message):
    write_json(tmp_path)
    (tmp_path / "remote_homology_valid.json").write_text(content)
    with pytest.raises(DataError, match=message) as info:
        RemoteHomology(data_root=str(tmp_path))
    assert "remote_homology_valid.json" in str(info.value) and "\n" not in str(info.value)


def test_malformed_lmdb_records_are_data_errors(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    write_lmdb(tmp_path)
    env = lmdb.open(str(tmp_path / "remote_homology_valid.lmdb"), map_size=1 << 22)
    with env.begin(write=True) as txn:
        txn.put(b"2", b"not a pickle")
    env.close()
    with pytest.raises(DataError, match="remote_homology_valid.lmdb: record 2 cannot be unp"):
        RemoteHomology(data_root=str(tmp_path))
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("train", "valid", "test_fold_holdout"):
        (bad / f"remote_homology_{name}.lmdb").write_text("not lmdb")  # a file, not a database
    with pytest.raises(DataError, match="remote_homology_train.lmdb: cannot open it"):
        RemoteHomology(data_root=str(bad))


def test_lmdb_bad_count_and_truncated_file_are_data_errors(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    write_lmdb(tmp_path)
    env = lmdb.open(str(tmp_path / "remote_homology_valid.lmdb"), map_size=1 << 22)
    with env.begin(write=True) as txn:
        txn.put(b"num_examples", pickle.dumps("four"))
    env.close()
    with pytest.raises(DataError, match="valid.lmdb: num_examples is 'four', expected a count"):
        RemoteHomology(data_root=str(tmp_path))
    # LMDB maps the file: a page past the end of a truncated file would kill the process
    # (SIGBUS), so the reader checks the size first. In a child process, so that a regression
    # fails this test rather than the whole run.
    data = tmp_path / "remote_homology_train.lmdb" / "data.mdb"
    data.write_bytes(data.read_bytes()[:8192])
    code = (
        "import sys; from pathlib import Path; from unicomp.errors import DataError\n"
        "from unicomp.data.proteins import read_tape_lmdb\n"
        "try: read_tape_lmdb(Path(sys.argv[1]))\n"
        "except DataError as err: print(err)\n"
    )
    args = [sys.executable, "-c", code, str(data.parent)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"{data}: truncated LMDB file (8192 bytes, the database needs" in proc.stdout


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="data_root=DIR or set UNICOMP_DATA"):
        RemoteHomology()
    with pytest.raises(DataError, match="no TAPE or SCOP FASTA files"):
        RemoteHomology(data_root=str(tmp_path))
    write_json(tmp_path, {"train": _records(3), "test_fold_holdout": _records(2)})
    with pytest.raises(DataError, match="lacks remote_homology_valid.json"):
        RemoteHomology(data_root=str(tmp_path))
    with pytest.raises(DataError, match="no fasta files"):
        RemoteHomology(data_root=str(tmp_path), source="fasta")
    with pytest.raises(ValueError):
        RemoteHomology(data_root=str(tmp_path), test_split="class")


# --- SCOP FASTA -------------------------------------------------------------------------------
FOLDS = "Fold\tLabel\na.1\t0\na.2\t1\nb.1\t2\nc.3\t1194\n"
SEQ = {f"d{i}": AMINO_ACIDS[i % 20] * 3 + AMINO_ACIDS[: 5 + i] for i in range(1, 13)}


def _fasta(entries: list[tuple[str, str]], wrap: int = 0) -> str:
    lines = []
    for domain, sccs in entries:
        seq = SEQ[domain]
        lines.append(f">{domain} {sccs} (A:) Some protein {{Some organism [TaxId: 1]}} ")
        chunks = [seq[i : i + wrap] for i in range(0, len(seq), wrap)] if wrap else [seq]
        lines += chunks
    return "\n".join(lines) + "\n"


def write_scop(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    SEQ["d11"] = SEQ["d2"]  # a pool domain with a test domain's sequence: dropped
    test = [("d1", "a.1.1.1"), ("d2", "b.1.2.3"), ("d9", "c.3.1.1")]
    pool = [
        ("d1", "a.1.1.1"),  # also in the test file: dropped from train/val
        ("d3", "a.1.1.2"),
        ("d4", "a.1.2.1"),
        ("d5", "a.1.1.1"),
        ("d10", "a.1.3.1"),
        ("d6", "a.2.1.1"),
        ("d8", "a.2.3.3"),
        ("d7", "b.1.1.1"),
        ("d11", "b.1.1.1"),
    ]
    (folder / "Testdata_id25againstTrain.fasta").write_text(_fasta(test, wrap=7))
    (folder / "Testdata_id40againstTrain.fasta").write_text(_fasta(pool[1:3]))
    (folder / "Testdata_id70againstTrain.fasta").write_text(_fasta(pool).lower())
    (folder / "fold_label_relation2.txt").write_text(FOLDS)
    return folder


def _domains(task: RemoteHomology, split: str) -> set[str]:
    by_seq = {seq: d for d, seq in SEQ.items() if d != "d11"}
    batch = task.sequences[split].to_batch()
    return {by_seq[decode(x[m.bool()].tolist())] for x, m in zip(batch.x, batch.mask, strict=True)}


def test_scop_fasta_split(tmp_path):
    root = tmp_path / "data"
    write_scop(root / "scop-fold")
    task = RemoteHomology(data_root=str(root))
    assert _domains(task, "test") == {"d1", "d2", "d9"}
    assert task.split("test").y.tolist() == [0, 2, 1194]
    train, val = _domains(task, "train"), _domains(task, "val")
    # a.1 has 4 pool domains -> 1 in val; a.2 (2) and b.1 (1) stay in train.
    assert train | val == {"d3", "d4", "d5", "d10", "d6", "d8", "d7"} and not train & val
    assert len(val) == 1 and val <= {"d3", "d4", "d5", "d10"}
    assert task.split_sizes() == {"train": 6, "val": 1, "test": 3}
    src = task.data_source
    assert "test = Testdata_id25againstTrain.fasta (3)" in src
    assert "after removing 2 test domains" in src
    assert "1 of 3 test sequences have a fold absent from train" in src
    # Seeded: the same seed gives the same split.
    again = RemoteHomology(data_root=str(root))
    assert torch.equal(again.split("val").x, task.split("val").x)
    vals = [_domains(RemoteHomology(data_root=str(root), split_seed=s), "val") for s in range(8)]
    assert len({frozenset(v) for v in vals}) > 1


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("Testdata_id25againstTrain.fasta", "", "no FASTA records"),
        ("Testdata_id25againstTrain.fasta", "MKV\n>d1 a.1.1.1\nMKV\n", "line 1: sequence without"),
        ("Testdata_id25againstTrain.fasta", ">d1\nMKV\n", "line 1: header '>d1' lacks"),
        ("Testdata_id25againstTrain.fasta", ">d1 a\nMKV\n", "lacks a domain id and a SCOP"),
        ("Testdata_id25againstTrain.fasta", ">d1 z.9.1.1\nMKV\n", "record d1 .*fold z.9 is not"),
        ("Testdata_id25againstTrain.fasta", ">d1 a.1.1.1\n>d2 a.1.1.1\nMKV\n", "d1 .*no seq"),
        ("Testdata_id25againstTrain.fasta", ">d1 a.1.1.1\nMK*V\n", "record d1: character '\\*'"),
        ("Testdata_id70againstTrain.fasta", ">d3 a.1.1.2\nWWWW\n", "d3 .*differs from the"),
        ("fold_label_relation2.txt", "Fold\tLabel\na.1\tx\n", "line 2: expected 'FOLD<TAB>"),
        ("fold_label_relation2.txt", "Fold\tLabel\na.1\t1195\n", "outside 0..1194"),
        ("fold_label_relation2.txt", "a.1\t0\na.1\t1\n", "fold a.1 listed twice"),
        ("fold_label_relation2.txt", "", "no fold labels"),
        ("fold_label_relation2.txt", "Fold\tLabel\na.1\t\u00b2\n", "line 2: expected 'FOLD<TAB>"),
    ],
)
def test_malformed_scop_files_are_one_line_data_errors(tmp_path, file, content, message):
    write_scop(tmp_path)
    (tmp_path / file).write_text(content)
    with pytest.raises(DataError, match=message) as info:
        RemoteHomology(data_root=str(tmp_path))
    assert file in str(info.value) and "\n" not in str(info.value)


def test_scop_without_train_files_is_an_error(tmp_path):
    write_scop(tmp_path)
    for n in (40, 70):
        (tmp_path / f"Testdata_id{n}againstTrain.fasta").unlink()
    with pytest.raises(DataError, match="lacks Testdata_id40againstTrain.fasta or"):
        RemoteHomology(data_root=str(tmp_path))


# --- end to end -------------------------------------------------------------------------------
def test_cli_trains_on_remote_homology(tmp_path, tiny_gpt2):
    root = write_json(tmp_path / "data")
    out = tmp_path / "run"
    metrics = cli_train(
        out, "--task", "remote-homology", "--task-arg", f"data_root={root}", "--backbone", tiny_gpt2
    )
    assert metrics["steps"] == 2 and metrics["data_source"].startswith("TAPE remote homology")
    assert metrics["split_sizes"] == {"train": 12, "val": 4, "test": 3}


def test_cli_data_error_is_one_line(tmp_path, tiny_gpt2, capsys):
    out = str(tmp_path / "r")
    args = ["--task", "remote-homology", "--backbone", tiny_gpt2, "--no-progress", "--out", out]
    code = main(["fpt", "train", *args])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "remote-homology needs data" in err[0]


# --- the real SCOP files (slow; only where the data folder has them) ---------------------------
def _real_scop() -> Path | None:
    if not _USER_DATA:
        return None
    for folder in (Path(_USER_DATA) / "scop-fold", Path(_USER_DATA)):
        if (folder / "Testdata_id25againstTrain.fasta").is_file():
            return folder
    return None


@pytest.mark.slow
@pytest.mark.skipif(_real_scop() is None, reason="UNICOMP_DATA has no DeepSF SCOP FASTA files")
def test_real_scop_fasta():
    task = RemoteHomology(data_root=str(_real_scop()))
    sizes = task.split_sizes()
    assert sizes["test"] == 711 and sizes["train"] + sizes["val"] == 736
    assert task.spec.max_len <= 1024 and task.spec.n_classes == 1195
    for split in ("train", "val", "test"):
        y = task.sequences[split].labels
        assert ((y >= 0) & (y < N_FOLDS)).all()
    rows = {
        split: {bytes(task.sequences[split].sequence(i)) for i in range(sizes[split])}
        for split in sizes
    }
    assert not (rows["train"] & rows["test"] or rows["val"] & rows["test"])
    assert not rows["train"] & rows["val"]


@pytest.mark.parametrize("preset", ["quick", "paper"])
def test_presets_parse(preset):
    import inspect

    from unicomp.config import FPTConfig, from_dict, load_yaml

    path = Path(__file__).parents[1] / "configs" / f"remote-homology-{preset}.yaml"
    cfg = from_dict(FPTConfig, load_yaml(path))
    assert cfg.task == "remote-homology"
    inspect.signature(RemoteHomology).bind(**cfg.task_args)  # every task argument exists
