"""The time-series campaign's report: tables and verdicts read from run folders. Real runs
(tiny FPT runs, the naive forecasts, DLinear at two rates) for the reading, written records for
the verdict rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import cli_train
from tests.test_timeseries import write_archive, write_csv
from unicomp.cli import main
from unicomp.errors import UnicompError
from unicomp.reports import tsreport
from unicomp.reports.documents import regenerate


def test_real_forecast_runs_are_tabled_and_dlinear_takes_its_best_rate(tmp_path, tiny_gpt2):
    path = write_csv(tmp_path / "toy.csv", 300, channels=1, period=12)
    args = ["--task-arg", f"path={path}", "--task-arg", "lookback=24", "--task-arg", "horizon=6"]
    runs = tmp_path / "runs"
    for seed in (0, 1, 2):
        cli_train(runs / f"fpt-s{seed}", "--task", "forecast", *args, "--backbone", tiny_gpt2,
                  "--seed", str(seed), "--precision", "fp32")  # fmt: skip
        for method in ("naive", "seasonal-naive"):
            out = str(runs / f"{method}-s{seed}")
            command = ["ts", "baseline", "--task", "forecast", *args, "--method", method]
            assert main([*command, "--seed", str(seed), "--out", out]) == 0
    for lr in ("0.1", "0.00001"):
        assert main(["ts", "baseline", "--task", "forecast", *args, "--method", "dlinear",
                     "--steps", "6", "--lr", lr, "--no-progress",
                     "--out", str(runs / f"dlinear-lr{lr}-s0")]) == 0  # fmt: skip
    found = tsreport.load(runs)
    assert {r.row for r in found} == {f"FPT {tiny_gpt2}", "naive", "seasonal naive", "DLinear"}
    (table,) = tsreport.tables(found)
    assert table.data == "toy" and [r.seed for r in table.rows["naive"]] == [0, 1, 2]
    (dlinear,) = table.rows["DLinear"]  # one seed, the rate with the lower validation MSE
    both = [r for r in found if r.row == "DLinear"]
    assert dlinear.metrics["val_loss"] == min(r.metrics["val_loss"] for r in both)
    assert table.figure("naive").values == (0.0, 0.0, 0.0)  # the skill's zero
    assert table.figure("seasonal naive").mean > 0.9  # a 12-step sine, one season back
    text = tsreport.render(runs, "forecasting")
    assert "| toy | DLinear |" in text and f"{dlinear.lr:g}" in text
    verdicts = tsreport.render(runs, "verdicts")
    assert f"FPT {tiny_gpt2} better than seasonal naive" in verdicts
    # two steps of training: whatever the means say, never "holds"
    assert "holds" not in verdicts.replace("does not hold", "")
    assert "budget below 50% of the paper's" in verdicts or "fewer than 3 seeds" in verdicts


def test_real_classification_runs_are_tabled(tmp_path, tiny_gpt2):
    pytest.importorskip("aeon")
    root = write_archive(tmp_path / "Toy")
    runs = tmp_path / "runs"
    for seed in (0, 1):
        cli_train(runs / f"fpt-s{seed}", "--task", "ucr", "--task-arg", f"path={root}",
                  "--backbone", tiny_gpt2, "--seed", str(seed))  # fmt: skip
        assert main(["ts", "baseline", "--task", "ucr", "--task-arg", f"path={root}",
                     "--method", "minirocket", "--seed", str(seed),
                     "--out", str(runs / f"mr-s{seed}")]) == 0  # fmt: skip
    table = tsreport.render(runs, "classification")
    assert "| Toy | 10 | 50.0 |" in table and "(n=2)" in table
    (row,) = [r for r in tsreport.verdicts(tsreport.tables(tsreport.load(runs))[0])
              if "MiniRocket" in r[0]]  # fmt: skip
    assert row[2] in ("indicative", "not measured", "not at this budget")  # 2 seeds: never holds
    assert any("1-NN DTW not run" in r[3] for r in tsreport.verdicts(
        tsreport.tables(tsreport.load(runs))[0]))  # fmt: skip


# --- the verdict rules on written records -------------------------------------------------------
def write_run(folder: Path, data: str, seed: int, accuracy: float, *, method=None,
              backbone="minilm-l6", constant=0.5, steps=500, tests=200) -> None:  # fmt: skip
    folder.mkdir(parents=True)
    config = {"task": "ucr", "task_args": {"name": data}, "seed": seed}
    if method:
        config["method"] = method
    else:
        train = {"steps": steps, "batch_size": 16, "lr": 0.001, "seed": seed}
        config |= {"backbone": backbone, "freeze": "paper", "train": train}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = {"test_accuracy": accuracy, "test_elements": tests,
               "test_constant_accuracy": constant, "train_split_examples": 80,
               "split_sizes": {"val": 20, "test": tests}}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics))


def verdict_rows(root: Path) -> dict[str, list[str]]:
    tables = tsreport.tables(tsreport.load(root))
    controls = {r for t in tables for r in t.rows if r.startswith("frozen random init")}
    return {row[0]: row for t in tables for row in tsreport.verdicts(t, controls)}


def test_verdicts_follow_the_rules(tmp_path):
    for seed, (fpt, mr, dtw, rnd) in enumerate([(0.90, 0.93, 0.70, 0.60), (0.91, 0.93, 0.70, 0.62),
                                                 (0.92, 0.93, 0.70, 0.58)]):  # fmt: skip
        write_run(tmp_path / f"fpt-s{seed}", "Set", seed, fpt, tests=1000)
        write_run(tmp_path / f"mr-s{seed}", "Set", seed, mr, method="minirocket", tests=1000)
        write_run(tmp_path / f"dtw-s{seed}", "Set", seed, dtw, method="1nn-dtw", tests=1000)
        write_run(
            tmp_path / f"rnd-s{seed}", "Set", seed, rnd, backbone="random:minilm-l6", tests=1000
        )
    rows = verdict_rows(tmp_path)
    assert rows["FPT minilm-l6 about as good as MiniRocket"][2] == "holds"
    assert rows["FPT minilm-l6 better than 1-NN DTW"][2] == "holds"
    assert rows["FPT minilm-l6 better than its frozen random init"][2] == "holds"
    # budget: 500 x 16 examples against GPT4TS's 50 epochs of 100 cases
    assert "budget 160.0%" in rows["FPT minilm-l6 about as good as MiniRocket"][1]


def test_a_baseline_at_its_floor_or_a_lone_seed_decides_nothing(tmp_path):
    for seed in range(3):
        write_run(tmp_path / f"fpt-s{seed}", "Set", seed, 0.9)
        write_run(tmp_path / f"mr-s{seed}", "Set", seed, 0.5, method="minirocket")  # constant
    write_run(tmp_path / "dtw-s0", "Set", 0, 0.6, method="1nn-dtw")
    rows = verdict_rows(tmp_path)
    assert rows["FPT minilm-l6 about as good as MiniRocket"][2] == "not measured"
    assert rows["FPT minilm-l6 better than 1-NN DTW"][2] == "indicative"


def test_a_short_budget_failure_reads_not_at_this_budget(tmp_path):
    for seed in range(3):
        write_run(tmp_path / f"fpt-s{seed}", "Set", seed, 0.6, steps=50)
        write_run(tmp_path / f"mr-s{seed}", "Set", seed, 0.95, method="minirocket")
    rows = verdict_rows(tmp_path)
    assert rows["FPT minilm-l6 about as good as MiniRocket"][2] == "not at this budget"
    assert rows["FPT minilm-l6 better than 1-NN DTW"][2] == "missing"


def test_unreadable_records_and_unknown_parts_are_one_line_errors(tmp_path):
    write_run(tmp_path / "fpt-s0", "Set", 0, 0.9)
    (tmp_path / "fpt-s0" / "metrics.json").write_text("{not json")
    with pytest.raises(UnicompError, match="fpt-s0: unreadable record"):
        tsreport.load(tmp_path)
    write_run(tmp_path / "hostile-s0", "Set", 0, 0.9)  # a config nested past YAML's depth rule
    (tmp_path / "hostile-s0" / "config.yaml").write_text("a: " + "[" * 500 + "]" * 500 + "\n")
    (tmp_path / "fpt-s0" / "metrics.json").unlink()
    with pytest.raises(UnicompError, match="hostile-s0: unreadable record"):
        tsreport.load(tmp_path)
    (tmp_path / "hostile-s0" / "metrics.json").unlink()
    with pytest.raises(UnicompError, match="no finished time-series runs"):
        tsreport.render(tmp_path, "verdicts")
    with pytest.raises(UnicompError, match="not a folder of runs"):
        tsreport.load(tmp_path / "absent")
    write_run(tmp_path / "fpt-s1", "Set", 1, 0.9)
    with pytest.raises(UnicompError, match="unknown part 'tables'"):
        tsreport.render(tmp_path, "tables")


def test_the_docs_block_renders_the_folder(tmp_path):
    for seed in range(3):
        write_run(tmp_path / "runs" / f"fpt-s{seed}", "JapaneseVowels", seed, 0.95, constant=0.2)
    doc = tmp_path / "doc.md"
    text = "# T\n<!-- unicomp:timeseries runs classification -->\nstale\n"
    text += "<!-- /unicomp:timeseries -->\n"
    out = regenerate(text, doc, tmp_path)
    assert "| JapaneseVowels | 200 | 20.0 | 95.0 ± 0.0 (n=3) | 98.6 |" in out
    bad = text.replace("classification", "tables")
    with pytest.raises(UnicompError, match=r"doc.md:2: ts report: unknown part"):
        regenerate(bad, doc, tmp_path)


def test_ts_report_command_prints_the_tables(tmp_path, capsys):
    for seed in range(3):
        write_run(tmp_path / f"fpt-s{seed}", "Set", seed, 0.9)
    assert main(["ts", "report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "## classification" in out and "## verdicts" in out and "| Set |" in out
    assert main(["ts", "report", str(tmp_path / "absent")]) == 2
    assert "not a folder of runs" in capsys.readouterr().err


def test_the_campaign_script_lists_commands_the_cli_accepts():
    """scripts/ts_campaign.sh with DRY_RUN=1: every command it would run parses, each run
    folder is named once, and every set and series aeon ships is in it."""
    import shlex
    import subprocess
    import sys

    pytest.importorskip("aeon")
    from unicomp.cli import build_parser
    from unicomp.data import timeseries as ts

    root = Path(__file__).resolve().parents[1]
    env = {"DRY_RUN": "1", "UNICOMP": f"{sys.executable} -m unicomp", "PATH": "/usr/bin:/bin"}
    env["PYTHONPATH"] = str(root / "src")
    lines = subprocess.run(
        ["bash", str(root / "scripts" / "ts_campaign.sh")],
        capture_output=True, text=True, check=True, env=env, cwd=root,
    ).stdout.splitlines()  # fmt: skip
    outs = []
    parser = build_parser()
    for line in lines:
        argv = shlex.split(line)[3:]  # after "<python> -m unicomp"
        args = parser.parse_args(argv)
        outs.append(args.out)
    assert len(outs) == len(set(outs)) and all(o.startswith("results/timeseries/") for o in outs)
    text = "\n".join(lines)
    for name in ts.bundled_classification() + ts.bundled_forecasting():
        assert f"name={name} " in text
    assert "--task-arg name=JapaneseVowels --task-arg normalize=none" in text
