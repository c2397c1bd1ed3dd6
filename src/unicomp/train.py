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
import dataclasses
import io
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import nn

from unicomp.config import TrainConfig
from unicomp.errors import TrainingDivergedError, UnicompError
from unicomp.files import atomic_write, atomic_write_text, read_curve, run_taken
from unicomp.provenance import cpu_bf16_flags
from unicomp.tasks.base import Batch, Task, iter_chunks, length_buckets, pad_to_bucket
from unicomp.tracking import Tracker, progress_bar

CURVE_FIELDS = ["step", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"]


def pick_device(name: str) -> torch.device:
    """The device ``name`` names; ``auto``: a GPU where there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_device(name: str) -> torch.device:
    """The device a run computes on for ``name``: :func:`pick_device`'s, and under
    ``torchrun`` this rank's own GPU (``$LOCAL_RANK``) where that is a GPU."""
    device = pick_device(name)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def autocast(device: torch.device, precision: str):
    """bf16 autocast, or nothing for fp32; ``auto`` is resolved for ``device`` first."""
    if precision == "auto":
        precision = resolve_precision(device, precision)[0]
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


_RESOLVED: dict[str, tuple[str, str]] = {}  # device -> (precision, why), decided once


def tf32_capable(device: torch.device) -> bool:
    """A GPU with TF32 tensor cores (compute capability 8.0 or more)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def resolve_precision(device: torch.device, requested: str) -> tuple[str, str]:
    """``auto`` -> "bf16" or "fp32" for this device, and why (recorded in metrics.json).

    Decided by what the hardware can do, never by a timing (machine load would change the
    choice and with it the run's numbers): on a GPU, bf16 from compute capability 8.0 (Ampere;
    older cards emulate it, slower than fp32); on a CPU, bf16 where it multiplies bf16
    natively (the ``amx_bf16`` or ``avx512_bf16`` flag). On others (e.g. AVX2 only) bf16
    matmuls were measured 6-10x slower than fp32 and a whole FPT step 36x slower
    (docs/benchmarks.md), so a fixed bf16 default would be a trap.
    """
    if requested != "auto":
        return requested, "asked for"
    key = str(device)
    if key not in _RESOLVED:
        if device.type == "cuda":
            major, minor = torch.cuda.get_device_capability(device)
            ok = tf32_capable(device)  # bf16 and TF32 tensor cores came together (Ampere)
            why = (
                f"{torch.cuda.get_device_name(device)}: compute capability {major}.{minor} "
                f"({'native bf16' if ok else 'no native bf16'})"
            )
            _RESOLVED[key] = ("bf16" if ok else "fp32", why)
        elif device.type == "cpu":
            flags = cpu_bf16_flags()
            why = (
                f"this CPU has {', '.join(flags)}"
                if flags
                else "this CPU has neither amx_bf16 nor avx512_bf16"
            )
            _RESOLVED[key] = ("bf16" if flags else "fp32", why)
        else:
            _RESOLVED[key] = ("fp32", f"no bf16 rule for device type {device.type}")
    return _RESOLVED[key]


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


def lr_lambda(cfg: TrainConfig):
    """The learning-rate factor of each step (warm-up, then ``cfg.schedule``), for
    ``torch.optim.lr_scheduler.LambdaLR``."""

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


def schedule_warnings(cfg: TrainConfig) -> list[str]:
    """Settings that run but not as meant: a warm-up as long as the run or longer never
    reaches ``lr`` (``dt train --steps 20`` with the DT's 10,000 warm-up steps trains at
    lr 2e-07). One line each; train() prints them and records them in metrics.json."""
    if cfg.warmup_steps < cfg.steps:
        return []
    peak = cfg.lr * cfg.steps / cfg.warmup_steps  # the factor at the last step
    return [
        f"warmup_steps {cfg.warmup_steps} >= steps {cfg.steps}: the run ends inside the "
        f"warm-up, reaching learning rate {peak:.3g} of lr {cfg.lr:g}; lower --warmup-steps "
        "or raise --steps"
    ]


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
    # One fused kernel for all parameters where this torch has it (CPU and CUDA): the same
    # update as the per-parameter loop, fewer passes over memory for large trainable sets.
    device = params[0].device
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)


def process_rank() -> int:
    """This process's rank under ``torchrun`` (``$RANK``), else 0: only rank 0 writes files."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Whether this process writes the run's files: rank 0 under ``torchrun``, else always."""
    return process_rank() == 0


class Dist:
    """Process-group facts for runs under ``torchrun`` (DistributedDataParallel).

    Every rank trains on its own slice of the step's global batch (``Task.train_shard``: the
    examples are picked for the whole batch, then only the rank's part is gathered), so a
    2-process run follows a 1-process run with the same global batch. Only rank 0 writes
    files; evaluation is sharded and summed across ranks.
    """

    def __init__(self, device: torch.device):
        import torch.distributed as td

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = process_rank()
        self.enabled = self.world > 1
        self.owned = self.enabled and not td.is_initialized()
        # NCCL reduces tensors on the rank's own GPU; gloo on the CPU
        self.device = device if device.type == "cuda" else torch.device("cpu")
        if self.enabled and device.type == "cuda":
            # before the group: barriers and collectives of this rank use its GPU, not GPU 0
            torch.cuda.set_device(device)
        if self.owned:
            if device.type == "cuda":
                td.init_process_group("nccl", device_id=device)
            else:
                td.init_process_group("gloo")
        self.is_main = self.rank == 0

    @classmethod
    def single(cls) -> Dist:
        """One process, no group: ``sum`` only reads its values to the host."""
        one = cls.__new__(cls)
        one.world, one.rank, one.enabled, one.owned, one.is_main = 1, 0, False, False, True
        one.device = torch.device("cpu")
        return one

    def close(self) -> None:
        """Tear down a group we created: exiting with gloo's threads alive can abort."""
        if self.owned:
            import torch.distributed as td

            td.barrier()
            td.destroy_process_group()
            self.owned = False

    def sum(self, values: list[float | torch.Tensor]) -> list[float]:
        """Each value summed over the ranks, read to the host (0-dim tensors too: the loop's
        device-side sums are read here, at evaluation, and nowhere per step)."""
        values = [float(v) for v in values]
        if not self.enabled:
            return values
        import torch.distributed as td

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        td.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as td

            td.barrier()


@dataclass(frozen=True)
class Placement:
    """Where one run computes, decided once (:meth:`resolve`) and passed to everything that
    computes for it (the attention probe, feature extraction, the loop): its processes
    (``dist``), this process's device, the precision every rank agreed on (``bf16`` or
    ``fp32``, never ``auto``) and why (metrics.json's ``precision_reason``). The loop closes
    ``dist``'s process group when its run ends."""

    device: torch.device
    precision: str
    reason: str
    dist: Dist = dataclasses.field(default_factory=Dist.single, compare=False, repr=False)

    @classmethod
    def resolve(cls, cfg: TrainConfig) -> Placement:
        """``cfg.device`` and ``cfg.precision`` resolved for this machine (:func:`run_device`,
        :func:`resolve_precision`); under ``torchrun`` the process group is opened and the
        ranks agree (fp32 everywhere where they measured differently). fp32 on a GPU with
        TF32 cores switches on TF32 matmuls, as the reason records."""
        device = run_device(cfg.device)
        dist = Dist(device)
        precision, why = resolve_precision(device, cfg.precision)
        if dist.sum([float(precision == "bf16")])[0] not in (0, dist.world):  # ranks must agree
            precision, why = "fp32", "ranks measured differently; fp32 everywhere"
        if precision == "fp32" and device.type == "cuda" and tf32_capable(device):
            # fp32 asked on Ampere or newer: matmuls in TF32 (10-bit mantissa inputs, fp32
            # accumulation), as PyTorch's own fp32 default once was; recorded
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            why += "; matmuls in TF32"
        return cls(device, precision, why, dist)

    def autocast(self):
        """The run's autocast context: bf16, or nothing for fp32."""
        return autocast(self.device, self.precision)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    task: Task,
    split: Batch,
    cfg: TrainConfig,
    device: torch.device,
    dist: Dist | None = None,
) -> dict[str, float]:
    """Loss and accuracy on a whole split: every example once (sharded across ranks).
    Accuracies are None where the task counts nothing (continuous actions: a DT's only
    metric is its loss)."""
    model.eval()
    if dist is not None and dist.enabled:
        split = split[dist.rank :: dist.world]
    hits = total = seq_hits = n = loss_sum = 0  # summed on the device, read once at the end
    for chunk in iter_chunks(split, cfg.eval_batch_size):
        chunk = chunk.to(device)
        with autocast(device, cfg.precision):
            logits = model(chunk.x, chunk.mask)
        loss_sum = loss_sum + task.loss(logits, chunk.y, chunk.target_mask).float() * len(chunk)
        h, t, sh, sn = task.correct(logits, chunk.y, chunk.target_mask)
        hits, total, seq_hits, n = hits + h, total + t, seq_hits + sh, n + sn
    loss_sum, hits, total, seq_hits, n = (dist or Dist.single()).sum(
        [loss_sum, hits, total, seq_hits, n]
    )
    return {
        "loss": loss_sum / max(n, 1),
        "accuracy": _ratio(hits, total),
        "sequence_accuracy": _ratio(seq_hits, n) if total else None,
        "elements": int(total),
    }


