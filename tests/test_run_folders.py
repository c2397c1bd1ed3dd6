"""Run folders that cannot be lost or mixed (issue 14): values are range-checked before
anything is written, a refused or failed start changes nothing, a folder is locked by its
run, resume refuses changed settings and keeps the stop decision, and no checkpoint holds
non-finite weights."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import small_train
from unicomp.cli import main
from unicomp.config import FPTConfig, save_yaml
from unicomp.errors import TrainingDivergedError, UnicompError
from unicomp.experiments.common import RESUMABLE_CHANGES, check_resume
from unicomp.experiments.fpt import run_fpt
from unicomp.train import load_checkpoint

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("unicomp: error: "), err
    return err[0]


def _train(backbone: str, out: Path, *extra: str) -> list[str]:
    return [
        "fpt",
        "train",
        "--task",
        "bit-xor",
        "--backbone",
        backbone,
        "--steps",
        "4",
        "--eval-every",
        "2",
        "--batch-size",
        "4",
        "--precision",
        "fp32",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


# --- case 6: one place checks every value's range, before anything is written -------------------
_BAD_FPT = st.one_of(
    st.tuples(st.just("--steps"), st.integers(max_value=0)),
    st.tuples(st.just("--batch-size"), st.integers(max_value=0) | st.integers(2**20 + 1)),
    st.tuples(st.just("--grad-accum"), st.integers(max_value=0)),
    st.tuples(st.just("--eval-every"), st.integers(max_value=0)),
    st.tuples(st.just("--eval-batch-size"), st.integers(max_value=0)),
    st.tuples(st.just("--warmup-steps"), st.integers(max_value=-1)),
    st.tuples(st.just("--lr"), st.floats(max_value=0) | st.floats(min_value=1e6)),
    st.tuples(st.just("--seed"), st.integers(max_value=-1) | st.integers(min_value=2**63)),
    st.tuples(st.just("--backbone-dropout"), st.floats(min_value=1) | st.floats(max_value=-1e-9)),
    st.tuples(st.just("--time-limit-minutes"), st.floats(max_value=-1e-9)),
    st.tuples(
        st.just("--device"),
        st.sampled_from(["banana", "cuda:x", "tpu", "cuda:99"])
        | st.text(min_size=1, max_size=8).filter(lambda t: t not in ("auto", "cpu")),
    ),
).filter(lambda fv: not (isinstance(fv[1], float) and fv[1] != fv[1]))
_BAD_DT = st.one_of(
    st.tuples(st.just("--n-head"), st.sampled_from([3, 5, 7, 256])),  # width 128
    st.tuples(st.just("--max-ep-len"), st.integers(max_value=0)),
    st.tuples(st.just("--eval-envs"), st.integers(max_value=0)),
    st.tuples(st.just("--context"), st.integers(max_value=0)),
    st.tuples(st.just("--dropout"), st.floats(min_value=1, allow_infinity=False)),
    st.tuples(st.just("--top-percent"), st.floats(min_value=100.001, allow_infinity=False)),
)


@SETTINGS
@given(bad=_BAD_FPT | _BAD_DT)
def test_out_of_range_values_are_one_line_errors_and_write_nothing(tmp_path, capsys, bad):
    flag, value = bad
    if flag == "--device" and torch.cuda.is_available() and value == "cuda:99":
        value = f"cuda:{torch.cuda.device_count()}"
    out = tmp_path / "never"
    dt = flag in (
        "--n-head",
        "--max-ep-len",
        "--eval-envs",
        "--context",
        "--dropout",
        "--top-percent",
    )
    command = ["dt", "train", "--data", str(tmp_path / "x")] if dt else ["fpt", "train"]
    try:
        code = main([*command, f"{flag}={value}", "--out", str(out)])
    except SystemExit as exit_info:  # argparse refused the text itself (its own usage line)
        assert exit_info.code == 2
        capsys.readouterr()
        return
    assert code == 2
    line = _one_error_line(capsys)
    assert flag.removeprefix("--").replace("-", "_") in line, line
    assert not out.exists()


# --- cases 1 and 8: a refused or failed start changes nothing; a retry is accepted -------------
def test_refused_run_leaves_the_existing_run_untouched(tmp_path, tiny_gpt2, capsys):
    run = tmp_path / "r1"
    assert main(_train(tiny_gpt2, run)) == 0
    capsys.readouterr()
    before = _snapshot(run)
    argv = _train(tiny_gpt2, run)
    argv[argv.index("bit-xor")] = "bit-memory"
    assert main(argv) == 2
    assert "already holds a run" in _one_error_line(capsys)
    assert _snapshot(run) == before  # config.yaml still says bit-xor
    assert yaml.safe_load((run / "config.yaml").read_text())["task"] == "bit-xor"
    assert main(["fpt", "train", "--resume", "--out", str(run), "--no-progress"]) == 0


def test_failed_start_leaves_no_folder_and_a_retry_is_accepted(tmp_path, tiny_gpt2, monkeypatch):
    import unicomp.experiments.common as ex

    real_train = ex.train

    def failing_train(model, task, cfg, out, resume=False, run_config=None, placement=None):
        (out / "curve.csv").write_text("step\n")  # what a start writes before failing
        raise UnicompError("the device went away")

    run = tmp_path / "runs" / "new"
    monkeypatch.setattr(ex, "train", failing_train)
    assert main(_train(tiny_gpt2, run)) == 2
    assert not run.exists()  # nothing left behind
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine\n")
    assert main(_train(tiny_gpt2, existing)) == 2
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]
    monkeypatch.setattr(ex, "train", real_train)
    assert main(_train(tiny_gpt2, run)) == 0  # the retry
    assert main(_train(tiny_gpt2, existing)) == 0


def test_leftover_temporaries_are_removed_and_files_get_the_umask(tmp_path, tiny_gpt2):
    run = tmp_path / "r"
    assert main(_train(tiny_gpt2, run)) == 0
    (run / ".checkpoint.pt.x1y2.tmp").write_bytes(b"\0" * 1000)  # a write killed midway
    mask = os.umask(0o022)
    os.umask(mask)
    assert main(["fpt", "train", "--resume", "--out", str(run), "--steps", "6"]) == 0
    assert not list(run.glob(".*.tmp"))
    for name in ("config.yaml", "metrics.json", "checkpoint.pt", "best.safetensors"):
        assert (run / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


# --- case 2: one run per folder ------------------------------------------------------------------
_HOLDER = """
import sys, time
from pathlib import Path
from unicomp.files import claim_run_folder
with claim_run_folder(Path(sys.argv[1]), resume=False):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_run_is_refused_while_the_first_lives_and_not_after_a_kill(
    tmp_path, tiny_gpt2, capsys
):
    run = tmp_path / "same"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(_train(tiny_gpt2, run)) == 2
        line = _one_error_line(capsys)
        assert f"run folder {run} is in use by process {holder.pid} on " in line, line
        assert not (run / "config.yaml").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (run / ".unicomp.lock").exists()  # the killed run's lock file is still there ...
    assert main(_train(tiny_gpt2, run)) == 0  # ... and does not block
    assert not (run / ".unicomp.lock").exists()


