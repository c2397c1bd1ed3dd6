"""``unicomp fpt ablate``: suites of FPT comparisons run end to end, skip what is finished,
refuse folders that hold other settings, and name what is wrong in a bad suite file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from unicomp.cli import main
from unicomp.config import FPTConfig
from unicomp.errors import UnicompError
from unicomp.tools.ablate import Cell, _pick, load_suite, run_suite


def _suite(tmp_path: Path, rows: list[dict], **extra) -> Path:
    data = {
        "name": "tiny",
        "task": "bit-xor",
        "seeds": [0],
        "train": {"steps": 4, "batch_size": 8, "eval_every": 2, "eval_batch_size": 64},
        "tables": [{"title": "T", "rows": rows}],
        **extra,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(path: Path, out: Path, **kw):
    said: list[str] = []
    suite = load_suite(str(path), out, **kw)
    result = run_suite(suite, jobs=2, threads=1, say=said.append)
    return suite, result, said


def test_tiny_suite_runs_end_to_end_and_a_rerun_skips_finished_cells(tmp_path, tiny_gpt2):
    rows = [
        {"label": "FPT", "backbone": tiny_gpt2, "freeze": "paper", "paper": 100},
        {"label": "output only", "backbone": tiny_gpt2, "freeze": "output-only"},
    ]
    path = _suite(tmp_path, rows)
    suite, result, said = _run(path, tmp_path / "out")
    assert [c["status"] for c in result["cells"]] == ["done", "done"], said
    md = (suite.out / "results.md").read_text()
    assert "| FPT |" in md and "| output only |" in md and "Protocol **paper**" in md
    for row in result["rows"]:
        assert row["seeds_done"] == 1 and 0 <= row["test_mean"] <= 1
        assert row["trainable_params"] > 0
    assert result["rows"][0]["paper"] == 100
    assert (suite.out / "t-curves.png").stat().st_size > 1000
    assert (suite.out / "t-bars.png").stat().st_size > 1000
    saved = json.loads((suite.out / "results.json").read_text())
    assert {c["key"] for c in saved["cells"]} == {"tiny/fpt/s0", "tiny/output-only/s0"}
    mtimes = {p: p.stat().st_mtime_ns for p in suite.out.rglob("metrics.json")}

    _, again, said = _run(path, tmp_path / "out")
    assert [c["status"] for c in again["cells"]] == ["skipped", "skipped"]
    assert all("skipped" in line for line in said)
    assert {p: p.stat().st_mtime_ns for p in suite.out.rglob("metrics.json")} == mtimes
    assert again["rows"][0]["test_accuracy"] == result["rows"][0]["test_accuracy"]

    # A larger budget continues each finished cell from its checkpoint.
    _, longer, _ = _run(path, tmp_path / "out", steps=6)
    assert [c["status"] for c in longer["cells"]] == ["done", "done"]
    assert [c["steps"] for c in longer["cells"]] == [6, 6]


def test_a_folder_with_other_settings_is_refused_by_name(tmp_path, tiny_gpt2):
    rows = [{"label": "FPT", "backbone": tiny_gpt2, "freeze": "paper"}]
    _run(_suite(tmp_path, rows), tmp_path / "out")
    changed = _suite(tmp_path, rows, train={"steps": 4, "batch_size": 4, "eval_every": 2})
    _, result, said = _run(changed, tmp_path / "out")
    assert result["cells"][0]["status"] == "failed"
    assert "train.batch_size 8 -> 4" in result["cells"][0]["error"], said


def test_a_killed_start_is_cleared_and_the_cell_runs(tmp_path, tiny_gpt2):
    rows = [{"label": "FPT", "backbone": tiny_gpt2, "freeze": "paper"}]
    path = _suite(tmp_path, rows)
    suite = load_suite(str(path), tmp_path / "out")
    folder = Path(suite.cells[0].cfg.out)
    folder.mkdir(parents=True)
    # What a run killed before its first checkpoint leaves: its config.yaml alone.
    from unicomp.config import save_yaml

    save_yaml(suite.cells[0].cfg, folder / "config.yaml")
    _, result, said = _run(path, tmp_path / "out")
    assert result["cells"][0]["status"] == "done", said


def test_prepare_runs_first_and_rows_use_its_backbone(tmp_path, tiny_gpt2):
    prepare = {
        "pre": {
            "seed": 0,
            "task": "bit-xor",
            "backbone": f"random:{tiny_gpt2}",
            "freeze": "full",
            "train": {"steps": 2, "eval_every": 2},
        }
    }
    rows = [{"label": "transfer", "backbone": "run:@pre", "freeze": "paper"}]
    path = _suite(tmp_path, rows, prepare=prepare, seeds=[0, 1])
    suite, result, said = _run(path, tmp_path / "out")
    keys = [c["key"] for c in result["cells"]]
    assert keys[0] == "_prepare/pre/s0" and len(keys) == 3  # one prepare run for both seeds
    assert all(c["status"] == "done" for c in result["cells"]), said
    metrics = json.loads((Path(suite.cells[1].cfg.out) / "metrics.json").read_text())
    assert metrics["backbone"] == f"run:{tmp_path / 'out' / '_prepare' / 'pre' / 's0'}"


def test_sweep_protocol_makes_one_cell_per_learning_rate_and_picks_on_validation(
    tmp_path, tiny_gpt2
):
    rows = [{"label": "FPT", "backbone": tiny_gpt2, "freeze": "paper"}]
    path = _suite(tmp_path, rows, sweep={"lrs": [1e-3, 1e-2], "patience": 3})
    suite = load_suite(str(path), tmp_path / "out", protocol="sweep")
    assert [c.key for c in suite.cells] == ["tiny/fpt/s0/lr1e-3", "tiny/fpt/s0/lr1e-2"]
    assert [c.cfg.train.lr for c in suite.cells] == [1e-3, 1e-2]
    assert all(c.cfg.train.patience == 3 for c in suite.cells)
    a, b = (Cell(f"k{i}", "FPT", "T", 0, FPTConfig(), lr=lr) for i, lr in enumerate([1e-3, 1e-2]))
    a.status = b.status = "done"
    a.metrics, b.metrics = {"val_accuracy": 0.7}, {"val_accuracy": 0.9}
    assert _pick([a, b]) is b
    b.metrics = {"val_accuracy": 0.7}  # a tie goes to the lower rate
    assert _pick([a, b]) is a
    b.status = "failed"
    a.status = "failed"
    assert _pick([a, b]) is None


@pytest.mark.parametrize(
    "change, message",
    [
        ({"protocol": "tuned"}, "protocol must be one of paper, sweep"),
        ({"seeds": "0,1"}, "seeds must be a list of integers"),
        ({"tables": []}, "tables must be a non-empty list"),
        ({"colour": 1}, "unknown key(s) colour"),
        ({"tables": [{"rows": [{"backbone": "x", "lr": 1}]}]}, "unknown key(s) lr"),
        ({"tables": [{"rows": [{"backbone": "run:@nothing"}]}]}, "run:@nothing names no prepare"),
        ({"tables": [{"rows": [{"backbone": "x", "train": {"steps": 0}}]}]}, "steps"),
        ({"tables": [{"rows": [{"backbone": "x", "lrs": []}]}]}, "lrs must be a list"),
    ],
)
def test_bad_suite_files_name_what_is_wrong(tmp_path, change, message):
    path = _suite(tmp_path, [{"backbone": "minilm-l6"}], **change)
    with pytest.raises(UnicompError, match="tiny.yaml") as err:
        load_suite(str(path), tmp_path / "out")
    assert message in str(err.value)


def test_cli_dry_run_lists_cells_and_unknown_suites_are_named(tmp_path, capsys):
    assert main(["fpt", "ablate", "--suite", "bit-xor", "--dry-run", "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    assert "bit-xor/fpt/s0" in out and "_prepare/bit-memory-full/s0" in out
    assert "lstm:3x384" in out and "stats:minilm-l6" in out
    assert main(["fpt", "ablate", "--suite", "nope", "--dry-run"]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err
    assert main(["fpt", "ablate", "--suite", "bit-xor", "--jobs", "0"]) == 2


@pytest.mark.parametrize("name", ["bit-xor", "bit-memory", "mnist", "listops"])
def test_shipped_suites_load(name, tmp_path):
    suite = load_suite(name, tmp_path)
    labels = {c.row for c in suite.cells}
    for row in ("FPT", "frozen random init", "frozen statistics-matched init",
                "frozen bit-memory pretrained", "full transformer (3 layers)", "LSTM (3 layers)",
                "output only", "+ norms", "+ input", "+ feed-forward", "+ attention"):  # fmt: skip
        assert row in labels
    assert len(suite.cells) == 14 * 3 and suite.seeds == [0, 1, 2]


def test_the_shipped_model_size_suite_pairs_each_backbone_with_its_random_twin(tmp_path):
    suite = load_suite("model-size", tmp_path)
    backbones = {c.cfg.backbone for c in suite.cells}
    assert backbones == {"minilm-l6", "smollm2-135m", "random:minilm-l6", "random:smollm2-135m"}
    assert len(suite.cells) == 4 * 3 and {c.cfg.freeze for c in suite.cells} == {"paper"}


def test_the_shipped_sweep_suite_has_one_cell_per_rate(tmp_path):
    suite = load_suite("bit-xor-sweep", tmp_path)
    assert suite.protocol == "sweep"
    assert len(suite.cells) == 6 * 3 * 3
    assert {c.cfg.train.lr for c in suite.cells} == {3e-4, 1e-3, 3e-3}
    assert all(c.cfg.train.patience == 4 for c in suite.cells)


def test_report_only_tables_the_finished_cells_and_trains_nothing(tmp_path, tiny_gpt2):
    from unicomp.tools.ablate import report_suite

    done = [{"label": "FPT", "backbone": tiny_gpt2, "freeze": "paper"}]
    _run(_suite(tmp_path, done), tmp_path / "out")
    more = done + [{"label": "later", "backbone": tiny_gpt2, "freeze": "output-only"}]
    suite = load_suite(str(_suite(tmp_path, more)), tmp_path / "out")
    result = report_suite(suite)
    assert [c["status"] for c in result["cells"]] == ["skipped", "not run"]
    assert not Path(suite.cells[1].cfg.out).exists()  # nothing was trained or created
    md = (suite.out / "results.md").read_text()
    assert "| later (1 seed(s) missing: s0: not finished) |" in md
    assert main(["fpt", "ablate", "--suite", str(tmp_path / "tiny.yaml"), "--out",
                 str(tmp_path / "out"), "--report-only"]) == 0  # fmt: skip
