"""Your own data as a task, no code written: ``--task array:PATH`` on an .npz of sequences, a
pair of .npy files, a CSV table and a folder of split files trains, records what it read,
exports an adapter that predicts as the run's model does (in Python and over HTTP), and
re-runs from its config.yaml; malformed files are refused in one line naming the file. A task
registered from Python re-runs from its config.yaml in a fresh process and serves through the
input form it declares."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import run_cli
from unicomp.tasks.base import Batch, Codec, InputError, TaskSpec, TensorTask

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def _fast(backbone: str) -> list[str]:
    return [
        "--backbone", backbone, "--steps", "4", "--eval-every", "2", "--batch-size", "8",
        "--precision", "fp32", "--attn-implementation", "eager", "--no-progress",
    ]  # fmt: skip


def _train(capsys, out: Path, *args: str) -> dict:
    from unicomp.cli import main

    rc = main(["fpt", "train", *args, "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    return json.loads((out / "metrics.json").read_text())


def _export(capsys, run: Path, file: Path) -> str:
    """``unicomp fpt export-adapter``; its stderr."""
    from unicomp.cli import main

    capsys.readouterr()
    assert main(["fpt", "export-adapter", str(run), "-o", str(file)]) == 0
    return capsys.readouterr().err


def _sequences(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n sequences of 6 tokens of 3 values; the class: does the first channel sum above 0."""
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, (n, 6, 3)).astype(np.float32)
    y = np.where(x[:, :, 0].sum(1) > 12, "up", "down")
    return x, y


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run_outputs(run: Path) -> tuple[torch.Tensor, object]:
    """The run's own model on its own test split: (outputs, task)."""
    from unicomp.experiments.fpt import load_fpt_run

    model, task, _ = load_fpt_run(run)
    with torch.no_grad():
        return model(task.split("test").x), task


# --- an .npz of sequences, end to end -------------------------------------------------------------
def test_npz_sequences_train_export_serve_and_predict_as_the_run(tmp_path, tiny_bert, capsys):
    from unicomp.serving.adapters import load_adapter

    x, y = _sequences(60)
    npz = tmp_path / "moves.npz"
    np.savez(npz, x_train=x[:40], y_train=y[:40], x_val=x[40:50], y_val=y[40:50],
             x_test=x[50:], y_test=y[50:])  # fmt: skip
    run = tmp_path / "run"
    metrics = _train(capsys, run, "--task", f"array:{npz}", *_fast(tiny_bert))

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["task"], saved["task_args"], saved["task_source"]) == (
        "array", {"path": str(npz)}, None
    )  # fmt: skip
    assert metrics["data_sha256"] == {str(npz): _sha(npz)}
    assert metrics["classes"] == ["down", "up"] and metrics["problem"] == "classification"
    assert metrics["split_sizes"] == {"train": 40, "val": 10, "test": 10}
    assert metrics["data_splits"]["how"] == "splits as given"
    assert metrics["input_tokens"] == [6, 3]
    stats = metrics["normalisation"]["inputs"]  # of the training split alone
    train = x[:40].astype(np.float64)
    assert np.allclose(stats["mean"], train.mean((0, 1))) and stats["from"] == "the train split"
    assert np.allclose(stats["std"], train.std((0, 1)))
    assert isinstance(metrics["test_accuracy"], float)

    file = tmp_path / "adapters" / "moves.safetensors"
    assert "warning" not in _export(capsys, run, file)
    adapter = load_adapter(file)
    assert adapter.describe()["input"].startswith("a list of 6 lists of 3 numbers")
    outputs, task = _run_outputs(run)
    inputs = x[50:].tolist()  # the test examples as the file holds them: not standardised
    encoded, mask = adapter.codec.encode(inputs)
    assert mask is None and torch.equal(encoded, task.split("test").x)  # the run's encoding
    expected = [task.classes[i] for i in outputs.argmax(-1).tolist()]
    assert adapter.predict(inputs) == expected
    assert torch.allclose(adapter(encoded), outputs, atol=1e-5)
    assert adapter.predict([adapter.describe()["example"]])[0] in ("down", "up")
    with pytest.raises(InputError, match=r"^input 1: expected shape \[6, 3\], got \[6, 2\]"):
        adapter.predict([inputs[0], [[1.0, 2.0]] * 6])

    # served over HTTP: the same answers
    fastapi = pytest.importorskip("fastapi", reason="the serve extra")
    from fastapi.testclient import TestClient

    from unicomp.serving.serve import ServeConfig, create_app

    assert fastapi
    app = create_app(ServeConfig(backbone=tiny_bert, adapters=file.parent, rescan=0))
    with TestClient(app) as client:
        listed = client.get("/tasks").json()
        answer = client.post("/tasks/moves/predict", json={"inputs": inputs})
        bad = client.post("/tasks/moves/predict", json={"inputs": [[[1, "a", 2]] * 6]})
    assert [t["name"] for t in listed["tasks"]] == ["moves"] and not listed["rejected"], listed
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"] == expected
    assert bad.status_code == 422 and "input 0" in bad.json()["error"]


