"""Shared measuring tools of the benchmarks: matmul peaks, step FLOPs, medians, and the
record every published table comes from (:func:`write_record`).

Not a unicomp module: imported by the scripts in this folder (run as
``python benchmarks/<script>.py``, which puts this folder on ``sys.path``).
"""

from __future__ import annotations

import json
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


def write_record(path: str | Path, about: str, columns: list[str], rows: list[list], **extra):
    """The record behind a published table (``results/benchmarks/<name>.json``): what was
    measured (``about``), the table (``columns``, ``rows`` of printed cells), the command that
    made it, when, on which machine, with which versions; ``extra``: the raw figures. The
    tables in docs/ are generated from these (``unicomp.reports.documents``, block
    ``benchmark``)."""
    from unicomp.provenance import bf16_flags, machine, provenance

    script = Path(sys.argv[0])
    shown = f"benchmarks/{script.name}" if script.parent.name == "benchmarks" else str(script)
    record = {
        "about": about,
        "command": "python " + shlex.join([shown, *sys.argv[1:]]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "bf16_flags": bf16_flags(),
        "versions": {
            **provenance(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },  # fmt: skip
        "threads": torch.get_num_threads(),
        "columns": columns,
        "rows": [[str(cell) for cell in row] for row in rows],
        **extra,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def matmul_peak(dtype: torch.dtype, sizes=(1024, 2048), reps: int = 3) -> float:
    """Best observed FLOP/s of a square matmul in ``dtype`` on the CPU (this many threads)."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        a @ b  # warm-up
        for _ in range(reps):
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def step_flops(step: Callable[[], None]) -> int:
    """FLOPs that one call of ``step`` really executes (forward and whatever backward the
    freeze policy needs: frozen weights get no weight gradient), counted by torch."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def interleaved(
    steps: dict[str, Callable[[], None]], rounds: int, per_round: int
) -> dict[str, float]:
    """Median seconds per call of each step function; rounds alternate between them so
    that noise from other work on the machine falls on every setting alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for fn in steps.values():
        fn()  # warm-up (first-call allocations, kernel selection)
    for _ in range(rounds):
        for name, fn in steps.items():
            for _ in range(per_round):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def fpt_training_step(cfg, fixed, n_classes: int, compile_: bool = False):
    """unicomp's FPT for ``cfg`` (built by ``unicomp.experiments.fpt.build_fpt``) on one fixed
    batch, and the step ``unicomp.train.train`` takes with it (forward under the resolved
    precision, the task's loss, backward, the metric, clipping at 1.0, the loop's AdamW),
    without the loop's evaluation and checkpoints. Returns (step, precision, attention)."""
    from unicomp.experiments.fpt import build_fpt
    from unicomp.tasks.base import Task, TaskSpec
    from unicomp.train import autocast, make_optimizer, resolve_precision

    _, tokens, d_in = fixed.x.shape

    class FixedTask(Task):
        name = "fixed-batch"
        spec = TaskSpec(max_len=tokens, d_in=d_in, d_out=n_classes, n_classes=n_classes)

        def train_batch(self, step, batch_size, seed):
            return fixed[:batch_size]

    task = FixedTask()
    torch.manual_seed(0)
    model, summary = build_fpt(cfg, task)
    model.train()
    device = torch.device("cpu")
    precision = resolve_precision(device, cfg.train.precision)[0]
    net = torch.compile(model) if compile_ else model
    opt = make_optimizer(model, cfg.train)
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        with autocast(device, precision):
            logits = net(fixed.x, fixed.mask)
        loss = task.loss(logits, fixed.y, fixed.target_mask)
        loss.backward()
        task.correct(logits.detach(), fixed.y, fixed.target_mask)
        float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, precision, summary["attention"].split()[0]
