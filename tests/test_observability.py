"""Issue 15 point 3 (things to look at) and the DT part of point 5: --track tensorboard|wandb
next to curve.csv, unicomp plot (learning curves, DT return against target), progress bars on
dt collect and DT evaluation that do not flood a log, and DT runs reporting their loss and
returns instead of an accuracy of 0.0 they never measured."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli
from unicomp.cli import main


@pytest.fixture(scope="module")
def pendulum(tmp_path_factory) -> Path:
    """Six random-policy Pendulum episodes of 15 steps, collected through the CLI (stderr not a
    terminal: the progress bar must not flood it)."""
    out = tmp_path_factory.mktemp("data") / "pendulum"
    proc = run_cli(
        "dt", "collect", "--env", "Pendulum-v1", "--policy", "random", "--episodes", "6",
        "--out", str(out), "--max-episode-steps", "15", "--n-envs", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    bar = proc.stderr.replace("\r", "\n").splitlines()
    drawn = [line for line in bar if line.startswith("collect random")]
    assert drawn and "6/6" in drawn[-1], proc.stderr  # the bar, at its end
    assert len(drawn) <= 3, proc.stderr  # first and last draw only: no line per update
    return out


def _dt_train(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["dt", "train", "--data", str(data), "--out", str(out), "--steps", "4"]
    args += ["--eval-every", "2", "--batch-size", "8", "--warmup-steps", "1", "--precision", "fp32"]
    args += ["--hidden-size", "16", "--n-layer", "1", "--context", "4", "--val-fraction", "0.2"]
    args += ["--test-fraction", "0.2", "--eval-episodes", "2", "--eval-max-steps", "10"]
    args += ["--eval-targets=-100,-800", "--eval-envs", "2", *extra]
    return run_cli(*args)


@pytest.fixture(scope="module")
def dt_run(pendulum, tmp_path_factory) -> Path:
    """A 4-step DT run on the Pendulum data, logged to TensorBoard, with its progress bars."""
    out = tmp_path_factory.mktemp("runs") / "dt"
    proc = _dt_train(pendulum, out, "--track", "tensorboard")
    assert proc.returncode == 0, proc.stderr
    (out / "stderr.txt").write_text(proc.stderr)
    return out


def test_dt_runs_report_loss_and_returns_not_a_zero_accuracy(dt_run):
    metrics = json.loads((dt_run / "metrics.json").read_text())
    for key in ("test_accuracy", "val_accuracy", "final_train_accuracy", "test_sequence_accuracy"):
        assert metrics[key] is None, key  # continuous actions: nothing counted, not 0.0
    assert metrics["steps_to_target"] is None
    assert metrics["test_loss"] > 0 and metrics["val_loss"] > 0
    assert [e["target_return"] for e in metrics["eval"]] == [-100.0, -800.0]
    with (dt_run / "curve.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["2", "4"]
    assert all(r["train_accuracy"] == "" and r["val_accuracy"] == "" for r in rows)
    assert all(float(r["val_loss"]) > 0 for r in rows)
    from unicomp.files import read_curve

    assert read_curve(dt_run / "curve.csv", 4)[0]["val_accuracy"] is None
    proc = run_cli("report", str(dt_run))
    assert proc.returncode == 0, proc.stderr
    header, _, row = proc.stdout.strip().splitlines()
    cells = dict(zip(header.strip("|").split(" | "), row.strip("|").split(" | "), strict=True))
    assert cells[" task"].strip() == "dt" and cells["test_accuracy"] == "-"
    assert cells["backbone"] == "decision-transformer"
    assert float(cells["test_loss"]) == pytest.approx(metrics["test_loss"], abs=1e-4)
    assert cells["return_mean"] == f"{metrics['return_mean']:.0f}"  # (negative here)
    proc = run_cli("report", "--by-seed", str(dt_run))
    assert f"| return {metrics['return_mean']:.4f} ± 0.0000 |" in proc.stdout, proc.stdout


def test_progress_bar_shows_losses_where_a_task_has_no_accuracy():
    from unicomp.train import _postfix

    row = {"train_loss": 0.5, "val_loss": 0.25, "train_accuracy": None, "val_accuracy": None}
    assert _postfix(row) == {"loss": "0.5000", "val_loss": "0.2500"}
    row.update(train_accuracy=0.5, val_accuracy=0.75)
    assert _postfix(row) == {"loss": "0.5000", "acc": "0.500", "val": "0.750"}


def test_dt_evaluation_has_a_progress_bar_per_target(dt_run):
    lines = (dt_run / "stderr.txt").read_text().replace("\r", "\n").splitlines()
    for target in ("-100", "-800"):
        drawn = [line for line in lines if line.startswith(f"evaluate Pendulum-v1 @{target}")]
        assert drawn and "2/2" in drawn[-1], lines
        assert len(drawn) <= 3


def test_track_tensorboard_logs_the_curve_next_to_it(dt_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(dt_run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train_loss", "val_loss", "lr", "test_loss"} <= tags
    assert "val_accuracy" not in tags  # never measured: not logged as 0
    with (dt_run / "curve.csv").open() as f:
        curve = {int(r["step"]): float(r["val_loss"]) for r in csv.DictReader(f)}
    logged = {e.step: e.value for e in events.Scalars("val_loss")}
    assert logged == pytest.approx(curve)


def test_track_wandb_offline_writes_into_the_run_folder(tmp_path, tiny_gpt2):
    pytest.importorskip("wandb")  # never required; the track extra installs tensorboard only
    out = tmp_path / "r"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path)}
    proc = run_cli(
        "fpt", "train", "--backbone", tiny_gpt2, "--steps", "4", "--eval-every", "2",
        "--batch-size", "4", "--no-progress", "--precision", "fp32", "--track", "wandb",
        "--out", str(out), env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    logs = list((out / "wandb").glob("offline-run-*/*.wandb"))  # wandb sync uploads it later
    assert len(logs) == 1, list((out / "wandb").iterdir())
    records = logs[0].read_bytes()  # protobuf records: the keys are there as text
    for key in (b"train_loss", b"val_accuracy", b"test_accuracy", b"bit-xor", b"eval_every"):
        assert key in records, key


def test_track_is_on_every_train_command_and_checked(tmp_path, capsys, monkeypatch):
    for command in (["fpt", "train"], ["perceiver", "train"], ["dt", "train"]):
        proc = run_cli(*command, "--help", env={"COLUMNS": "250"})
        assert "--track {none,tensorboard,wandb}" in proc.stdout, command
    with pytest.raises(SystemExit):  # argparse's usage error, exit status 2
        main(["fpt", "train", "--track", "mlflow"])
    assert "invalid choice: 'mlflow'" in capsys.readouterr().err
    import unicomp.tracking

    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed: one line, nothing written
    with pytest.raises(unicomp.errors.UnicompError, match="needs the wandb package"):
        unicomp.tracking.Tracker("wandb", tmp_path)


def test_plot_overlays_learning_curves_and_draws_dt_return_against_target(dt_run, tmp_path):
    from PIL import Image

    fpt = tmp_path / "fpt-run"  # a run that measures accuracy: its curve.csv is all plot reads
    fpt.mkdir()
    (fpt / "curve.csv").write_text(
        "step,train_loss,train_accuracy,val_loss,val_accuracy,lr,seconds\n"
        "10,0.7,0.5,0.69,0.52,0.001,1.0\n20,0.3,0.9,0.2,0.95,0.001,2.0\n"
    )
    out = tmp_path / "both.png"
    proc = run_cli("plot", str(dt_run), str(fpt), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    returns = tmp_path / "both-returns.png"
    assert proc.stdout.splitlines() == [f"written: {out}", f"written: {returns}"]
    assert Image.open(out).size == (1210, 440)  # two panels: loss, and accuracy (the FPT run)
    assert Image.open(returns).size == (660, 550)
    # one DT run, default file name: loss only (a DT has no accuracy), in the run folder
    proc = run_cli("plot", str(dt_run))
    assert proc.returncode == 0, proc.stderr
    assert Image.open(dt_run / "curves.png").size == (660, 440)
    assert (dt_run / "curves-returns.png").is_file()
    # an FPT run alone: no DT evaluation, no returns picture
    proc = run_cli("plot", str(fpt))
    assert proc.stdout.splitlines() == [f"written: {fpt / 'curves.png'}"]
    for bad, message in (
        ([str(tmp_path / "nope")], f"run folder {tmp_path / 'nope'} does not exist"),
        ([str(tmp_path)], f"{tmp_path} has no curve.csv (not a unicomp run folder"),
        ([str(fpt), "-o", str(tmp_path / "x.jpg")], "expected a .png file name"),
    ):
        proc = run_cli("plot", *bad)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert message in proc.stderr


def test_a_wandb_too_old_for_reinit_create_new_is_one_line(tmp_path, monkeypatch):
    import sys
    import types

    from unicomp.errors import UnicompError
    from unicomp.tracking import Tracker

    fake = types.SimpleNamespace(__version__="0.19.9", init=lambda **kw: pytest.fail("init"))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with pytest.raises(UnicompError, match=r"needs wandb 0\.19\.10 or later.*0\.19\.9"):
        Tracker("wandb", tmp_path)