# --- a CSV table: regression, splits made with a seed, a re-run from config.yaml ------------------
def _table(path: Path, n: int = 50) -> np.ndarray:
    rng = np.random.default_rng(1)
    a, b, c = rng.normal(0, 1, n), rng.uniform(0, 100, n), rng.integers(0, 5, n)
    price = 1000 + 300 * a + 2 * b + rng.normal(0, 10, n)
    rows = ["a,b,rooms,price"] + [f"{a[i]:.6f},{b[i]:.6f},{c[i]},{price[i]:.4f}" for i in range(n)]
    path.write_text("\n".join(rows) + "\n")
    return np.stack([a, b, c, price], 1)


def test_csv_regression_with_seeded_splits_reruns_from_its_config(tmp_path, tiny_bert, capsys):
    from unicomp.serving.adapters import load_adapter

    csv = tmp_path / "houses.csv"
    _table(csv)
    run = tmp_path / "run"
    args = ["--task", f"array:{csv}", "--task-arg", "target=price", "--task-arg", "split_seed=3"]
    metrics = _train(capsys, run, *args, *_fast(tiny_bert))
    printed = json.loads(capsys.readouterr().out.split("run folder:")[0])
    assert printed["test_accuracy"] is None and "test_rmse" in printed

    assert metrics["problem"] == "regression" and metrics["test_accuracy"] is None
    assert metrics["input_columns"] == ["a", "b", "rooms"] and metrics["input_tokens"] == [3, 1]
    splits = metrics["data_splits"]
    assert (splits["split_seed"], splits["val_fraction"], splits["test_fraction"]) == (3, 0.1, 0.1)
    assert splits["sizes"] == {"train": 40, "val": 5, "test": 5} == metrics["split_sizes"]
    std = metrics["normalisation"]["targets"]["std"][0]
    assert math.isclose(metrics["test_rmse"], math.sqrt(metrics["test_loss"]) * std)
    assert "mean squared error" in metrics["metric"]

    # the run again from its config.yaml alone: the same data, splits and numbers
    again = _train(capsys, tmp_path / "again", "--config", str(run / "config.yaml"))
    for key in ("data_sha256", "data_splits", "normalisation", "test_loss", "val_loss"):
        assert again[key] == metrics[key], key

    # predictions in the targets' own units, as the run's model gives them
    file = tmp_path / "houses.safetensors"
    _export(capsys, run, file)
    adapter = load_adapter(file)
    outputs, task = _run_outputs(run)
    mean = metrics["normalisation"]["targets"]["mean"][0]
    expected = (outputs[:, 0].double() * std + mean).tolist()
    features = task.split("test").x[:, :, 0].double()  # standardised back to the table's values
    stats = metrics["normalisation"]["inputs"]
    rows = (features * torch.tensor(stats["std"]) + torch.tensor(stats["mean"])).tolist()
    got = adapter.predict(rows)
    assert all(isinstance(v, float) for v in got)
    assert np.allclose(got, expected, rtol=1e-5, atol=1e-3)