def constant_answer_accuracy(split: Batch) -> float | None:
    """The accuracy of always answering the split's most frequent target among the scored
    elements (``target_mask`` where the split has one; negative ids are padding): its
    majority class, or constant answer. None where targets are not class ids. What a row
    that did not learn scores: the floor the verdict rules compare with."""
    y = split.y
    if y.is_floating_point() or y.is_complex():
        return None
    if split.target_mask is not None and split.target_mask.shape == y.shape:
        y = y[split.target_mask.bool()]
    y = y.reshape(-1)
    y = y[y >= 0]
    if not y.numel():
        return None
    return float(torch.bincount(y.long()).max()) / int(y.numel())


_TRAIN_SPLIT_CAP = 4096  # examples of the training split scored with the selected weights


def _ratio(part: float, whole: float) -> float | None:
    """An accuracy, or None where nothing was counted (never a made-up 0.0)."""
    return part / whole if whole else None


def train_split(task: Task) -> Batch | None:
    """The first examples of the task's fixed training split (``Task.fixed_train_split``), or
    None where it has none."""
    split = task.fixed_train_split()
    return None if split is None else split[:_TRAIN_SPLIT_CAP]


@dataclass
class _State:
    step: int = 0
    best_val: float = -math.inf  # the selection score: accuracy, or minus the loss
    best_step: int = -1
    steps_to_target: int | None = None
    seconds: float = 0.0
    # Why the run stopped early ("target", "time_limit", "patience"), saved with the
    # checkpoint of the step it stopped at, so a resume after a kill there does not train on.
    stopped_by: str | None = None


