"""Kill and resume, and two processes under torchrun, through the real command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _train_args(backbone: str, out: Path, steps: int = 60) -> list[str]:
    return [
        "fpt",
        "train",
        "--task",
        "bit-xor",
        "--backbone",
        backbone,
        "--steps",
        str(steps),
        "--eval-every",
        "5",
        "--batch-size",
        "8",
        "--precision",
        "fp32",
        "--lr",
        "3e-3",
        "--no-progress",
        "--out",
        str(out),
    ]


def _cli(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "unicomp.cli", *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, tiny_gpt2):
    ref = _cli(_train_args(tiny_gpt2, tmp_path / "ref", steps=200))
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    victim = _cli(_train_args(tiny_gpt2, tmp_path / "run", steps=200))
    ckpt = tmp_path / "run" / "checkpoint.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not ckpt.exists():
        time.sleep(0.05)
    time.sleep(0.3)  # let it get past a checkpoint or two, then kill it mid-flight
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert not (tmp_path / "run" / "metrics.json").exists(), "killed too late to test resume"
    resumed = _cli(["fpt", "train", "--resume", "--out", str(tmp_path / "run")])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    b = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # Batches are a function of (seed, step) and the RNG state is restored: exact equality.
    for key in ("test_accuracy", "test_loss", "val_accuracy", "best_step", "steps"):
        assert a[key] == b[key], key
    ref_curve = (tmp_path / "ref" / "curve.csv").read_text().splitlines()
    run_curve = (tmp_path / "run" / "curve.csv").read_text().splitlines()
    assert [r.split(",")[4] for r in ref_curve] == [r.split(",")[4] for r in run_curve]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    proc = _cli(["fpt", "train", "--resume", "--out", str(tmp_path / "nothing")])
    proc.wait(timeout=120)
    assert proc.returncode == 2
    assert "config file" in proc.stderr.read()


def test_two_processes_match_one(tmp_path, tiny_gpt2):
    """torchrun with 2 gloo processes, same global batch: the same run within tolerance
    (gradients are averaged in a different order, so not bit-identical)."""
    pytest.importorskip("torch.distributed.run")
    single = _cli(_train_args(tiny_gpt2, tmp_path / "one", steps=20))
    assert single.wait(timeout=300) == 0, single.stderr.read()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "unicomp.cli",
        *_train_args(tiny_gpt2, tmp_path / "two", steps=20),
    ]
    # output to a file, not a pipe: a hung worker (torchrun starts each in its own session)
    # would hold a pipe open past any timeout; on a timeout torchrun's SIGTERM handler stops
    # its workers and the test fails instead of waiting forever
    log = tmp_path / "torchrun.log"
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, env=ENV, stdout=f, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            pytest.fail(f"torchrun did not finish in 300 s: {log.read_text()[-3000:]}")
    stderr = log.read_text()
    assert proc.returncode == 0, stderr[-3000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    assert abs(one["test_loss"] - two["test_loss"]) < 1e-3
    assert abs(one["test_accuracy"] - two["test_accuracy"]) <= 2 / 1280  # <= 2 of 1280 bits
    assert one["best_step"] == two["best_step"]