def test_npy_pair_of_series_and_integer_classes(tmp_path, tiny_bert, capsys, monkeypatch):
    monkeypatch.setenv("UNICOMP_CACHE", str(tmp_path / "cache"))  # output-only: features cached
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (40, 8))  # N x T: 8 tokens of one value
    y = (x[:, :4].sum(1) > 0).astype(np.int64) * 3 + 4  # classes 4 and 7
    np.save(tmp_path / "series.npy", x)
    np.save(tmp_path / "labels.npy", y)
    args = ["--task", f"array:{tmp_path / 'series.npy'}"]
    args += ["--task-arg", f"target={tmp_path / 'labels.npy'}"]
    args += ["--freeze", "output-only"]  # the head alone, on the frozen network's features
    metrics = _train(capsys, tmp_path / "run", *args, *_fast(tiny_bert))
    assert metrics["feature_cache"].startswith("computed"), metrics["feature_cache"]
    assert metrics["classes"] == [4, 7] and metrics["input_tokens"] == [8, 1]
    files = {str(tmp_path / "series.npy"), str(tmp_path / "labels.npy")}
    assert set(metrics["data_sha256"]) == files
    assert metrics["split_sizes"] == {"train": 32, "val": 4, "test": 4}
    file = tmp_path / "series.safetensors"
    _export(capsys, tmp_path / "run", file)
    from unicomp.serving.adapters import load_adapter

    assert set(load_adapter(file).predict(x[:3].tolist())) <= {4, 7}


def test_a_folder_of_split_files_and_a_reshape(tmp_path):
    from unicomp.experiments.common import build_task

    folder = tmp_path / "data"
    folder.mkdir()
    table = _table(tmp_path / "all.csv", 60)
    header = "a,b,rooms,price\n"
    for name, part in (("train", table[:50]), ("test", table[50:])):
        lines = [",".join(f"{v:.6f}" for v in row) for row in part]
        (folder / f"{name}.csv").write_text(header + "\n".join(lines) + "\n")
    task = build_task("array", {"path": str(folder), "target": "price", "tokens": 1})
    assert task.split_sizes() == {"train": 45, "val": 5, "test": 10}  # val cut from train
    assert task.split_how["given"] == ["train", "test"] and task.split_how["split_seed"] == 0
    assert task.spec.max_len == 1 and task.spec.d_in == 3  # tokens=1: one token of 3 values
    assert set(task.sha256) == {str(folder / "train.csv"), str(folder / "test.csv")}
    train = task.data["train"].x.reshape(45, 3).double()
    # standardised with the training split's own statistics
    assert torch.allclose(train.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-5)