def _out_of_patience(cfg: TrainConfig, state: _State) -> bool:
    """Early stopping: ``cfg.patience`` evaluations in a row without a better validation score."""
    return cfg.patience > 0 and state.step - state.best_step >= cfg.patience * cfg.eval_every


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # dropout on a GPU draws from the CUDA generators: a resume restores them too
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(
        ("MT19937", s["numpy_keys"].numpy().astype(np.uint32), s["numpy_pos"], 0, 0.0)
    )
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"][: torch.cuda.device_count()])


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


def _postfix(row: dict) -> dict[str, str]:
    """The progress bar's numbers at an evaluation: losses, and accuracies where the task
    counts them (a continuous-action DT has none: its bar shows train and validation loss)."""
    shown = {"loss": f"{row['train_loss']:.4f}", "val_loss": f"{row['val_loss']:.4f}"}
    if row["val_accuracy"] is not None:
        shown = {"loss": shown["loss"], "acc": f"{row['train_accuracy']:.3f}"}
        shown["val"] = f"{row['val_accuracy']:.3f}"
    return shown


def _write_curve(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CURVE_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _load_best(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device=str(device))
    except Exception as err:  # truncated, not safetensors, missing
        raise UnicompError(
            f"{path}: cannot read the best weights ({type(err).__name__}: {err})".splitlines()[0]
        ) from None


def _kept_checkpoint(path: Path, state: _State) -> str:
    """What a stopped run leaves to resume from, named only if it exists."""
    if path.exists():
        return f"the last good checkpoint (step {state.step}) is kept in {path}"
    return "no checkpoint was written (no evaluation step was reached)"


def _parameters_finite(model: nn.Module, dist: Dist) -> bool:
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)
    return dist.sum([float(finite)])[0] == dist.world


