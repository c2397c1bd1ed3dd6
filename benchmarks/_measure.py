"""Shared measuring tools of the FPT benchmarks: matmul peaks, step FLOPs, medians.

Not a unicomp module: imported by the scripts in this folder (run as
``python benchmarks/<script>.py``, which puts this folder on ``sys.path``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


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
