"""Build and run experiments from configs: ``run_fpt(cfg)`` writes a complete run folder.

Run folder: config.yaml (resolved config), metrics.json, curve.csv, best.safetensors,
checkpoint.pt.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

import unicomp.catalog  # noqa: F401  (registers everything)
from unicomp.backbones.hf import load_backbone
from unicomp.config import FPTConfig, save_yaml
from unicomp.errors import UnicompError
from unicomp.files import atomic_write_json
from unicomp.freezing import apply_freeze_policy, count_parameters
from unicomp.models.fpt import FPT
from unicomp.registry import FREEZE_POLICIES, TASKS
from unicomp.tasks.base import Task
from unicomp.train import train


def task_defaults(name: str) -> dict:
    return dict(TASKS.entry(name).load().default_train)


def build_task(name: str, args: dict) -> Task:
    cls = TASKS.entry(name).load()
    try:
        return cls(**args)
    except TypeError as err:
        raise UnicompError(f"task {name!r}: bad --task-arg: {err}") from None
    except ValueError as err:
        raise UnicompError(f"task {name!r}: {err}") from None


def build_fpt(cfg: FPTConfig, task: Task) -> tuple[FPT, dict]:
    """The FPT model with its freeze policy applied, and a summary of what was built."""
    FREEZE_POLICIES.entry(cfg.freeze)  # fail on a bad name before loading any weights
    torch.manual_seed(cfg.train.seed)  # new layers (and random:<name> backbones) are seeded
    backbone = load_backbone(
        cfg.backbone,
        dropout=cfg.backbone_dropout,
        attn_implementation=cfg.attn_implementation,
        seed=cfg.train.seed,
    )
    model = FPT(backbone, task.spec, readout=cfg.readout)
    groups = apply_freeze_policy(model, cfg.freeze)
    trainable, total = count_parameters(model)
    summary = {
        "backbone_source": backbone.source,
        "backbone_type": backbone.model_type,
        "backbone_is_decoder": backbone.is_decoder,
        "positions": model.positions,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": trainable / total,
        "trainable_by_group": groups,
    }
    return model, summary


def default_out(cfg: FPTConfig) -> Path:
    backbone = cfg.backbone.replace("/", "_").replace(":", "-")
    return Path("runs") / f"{cfg.task}-{backbone}-{cfg.freeze}-s{cfg.train.seed}"


def run_fpt(cfg: FPTConfig, resume: bool = False) -> dict:
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    cfg.out = str(out)
    task = build_task(cfg.task, cfg.task_args)
    model, summary = build_fpt(cfg, task)
    out.mkdir(parents=True, exist_ok=True)
    is_main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 writes
    if not resume and is_main:
        save_yaml(cfg, out / "config.yaml")
    t0 = time.perf_counter()
    result = train(model, task, cfg.train, out, resume=resume)
    metrics = {
        "task": cfg.task,
        "backbone": cfg.backbone,
        "freeze": cfg.freeze,
        "seed": cfg.train.seed,
        **result,
        **summary,
        "data_source": task.data_source,
        "split_sizes": task.split_sizes(),
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    if is_main:
        atomic_write_json(out / "metrics.json", metrics)
    return metrics
