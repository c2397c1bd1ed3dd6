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
        ("--warmup-steps", "10% of --steps (10000 at 100000)"),
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
    from unicomp.experiments.common import task_defaults

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
    assert "warmup_steps: 10% of steps where not given (--warmup-steps, --config)" in lines
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


# --- point 5: silent traps ---------------------------------------------------------------------
def test_quick_demo_has_its_own_folder_and_is_never_reprinted_as_the_full_one(
    tmp_path, monkeypatch, capsys
):
    """The demo's folders and its check of a reused run's budget; the training itself (real
    in tests/test_cli.py::test_demo_prints_its_table) is replaced by a stub writing what a
    finished run leaves."""
    import unicomp.tools.demo
    from unicomp.config import save_yaml

    trained = []

    def fake_run_fpt(cfg, resume=False):
        trained.append(cfg.out)
        folder = tmp_path / cfg.out
        folder.mkdir(parents=True)
        save_yaml(cfg, folder / "config.yaml")
        metrics = {"task": cfg.task, "backbone": cfg.backbone, "data_source": "generated: x"}
        metrics.update(test_accuracy=0.5, steps=cfg.train.steps, steps_to_target=None)
        metrics.update(trainable_params=1, train_seconds=0.0, backbone_source="stub")
        (folder / "metrics.json").write_text(json.dumps(metrics))
        return metrics

    monkeypatch.setattr(unicomp.tools.demo, "run_fpt", fake_run_fpt)
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--quick", "--backbone", "tiny"]) == 0
    assert sorted(trained) == [
        f"runs/demo-quick/{t}-{b}"
        for t in ("bit-memory", "bit-xor")
        for b in ("random-tiny", "tiny")
    ]
    assert not (tmp_path / "runs/demo").exists()
    assert main(["demo", "--quick", "--backbone", "tiny"]) == 0  # reused, not trained again
    assert len(trained) == 4
    capsys.readouterr()
    # the full demo pointed at the quick runs refuses, naming the difference, training nothing
    assert main(["demo", "--backbone", "tiny", "--out", "runs/demo-quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        "unicomp: error: runs/demo-quick/bit-xor-tiny holds a demo run trained otherwise: "
        "steps 4 (this demo: 600), eval_every 2 (this demo: 25);"
    ), err
    assert len(trained) == 4 and len(err.splitlines()) == 1


def test_report_by_seed_groups_by_every_setting_but_the_seed(tmp_path):
    from unicomp.config import FPTConfig, TrainConfig, save_yaml

    folders = []
    for name, seed, steps, attention, acc in (
        ("a", 0, 50, "eager", 1.0),
        ("b", 1, 50, "sdpa", 0.9),  # attention picked by timing: the same setting
        ("c", 2, 5, "eager", 0.5),
    ):
        folder = tmp_path / name
        folder.mkdir()
        train = TrainConfig(steps=steps, seed=seed)
        cfg = FPTConfig(attn_implementation=attention, out=str(folder), train=train)
        save_yaml(cfg, folder / "config.yaml")
        metrics = {"task": cfg.task, "backbone": cfg.backbone, "freeze": cfg.freeze}
        metrics.update(seed=seed, test_accuracy=acc, steps_to_target=None)
        (folder / "metrics.json").write_text(json.dumps(metrics))
        folders.append(str(folder))
    proc = _run("report", "--by-seed", *folders)
    assert proc.returncode == 0, proc.stderr
    rows = proc.stdout.strip().splitlines()
    assert rows[0].endswith("| settings that differ |") and len(rows) == 4
    assert rows[2] == "| bit-xor | minilm-l6 | paper | 2 | 0.9500 ± 0.0707 | -, - | steps=50 |"
    assert rows[3] == "| bit-xor | minilm-l6 | paper | 1 | 0.5000 ± 0.0000 | - | steps=5 |"


def test_metrics_record_versions_commit_and_device(tmp_path, tiny_gpt2):
    import torch
    import transformers

    from tests.conftest import cli_train

    metrics = cli_train(tmp_path / "r", "--backbone", tiny_gpt2, "--precision", "fp32")
    assert metrics["unicomp_version"] == unicomp.__version__
    assert metrics["transformers_version"] == transformers.__version__
    assert metrics["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    head = subprocess.run(
        ["git", "-C", os.path.dirname(unicomp.__file__), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
    )
    if head.returncode == 0:  # tests run from a checkout (editable install)
        assert metrics["git_commit"] == head.stdout.strip()
        assert isinstance(metrics["git_dirty"], bool)


def test_no_git_commit_outside_a_checkout(tmp_path, monkeypatch):
    import unicomp.provenance

    monkeypatch.setattr(unicomp.provenance, "_PACKAGE", tmp_path)
    assert unicomp.provenance.git_commit() == (None, None)


def test_misspelt_environment_is_a_one_line_error(tmp_path, capsys):
    expected = (
        "unicomp: error: unknown environment 'Hoper-v5' (not in gymnasium's registry); "
        "close matches: Hopper-v5, Hopper-v4, Hopper-v3, Hopper-v2"
    )
    out = str(tmp_path / "d")
    proc = _run(
        "dt", "collect", "--env", "Hoper-v5", "--policy", "random", "--episodes", "1", "--out", out
    )
    assert proc.returncode == 2 and proc.stderr.splitlines() == [expected]
    # a suite for it: the same error, not "no suites for Hoper-v5"
    assert (
        main(
            [
                "dt",
                "collect",
                "--env",
                "Hoper-v5",
                "--suite",
                "medium",
                "--episodes",
                "1",
                "--out",
                out,
            ]
        )
        == 2
    )
    assert capsys.readouterr().err.splitlines() == [expected]
    assert not (tmp_path / "d").exists()
