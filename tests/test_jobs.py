"""``unicomp.tools.jobs``: the one plan/skip/resume rule and the one runner of ``fpt ablate`` and
``reproduce`` (child processes of each family's train command, a log per cell)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unicomp.config import DTConfig, FPTConfig, PerceiverConfig, save_yaml
from unicomp.errors import UnicompError
from unicomp.tools.jobs import Cell, family, finished_metrics, plan, run_cells


def _cell(tmp_path: Path, key: str = "row/s0", **train) -> Cell:
    cfg = FPTConfig(task="bit-xor")
    cfg.train.steps, cfg.train.batch_size = 10, 8
    for name, value in train.items():
        setattr(cfg.train, name, value)
    cfg.out = str(tmp_path / key)
    return Cell(key, "row", "T", 0, cfg)


def _finished(cell: Cell, *files: str) -> Path:
    """The cell's folder as a run of its own config left it (config.yaml and ``files``)."""
    folder = Path(cell.cfg.out)
    folder.mkdir(parents=True, exist_ok=True)
    save_yaml(cell.cfg, folder / "config.yaml")
    for name in files:
        (folder / name).write_text(json.dumps({"steps": cell.cfg.train.steps}))
    return folder


def test_plan_skips_a_finished_run_resumes_a_longer_one_and_starts_the_rest(tmp_path):
    cell = _cell(tmp_path)
    assert plan(cell) == "new"  # no folder
    folder = _finished(cell)  # a run killed before its first checkpoint: cleared, started anew
    assert plan(cell) == "new" and not (folder / "config.yaml").exists()
    _finished(cell, "checkpoint.pt")
    assert plan(cell) == "resume"
    _finished(cell, "metrics.json")
    assert plan(cell) == "skip"
    assert plan(_cell(tmp_path, steps=20)) == "resume"  # a larger budget trains on
    with pytest.raises(
        UnicompError, match=r"cell row/s0: .* other settings \(train.batch_size 8 -> 4\)"
    ):
        plan(_cell(tmp_path, batch_size=4))


def test_a_cell_whose_need_failed_is_not_run_and_nothing_starts(tmp_path):
    refused = _cell(tmp_path, "a/s0")
    _finished(refused, "metrics.json")
    refused = _cell(tmp_path, "a/s0", batch_size=4)  # the folder holds other settings
    after = _cell(tmp_path, "b/s0")
    after.needs = [refused.key]
    events = list(run_cells([refused, after], tmp_path / "logs", jobs=2, threads=1))
    assert [(e.cell.key, e.what) for e in events] == [("a/s0", "failed"), ("b/s0", "not run")]
    assert "other settings" in refused.error and after.error == "needs a/s0, which failed"
    assert after.status == "failed" and all(e.log is None for e in events)
    assert not (tmp_path / "b").exists() and not list((tmp_path / "logs").iterdir())


def test_family_names_each_config_s_train_command():
    assert [family(c()) for c in (FPTConfig, DTConfig, PerceiverConfig)] == [
        "fpt",
        "dt",
        "perceiver",
    ]
    with pytest.raises(UnicompError, match="no train command for a dict"):
        family({})


def test_a_perceiver_cell_trains_in_its_own_command_and_a_rerun_skips_it(tmp_path):
    cfg = PerceiverConfig(task="digits-inpaint", num_latents=8, d_latent=16, num_blocks=1)
    cfg.self_attends_per_block = 1
    cfg.train.steps, cfg.train.eval_every, cfg.train.batch_size = 4, 2, 8
    cfg.train.progress = False
    cfg.out = str(tmp_path / "perceiver" / "s0")
    cell = Cell("perceiver/s0", "perceiver", "perceiver", 0, cfg)
    logs = tmp_path / "logs"
    [event] = run_cells([cell], logs, jobs=1, threads=1)
    assert event.what == "done" and cell.status == "done", event.log.read_text()[-2000:]
    assert event.log == logs / "perceiver__s0.log" and event.seconds > 0
    first = event.log.read_text().splitlines()[0]
    assert first.startswith("$ ") and " -m unicomp perceiver train --config " in first
    assert (logs / "perceiver__s0.yaml").is_file()
    assert finished_metrics(cell)["steps"] == 4

    [again] = run_cells([cell], logs, jobs=1, threads=1)
    assert again.what == "skipped" and again.log is None