# --- case 3: resume refuses changed settings, applies the allowed ones, keeps the stop -------
def _saved(tmp_path: Path, **train) -> tuple[FPTConfig, Path]:
    cfg = FPTConfig(task="bit-xor", backbone="random:minilm-l6", train=small_train(**train))
    out = tmp_path / "saved"
    out.mkdir(exist_ok=True)
    cfg.out = str(out)
    save_yaml(cfg, out / "config.yaml")
    return cfg, out


_CHANGES = st.sampled_from(
    [
        ("task", "bit-memory"),
        ("backbone", "random:gpt2"),
        ("freeze", "+ff"),
        ("readout", "mean"),
        ("backbone_dropout", 0.1),
        ("task_args", {"n_bits": 3}),
        ("train.lr", 0.5),
        ("train.seed", 7),
        ("train.batch_size", 16),
        ("train.schedule", "cosine"),
        ("train.eval_every", 5),
        ("train.stop_at_target", True),
        ("train.steps", 100),
        ("train.time_limit_minutes", 3.0),
        ("train.progress", True),
        ("train.eval_batch_size", 7),
        ("train.device", "cpu"),
    ]
)


@SETTINGS
@given(changes=st.lists(_CHANGES, min_size=1, max_size=4, unique_by=lambda kv: kv[0]))
def test_resume_refuses_changed_settings_naming_each(tmp_path, changes):
    cfg, out = _saved(tmp_path)
    for key, value in changes:
        target = cfg.train if key.startswith("train.") else cfg
        setattr(target, key.removeprefix("train."), value)
    refused = [k for k, _ in changes if k not in RESUMABLE_CHANGES]
    if refused:
        with pytest.raises(UnicompError) as err:
            check_resume(cfg, out)
        message = str(err.value)
        assert "\n" not in message
        for key in refused:
            assert f"{key} " in message, (key, message)
    else:
        applied = check_resume(cfg, out)
        assert set(applied) == {k for k, _ in changes if k != "train.device"} | (
            {"train.device"} if ("train.device", "cpu") in changes else set()
        )


