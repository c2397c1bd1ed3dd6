"""Tables from run folders: ``unicomp report runs/*`` prints one markdown row per run.

The numbers come from each run's metrics.json and config.yaml, so a table in docs/ can be
regenerated from the folders that produced it.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from unicomp.errors import UnicompError

COLUMNS = (
    "task",
    "backbone",
    "freeze",
    "seed",
    "test_accuracy",
    "steps",
    "stopped_by",
    "steps_to_target",
    "train_seconds",
    "trainable_params",
)


def _get(run: dict, column: str):
    if column == "backbone" and "backbone" not in run and "model" in run:
        # Perceiver runs have no backbone: name the model and its latent array instead
        latents = run.get("num_latents")
        return run["model"] + (f" (N={latents})" if latents else "")
    return run.get(column)


def load_runs(folders: list[str]) -> list[dict]:
    runs = []
    for folder in folders:
        path = Path(folder) / "metrics.json"
        if not path.exists():
            continue  # unfinished or not a run folder
        try:
            runs.append({**json.loads(path.read_text()), "run": str(folder)})
        except json.JSONDecodeError as err:
            raise UnicompError(f"{path} is not valid JSON: {err}") from None
    if not runs:
        raise UnicompError(f"no finished runs (metrics.json) in {', '.join(folders)}")
    return runs


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if value <= 1 else f"{value:.0f}"
    return "-" if value is None else str(value)


def runs_table(runs: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in runs:
        lines.append("| " + " | ".join(_cell(_get(r, c)) for c in COLUMNS) + " |")
    return "\n".join(lines)


def seeds_table(runs: list[dict]) -> str:
    """Mean and spread over seeds of each (task, backbone, freeze)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        groups[(r.get("task"), _get(r, "backbone"), r.get("freeze"))].append(r)
    lines = [
        "| task | backbone | freeze | seeds | test accuracy mean ± std | steps to target "
        "(each seed) |",
        "|---|---|---|---|---|---|",
    ]
    for (task, backbone, freeze), rs in groups.items():
        acc = [r["test_accuracy"] for r in rs]
        spread = statistics.stdev(acc) if len(acc) > 1 else 0.0
        reached = ", ".join(_cell(r.get("steps_to_target")) for r in rs)
        lines.append(
            f"| {task} | {backbone} | {freeze} | {len(rs)} | "
            f"{statistics.mean(acc):.4f} ± {spread:.4f} | {reached} |"
        )
    return "\n".join(lines)
