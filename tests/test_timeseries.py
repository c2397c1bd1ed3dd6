"""Time series: the .ts/.tsv and CSV readers on files written here (every supported variant,
and malformed ones refused in one line), patching and RevIN, the ucr and forecast tasks'
batches and splits, one tiny FPT run of each, their adapters, and the baselines. aeon's
bundled copies and its classifiers only where aeon is installed."""

from __future__ import annotations

import json
import socket
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import cli_train
from unicomp.cli import main
from unicomp.data import timeseries as ts
from unicomp.errors import DataError
from unicomp.tasks.timeseries import (
    Forecast,
    UCRClassification,
    chronological_borders,
    classification_tokens,
    n_patches,
    patch_tokens,
    revin,
    unpatch,
)


# --- writing files ------------------------------------------------------------------------------
def ts_text(cases, labels, classes=("a", "b"), header=None, timestamps: str | None = "false"):
    """A .ts file's text: ``cases`` are lists of dimensions (lists of numbers or strings)."""
    lines = ["# written by the tests", "@problemName Toy"]
    if timestamps is not None:
        lines.append(f"@timeStamps {timestamps}")
    dims = {len(c) for c in cases}
    lengths = {len(d) for c in cases for d in c}
    lines.append(f"@univariate {'true' if dims == {1} else 'false'}")
    lines.append(f"@equalLength {'true' if len(lengths) == 1 else 'false'}")
    if len(lengths) == 1:
        lines.append(f"@seriesLength {lengths.pop()}")
    lines += header or []
    lines.append(f"@classLabel true {' '.join(classes)}")
    lines.append("@data")
    for case, label in zip(cases, labels, strict=True):
        lines.append(":".join(",".join(str(v) for v in dim) for dim in case) + f":{label}")
    return "\n".join(lines) + "\n"


def toy_cases(n: int, length: int = 24, channels: int = 1, seed: int = 0, unequal: bool = False):
    """Two separable classes: a rising or a falling ramp plus noise."""
    rng = np.random.default_rng(seed)
    cases, labels = [], []
    for i in range(n):
        label = "ab"[i % 2]
        t = length - (i % 5 if unequal else 0)
        ramp = np.linspace(-1, 1, t) * (1 if label == "a" else -1)
        case = [
            (ramp * (c + 1) + 0.1 * rng.standard_normal(t)).round(4).tolist()
            for c in range(channels)
        ]
        cases.append(case)
        labels.append(label)
    return cases, labels


