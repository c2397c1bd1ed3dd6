"""The recipes of docs/architecture.md for a task and a multi-run command, each done with a
toy one: a task registered in the task registry alone trains two steps, and a command built on
the one job runner (unicomp.tools.jobs) runs its cells, then skips them when run again. (The recipes
for a backbone family and an offline-RL method: tests/test_backbone_families.py and
tests/test_offline_rl_methods.py; a task of another package: tests/test_entry_points.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unicomp.config import FPTConfig
from unicomp.tasks.base import Batch, TaskSpec, TensorTask
from unicomp.tasks.catalog import TASKS
from unicomp.tools.jobs import Cell, finished_metrics, run_cells


class ToySign(TensorTask):
    """Is the first of ``length`` numbers positive? Fixed examples from a seeded generator."""

    name = "toy-sign"

    def __init__(self, length: int = 4):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(48, length, 1, generator=gen)
        y = (x[:, 0, 0] > 0).long()
        self.spec = TaskSpec(max_len=length, d_in=1, d_out=2, n_classes=2)
        self.data = {
            "train": Batch(x[:32], y[:32]),
            "val": Batch(x[32:40], y[32:40]),
            "test": Batch(x[40:], y[40:]),
        }
        self.data_source = f"generated: 48 sequences of {length} numbers"


def _fast(cfg: FPTConfig, out: Path) -> FPTConfig:
    cfg.backbone, cfg.backbone_layers, cfg.attn_implementation = "random:minilm-l6", 1, "eager"
    cfg.train.steps, cfg.train.eval_every, cfg.train.batch_size = 2, 2, 4
    cfg.train.precision, cfg.train.progress = "fp32", False
    cfg.out = str(out)
    return cfg


@pytest.fixture
def toy_task(monkeypatch):
    """The task's one registry line (``TASKS.register(...)`` in unicomp/tasks/catalog.py), for
    this test only."""
    assert "bit-xor" in TASKS  # the built-in tasks are there, so the copy below holds them
    monkeypatch.setattr(TASKS, "_entries", dict(TASKS._entries))
    TASKS.register("toy-sign", ToySign, "sign of the first number")


def test_a_task_registered_in_the_registry_trains_two_steps(toy_task, tmp_path):
    from unicomp.experiments import load_run
    from unicomp.experiments.fpt import run_fpt

    cfg = _fast(FPTConfig(task="toy-sign", task_args={"length": 5}), tmp_path / "run")
    metrics = run_fpt(cfg)
    assert metrics["task"] == "toy-sign" and metrics["steps"] == 2
    assert metrics["data_source"] == "generated: 48 sequences of 5 numbers"
    assert load_run(tmp_path / "run").task.spec.max_len == 5


def toy_sweep(out: Path, seeds: list[int], logs: Path) -> list[tuple[int, str, float]]:
    """A multi-run command as the recipe builds one: its cells (one run folder and config
    each), run by the one job runner, and a table of what they gave."""
    cells = []
    for seed in seeds:
        cfg = _fast(FPTConfig(task="bit-xor"), out / f"toy-s{seed}")
        cfg.train.seed = seed
        cells.append(Cell(f"toy/s{seed}", "toy", "toy sweep", seed, cfg))
    finished = {event.cell.key: event.what for event in run_cells(cells, logs, jobs=1)}
    return [
        (cell.seed, finished[cell.key], (finished_metrics(cell) or {}).get("test_accuracy"))
        for cell in cells
    ]


def test_a_multi_run_command_runs_its_cells_and_skips_them_when_run_again(tmp_path):
    table = toy_sweep(tmp_path / "runs", [0, 1], tmp_path / "logs")
    assert [(seed, what) for seed, what, _ in table] == [(0, "done"), (1, "done")]
    assert all(isinstance(accuracy, float) for _, _, accuracy in table)
    again = toy_sweep(tmp_path / "runs", [0, 1], tmp_path / "logs")
    assert again == [(seed, "skipped", accuracy) for seed, _, accuracy in table]
