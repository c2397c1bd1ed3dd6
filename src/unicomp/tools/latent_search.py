"""Choose the latent array size N automatically: ``unicomp perceiver search-latents``.

The Perceiver IO paper fixes N by hand per domain (sec. 4) and names tuning it as open; the
cost of the deep part grows as N^2 (sec. 3.1), so the smallest N that does the job is worth
finding. The mechanism here is the plain one, on a budget: train one run per candidate N for
the same number of steps, measure validation accuracy (or loss, for tasks selected by loss)
and cost (forward FLOPs per example, measured seconds per training step), and pick the
**smallest N whose validation score is within ``tolerance`` of the best** (absolute: 0.01 =
one accuracy point). Test accuracy is reported, never used to choose.

Writes into the output folder: one run folder per candidate (``latents-<N>/``, reused if it
already holds a metrics.json, so a killed search continues), ``latents.csv``, ``latents.md``
and ``choice.json``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

from unicomp.config import PerceiverConfig
from unicomp.errors import UnicompError
from unicomp.files import atomic_write_json, atomic_write_text
from unicomp.runs import markdown_table

COLUMNS = [
    "num_latents",
    "val_accuracy",
    "val_loss",
    "test_accuracy",
    "flops_per_example",
    "seconds_per_step",
    "trainable_params",
    "steps",
    "run",
]


def pick_latents(
    rows: list[dict], tolerance: float, metric: str = "val_accuracy", higher_is_better: bool = True
) -> dict:
    """The row with the smallest ``num_latents`` whose ``metric`` is within ``tolerance`` of
    the best row's (ties: fewer FLOPs). A pure function of the table."""
    if not rows:
        raise ValueError("no candidates to choose from")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    scores = [r[metric] for r in rows]
    if higher_is_better:
        best = max(scores)
        good = [r for r in rows if r[metric] >= best - tolerance]
    else:
        best = min(scores)
        good = [r for r in rows if r[metric] <= best + tolerance]
    return min(good, key=lambda r: (r["num_latents"], r.get("flops_per_example", 0)))


def _best_val_loss(run: Path, best_step: int) -> float:
    with (run / "curve.csv").open() as f:
        for row in csv.DictReader(f):
            if int(float(row["step"])) == best_step:
                return float(row["val_loss"])
    return float("nan")


def _row(n: int, run: Path, metrics: dict) -> dict:
    return {
        "num_latents": n,
        "val_accuracy": metrics["val_accuracy"],
        "val_loss": _best_val_loss(run, metrics["best_step"]),
        "test_accuracy": metrics["test_accuracy"],
        "flops_per_example": metrics["flops_per_example"],
        # Wall time of the training loop per step, its periodic validation passes included.
        "seconds_per_step": metrics["train_seconds"] / max(metrics["steps"], 1),
        "trainable_params": metrics["trainable_params"],
        "steps": metrics["steps"],
        "run": str(run),
    }


def format_table(rows: list[dict], chosen: int | None = None) -> str:
    """A markdown table of the candidates; the chosen size is marked."""
    head = ["latents", "val acc", "val loss", "test acc", "MFLOPs/example", "ms/step", "params", ""]
    cells = [
        [
            r["num_latents"],
            f"{r['val_accuracy']:.4f}",
            f"{r['val_loss']:.4f}",
            f"{r['test_accuracy']:.4f}",
            f"{r['flops_per_example'] / 1e6:.3f}",
            f"{1000 * r['seconds_per_step']:.1f}",
            r["trainable_params"],
            "**chosen**" if r["num_latents"] == chosen else "",
        ]
        for r in rows
    ]
    return markdown_table(head, cells, align=["---:"] * 7 + [":--"]) + "\n"


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def default_search_out(cfg: PerceiverConfig) -> Path:
    return Path("runs") / f"search-latents-{cfg.task}-{cfg.model}-s{cfg.train.seed}"


def search_latents(
    cfg: PerceiverConfig, latents: list[int], tolerance: float, out: Path | None = None
) -> dict:
    """Train ``cfg`` once per latent size; write and return the table and the choice."""
    from unicomp.experiments.perceiver import run_perceiver
    from unicomp.tasks.catalog import TASKS

    if cfg.pretrained:
        raise UnicompError("search-latents builds from scratch; a checkpoint fixes its latents")
    if not latents or any(n < 1 for n in latents):
        raise UnicompError(f"--latents: expected positive sizes, got {latents}")
    out = Path(out or cfg.out or default_search_out(cfg))
    select_by = TASKS.entry(cfg.task).load().select_by
    rows = []
    for n in sorted(set(latents)):
        run = out / f"latents-{n}"
        if (run / "metrics.json").exists():  # done before: a resumed search reuses it
            metrics = json.loads((run / "metrics.json").read_text())
        else:
            one = dataclasses.replace(
                cfg, num_latents=n, out=str(run), train=dataclasses.replace(cfg.train)
            )
            metrics = run_perceiver(one, resume=(run / "checkpoint.pt").exists())
        rows.append(_row(n, run, metrics))
    if select_by == "loss":
        choice = pick_latents(rows, tolerance, "val_loss", higher_is_better=False)
    else:
        choice = pick_latents(rows, tolerance, "val_accuracy")
    table = format_table(rows, choice["num_latents"])
    atomic_write_text(out / "latents.csv", _csv(rows))
    atomic_write_text(
        out / "latents.md",
        f"Latent size search: task {cfg.task}, model {cfg.model}, {cfg.train.steps} steps "
        f"per size, tolerance {tolerance} on validation {select_by}.\n\n{table}",
    )
    result = {
        "task": cfg.task,
        "chosen_num_latents": choice["num_latents"],
        "selected_by": f"val_{select_by}",
        "tolerance": tolerance,
        "rows": rows,
    }
    atomic_write_json(out / "choice.json", result)
    return result | {"table": table, "out": str(out)}