def test_resume_with_changed_lr_seed_batch_is_refused_and_steps_recorded(
    tmp_path, tiny_gpt2, capsys
):
    run = tmp_path / "r"
    assert main(_train(tiny_gpt2, run)) == 0
    capsys.readouterr()
    before = _snapshot(run)
    argv = ["fpt", "train", "--resume", "--out", str(run), "--no-progress"]
    assert main([*argv, "--lr", "0.5", "--seed", "7", "--batch-size", "16"]) == 2
    line = _one_error_line(capsys)
    for key in ("train.lr 0.003", "train.seed 0 -> 7", "train.batch_size 4 -> 16"):
        assert key.split()[0] in line, line
    assert _snapshot(run) == before
    assert main([*argv, "--steps", "6"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["steps"] == 6
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resume_changes"] == {"train.steps": [4, 6]} and metrics["steps"] == 6


@pytest.mark.parametrize("stop", ["target", "time_limit"])
def test_a_stopped_run_killed_before_its_metrics_does_not_train_on(tmp_path, tiny_gpt2, stop):
    extra = {"target": dict(stop_at_target=True, target_accuracy=0.0)}.get(
        stop, dict(time_limit_minutes=1e-9)
    )
    cfg = FPTConfig(
        task="bit-xor",
        backbone=tiny_gpt2,
        out=str(tmp_path / "r"),
        train=small_train(steps=20, eval_every=2, **extra),
    )
    first = run_fpt(cfg)
    assert (first["steps"], first["stopped_by"]) == (2, stop)
    (tmp_path / "r" / "metrics.json").unlink()  # killed after the checkpoint, before this
    again = run_fpt(cfg, resume=True)
    assert (again["steps"], again["stopped_by"]) == (2, stop)
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt")["state"]["step"] == 2


# --- case 4: no checkpoint of non-finite weights; messages name only what exists ---------------
def _poison_after(monkeypatch, n_steps: int) -> None:
    """The optimiser's ``n_steps``-th update leaves a NaN in the weights (loss still finite)."""
    import unicomp.train as tr

    real = tr.make_optimizer

    def make(model, cfg):
        opt = real(model, cfg)
        calls = {"n": 0}

        def poison(optimizer, args, kwargs):
            calls["n"] += 1
            if calls["n"] == n_steps:
                with torch.no_grad():
                    next(p for p in model.parameters() if p.requires_grad).view(-1)[0] = torch.nan

        opt.register_step_post_hook(poison)
        return opt

    monkeypatch.setattr(tr, "make_optimizer", make)


def test_non_finite_weights_are_never_checkpointed(tmp_path, tiny_gpt2, monkeypatch):
    cfg = FPTConfig(
        task="bit-xor",
        backbone=tiny_gpt2,
        out=str(tmp_path / "r"),
        train=small_train(steps=8, eval_every=2),
    )
    _poison_after(monkeypatch, 4)  # an evaluation step
    with pytest.raises(TrainingDivergedError, match="parameters became NaN or inf at step 4") as e:
        run_fpt(cfg)
    assert "the last good checkpoint (step 2) is kept" in str(e.value)
    ckpt = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    assert ckpt["state"]["step"] == 2
    assert all(bool(torch.isfinite(t).all()) for t in ckpt["model"].values())


def test_divergence_before_any_checkpoint_names_none(tmp_path, tiny_gpt2, monkeypatch):
    cfg = FPTConfig(
        task="bit-xor",
        backbone=tiny_gpt2,
        out=str(tmp_path / "r"),
        train=small_train(steps=8, eval_every=4),
    )
    _poison_after(monkeypatch, 1)  # the loss of step 1 is NaN
    with pytest.raises(TrainingDivergedError) as e:
        run_fpt(cfg)
    assert "no checkpoint was written" in str(e.value) and "checkpoint.pt" not in str(e.value)
    assert not (tmp_path / "r").exists()  # a failed start leaves nothing


# --- case 6: damaged run-folder files and unwritable folders are one line ------------------------
def test_damaged_curve_or_best_weights_are_one_line_on_resume(tmp_path, tiny_gpt2, capsys):
    run = tmp_path / "r"
    assert main(_train(tiny_gpt2, run)) == 0
    capsys.readouterr()
    curve, best = (run / "curve.csv").read_bytes(), (run / "best.safetensors").read_bytes()
    resume = ["fpt", "train", "--resume", "--out", str(run), "--steps", "6", "--no-progress"]
    for name, damaged in (
        ("curve.csv", curve.splitlines()[0] + b"\n"),  # cut after the header
        ("curve.csv", curve[: curve.rindex(b"\n", 0, -1) + 4]),  # cut in the last row
        ("best.safetensors", best[:40]),
    ):
        (run / name).write_bytes(damaged)
        assert main(resume) == 2, name
        assert f"{run / name}: " in _one_error_line(capsys)
        (run / "curve.csv").write_bytes(curve)
        (run / "best.safetensors").write_bytes(best)
    assert main(resume) == 0


def test_unwritable_folder_is_one_line(tmp_path, monkeypatch):
    import tempfile

    from unicomp.files import atomic_write_text

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(UnicompError, match="could not write .*x.json: Permission denied"):
        atomic_write_text(tmp_path / "x.json", "{}")


# --- case 9: a CUDA run's checkpoint holds the CUDA generators' state too ------------------------
def test_cuda_rng_state_is_saved_and_restored(monkeypatch):
    """Faked CUDA (no GPU needed): the state goes into the checkpoint and comes back."""
    import unicomp.train as tr

    fake = [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([4], dtype=torch.uint8)]
    restored: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: fake)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.extend)
    state = tr._rng_state()
    assert state["cuda"] == fake
    tr._set_rng_state(state)
    assert restored == fake[:1]  # as many generators as this machine has


