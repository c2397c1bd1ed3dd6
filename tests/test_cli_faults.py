"""The command line under faults and bad input found by an adversarial review: a killed
``fpt ablate`` whose cells trained on, tracebacks where one line belongs, allocations sized by
a flag, duplicate YAML keys silently resolved. Each error is one stderr line
``unicomp: error: ...``, exit status 2, and nothing on disk is lost (docs/reliability.md,
"The command line")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from unicomp.cli import main


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("unicomp: error: "), err
    return err[0]


def _refused(capsys, *argv: str) -> str:
    """``unicomp ARGV`` in this process: exit status 2 and one error line, returned."""
    assert main(list(argv)) == 2
    return _one_error_line(capsys)


def _refused_in_child(*argv: str, timeout: float = 120) -> str:
    """The same in a child process, for input that made the old code run without end (a
    hang fails the test instead of stalling the suite)."""
    done = subprocess.run(
        [sys.executable, "-m", "unicomp", *argv], capture_output=True, text=True, timeout=timeout
    )
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1, (done.returncode, err[-5:])
    assert err[0].startswith("unicomp: error: "), err
    return err[0]


def _train_args(backbone: str, out: Path, *more: str, steps: bool = True) -> list[str]:
    """``fpt train`` for 2 steps (``steps=False``: as many as a --config says) on
    ``backbone``."""
    return [
        "fpt", "train", "--backbone", backbone, *(["--steps", "2"] if steps else []),
        "--batch-size", "4", "--eval-every", "2", "--eval-batch-size", "16", "--precision",
        "fp32", "--no-progress", "--out", str(out), *more,
    ]  # fmt: skip


# --- YAML configs --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("task: bit-xor\ntask: bit-memory\n", "key 'task' given twice (lines 1 and 2)"),
        ("train:\n  steps: 3\n  lr: 0.1\n  steps: 4\n", "key 'steps' given twice (lines 2 and 4)"),
        ("{task: bit-xor, task: bit-memory}\n", "key 'task' given twice (lines 1 and 1)"),
    ],
)
def test_a_key_given_twice_in_a_yaml_config_is_refused_naming_it(
    tmp_path, tiny_gpt2, capsys, text, message
):
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    line = _refused(capsys, *_train_args(tiny_gpt2, tmp_path / "r", "--config", str(path)))
    assert f"config file {path}" in line and message in line, line
    assert not (tmp_path / "r").exists()


def test_yaml_merge_keys_still_override(tmp_path):
    """``<<: *base`` then a key of the base again is an override, not a duplicate."""
    from unicomp.config import load_yaml

    path = tmp_path / "merge.yaml"
    path.write_text("base: &b {steps: 3, lr: 0.1}\ntrain:\n  <<: *b\n  steps: 4\n")
    assert load_yaml(path)["train"] == {"steps": 4, "lr": 0.1}


@pytest.mark.parametrize("form", ["flow", "block"])
def test_a_yaml_config_nested_5000_deep_is_one_line(tmp_path, capsys, form):
    path = tmp_path / "deep.yaml"
    if form == "flow":
        path.write_text("task: " + "[" * 5000 + "]" * 5000 + "\n")
    else:
        path.write_text("".join(" " * i + "a:\n" for i in range(5000)))
    line = _refused(capsys, "fpt", "train", "--config", str(path), "--out", str(tmp_path / "r"))
    assert "nested more than 100 levels deep" in line, line
    # and as a --task-arg value
    deep = "n_bits=" + "[" * 5000 + "]" * 5000
    line = _refused(capsys, "fpt", "train", "--task-arg", deep, "--out", str(tmp_path / "r"))
    assert "nested more than 100 levels deep" in line, line


# --- sizes from flags ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "flags", "message"),
    [
        (None, ["--steps", str(10**26)], f"steps must be >= 1 and <= 1000000000, got {10**26}"),
        ("train:\n  steps: 1e26\n", [], "steps must be int, got '1e26'"),
        ("train:\n  steps: 1.0e+26\n", [], "steps must be int, got 1e+26"),
        (f"train:\n  steps: {10**26}\n", [], "steps must be >= 1 and <= 1000000000"),
        (None, ["--warmup-steps", str(10**10)], "warmup_steps must be >= 0 and <= 1000000000"),
    ],
)
def test_steps_must_be_an_integer_up_to_1e9(tmp_path, tiny_gpt2, config, flags, message):
    args = [*_train_args(tiny_gpt2, tmp_path / "r", steps=False), *flags]
    if config:
        (tmp_path / "c.yaml").write_text(config)
        args += ["--config", str(tmp_path / "c.yaml")]
    assert message in _refused_in_child(*args)  # 10^26 steps: a run without end
    assert not (tmp_path / "r").exists()


def test_ablate_steps_must_be_up_to_1e9(tmp_path, capsys):
    suite = ["fpt", "ablate", "--suite", "bit-xor", "--out", str(tmp_path), "--dry-run"]
    line = _refused(capsys, *suite, "--steps", str(10**10))
    assert "--steps must be in 1..1000000000, got 10000000000" in line, line


@pytest.mark.parametrize(
    ("task_args", "message"),
    [
        # was an attempt to allocate 1 TB (a RuntimeError traceback, or the OOM killer)
        (["n_bits=100000000"], "--task-arg n_bits=100000000 is outside 1..100000"),
        (["n_bits=1e8"], "--task-arg n_bits=100000000.0 is outside 1..100000"),
        (["n_bits=-1"], "--task-arg n_bits=-1 is outside 1..100000"),
        # was torch's "negative dimension" traceback; 0 an IndexError
        (["n_bits=-50"], "--task-arg n_bits=-50 is outside 1..100000"),
        (["n_bits=0"], "--task-arg n_bits=0 is outside 1..100000"),
        # each within its bound, together 2.5e11 numbers
        (["n_bits=100000", "n_strings=1000"], "would store 2.51e+11 numbers; the limit is"),
    ],
)
def test_bit_memory_sizes_are_bounded_before_anything_is_allocated(
    tmp_path, tiny_gpt2, capsys, task_args, message
):
    import tracemalloc

    flags = [x for arg in task_args for x in ("--task-arg", arg)]
    tracemalloc.start()
    try:
        line = _refused(
            capsys, *_train_args(tiny_gpt2, tmp_path / "r", "--task", "bit-memory", *flags)
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert line.startswith("unicomp: error: task 'bit-memory': ") and message in line, line
    assert peak < 200 * 2**20, peak  # (torch's tensors are not traced: the error comes first)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("task", "arg", "message"),
    [
        # was torch's four-line signature of arange()
        ("bit-xor", "n_bits=-1", "task 'bit-xor': --task-arg n_bits=-1 is outside 1..10"),
        ("listops", "n_train=100000000", "--task-arg n_train=100000000 is outside 0..10000000"),
        ("listops", "seed=-1", "--task-arg seed=-1 is outside 0..9223372036854775807"),
    ],
)
def test_integer_task_arguments_are_bounded(tmp_path, tiny_gpt2, task, arg, message):
    args = _train_args(tiny_gpt2, tmp_path / "r", "--task", task, "--task-arg", arg)
    assert message in _refused_in_child(*args)  # generating 10^8 ListOps rows: no end


# --- files and paths ---------------------------------------------------------------------------
def test_a_run_folder_name_too_long_is_one_line(tmp_path, tiny_gpt2, capsys):
    long = tmp_path / ("x" * 300)
    line = _refused(capsys, *_train_args(tiny_gpt2, long))
    assert "cannot create it or write in it (File name too long)" in line, line
    inside = tmp_path / "a" / ("x" * 300) / "b"
    assert "File name too long" in _refused(capsys, *_train_args(tiny_gpt2, inside))
    # where no reader turns it into a UnicompError, main() does (the ablate's suite folder)
    line = _refused(capsys, "fpt", "ablate", "--suite", "bit-xor", "--out", str(long))
    assert line.endswith("characters): File name too long") and len(line) < 250, line


def test_an_os_error_that_may_be_a_bug_keeps_its_traceback(monkeypatch):
    """Only system errors about the user's paths and machine (a name too long, permissions, a
    read-only or full disk, a file where a folder belongs) become one line."""
    import unicomp.cli as cli

    def missing(args):
        raise FileNotFoundError(2, "No such file or directory", "/somewhere/internal.json")

    monkeypatch.setattr(cli, "cmd_list", missing)
    with pytest.raises(FileNotFoundError):
        main(["list"])


@pytest.fixture(scope="module")
def fpt_run(tmp_path_factory, tiny_gpt2) -> Path:
    out = tmp_path_factory.mktemp("fpt") / "run"
    assert main(_train_args(tiny_gpt2, out)) == 0
    return out


@pytest.fixture(scope="module")
def dt_run(tmp_path_factory) -> Path:
    pytest.importorskip("minari")
    from tests.test_export import _dt_run

    return _dt_run(tmp_path_factory.mktemp("dt"), "run")


def _truncated_copy(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    best = to / "best.safetensors"
    best.write_bytes(best.read_bytes()[:300])
    return to


def test_a_truncated_best_safetensors_is_one_line(tmp_path, fpt_run, dt_run, capsys):
    fpt = _truncated_copy(fpt_run, tmp_path / "fpt")
    dt = _truncated_copy(dt_run, tmp_path / "dt")
    for argv, run in [
        (["fpt", "export-adapter", str(fpt), "-o", str(tmp_path / "a.safetensors")], fpt),
        (["export", str(dt), "-o", str(tmp_path / "hf")], dt),  # was a SafetensorError
        (["dt", "eval", "--run", str(dt)], dt),  # the same
    ]:
        line = _refused(capsys, *argv)
        assert f"cannot read {run / 'best.safetensors'}" in line, line
    assert not (tmp_path / "hf").exists() and not (tmp_path / "a.safetensors").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        # was numpy's "zero-size array to reduction operation" after loading the run
        (["--eval-episodes", "0"], "--eval-episodes must be an integer in 1..1000000, got 0"),
        (["--eval-episodes", "-1"], "--eval-episodes must be an integer in 1..1000000, got -1"),
        # was an attempt to allocate 745 GiB
        (["--eval-episodes", str(10**11)], "--eval-episodes must be an integer in 1..1000000"),
        (["--eval-envs", "0"], "--eval-envs must be an integer in 1..4096, got 0"),
        # was an episode without end (a negative time limit was no limit)
        (["--eval-max-steps", "-1"], "--eval-max-steps must be an integer in 0..1000000000"),
        (["--eval-seed", "-1"], "--eval-seed must be an integer in 0..9223372036854775807"),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
    ],
)
def test_dt_eval_settings_out_of_range_are_one_line(dt_run, capsys, flags, message):
    before = sorted(p.name for p in dt_run.iterdir())
    line = _refused(capsys, "dt", "eval", "--run", str(dt_run), *flags)
    assert message in line, line
    assert sorted(p.name for p in dt_run.iterdir()) == before  # no eval.json written


def test_export_onto_a_location_that_cannot_be_written_is_one_line(
    tmp_path, fpt_run, dt_run, capsys
):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    targets = [a_file / "x"]  # NotADirectoryError / FileExistsError, as root too
    if os.geteuid() != 0:  # root writes into a read-only folder anyway
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        targets.append(locked / "x")
    for target in targets:
        line = _refused(capsys, "export", str(dt_run), "-o", str(target))
        assert f"cannot write {target}" in line and "nothing was written" in line, line
        line = _refused(capsys, "fpt", "export-adapter", str(fpt_run), "-o", str(target))
        assert f"could not write {target}" in line, line
    assert a_file.read_text() == "mine\n"
    long = tmp_path / ("x" * 300)
    assert "File name too long" in _refused(capsys, "export", str(dt_run), "-o", str(long))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[1, 2]\n", "expected a JSON object (a run's record), got a list"),
        (bytes(range(256)) * 2, "not readable JSON"),
        (b'{"task": [1], "test_accuracy": 0.5}', "task must be text or a number, got [1]"),
        (b'{"task": "bit-xor", "test_accuracy": "high"}', "test_accuracy must be a number"),
        (b"[" * 100_000 + b"]" * 100_000, "not readable JSON (nested too deeply)"),
    ],
)
def test_report_on_a_metrics_json_that_is_not_a_record_is_one_line(
    tmp_path, capsys, content, message
):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_bytes(content)
    for argv in (["report", str(run)], ["report", "--by-seed", str(run)]):
        line = _refused(capsys, *argv)
        assert f"{run / 'metrics.json'}: " in line and message in line, line
    compare = ["dt", "compare", "--runs", str(run), "--out", str(tmp_path / "cmp")]
    if message.startswith("expected") or message.startswith("not readable"):
        assert message in _refused(capsys, *compare)


# --- a killed ablate ----------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    """Running (a zombie, waiting for init to reap it, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="cells stop with it on Linux")
def test_a_killed_ablate_stops_its_cells_and_the_rerun_succeeds(tmp_path, tiny_gpt2):
    """SIGKILL to ``unicomp fpt ablate`` mid-run: its cells stop too (they trained on, holding
    their folders' locks, so the immediate re-run failed with "in use by process ..."), and the
    re-run of the same command finishes every cell."""
    rows = [
        {"label": "FPT", "backbone": tiny_gpt2, "freeze": "paper"},
        {"label": "output only", "backbone": tiny_gpt2, "freeze": "output-only"},
    ]
    suite = {
        "name": "tiny",
        "task": "bit-xor",
        "seeds": [0],
        # one evaluation, at the end: the kill finds no checkpoint, the re-run starts afresh
        "train": {"batch_size": 8, "eval_every": 100_000, "eval_batch_size": 64,
                  "precision": "fp32"},
        "tables": [{"title": "T", "rows": rows}],
    }  # fmt: skip
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(suite))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "unicomp", "fpt", "ablate", "--suite", str(path)]
    command += ["--out", str(out), "--jobs", "2", "--threads", "1"]
    locks = [out / "tiny" / name / "s0" / ".unicomp.lock" for name in ("fpt", "output-only")]
    cells: list[int] = []
    parent = subprocess.Popen(
        [*command, "--steps", "100000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 240
        while len(cells) < 2:  # both cells have taken their folders (are training)
            assert parent.poll() is None and time.monotonic() < deadline, "cells never started"
            time.sleep(0.2)
            held = [p.read_text().split() for p in locks if p.is_file()]
            cells = [int(h[0]) for h in held if h and int(h[0]) != parent.pid]
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(map(_alive, cells)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_alive, cells)), "the cells outlived their ablate"

        rerun = subprocess.run(
            [*command, "--steps", "3"], capture_output=True, text=True, timeout=300
        )
        assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
        results = json.loads((out / "tiny" / "results.json").read_text())
        assert [c["status"] for c in results["cells"]] == ["done", "done"], results["cells"]
        assert [c["steps"] for c in results["cells"]] == [3, 3]
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in cells:  # the old behaviour: orphans that would train 100,000 steps
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
