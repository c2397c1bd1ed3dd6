"""The one training loop, shared by every model and task.

AdamW, warm-up then a constant/cosine/linear schedule, gradient clipping and accumulation,
bf16 autocast on CPU and GPU, evaluation on the whole validation split, best-checkpoint
keeping (selected on validation, never on test), a progress bar with live loss and accuracy,
a learning-curve CSV, and atomic checkpoints that a killed run resumes from.

The model is called as ``model(batch.x, batch.mask) -> logits``; the task owns the loss and
the metric. Training batches are a pure function of (seed, step) (unicomp.tasks.base), so a
resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import nn
from tqdm.auto import tqdm

from unicomp.config import TrainConfig
from unicomp.errors import TrainingDivergedError, UnicompError
from unicomp.files import atomic_write, atomic_write_text
from unicomp.tasks.base import Batch, Task, iter_chunks

CURVE_FIELDS = ["step", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(state) != expected:
        raise UnicompError(
            f"checkpoint does not fit this model: missing {sorted(expected - set(state))[:3]}, "
            f"unexpected {sorted(set(state) - expected)[:3]}"
        )
    model.load_state_dict(state, strict=False)


def _lr_lambda(cfg: TrainConfig):
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        return max(0.0, 1 - frac)

    return factor


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UnicompError("nothing to train: the freeze policy left no trainable parameter")
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]  # biases and norm gains: no weight decay
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr)


@torch.no_grad()
def evaluate(
    model: nn.Module, task: Task, split: Batch, cfg: TrainConfig, device: torch.device
) -> dict[str, float]:
    """Loss and accuracy on a whole split (every example, in chunks)."""
    model.eval()
    hits = total = seq_hits = n = 0
    loss_sum = 0.0
    for chunk in iter_chunks(split, cfg.eval_batch_size):
        chunk = chunk.to(device)
        with autocast(device, cfg.precision):
            logits = model(chunk.x, chunk.mask)
        loss_sum += float(task.loss(logits, chunk.y)) * len(chunk)
        h, t, sh, sn = task.correct(logits, chunk.y)
        hits, total, seq_hits, n = hits + h, total + t, seq_hits + sh, n + sn
    return {
        "loss": loss_sum / max(n, 1),
        "accuracy": hits / max(total, 1),
        "sequence_accuracy": seq_hits / max(n, 1),
    }


@dataclass
class _State:
    step: int = 0
    best_val: float = -math.inf  # the selection score: accuracy, or minus the loss
    best_step: int = -1
    steps_to_target: int | None = None
    seconds: float = 0.0


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
    }


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(
        ("MT19937", s["numpy_keys"].numpy().astype(np.uint32), s["numpy_pos"], 0, 0.0)
    )


def _save_checkpoint(path: Path, model, opt, sched, state: _State) -> None:
    payload = {
        "model": trainable_state(model),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "state": vars(state).copy(),
        "rng": _rng_state(),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write(path, lambda f: f.write(buf.getbuffer()))


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint without running code from it (``weights_only=True``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncated files, refused globals
        raise UnicompError(
            f"checkpoint {path} could not be loaded safely: {str(err).splitlines()[0]}"
        ) from None


def _write_curve(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CURVE_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _read_curve(path: Path, upto: int) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return [{**r, "step": int(r["step"])} for r in rows if r["step"] <= upto]


def train(model: nn.Module, task: Task, cfg: TrainConfig, out: Path, resume: bool = False) -> dict:
    """Train ``model`` on ``task``; return metrics of the validation-selected checkpoint.

    Writes into ``out``: checkpoint.pt (resume state), best.safetensors (trainable weights of
    the best validation step), curve.csv (the learning curve).
    """
    device = pick_device(cfg.device)
    model.to(device)
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    ckpt_path, best_path, curve_path = (
        out / "checkpoint.pt",
        out / "best.safetensors",
        out / "curve.csv",
    )
    state = _State()
    if ckpt_path.exists() and not resume:
        raise UnicompError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    if resume:
        if not ckpt_path.exists():
            raise UnicompError(f"nothing to resume: {ckpt_path} does not exist")
        ckpt = load_checkpoint(ckpt_path)
        load_trainable_state(model, ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        state = _State(**ckpt["state"])
        _set_rng_state(ckpt["rng"])
    else:
        torch.manual_seed(cfg.seed)  # dropout stream
    rows = _read_curve(curve_path, state.step) if resume else []
    if cfg.batch_size % cfg.grad_accum:
        raise UnicompError(
            f"batch_size {cfg.batch_size} is not divisible by grad_accum {cfg.grad_accum}"
        )
    micro = cfg.batch_size // cfg.grad_accum
    val_split = task.split("val")
    run_loss = run_hits = run_total = 0.0
    started = time.perf_counter() - state.seconds
    bar = tqdm(
        total=cfg.steps,
        initial=state.step,
        disable=not cfg.progress,
        desc=task.name,
        dynamic_ncols=True,
        leave=False,
    )
    step = state.step
    while step < cfg.steps:
        model.train()
        batch = task.train_batch(step, cfg.batch_size, cfg.seed)
        for chunk in iter_chunks(batch, micro):
            chunk = chunk.to(device)
            with autocast(device, cfg.precision):
                logits = model(chunk.x, chunk.mask)
            loss = task.loss(logits, chunk.y)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"loss became {float(loss)} at step {step}; the last good checkpoint "
                    f"(step {state.step}) is kept in {ckpt_path}; lower --lr or set --grad-clip"
                )
            (loss / cfg.grad_accum).backward()
            h, t, _, _ = task.correct(logits.detach(), chunk.y)
            run_loss += float(loss.detach()) / cfg.grad_accum
            run_hits, run_total = run_hits + h, run_total + t
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], cfg.grad_clip
            )
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            val = evaluate(model, task, val_split, cfg, device)
            since = step - (rows[-1]["step"] if rows else 0)  # steps in the running means
            rows.append(
                {
                    "step": step,
                    "train_loss": run_loss / since,
                    "train_accuracy": run_hits / max(run_total, 1),
                    "val_loss": val["loss"],
                    "val_accuracy": val["accuracy"],
                    "lr": sched.get_last_lr()[0],
                    "seconds": time.perf_counter() - started,
                }
            )
            bar.set_postfix(
                loss=f"{run_loss / since:.4f}",
                acc=f"{run_hits / max(run_total, 1):.3f}",
                val=f"{val['accuracy']:.3f}",
            )
            run_loss = run_hits = run_total = 0.0
            score = val["accuracy"] if task.select_by == "accuracy" else -val["loss"]
            if score > state.best_val:
                state.best_val, state.best_step = score, step
                atomic_write(best_path, lambda f: f.write(save(trainable_state(model))))
            if state.steps_to_target is None and val["accuracy"] >= cfg.target_accuracy:
                state.steps_to_target = step
            state.step, state.seconds = step, time.perf_counter() - started
            _write_curve(curve_path, rows)
            _save_checkpoint(ckpt_path, model, opt, sched, state)
            if cfg.stop_at_target and state.steps_to_target is not None:
                break
    bar.close()
    train_seconds = time.perf_counter() - started
    load_trainable_state(model, load_file(best_path, device=str(device)))
    test = evaluate(model, task, task.split("test"), cfg, device)
    return {
        "test_accuracy": test["accuracy"],
        "test_sequence_accuracy": test["sequence_accuracy"],
        "test_loss": test["loss"],
        "val_accuracy": float(_read_curve(curve_path, state.best_step)[-1]["val_accuracy"]),
        "best_step": state.best_step,
        "steps": step,
        "steps_to_target": state.steps_to_target,
        "target_accuracy": cfg.target_accuracy,
        "train_seconds": round(train_seconds, 2),
        "final_train_accuracy": float(rows[-1]["train_accuracy"]) if rows else None,
        "device": str(device),
    }
