"""The command line as a user meets it: listing, errors, and a real (tiny) training run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from unicomp.cli import main


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unicomp.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_list_shows_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in (
        "bit-memory",
        "bit-xor",
        "minilm-l6",
        "smollm2-135m",
        "gpt2-xl",
        "paper",
        "output-only",
        "no-norm",
        "+ff",
        "+attn",
        "+ff+attn",
        "full",
    ):
        assert name in out


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--task", "bit-nope", "unknown task 'bit-nope'; choices: bit-memory, bit-xor"),
        ("--backbone", "gtp2", "unknown backbone 'gtp2'; choices: gpt2, gpt2-medium"),
        ("--freeze", "lnn", "unknown freeze policy 'lnn'; choices: paper, output-only"),
    ],
)
def test_unknown_names_are_one_line_errors(flag, value, expected, tmp_path):
    proc = _run("fpt", "train", flag, value, "--out", str(tmp_path / "r"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr


def test_missing_weights_is_a_one_line_error(tmp_path):
    # gpt2 is not shipped by any package and the hub is offline in tests.
    proc = _run("fpt", "train", "--backbone", "gpt2", "--out", str(tmp_path / "r"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "no weights for backbone 'gpt2'" in lines[0]
    assert "openai-community/gpt2" in lines[0] and "random:gpt2" in lines[0]


def test_bad_task_arg_is_a_clear_error(tmp_path, tiny_gpt2, capsys):
    code = main(
        [
            "fpt",
            "train",
            "--backbone",
            tiny_gpt2,
            "--task-arg",
            "n_bitz=3",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert code == 2
    assert "bad --task-arg" in capsys.readouterr().err


def test_train_writes_a_complete_run_folder(tmp_path, tiny_gpt2, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "fpt",
            "train",
            "--task",
            "bit-xor",
            "--backbone",
            tiny_gpt2,
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--batch-size",
            "8",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "test_accuracy",
        "trainable_params",
        "total_params",
        "steps",
        "train_seconds",
        "backbone_source",
    ):
        assert key in metrics
    assert metrics["steps"] == 4
    assert metrics["backbone_source"].startswith("pretrained, local folder")
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    cfg = (out / "config.yaml").read_text()
    assert "task: bit-xor" in cfg and "steps: 4" in cfg
    curve = (out / "curve.csv").read_text().splitlines()
    assert curve[0].startswith("step,train_loss") and len(curve) == 3  # header + 2 evals
    # A second run into the same folder must not overwrite it silently.
    code = main(
        [
            "fpt",
            "train",
            "--backbone",
            tiny_gpt2,
            "--steps",
            "4",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert code == 2 and "already holds a run" in capsys.readouterr().err


def test_config_file_round_trip(tmp_path, tiny_gpt2):
    out = tmp_path / "a"
    assert (
        main(
            [
                "fpt",
                "train",
                "--backbone",
                f"random:{tiny_gpt2}",
                "--steps",
                "2",
                "--eval-every",
                "2",
                "--no-progress",
                "--lr",
                "0.003",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    again = tmp_path / "b"
    assert main(["fpt", "train", "--config", str(out / "config.yaml"), "--out", str(again)]) == 0
    a = json.loads((out / "metrics.json").read_text())
    b = json.loads((again / "metrics.json").read_text())
    assert (again / "config.yaml").read_text().count("lr: 0.003") == 1
    assert a["test_accuracy"] == b["test_accuracy"] and a["val_accuracy"] == b["val_accuracy"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train: {steps: many}\n", "train: steps must be int, got 'many'"),
        ("train: {precision: fp8}\n", "precision must be one of auto, bf16, fp32"),
        ("trian: {}\n", "unknown key(s) trian"),
        ("- a\n- b\n", "expected a mapping"),
        ("task: [unclosed\n", "is not valid YAML"),
        ("backbone_dropout: yes\n", "backbone_dropout must be float | None"),
    ],
)
def test_bad_config_files_are_one_line_errors(tmp_path, text, expected, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["fpt", "train", "--config", str(path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and "unicomp: error:" in err[0], err


def test_optional_flags_take_numbers_and_none():
    from unicomp.cli import build_parser
    from unicomp.config import FPTConfig, resolve
    from unicomp.experiments.common import task_defaults

    parser = build_parser()
    args = parser.parse_args(["fpt", "train", "--backbone-dropout", "0.1"])
    assert resolve(FPTConfig, args, task_defaults).backbone_dropout == 0.1
    args = parser.parse_args(["fpt", "train", "--backbone-dropout", "none"])
    assert resolve(FPTConfig, args, task_defaults).backbone_dropout is None
    with pytest.raises(SystemExit):
        parser.parse_args(["fpt", "train", "--backbone-dropout", "lots"])


def test_report_tables_from_run_folders(tmp_path, capsys):
    for seed, acc, reached in ((0, 1.0, 400), (1, 0.98, None)):
        run = tmp_path / f"r{seed}"
        run.mkdir()
        metrics = {
            "task": "bit-xor",
            "backbone": "minilm-l6",
            "freeze": "paper",
            "seed": seed,
            "test_accuracy": acc,
            "steps": 1500,
            "steps_to_target": reached,
            "train_seconds": 120.5,
            "trainable_params": 15362,
        }
        (run / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "unfinished").mkdir()
    perceiver = tmp_path / "p0"
    perceiver.mkdir()
    metrics = {"task": "mnist", "model": "perceiver-io", "num_latents": 32, "seed": 0}
    (perceiver / "metrics.json").write_text(json.dumps({**metrics, "stopped_by": "time_limit"}))
    folders = [str(tmp_path / n) for n in ("r0", "r1", "unfinished")]
    assert main(["report", *folders, str(perceiver)]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 5 and "| bit-xor | minilm-l6 | paper | 1 | 0.9800 | 1500 | - |" in rows[3]
    assert "| mnist | perceiver-io (N=32) | - | 0 | - | - | time_limit |" in rows[4]
    assert main(["report", "--by-seed", *folders]) == 0
    out = capsys.readouterr().out
    assert "| 2 | 0.9900 ± 0.0141 | 400, - |" in out
    assert main(["report", str(tmp_path / "unfinished")]) == 2


def test_demo_prints_its_table(tmp_path, tiny_gpt2, capsys):
    assert main(["demo", "--quick", "--backbone", tiny_gpt2, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "steps to 99% val" in out
    assert out.count("bit-xor ") == 2 and out.count("bit-memory ") == 2
    assert f"random:{tiny_gpt2}: random init" in out
    # A second call reuses the finished runs instead of training again.
    assert main(["demo", "--quick", "--backbone", tiny_gpt2, "--out", str(tmp_path)]) == 0


def test_comma_separated_numbers_share_one_parser_and_one_message(tmp_path, capsys):
    """--seeds, --latents and --eval-targets read through config.comma_numbers: items may have
    spaces or be empty; a bad one is the same one-line error naming the flag."""
    from unicomp.config import comma_numbers
    from unicomp.errors import UnicompError

    assert comma_numbers(" 8, 16,,32 ", int, "--latents") == [8, 16, 32]
    assert comma_numbers("3600,1e3", float, "--eval-targets") == [3600.0, 1000.0]
    for text, kind, noun in (
        ("8,x", int, "integers"),
        ("1.5", int, "integers"),
        ("a", float, "numbers"),
    ):
        with pytest.raises(
            UnicompError, match=rf"^--flag '{text}': expected {noun} separated by commas$"
        ):
            comma_numbers(text, kind, "--flag")
    commands = (
        ["perceiver", "search-latents", "--task", "bit-xor", "--latents", "8,x"],
        ["fpt", "ablate", "--suite", "bit-xor", "--out", str(tmp_path), "--seeds", "0,x"],
    )
    for args in commands:
        assert main(args) == 2
        flag = args[-2]
        err = capsys.readouterr().err.strip()
        assert err == f"unicomp: error: {flag} '{args[-1]}': expected integers separated by commas"


def test_search_latents_help_shows_the_resolved_defaults(capsys, monkeypatch):
    """Its defaults function was named without its module, and the ImportError that caused
    was taken for a task that cannot load: --help showed no default at all."""
    monkeypatch.setenv("COLUMNS", "400")  # one line per flag: no break inside "bit-xor"
    with pytest.raises(SystemExit):
        main(["perceiver", "search-latents", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "[default: task default (1000 for bit-xor; others: unicomp list --task NAME)]" in shown
    assert "[default: task default (50 for bit-xor;" in shown  # --eval-every


def test_a_defaults_function_that_cannot_be_imported_fails_help_loudly():
    import argparse

    from unicomp.cli import _defaults
    from unicomp.config import HelpFormatter, PerceiverConfig, add_dataclass_args

    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    add_dataclass_args(p, PerceiverConfig, _defaults("unicomp.experiments.nope:task_defaults"))
    with pytest.raises(ModuleNotFoundError, match="unicomp.experiments.nope"):
        p.format_help()


def test_a_plug_in_task_that_cannot_be_imported_leaves_help_working(capsys, monkeypatch):
    """A task of another package whose module is missing here is left out of the defaults
    --help states; the built-in tasks' defaults are still shown."""
    from unicomp.tasks import catalog

    monkeypatch.setattr(catalog.TASKS, "_entries", dict(catalog.TASKS._entries))
    catalog.register_task("not-installed", "no_such_package_here:Task")
    monkeypatch.setenv("COLUMNS", "400")
    with pytest.raises(SystemExit):
        main(["fpt", "train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "for bit-xor; others: unicomp list --task NAME)]" in shown


def test_a_defaults_target_without_its_module_is_refused_at_once():
    from unicomp.cli import _defaults

    with pytest.raises(ValueError, match="expected 'module:function'"):
        _defaults("perceiver_task_defaults")