# --- malformed files: one line naming the file ---------------------------------------------------
def _bad_files(tmp: Path) -> list[tuple[str, list[str], str]]:
    """(path, extra args, what the message must say)."""
    x, y = np.zeros((10, 4, 2)), np.arange(10) % 2
    cases: list[tuple[str, list[str], str]] = []

    def npz(name: str, what: str, args: list[str] | None = None, **arrays) -> None:
        np.savez(tmp / name, **arrays)
        cases.append((str(tmp / name), args or [], what))

    npz("lengths.npz", "x has 10 examples, y has 9", x=x, y=y[:9])
    nan = x.copy()
    nan[3, 1, 0] = np.nan
    npz("nan.npz", "x holds NaN or infinite values", x=nan, y=y)
    npz("inf.npz", "y holds NaN or infinite values", x=x, y=np.where(y, np.inf, 1.0))
    npz("strings.npz", "x holds strings", x=np.array([["a", "b"]] * 10), y=y)
    npz("objects.npz", "holds Python objects", x=np.array([[1], [2, 3]] * 5, dtype=object), y=y)
    npz("complex.npz", "x has dtype complex128", x=x.astype(complex), y=y)
    npz("missing.npz", "no inputs array", a=x, b=y)
    npz("empty.npz", "the val split is empty",
        x_train=x, y_train=y, x_val=x[:0], y_val=y[:0])  # fmt: skip
    npz("tiny.npz", "the test split would be empty", ["--task-arg", "test_fraction=0.01"],
        x=x, y=y)  # fmt: skip
    npz("one-class.npz", "classification needs two classes", x=x, y=np.zeros(10, int))
    many = np.zeros((1200, 1))
    npz("prices.npz", "classes or values? say --task-arg problem=", x=many, y=np.arange(1200))
    (tmp / "words.csv").write_text("a,colour,t\n1,red,0\n2,blue,1\n")
    cases.append((str(tmp / "words.csv"), ["--task-arg", "target=t"], "column 'colour' is not"))
    cases.append((str(tmp / "words.csv"), [], "name its target column with --task-arg target="))
    cases.append((str(tmp / "words.csv"), ["--task-arg", "target=price"], "no column 'price'"))
    (tmp / "ragged.csv").write_text("a,t\n1,0\n2\n")
    cases.append((str(tmp / "ragged.csv"), ["--task-arg", "target=t"], "row 2 has 1 values"))
    np.save(tmp / "alone.npy", x)
    cases.append((str(tmp / "alone.npy"), [], "holds inputs only"))
    (tmp / "notes.txt").write_text("1 2 3")
    cases.append((str(tmp / "notes.txt"), [], "unknown file type .txt"))
    cases.append((str(tmp / "absent.npz"), [], "does not exist"))
    (tmp / "zip.npz").write_bytes(b"not a zip file")
    cases.append((str(tmp / "zip.npz"), [], "cannot read"))
    return cases


def test_malformed_files_are_refused_in_one_line_naming_the_file(tmp_path, tiny_bert, capsys):
    from unicomp.cli import main

    for path, args, what in _bad_files(tmp_path):
        out = tmp_path / "runs" / Path(path).stem
        capsys.readouterr()
        rc = main(["fpt", "train", "--task", f"array:{path}", *args, *_fast(tiny_bert),
                   "--out", str(out)])  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert rc == 2, (path, err)
        assert len(err.splitlines()) == 1 and err.startswith("unicomp: error: "), err
        assert path in err and what in err, (what, err)
        assert not out.exists()


def test_parquet_needs_pyarrow_said_in_one_line(tmp_path):
    from unicomp.errors import DataError
    from unicomp.experiments.common import build_task

    path = tmp_path / "t.parquet"
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path.write_bytes(b"PAR1")
        with pytest.raises(DataError, match=r"t\.parquet: reading Parquet needs pyarrow, which"):
            build_task("array", {"path": str(path), "target": "y"})
        return
    table = {"a": [0.1 * i for i in range(20)], "y": ["no", "yes"] * 10}
    pq.write_table(pa.table(table), path)
    task = build_task("array", {"path": str(path), "target": "y"})
    assert task.classes == ["no", "yes"] and task.spec.max_len == 1


def test_the_shorthand_and_the_path_argument_are_one_setting(tmp_path):
    from unicomp.errors import UnicompError
    from unicomp.tasks.catalog import expand_task

    assert expand_task("array:d.npz", {"tokens": 2}) == ("array", {"path": "d.npz", "tokens": 2})
    assert expand_task("bit-xor", {"n_bits": 3}) == ("bit-xor", {"n_bits": 3})
    with pytest.raises(UnicompError, match="give it once"):
        expand_task("array:d.npz", {"path": "e.npz"})
    with pytest.raises(UnicompError, match=r"expected array:<path>"):
        expand_task("array:", {})

    # on the command line, over a config file: the flag wins, as flags do
    from unicomp.cli import build_parser
    from unicomp.config import FPTConfig, resolve
    from unicomp.experiments.common import task_defaults

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"task": "array", "task_args": {"path": "a.npz"}}))

    def resolved(*flags: str) -> FPTConfig:
        args = build_parser().parse_args(["fpt", "train", "--config", str(config), *flags])
        return resolve(FPTConfig, args, task_defaults)

    assert resolved().task_args == {"path": "a.npz"}
    cfg = resolved("--task", "array:b.npz")
    assert (cfg.task, cfg.task_args) == ("array", {"path": "b.npz"})
    with pytest.raises(UnicompError, match="give it once"):
        resolved("--task", "array:b.npz", "--task-arg", "path=c.npz")


