"""The README's main job: FPT on bit XOR and bit memory, a pretrained backbone next to its
random-init twin, printed as one table. A few minutes on 2 CPU cores with minilm-l6.

The demo's bit memory is a smaller instance than the paper's (5 strings of 50 bits, 10 bits per
token: 30 tokens instead of 120) so that it learns visibly within minutes on a CPU; the task
defaults (the paper's sizes) are what docs/results.md reports.
"""

from __future__ import annotations

import json
from pathlib import Path

from unicomp.config import FPTConfig, TrainConfig, load_yaml
from unicomp.errors import UnicompError
from unicomp.experiments.common import task_defaults
from unicomp.experiments.fpt import run_fpt

# task -> (task arguments, training budget); both runs of a pair stop at 99% validation.
DEMO = {
    "bit-xor": ({}, {"steps": 600, "eval_every": 25, "stop_at_target": True}),
    "bit-memory": (
        {"n_bits": 50, "bits_per_token": 10},
        {"steps": 400, "eval_every": 50, "lr": 3e-3, "stop_at_target": True},
    ),
}


def default_out(quick: bool) -> Path:
    """Where the demo's runs go: the quick ones apart, so that a later full demo does not
    reprint them as its results."""
    return Path("runs/demo-quick" if quick else "runs/demo")


def _check_budget(folder: Path, train: dict, quick: bool) -> None:
    """A finished (or started) run in ``folder`` is reused only if it was trained as this
    demo would train it: a --quick run is not a full demo's result, nor the reverse."""
    saved = load_yaml(folder / "config.yaml").get("train") or {}
    differ = [k for k, v in train.items() if k != "progress" and saved.get(k) != v]
    if differ:
        listed = ", ".join(f"{k} {saved.get(k)!r} (this demo: {train[k]!r})" for k in differ)
        raise UnicompError(
            f"{folder} holds a demo run trained otherwise: {listed}; it is not this "
            f"{'--quick ' if quick else ''}demo's result. Use another --out or delete it"
        )


def run_demo(out: Path | None = None, backbone: str = "minilm-l6", quick: bool = False) -> list:
    out = default_out(quick) if out is None else out
    plan = []
    for task, (task_args, budget) in DEMO.items():
        for name in (backbone, f"random:{backbone}"):
            train = {**task_defaults(task), **budget, "progress": True}
            if quick:
                train.update(steps=4, eval_every=2)
            folder = out / f"{task}-{name.replace(':', '-')}"
            if (folder / "config.yaml").exists():  # every folder checked before any training
                _check_budget(folder, train, quick)
            cfg = FPTConfig(
                task=task,
                backbone=name,
                out=str(folder),
                task_args=task_args,
                train=TrainConfig(**train),
            )
            plan.append((folder, cfg))
    rows = []
    for folder, cfg in plan:
        if (folder / "metrics.json").exists():
            metrics = json.loads((folder / "metrics.json").read_text())  # already done
        else:
            metrics = run_fpt(cfg, resume=(folder / "checkpoint.pt").exists())
        rows.append(metrics)
    print_table(rows)
    return rows


def print_table(rows: list[dict]) -> None:
    header = (
        "task",
        "data",
        "backbone",
        "test acc",
        "steps",
        "steps to 99% val",
        "trainable",
        "seconds",
    )
    lines = [header] + [
        (
            r["task"],
            r["data_source"].removeprefix("generated: ").split(";")[0].split(", mask")[0],
            r["backbone"],
            f"{r['test_accuracy']:.4f}",
            str(r["steps"]),
            str(r["steps_to_target"] or "-"),
            f"{r['trainable_params']:,}",
            f"{r['train_seconds']:.0f}",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for name, source in {r["backbone"]: r["backbone_source"] for r in rows}.items():
        print(f"{name}: {source}")