def train(
    model: nn.Module,
    task: Task,
    cfg: TrainConfig,
    out: Path,
    resume: bool = False,
    run_config: dict | None = None,
    placement: Placement | None = None,
) -> dict:
    """Train ``model`` on ``task``; return metrics of the validation-selected checkpoint.

    Writes into ``out``: checkpoint.pt (resume state), best.safetensors (trainable weights of
    the best validation step), curve.csv (the learning curve), and with ``cfg.track`` the
    tracker's files (unicomp.tracking; ``run_config`` is what it records as the config).
    Under ``torchrun`` it trains with DistributedDataParallel and rank 0 writes the files.
    ``placement``: the run's, where its caller resolved it already (else resolved here).
    """
    placement = placement or Placement.resolve(cfg)
    device, dist = placement.device, placement.dist
    cfg = dataclasses.replace(cfg, precision=placement.precision)
    warnings = schedule_warnings(cfg)
    for warning in warnings if dist.is_main else ():
        print(f"unicomp: warning: {warning}", file=sys.stderr, flush=True)
    model.to(device)
    data_on = task.place(device)  # after the model: the memory rule counts what is left
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    ckpt_path, best_path, curve_path = (
        out / "checkpoint.pt",
        out / "best.safetensors",
        out / "curve.csv",
    )
    state = _State()
    if ckpt_path.exists() and not resume:
        raise run_taken(out)
    dist.barrier()  # no rank may see a checkpoint that rank 0 writes in this run
    if resume:
        if not ckpt_path.exists():
            raise UnicompError(f"nothing to resume: {ckpt_path} does not exist")
        ckpt = load_checkpoint(ckpt_path)
        load_trainable_state(model, ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        state = _State(**ckpt["state"])
        _set_rng_state(ckpt["rng"])  # rank 0's streams: rank 0 wrote the checkpoint
        if dist.rank:  # every other rank its own dropout stream, as at the start
            torch.manual_seed(cfg.seed + dist.rank + 7919 * state.step)
    else:
        torch.manual_seed(cfg.seed + dist.rank)  # dropout stream, one per rank
    if cfg.batch_size % (cfg.grad_accum * dist.world):
        raise UnicompError(
            f"batch_size {cfg.batch_size} is not divisible by grad_accum {cfg.grad_accum} "
            f"x {dist.world} process(es)"
        )
    micro = cfg.batch_size // (cfg.grad_accum * dist.world)
    net = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    buckets = None
    if cfg.compile:
        # Training forward only; evaluation (a shorter last chunk) stays eager. Batches
        # padded to their own longest are padded further to one of a few lengths, so the
        # model compiles once per length rather than once per batch. See docs/benchmarks.md
        # for when compiling pays.
        net = torch.compile(net)
        if task.spec.n_out_tokens is None:  # (outputs read at the last positions: as they are)
            buckets = length_buckets(task.spec.max_len)
    rows = read_curve(curve_path, state.step) if resume else []
    if resume and state.best_step > 0:  # the run folder's files, checked before training on
        if not any(r["step"] == state.best_step for r in rows):
            raise UnicompError(f"{curve_path}: damaged, it lacks step {state.best_step}")
        _load_best(best_path, device)
    val_split = task.split("val")
    tracker = Tracker(cfg.track if dist.is_main else "none", out, run_config)
    try:  # the tracker is closed on every way out: a diverged run, Ctrl-C, any error
        # Running sums since the last evaluation, kept on the device: reading them per step would
        # make the host wait for the device (a sync) each time; they are read at evaluation.
        run_loss = run_hits = run_total = 0
        started = time.perf_counter() - state.seconds
        bar = progress_bar(
            cfg.steps, task.name, cfg.progress and dist.is_main, initial=state.step, leave=False
        )
        step = state.step
        stopped_by = "steps"
        if state.stopped_by == "target" and cfg.stop_at_target:
            stopped_by = "target"  # killed after the checkpoint of the step it stopped at
        elif state.stopped_by == "time_limit" and 0 < cfg.time_limit_minutes * 60 <= state.seconds:
            stopped_by = "time_limit"  # (a resume with a longer limit trains on)
        elif state.stopped_by == "patience" and _out_of_patience(cfg, state):
            stopped_by = "patience"
        while step < cfg.steps and stopped_by == "steps":
            net.train()
            # this rank's part of the step's global batch, picked before it is gathered
            batch = task.train_shard(step, cfg.batch_size, cfg.seed, dist.rank, dist.world)
            step_loss = 0
            for i, chunk in enumerate(iter_chunks(batch, micro)):
                chunk = chunk.to(device)
                if buckets is not None:
                    chunk = pad_to_bucket(chunk, buckets)
                sync = contextlib.nullcontext()
                if dist.enabled and i < cfg.grad_accum - 1:
                    sync = net.no_sync()  # all-reduce gradients once, after the last micro-batch
                with sync:
                    with placement.autocast():
                        logits = net(chunk.x, chunk.mask)
                    loss = task.loss(logits, chunk.y, chunk.target_mask)
                    (loss / cfg.grad_accum).backward()
                scored = task.correct(logits.detach(), chunk.y, chunk.target_mask)
                step_loss = step_loss + loss.detach().float() / cfg.grad_accum
                run_hits, run_total = run_hits + scored.hits, run_total + scored.elements
            # the step's one host sync: a diverged loss stops the run at the step it diverged
            finite = dist.sum([torch.isfinite(step_loss)])[0] == dist.world
            if not finite:
                raise TrainingDivergedError(
                    f"loss became {float(step_loss)} at step {step}; "
                    f"{_kept_checkpoint(ckpt_path, state)}; lower --lr or set --grad-clip"
                )
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(
                    [p for p in model.parameters() if p.requires_grad], cfg.grad_clip
                )
            run_loss = run_loss + step_loss / dist.world
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                if not _parameters_finite(model, dist):  # never evaluate or save bad weights
                    raise TrainingDivergedError(
                        f"parameters became NaN or inf at step {step}; "
                        f"{_kept_checkpoint(ckpt_path, state)}; lower --lr or set --grad-clip"
                    )
                val = evaluate(model, task, val_split, cfg, device, dist)
                run_loss, run_hits, run_total = dist.sum([run_loss, run_hits, run_total])
                since = step - (rows[-1]["step"] if rows else 0)  # steps in the running means
                rows.append(
                    {
                        "step": step,
                        "train_loss": run_loss / since,
                        "train_accuracy": _ratio(run_hits, run_total),
                        "val_loss": val["loss"],
                        "val_accuracy": val["accuracy"],
                        "lr": sched.get_last_lr()[0],
                        "seconds": time.perf_counter() - started,
                    }
                )
                bar.set_postfix(_postfix(rows[-1]), refresh=False)
                tracker.log(rows[-1])
                run_loss = run_hits = run_total = 0.0
                score = val["accuracy"] if task.select_by == "accuracy" else -val["loss"]
                if score > state.best_val:
                    state.best_val, state.best_step = score, step
                    if dist.is_main:
                        atomic_write(best_path, lambda f: f.write(save(trainable_state(model))))
                reached = val["accuracy"] is not None and val["accuracy"] >= cfg.target_accuracy
                if state.steps_to_target is None and reached:
                    state.steps_to_target = step
                state.step, state.seconds = step, time.perf_counter() - started
                if cfg.stop_at_target and state.steps_to_target is not None:
                    stopped_by = "target"
                elif _out_of_patience(cfg, state):
                    stopped_by = "patience"
                elif cfg.time_limit_minutes > 0:
                    out_of_time = state.seconds >= 60 * cfg.time_limit_minutes
                    if dist.sum([float(out_of_time)])[0] > 0:  # every rank stops at the same step
                        stopped_by = "time_limit"
                state.stopped_by = None if stopped_by == "steps" else stopped_by
                if dist.is_main:
                    _write_curve(curve_path, rows)
                    _save_checkpoint(ckpt_path, model, opt, sched, state)
        bar.close()
        train_seconds = time.perf_counter() - started
        dist.barrier()  # best.safetensors is complete before any rank reads it
        load_trainable_state(model, _load_best(best_path, device))
        test_split = task.split("test")
        test = evaluate(model, task, test_split, cfg, device, dist)
        fixed_train = train_split(task)
        train_acc = (
            evaluate(model, task, fixed_train, cfg, device, dist)["accuracy"]
            if fixed_train is not None
            else None
        )
        tracker.log({"step": step, **{f"test_{k}": v for k, v in test.items()}})
    finally:
        tracker.close()
    # DDP's reducer holds the process group: freed after close(), the group's destructor
    # joined gloo threads waiting on a peer that had already exited (a hang seen under load)
    del net
    dist.close()
    constant = constant_answer_accuracy(test_split)
    task.unplace()
    best_row = next(r for r in rows if r["step"] == state.best_step)
    return {
        "test_accuracy": test["accuracy"],
        "test_sequence_accuracy": test["sequence_accuracy"],
        "test_loss": test["loss"],
        # what the verdict rules need: the figure's evaluation noise (scored elements), the
        # floor a row that did not learn sits at, and the selected weights on the train split
        "test_elements": test["elements"],
        "test_constant_accuracy": constant,
        "train_split_accuracy": train_acc,
        "train_split_examples": None if fixed_train is None else len(fixed_train),
        "val_accuracy": best_row["val_accuracy"],
        "val_loss": best_row["val_loss"],
        "best_step": state.best_step,
        "steps": step,
        "stopped_by": stopped_by,
        "steps_to_target": state.steps_to_target,
        "target_accuracy": cfg.target_accuracy,
        "train_seconds": round(train_seconds, 2),
        "final_train_accuracy": rows[-1]["train_accuracy"] if rows else None,
        "device": str(device),
        "precision": placement.precision,
        "precision_reason": placement.reason,
        "compiled": cfg.compile,
        "data_on": data_on,  # where the task's stored data was: device, pinned or host
        "processes": dist.world,
        "warnings": warnings,
    }