# --- a task registered from Python: a re-run from config.yaml, an input form ------------------
class SignCodec(Codec):
    """Sign's natural input: a list of ``length`` numbers (standardised as the task does)."""

    def __init__(self, spec: TaskSpec, length: int, scale: float):
        super().__init__(spec, input=f"a list of {length} numbers", output="0 or 1",
                         example=[0.0] * length)  # fmt: skip
        self.length, self.scale = length, scale

    def state(self) -> dict:
        return {"length": self.length, "scale": self.scale}

    def encode(self, items):
        for i, item in enumerate(items):
            if not (isinstance(item, list) and len(item) == self.length):
                raise InputError(f"input {i}: expected a list of {self.length} numbers")
        x = torch.tensor(items, dtype=torch.float32) / self.scale
        return x.reshape(len(items), self.length, 1), None

    def decode(self, logits):
        return [ids[0] for ids in super().decode(logits)]  # one class id per input


class Sign(TensorTask):
    """Is the first of ``length`` numbers positive? Fixed examples from a seeded generator."""

    name = "sign-from-python"
    scale = 2.0

    def __init__(self, length: int = 4):
        gen = torch.Generator().manual_seed(0)
        self.raw = torch.randn(64, length, generator=gen) * self.scale
        x = (self.raw / self.scale).reshape(64, length, 1)
        y = (self.raw[:, 0] > 0).long()
        self.length = length
        self.spec = TaskSpec(max_len=length, d_in=1, d_out=2, n_classes=2)
        self.data = {
            "train": Batch(x[:40], y[:40]),
            "val": Batch(x[40:52], y[40:52]),
            "test": Batch(x[52:], y[52:]),
        }
        self.data_source = f"generated: 64 sequences of {length} numbers (a test module)"

    def input_form(self) -> SignCodec:
        return SignCodec(self.spec, self.length, self.scale)


class SignWithoutForm(Sign):
    name = "sign-without-form"

    def input_form(self) -> None:
        return None


@pytest.fixture
def own_tasks(monkeypatch):
    """Sign and SignWithoutForm registered from Python, for this test only."""
    import unicomp
    from unicomp.tasks import catalog

    assert "bit-xor" in catalog.TASKS  # the catalogue loaded, so the copy below holds it
    monkeypatch.setattr(catalog.TASKS, "_entries", dict(catalog.TASKS._entries))
    unicomp.register_task("sign", Sign, help="sign of the first number")
    unicomp.register_task("sign-no-form", SignWithoutForm, help="the same, no input form")