# --- the Python API says resume=True / overwrite=True, the CLI --resume / --overwrite ------------
def test_python_calls_take_resume_and_overwrite_and_say_so_in_python(tmp_path, tiny_gpt2, capsys):
    run = tmp_path / "api"
    cfg = FPTConfig(task="bit-xor", backbone=tiny_gpt2, out=str(run), train=small_train(steps=4))
    run_fpt(cfg)
    with pytest.raises(UnicompError) as refused:
        run_fpt(FPTConfig(**{**vars(cfg), "train": small_train(steps=4)}))
    assert str(refused.value) == (
        f"{run} already holds a run; resume=True continues it, overwrite=True replaces it, or "
        "choose another cfg.out"
    )
    with pytest.raises(
        UnicompError, match=r"^resume=True would change what .* train.lr 0.001 -> 0.01"
    ):
        run_fpt(FPTConfig(**{**vars(cfg), "train": small_train(steps=4, lr=1e-2)}), resume=True)
    with pytest.raises(UnicompError, match="resume=True continues .* overwrite=True replaces"):
        run_fpt(cfg, resume=True, overwrite=True)

    # overwrite=True replaces the run's own files and keeps the user's
    (run / "notes.txt").write_text("mine")
    (run / "eval.json").write_text("{}")
    first = json.loads((run / "metrics.json").read_text())
    metrics = run_fpt(FPTConfig(**{**vars(cfg), "train": small_train(steps=6)}), overwrite=True)
    assert metrics["steps"] == 6 != first["steps"]
    assert json.loads((run / "metrics.json").read_text())["steps"] == 6
    assert (run / "notes.txt").read_text() == "mine" and not (run / "eval.json").exists()
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["steps"] == 6

    # the commands say it in flags
    assert main(_train(tiny_gpt2, run)) == 2
    line = _one_error_line(capsys)
    assert "pass --resume to continue it, --overwrite to replace it, or choose another" in line
    assert main([*_train(tiny_gpt2, run), "--lr", "0.5", "--resume"]) == 2
    assert "error: --resume would change what" in _one_error_line(capsys)
    assert main([*_train(tiny_gpt2, run), "--overwrite"]) == 0
    assert json.loads((run / "metrics.json").read_text())["steps"] == 4