def write_archive(folder: Path, name="Toy", n_train=20, n_test=10, **kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for part, n, seed in (("TRAIN", n_train, 0), ("TEST", n_test, 1)):
        cases, labels = toy_cases(n, seed=seed, **kw)
        (folder / f"{name}_{part}.ts").write_text(ts_text(cases, labels))
    return folder


def write_csv(path: Path, rows: int, channels: int = 3, step=timedelta(hours=1), period=24):
    """An ETT-style CSV: a date column, then channels (sines of ``period`` rows plus trend)."""
    t = np.arange(rows)
    start = datetime(2016, 7, 1)
    names = [f"c{i}" for i in range(channels - 1)] + ["OT"]
    lines = ["date," + ",".join(names)]
    values = np.stack(
        [np.sin(2 * np.pi * t / period + c) * (c + 1) + 0.001 * t for c in range(channels)], 1
    )
    for i in range(rows):
        stamp = (start + i * step).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(stamp + "," + ",".join(f"{v:.5f}" for v in values[i]))
    path.write_text("\n".join(lines) + "\n")
    return path


# --- .ts reader ---------------------------------------------------------------------------------
@pytest.mark.parametrize("timestamps", ["false", None])
def test_univariate_ts_with_and_without_the_timestamps_line(tmp_path, timestamps):
    cases, labels = toy_cases(6)
    path = tmp_path / "Toy_TRAIN.ts"
    path.write_text(ts_text(cases, labels, timestamps=timestamps))
    archive = ts.read_ts(path)
    assert len(archive) == 6 and archive.channels == 1 and archive.classes == ("a", "b")
    assert archive.series[0].shape == (1, 24) and archive.series[0].dtype == np.float32
    assert archive.labels.tolist() == [0, 1, 0, 1, 0, 1]
    np.testing.assert_allclose(archive.series[3][0], cases[3][0], rtol=1e-6)


def test_multivariate_and_unequal_length_ts(tmp_path):
    cases, labels = toy_cases(7, channels=3, unequal=True)
    path = tmp_path / "Toy_TRAIN.ts"
    path.write_text(ts_text(cases, labels))
    archive = ts.read_ts(path)
    assert archive.channels == 3
    assert archive.lengths.tolist() == [24, 23, 22, 21, 20, 24, 23]
    np.testing.assert_allclose(archive.series[1][2], cases[1][2], rtol=1e-6)


def test_missing_values_are_refused_or_interpolated(tmp_path):
    path = tmp_path / "Toy_TRAIN.ts"
    path.write_text(ts_text([[["?", 1, "?", 3, "?"]], [[1, 2, 3, 4, 5]]], ["a", "b"]))
    with pytest.raises(DataError, match=r"Toy_TRAIN.ts: line 9: dimension 1: value 1 is missing"):
        ts.read_ts(path)
    archive = ts.read_ts(path, missing="interpolate")
    assert archive.series[0][0].tolist() == [1, 1, 2, 3, 3] and archive.missing == 3


MALFORMED = {
    "not a number": (
        lambda t: t.replace("@data\n", "@data\n1,x,3:a\n"),
        r"line 9: dimension 1: value 2 'x' is not a number",
    ),
    "unknown label": (
        lambda t: t.replace("@data\n", "@data\n1,2,3:zz\n"),
        r"line 9: class label 'zz' is not one of",
    ),
    "no @data": (
        lambda t: t.replace("@data\n", ""),
        r"line 8: expected a header line \(@\.\.\.\) before @data",
    ),
    "timestamps": (
        lambda t: t.replace("@timeStamps false", "@timeStamps true"),
        r"line 3: time-stamped series",
    ),
    "regression": (
        lambda t: t.replace("@classLabel true a b", "@targetLabel true"),
        r"regression problem",
    ),
    "no class names": (
        lambda t: t.replace("@classLabel true a b", "@classLabel true"),
        r"lists no class names",
    ),
    "length vs header": (
        lambda t: t.replace("@seriesLength 3", "@seriesLength 4"),
        r"line 9: 3 values per dimension; @seriesLength says 4",
    ),
    "dims vs univariate": (
        lambda t: t.replace("1,2,3:a", "1,2,3:4,5,6:a"),
        r"line 9: 2 dimensions; the header says univariate",
    ),
    "bad flag": (
        lambda t: t.replace("@univariate true", "@univariate maybe"),
        r"line 4: @univariate must be followed by true or false",
    ),
    "no label": (lambda t: t.replace("1,2,3:a", "1,2,3"), r"line 9: expected values then ':'"),
    "empty dimension": (lambda t: t.replace("1,2,3:a", ":a"), r"line 9: dimension 1 has no values"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_ts_is_refused_in_one_line_naming_file_and_line(tmp_path, case):
    change, message = MALFORMED[case]
    path = tmp_path / "Bad_TRAIN.ts"
    path.write_text(change(ts_text([[[1, 2, 3]], [[3, 2, 1]]], ["a", "b"])))
    with pytest.raises(DataError, match=message) as err:
        ts.read_ts(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_unequal_dimensions_within_a_case_are_refused(tmp_path):
    path = tmp_path / "Bad_TRAIN.ts"
    text = ts_text([[[1, 2, 3], [1, 2, 3]], [[3, 2, 1], [1, 2, 3]]], ["a", "b"])
    path.write_text(text.replace("1,2,3:1,2,3:a", "1,2,3:1,2:a"))
    with pytest.raises(DataError, match=r"line 9: dimensions of unequal length \(3, 2\)"):
        ts.read_ts(path)


def test_ucr_tsv_files_with_nan_padding(tmp_path):
    (tmp_path / "Toy_TRAIN.tsv").write_text("1\t0.5\t0.25\tNaN\n2\t1\t2\t3\n")
    (tmp_path / "Toy_TEST.tsv").write_text("2\t3\t2\t1\n")
    train, test = ts.read_archive(*ts.archive_files(tmp_path, None))
    assert train.classes == ("1", "2") and train.lengths.tolist() == [2, 3]
    assert test.labels.tolist() == [1]
    (tmp_path / "Toy_TEST.tsv").write_text("7\t3\t2\t1\n")
    with pytest.raises(DataError, match="class label '7' is not in the training file"):
        ts.read_archive(*ts.archive_files(tmp_path, None))


def test_archive_files_by_folder_and_name(tmp_path):
    write_archive(tmp_path / "A", "A")
    write_archive(tmp_path / "B", "B")
    assert ts.archive_files(tmp_path, "A")[0] == tmp_path / "A" / "A_TRAIN.ts"  # archive layout
    assert ts.archive_files(tmp_path / "B", None)[1].name == "B_TEST.ts"  # the only problem
    (tmp_path / "B" / "A_TRAIN.ts").write_text("")
    with pytest.raises(DataError, match="several problems .*pass --task-arg name=NAME"):
        ts.archive_files(tmp_path / "B", None)
    with pytest.raises(DataError, match="no Z_TRAIN.ts or .tsv"):
        ts.archive_files(tmp_path, "Z")


# --- CSV reader ---------------------------------------------------------------------------------
def test_ett_style_csv(tmp_path):
    path = write_csv(tmp_path / "toy.csv", 50)
    table = ts.read_series_csv(path)
    assert table.columns == ["c0", "c1", "OT"] and table.values.shape == (50, 3)
    assert table.step_seconds == 3600 and ts.season_of(table.step_seconds) == 24
    assert ts.read_series_csv(path, ["OT"]).values.shape == (50, 1)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty file"),
        ("date,a\n", "no data rows"),
        ("date,a\n2020-01-01,1\n2020-01-02,x\n", r"line 3: column 'a': 'x' is not a number"),
        ("date,a\n2020-01-01,1\n2020-01-02,\n", r"line 3: column 'a': '' is not a number"),
        ("date,a,b\n2020-01-01,1,2\n2020-01-02,3\n", r"line 3: 2 cells; the header has 3"),
        ("date\n2020-01-01\n", r"line 1: expected a date column and at least one channel"),
        ("date,a,a\n2020-01-01,1,2\n", r"line 1: a column name appears twice"),
    ],
)
def test_malformed_csv_is_refused_in_one_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        ts.read_series_csv(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="no column 'z'"):
        ts.read_series_csv(write_csv(tmp_path / "ok.csv", 5), ["z"])


# --- patching and RevIN -------------------------------------------------------------------------
@pytest.mark.parametrize("steps, patch, stride", [(24, 8, 4), (10, 4, 4), (3, 8, 4), (16, 16, 8)])
def test_patches_cover_the_series_as_gpt4ts_does(steps, patch, stride):
    x = torch.arange(steps, dtype=torch.float32)[None, :, None]  # (1, T, 1)
    tokens = patch_tokens(x, patch, stride)
    assert tokens.shape == (1, n_patches(steps, patch, stride), patch)
    if steps >= patch:  # GPT4TS: (T - P) // S + 1 patches, plus one over the padded end
        assert tokens.shape[1] == (steps - patch) // stride + 2
    assert tokens[0, 0, 0] == 0 and tokens[0, -1, -1] == steps - 1  # padding repeats the end
    if stride <= patch:
        assert torch.equal(unpatch(tokens, patch, stride, steps)[0], x[0, :, 0])


def test_multichannel_tokens_are_step_major():
    x = torch.tensor([[[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]]])  # (1, T=4, C=2)
    tokens = patch_tokens(x, 2, 2)
    assert tokens[0, 0].tolist() == [1, 10, 2, 20]  # (step 1: both channels), then step 2


def test_revin_round_trip_and_forecast_denormalisation(tmp_path):
    window = torch.randn(5, 30) * 3 + 7
    normed, mean, std = revin(window)
    torch.testing.assert_close(normed * std[:, None] + mean[:, None], window)
    torch.testing.assert_close(normed.mean(1), torch.zeros(5), atol=1e-5, rtol=0)
    task = Forecast(
        path=str(write_csv(tmp_path / "s.csv", 300)), lookback=24, horizon=6, patch=8, stride=4
    )
    batch = task.split("test")[:7]
    h = task.horizon
    target, mean, std = batch.y[:, :h], batch.y[:, h], batch.y[:, h + 1]
    perfect = (target - mean[:, None]) / std[:, None]  # the model's ideal output: normalised units
    assert float(task.loss(perfect, batch.y)) < 1e-10
    assert float(task.loss(torch.zeros_like(perfect), batch.y)) > 0


# --- the tasks ----------------------------------------------------------------------------------
def test_ucr_task_batches_and_split(tmp_path):
    root = write_archive(tmp_path / "Toy", n_train=20, n_test=10, channels=2)
    task = UCRClassification(path=str(root), patch=8, stride=4)
    assert task.split_sizes() == {"val": 4, "test": 10}
    assert len(task.data["train"]) == 16 and len(task.data["val"]) == 4  # 20% of each class
    assert (
        task.spec.max_len == n_patches(24, 8, 4) and task.spec.d_in == 16 and task.spec.d_out == 2
    )
    batch = task.train_batch(0, 8, seed=0)
    assert batch.x.shape == (8, task.spec.max_len, 16) and batch.mask is None
    assert sorted(task.data["val"].y.tolist()) == [0, 0, 1, 1]
    assert "val = 0.2 of each class" in task.data_source
    again = UCRClassification(path=str(root), split_seed=1)
    assert not torch.equal(again.data["val"].x, task.data["val"].x)  # the draw follows the seed


def test_ucr_task_unequal_lengths_pad_and_mask(tmp_path):
    root = write_archive(tmp_path / "Toy", unequal=True)
    task = UCRClassification(path=str(root), patch=4, stride=4)
    test = task.split("test")
    assert test.mask is not None and test.x.shape[1] == n_patches(24, 4, 4)
    lengths = [s.shape[1] for s in task.series["test"]]
    assert test.mask.sum(1).tolist() == [n_patches(t, 4, 4) for t in lengths]
    single, _ = classification_tokens(task.series["test"][1:2], 4, 4, "instance")
    assert torch.equal(test.x[1, : single.shape[1]], single[0])


def test_forecast_task_chronological_splits(tmp_path):
    rows = 20 * 720 + 100  # 20 months of hours, and more the ETT split leaves out
    path = write_csv(tmp_path / "ETTh1.csv", rows, channels=2)
    task = Forecast(path=str(path), lookback=48, horizon=24, patch=16, stride=8)
    assert "ett-hour: 12/4/4 months" in task.data_source
    windows = {p: n for p, (_, n, _) in task.windows.items()}
    assert windows == {"train": 8640 - 72 + 1, "val": 2880 - 24 + 1, "test": 2880 - 24 + 1}
    assert task.split_sizes() == {p: 2 * n for p, n in windows.items()}
    # standardised with the train rows' statistics
    train_rows = task.values[:8640]
    torch.testing.assert_close(train_rows.mean(0), torch.zeros(2), atol=1e-4, rtol=0)
    # a test window: its look-back starts lookback rows before the test rows
    window, target = task.raw("test", torch.tensor([0, windows["test"]]))
    torch.testing.assert_close(window[0], task.values[11520 - 48 : 11520, 0])
    torch.testing.assert_close(target[1], task.values[11520 : 11520 + 24, 1])
    batch = task.train_batch(3, 16, seed=0)
    assert batch.x.shape == (16, n_patches(48, 16, 8), 16) and batch.y.shape == (16, 26)
    other = Forecast(path=str(write_csv(tmp_path / "other.csv", 1000)), lookback=48, horizon=24)
    assert "70/10/20 % of 1000 rows (rows 0-699, 700-799, 800-999)" in other.data_source


def test_forecast_task_refuses_a_series_too_short(tmp_path):
    path = write_csv(tmp_path / "s.csv", 100)
    with pytest.raises(
        DataError, match=r"the train split has 70 rows, fewer than lookback \+ horizon = 336 \+ 96"
    ):
        Forecast(path=str(path))  # GPT4TS's 336 -> 96 on 100 rows
    borders, _ = chronological_borders(100, 10, "70/10/20")
    assert borders == {"train": (0, 70), "val": (60, 80), "test": (70, 100)}


# --- FPT runs, adapters -------------------------------------------------------------------------
def test_fpt_trains_on_ucr_and_its_adapter_reads_series(tmp_path, tiny_gpt2):
    from unicomp.experiments.fpt import load_fpt_run
    from unicomp.serving.adapters import export_adapter, load_adapter

    root = write_archive(tmp_path / "Toy", channels=2)
    out = tmp_path / "run"
    metrics = cli_train(out, "--task", "ucr", "--task-arg", f"path={root}", "--backbone", tiny_gpt2)
    assert metrics["steps"] == 2 and metrics["test_accuracy"] is not None
    assert metrics["data_source"].startswith("Toy (")
    export_adapter(out, tmp_path / "toy.safetensors")
    adapter = load_adapter(tmp_path / "toy.safetensors")
    model, task, _ = load_fpt_run(out)
    test = task.split("test")
    inputs = [s.tolist() for s in task.series["test"]]  # (C, T) lists per series
    x, mask = adapter.codec.encode(inputs)
    torch.testing.assert_close(x, test.x)
    with torch.no_grad():
        expected = model(test.x, test.mask).argmax(-1).tolist()
    assert adapter.predict(inputs) == expected


def test_fpt_trains_on_forecast_and_its_adapter_forecasts(tmp_path, tiny_gpt2):
    from unicomp.experiments.fpt import load_fpt_run
    from unicomp.serving.adapters import export_adapter, load_adapter

    path = write_csv(tmp_path / "toy.csv", 400, channels=2)
    out = tmp_path / "run"
    args = ["--task-arg", f"path={path}", "--task-arg", "lookback=32", "--task-arg", "horizon=8"]
    args += ["--precision", "fp32"]  # the loop's test_loss and test_mse alike, on any CPU
    metrics = cli_train(out, "--task", "forecast", *args, "--backbone", tiny_gpt2)
    assert metrics["test_accuracy"] is None and metrics["test_mse"] > 0
    assert metrics["test_mse"] == pytest.approx(metrics["test_loss"], rel=1e-4)
    assert metrics["test_mae"] > 0
    export_adapter(out, tmp_path / "f.safetensors")
    adapter = load_adapter(tmp_path / "f.safetensors")
    model, task, _ = load_fpt_run(out)
    window, _ = task.raw("test", torch.arange(3))
    batch = task.split("test")[:3]
    with torch.no_grad():
        expected = task.forecast(model(batch.x, batch.mask), batch.y)
    got = torch.tensor(adapter.predict(window.tolist()))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert adapter.describe()["input"] == "the last 32 values of a series: a list of numbers"


def test_default_run_folder_names_the_data(tmp_path):
    from unicomp.config import FPTConfig
    from unicomp.experiments.fpt import default_out

    cfg = FPTConfig(task="ucr", task_args={"name": "GunPoint"}, backbone="minilm-l6")
    assert default_out(cfg).name == "ucr-GunPoint-minilm-l6-paper-s0"
    cfg = FPTConfig(task="forecast", task_args={"path": "d/ETTh1.csv", "horizon": 192})
    assert default_out(cfg).name.startswith("forecast-ETTh1-h192-")


# --- baselines ----------------------------------------------------------------------------------
def test_naive_and_seasonal_naive_forecasts(tmp_path):
    from unicomp.models.forecasters import Naive, SeasonalNaive

    path = write_csv(tmp_path / "s.csv", 600, channels=1, period=12)
    task = Forecast(path=str(path), lookback=36, horizon=12, patch=8, stride=4, scale=False)
    batch = task.split("test")[:20]
    window, target = task.raw("test", torch.arange(20))
    sizes = (36, 12, 8, 4)
    naive = task.forecast(Naive(*sizes)(batch.x), batch.y)
    torch.testing.assert_close(naive, window[:, -1:].expand(-1, 12), atol=1e-4, rtol=1e-4)
    seasonal = task.forecast(SeasonalNaive(*sizes, 12)(batch.x), batch.y)
    torch.testing.assert_close(seasonal, window[:, -12:], atol=1e-4, rtol=1e-4)
    # the series is a 12-step sine plus a small trend: one season back is almost exact
    assert float((seasonal - target).pow(2).mean()) < 1e-3 < float((naive - target).pow(2).mean())


def test_ts_baseline_command_writes_a_run_folder(tmp_path, capsys):
    path = write_csv(tmp_path / "s.csv", 400, channels=2, period=12)
    common = ["ts", "baseline", "--task", "forecast", "--task-arg", f"path={path}",
              "--task-arg", "lookback=24", "--task-arg", "horizon=6"]  # fmt: skip
    out = tmp_path / "sn"
    assert main([*common, "--method", "seasonal-naive", "--season", "12", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["season"] == 12 and metrics["test_mse"] < 0.01
    assert (out / "config.yaml").is_file() and "--season 12" in metrics["command"]
    out = tmp_path / "dl"
    args = ["--method", "dlinear", "--steps", "4", "--no-progress", "--out", str(out)]
    assert main([*common, *args]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["test_mae"] > 0 and (out / "curve.csv").is_file()
    assert main([*common, *args]) == 2  # the folder holds a run
    assert "already holds a run" in capsys.readouterr().err
    assert main(["ts", "baseline", "--task", "forecast", "--method", "minirocket"]) == 2


@pytest.mark.parametrize("method", ["minirocket", "1nn-dtw"])
def test_aeon_classifiers_on_a_generated_archive(tmp_path, method):
    pytest.importorskip("aeon")
    from unicomp.experiments.timeseries import run_baseline

    root = write_archive(tmp_path / "Toy", unequal=method == "1nn-dtw")
    metrics = run_baseline("ucr", {"path": str(root)}, method, tmp_path / method)
    assert metrics["test_accuracy"] >= 0.9 and metrics["implementation"].startswith("aeon ")
    assert json.loads((tmp_path / method / "metrics.json").read_text())["model"] == method


# --- aeon's bundled copies, without the network -------------------------------------------------
@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_bundled_sets_load_by_name_offline(no_network):
    pytest.importorskip("aeon")
    task = UCRClassification(name="GunPoint")
    assert task.split_sizes() == {"val": 10, "test": 150} and len(task.data["train"]) == 40
    forecast = Forecast(name="Airline")
    assert forecast.horizon == 12 and forecast.season == 12
    with pytest.raises(
        DataError, match="'Nope' is not bundled with aeon .*pass --task-arg path=FOLDER"
    ):
        UCRClassification(name="Nope")