def test_a_task_registered_from_python_reruns_from_its_config_and_serves(
    own_tasks, tmp_path, tiny_bert, capsys
):
    from unicomp.serving.adapters import load_adapter

    run = tmp_path / "run"
    first = _train(capsys, run, "--task", "sign", "--task-arg", "length=5", *_fast(tiny_bert))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["task_source"] == "tests.test_array_tasks:Sign"

    # a fresh process that never registered it: the config names where it lives
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    again = tmp_path / "again"
    proc = run_cli("fpt", "train", "--config", str(run / "config.yaml"), "--out", str(again),
                   env={"PYTHONPATH": path}, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    second = json.loads((again / "metrics.json").read_text())
    for key in ("data_source", "test_accuracy", "val_accuracy", "trainable_params"):
        assert second[key] == first[key], key

    # its declared input form: the adapter predicts as the run's model does
    file = tmp_path / "sign.safetensors"
    assert "warning" not in _export(capsys, run, file)
    adapter = load_adapter(file)
    assert adapter.describe()["input"] == "a list of 5 numbers"
    outputs, task = _run_outputs(run)
    assert adapter.predict(task.raw[52:].tolist()) == outputs.argmax(-1).tolist()

    # a config naming a module that is not there: one line saying which
    moved = dict(saved, task="sign-elsewhere", task_source="their_missing_module:Sign")
    (tmp_path / "moved.yaml").write_text(yaml.safe_dump(moved))
    proc = run_cli("fpt", "train", "--config", str(tmp_path / "moved.yaml"), "--out",
                   str(tmp_path / "moved"), cwd=tmp_path)  # fmt: skip
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err
    assert "their_missing_module" in err and "task_source" in err and "PYTHONPATH" in err


def test_an_adapter_of_a_task_without_an_input_form_warns_on_export(
    own_tasks, tmp_path, tiny_bert, capsys
):
    from unicomp.errors import UnicompError
    from unicomp.serving.adapters import load_adapter

    run = tmp_path / "run"
    _train(capsys, run, "--task", "sign-no-form", *_fast(tiny_bert))
    err = _export(capsys, run, tmp_path / "a.safetensors")
    assert len(err.strip().splitlines()) == 1 and err.startswith("unicomp: warning: "), err
    assert "'sign-no-form' declares no natural input form" in err and "input_form()" in err
    with pytest.raises(UnicompError, match="no natural input form"):
        load_adapter(tmp_path / "a.safetensors")


# --- the README's section, as written ---------------------------------------------------------
def readme_own_data_blocks() -> list[tuple[str, str]]:
    """The ```python and ```bash blocks of the README's "## Your own data", in order."""
    text = README.read_text()
    start = text.index("\n## Your own data\n")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```(python|bash)\n(.*?)```", text[start:end], re.S)


def _run_readme_section(folder: Path, capsys, rounds: int, extra: list[str]) -> str:
    """The section's blocks in order, in ``folder`` (the Python ones in this process, each
    ``unicomp`` line through the CLI's main, ``extra`` flags added to ``fpt train`` lines),
    ``rounds`` times over the same folder; what they printed."""
    from unicomp.cli import main

    blocks = readme_own_data_blocks()
    assert [lang for lang, _ in blocks] == ["python", "bash", "python"], blocks
    printed = []
    for _ in range(rounds):
        for lang, code in blocks:
            if lang == "python":
                exec(compile(code, "README.md", "exec"), {})
                continue
            for line in code.strip().splitlines():
                args = shlex.split(line)
                assert args[0] == "unicomp", line
                args += extra if args[1:3] == ["fpt", "train"] else []
                assert main(args[1:]) == 0, (line, capsys.readouterr().err)
        printed.append(capsys.readouterr().out)
    out = "".join(printed)
    assert "a list of 6 lists of 3 numbers" in out and re.search(r"\['(up|down)', '", out), out
    houses = json.loads((folder / "runs" / "houses" / "metrics.json").read_text())
    again = json.loads((folder / "runs" / "houses-again" / "metrics.json").read_text())
    assert houses["problem"] == "regression" and houses["test_loss"] == again["test_loss"]
    assert set(houses["data_sha256"]) == {"data/houses.csv"}
    assert houses["input_columns"] == ["area", "rooms"]
    return out


def test_the_readme_own_data_section_runs(tmp_path, monkeypatch, tiny_bert, capsys):
    """The README's commands on a tiny backbone and budget (flags added after them win)."""
    monkeypatch.chdir(tmp_path)
    _run_readme_section(tmp_path, capsys, 1, _fast(tiny_bert))


@pytest.mark.slow
def test_the_readme_own_data_section_runs_as_written_twice(tmp_path, monkeypatch, capsys):
    """As written (minilm-l6, 100 steps), twice: the second round over the first's runs."""
    monkeypatch.chdir(tmp_path)
    _run_readme_section(tmp_path, capsys, 2, [])
