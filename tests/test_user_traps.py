"""What a new user trips over (issue 15): --help that states the defaults that really run,
--version, no argparse prefix matching, YAML floats in scientific notation, a warning when
the warm-up outlasts the run, the task arguments listed; and the silent traps of point 5."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

import unicomp
from unicomp.cli import build_parser, main


def _run(*args: str) -> subprocess.CompletedProcess:
    """``python -m unicomp ARGS``, help wide enough that no line wraps."""
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "unicomp", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def _helps(text: str) -> dict[str, str]:
    """Each option's help in a --help text, unwrapped: ``{"--steps": "--steps STEPS ..."}``."""
    helps: dict[str, str] = {}
    flag = None
    for line in text.splitlines():
        if line.startswith("  -"):
            flag = line.split()[0].rstrip(",")
            helps[flag] = line.strip()
        elif flag and line.startswith("      "):
            helps[flag] += " " + line.strip()
        else:
            flag = None
    return helps


# --- point 1: --help that tells the truth -----------------------------------------------------
def test_fpt_train_help_states_each_default_once_as_it_resolves():
    proc = _run("fpt", "train", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "(default:" not in proc.stdout  # argparse's own, always "None": gone
    helps = _helps(proc.stdout)
    assert "[default: task default (1500 for bit-xor" in helps["--steps"]
    assert "[default: task default (0.003 for bit-xor" in helps["--lr"]
    assert "[default: task default (50 for bit-xor" in helps["--eval-every"]
    assert helps["--grad-accum"].endswith("[default: 1]")
    assert helps["--task"].endswith("[default: bit-xor]")
    assert helps["--progress"].endswith("[default: True]")
    assert all(h.count("[default:") <= 1 for h in helps.values())


def test_dt_and_perceiver_help_state_their_own_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # no wrapped lines
    with pytest.raises(SystemExit):
        main(["dt", "train", "--help"])
    helps = _helps(capsys.readouterr().out)
    for flag, value in (
        ("--steps", "100000"),
        ("--batch-size", "64"),
        ("--lr", "0.0001"),
        ("--warmup-steps", "10000"),
        ("--grad-clip", "0.25"),
        ("--grad-accum", "1"),
    ):
        assert helps[flag].endswith(f"[default: {value}]"), helps[flag]
    with pytest.raises(SystemExit):
        main(["perceiver", "train", "--help"])
    helps = _helps(capsys.readouterr().out)
    assert helps["--lr"].endswith("[default: 0.001]")  # every task's, bit-xor's by override
    assert "[default: task default (1000 for bit-xor" in helps["--steps"]
    assert helps["--num-latents"].endswith("[default: 32]")


def test_top_level_help_lists_every_command_and_version():
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("fpt train", "fpt ablate", "perceiver train", "dt collect", "dt train"):
        assert f"  {command} " in proc.stdout
    assert "  dt eval " in proc.stdout and "  dt compare " in proc.stdout
    proc = _run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"unicomp {unicomp.__version__}"


def test_no_prefix_matching_of_options():
    proc = _run("fpt", "train", "--step", "5")
    assert proc.returncode == 2
    assert "unrecognized arguments: --step 5" in proc.stderr

    def parsers(parser: argparse.ArgumentParser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    every = list(parsers(build_parser()))
    assert len(every) > 10 and not any(p.allow_abbrev for p in every)


def test_yaml_floats_in_scientific_notation(tmp_path):
    from unicomp.config import FPTConfig, resolve
    from unicomp.errors import UnicompError
    from unicomp.experiments import task_defaults

    path = tmp_path / "c.yaml"
    path.write_text("task_args: {n_bits: 3}\ntrain: {lr: 1e-3, weight_decay: 5E-4}\n")
    args = build_parser().parse_args(
        ["fpt", "train", "--config", str(path), "--task-arg", "val_pairs=1e1"]
    )
    cfg = resolve(FPTConfig, args, task_defaults)
    assert cfg.train.lr == 0.001 and cfg.train.weight_decay == 0.0005
    assert cfg.task_args == {"n_bits": 3, "val_pairs": 10.0}
    for bad, message in (("lr: 1e-3x", "lr must be float, got '1e-3x'"), ("steps: 1e3", "int")):
        path.write_text(f"train: {{{bad}}}\n")
        with pytest.raises(UnicompError, match=message):
            resolve(
                FPTConfig,
                build_parser().parse_args(["fpt", "train", "--config", str(path)]),
                task_defaults,
            )


def test_warmup_longer_than_the_run_warns(tmp_path, tiny_gpt2, capsys):
    out = tmp_path / "r"
    args = ["fpt", "train", "--backbone", tiny_gpt2, "--steps", "2", "--eval-every", "2"]
    args += ["--warmup-steps", "100", "--lr", "1e-3", "--batch-size", "4", "--no-progress"]
    assert main([*args, "--precision", "fp32", "--out", str(out)]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "warm" in line]
    assert err == [
        "unicomp: warning: warmup_steps 100 >= steps 2: the run ends inside the warm-up, "
        "reaching learning rate 2e-05 of lr 0.001; lower --warmup-steps or raise --steps"
    ]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["warnings"] == [err[0].removeprefix("unicomp: warning: ")]


def test_list_task_prints_resolved_defaults_and_task_arguments(capsys):
    proc = _run("list", "--task", "bit-xor")
    assert proc.returncode == 0, proc.stderr
    lines = [" ".join(line.split()) for line in proc.stdout.splitlines()]
    for expected in (
        "steps 1500 (task)",
        "lr 0.003 (task)",
        "eval_every 50 (task)",
        "grad_accum 1",
        "perceiver train: differs: steps 1000, lr 0.001",
        "n_bits 5",
        "test_pairs 256",
    ):
        assert expected in lines, (expected, proc.stdout)
    assert main(["list", "--task", "dt"]) == 0
    lines = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    assert "steps 100000 (DT)" in lines and "warmup_steps 10000 (DT)" in lines
    assert main(["list", "--task", "bit-nope"]) == 2
    assert "unknown task 'bit-nope'; choices: bit-memory" in capsys.readouterr().err


def test_list_names_dt_suites_and_perceiver_checkpoints(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "language-perceiver" in out and "deepmind/vision-perceiver-conv" in out
    suites = [line.split() for line in out.splitlines() if line.strip().startswith("Hopper-v5")]
    assert suites and "medium-replay," in suites[0] and "medium-expert" in suites[0]


def test_bad_task_arg_lists_the_valid_keys(tmp_path, capsys):
    assert main(["fpt", "train", "--task-arg", "n_bitz=3", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "unicomp: error: task 'bit-xor': bad --task-arg n_bitz; valid keys: n_bits (default 5), "
        "val_pairs (default 128), test_pairs (default 256)"
    )
