"""The README's main job: FPT on bit XOR and bit memory, a pretrained backbone next to its
random-init twin, printed as one table. A few minutes on 2 CPU cores with minilm-l6.

The demo's bit memory is a smaller instance than the paper's (5 strings of 50 bits, 10 bits per
token: 30 tokens instead of 120) so that it learns visibly within minutes on a CPU; the task
defaults (the paper's sizes) are what docs/results.md reports.
"""

from __future__ import annotations

import json
from pathlib import Path

from unicomp.config import FPTConfig, TrainConfig
from unicomp.experiments import run_fpt, task_defaults

# task -> (task arguments, training budget); both runs of a pair stop at 99% validation.
DEMO = {
    "bit-xor": ({}, {"steps": 600, "eval_every": 25, "stop_at_target": True}),
    "bit-memory": (
        {"n_bits": 50, "bits_per_token": 10},
        {"steps": 400, "eval_every": 50, "lr": 3e-3, "stop_at_target": True},
    ),
}


def run_demo(out: Path, backbone: str = "minilm-l6", quick: bool = False) -> list[dict]:
    rows = []
    for task, (task_args, budget) in DEMO.items():
        for name in (backbone, f"random:{backbone}"):
            train = {**task_defaults(task), **budget, "progress": True}
            if quick:
                train.update(steps=4, eval_every=2)
            folder = out / f"{task}-{name.replace(':', '-')}"
            if (folder / "metrics.json").exists():
                metrics = json.loads((folder / "metrics.json").read_text())  # already done
            else:
                cfg = FPTConfig(
                    task=task,
                    backbone=name,
                    out=str(folder),
                    task_args=task_args,
                    train=TrainConfig(**train),
                )
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
