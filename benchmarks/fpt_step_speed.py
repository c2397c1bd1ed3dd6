"""FPT training-step cost on the CPU at the image tasks' size, with the model FLOP utilisation
against this machine's matmul peaks, every setting side by side in one process.

    .venv/bin/python benchmarks/fpt_step_speed.py --backbone minilm-l6 --steps 3 --rounds 3

One training step (forward, backward, AdamW, clipping) of the FPT at 64 tokens of 16 values,
10 classes, batch 32, built by ``unicomp.experiments.fpt.build_fpt`` and stepped as
``unicomp.train`` steps it. Settings (rounds interleave them, so machine noise hits all alike):

* ``paper, default``: the paper's freezing with unicomp's defaults (precision auto, attention
  auto), ``--threads`` threads;
* ``paper, fp32 eager`` / ``paper, fp32 sdpa``: each attention implementation in fp32;
* ``paper, bf16 autocast`` (``--bf16``): forced bf16 (slow on CPUs without native bf16);
* ``paper, torch.compile`` (``--compile``): the default step with ``torch.compile``; its
  compile time is printed separately;
* ``output-only, default``: only the head trains: no backward through the frozen layers;
* ``paper, default, 1 thread``: the default on one thread (two runs sharing the 2 cores).

Prints median seconds per step, the ratio to the first row, GFLOP per step (counted by torch:
forward plus the backward the freeze policy needs), the FLOP/s as a fraction of the measured
peak of the dtype it multiplies in and of the faster dtype's peak, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _measure import (  # benchmarks/ helper
    fpt_training_step,
    interleaved,
    matmul_peak,
    step_flops,
    write_record,
)

from unicomp.config import FPTConfig, TrainConfig
from unicomp.provenance import cpu_bf16_flags
from unicomp.tasks.base import Batch


def make_step(backbone: str, batch: int, tokens: int, freeze: str, **options):
    """(step function, precision used, attention used) for one setting."""
    gen = torch.Generator().manual_seed(0)
    fixed = Batch(
        torch.randn(batch, tokens, 16, generator=gen),
        torch.randint(0, 10, (batch,), generator=gen),
        torch.ones(batch, tokens, dtype=torch.long),
    )

    compile_ = options.pop("compile", False)
    train = TrainConfig(batch_size=batch, precision=options.pop("precision", "auto"))
    cfg = FPTConfig(backbone=backbone, freeze=freeze, backbone_dropout=0.0, train=train, **options)
    return fpt_training_step(cfg, fixed, n_classes=10, compile_=compile_)


def compile_note(seconds: float | None) -> str:
    return "" if seconds is None else f" torch.compile's first step (compilation): {seconds:.1f} s."


def table_rows(rows: dict, native_bf16: bool) -> list[list[str]]:
    """The published table's cells. MFU is against the peak of the step's own dtype, and only
    where that dtype is multiplied natively: on a CPU without native bf16, bf16 autocast runs
    part of the step in fp32 and its "peak" is an emulation's, so a fraction of it means
    nothing."""

    def mfu(r: dict) -> str:
        if r["precision"] == "bf16" and not native_bf16:
            return "- (no native bf16)"
        return f"{r['mfu_own_dtype']:.1%}"

    return [[name, f"{r['seconds_per_step']:.3f}", f"{r['gflop_per_step']:.1f}", mfu(r),
             f"{r['precision']}, {r['attention']}"] for name, r in rows.items()]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="minilm-l6")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per setting and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bf16", action="store_true", help="also time forced bf16 autocast")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    ap.add_argument(
        "--out",
        help="write the record behind the docs' table here (results/benchmarks/<name>.json)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    settings = {
        "paper, default": ("paper", {}),
        "paper, fp32 eager": ("paper", {"precision": "fp32", "attn_implementation": "eager"}),
        "paper, fp32 sdpa": ("paper", {"precision": "fp32", "attn_implementation": "sdpa"}),
        "output-only, default": ("output-only", {}),
    }
    if args.bf16:
        settings["paper, bf16 autocast"] = ("paper", {"precision": "bf16"})
    built, compile_seconds = {}, None
    for name, (freeze, options) in settings.items():
        built[name] = make_step(args.backbone, args.batch_size, args.tokens, freeze, **options)
    if args.compile:
        step, precision, attention = make_step(
            args.backbone, args.batch_size, args.tokens, "paper", compile=True
        )
        t = time.perf_counter()
        step()  # compiles
        compile_seconds = time.perf_counter() - t
        built["paper, torch.compile"] = (step, precision, attention)
    flops = {name: step_flops(b[0]) for name, b in built.items() if "compile" not in name}
    flops["paper, torch.compile"] = flops["paper, default"]
    steps = {name: b[0] for name, b in built.items()}
    seconds = interleaved(steps, args.rounds, args.steps)
    one_thread = {}
    torch.set_num_threads(1)
    one_thread = interleaved({"paper, default, 1 thread": steps["paper, default"]}, 1, args.steps)
    torch.set_num_threads(args.threads)
    seconds.update(one_thread)
    built["paper, default, 1 thread"] = built["paper, default"]
    flops["paper, default, 1 thread"] = flops["paper, default"]
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    best = max(peaks.values())

    print(
        f"{args.backbone}, batch {args.batch_size} x {args.tokens} tokens, {args.threads} threads,"
        f" torch {torch.__version__}, CPU {torch.backends.cpu.get_cpu_capability()}; matmul "
        f"peak fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s"
    )
    if compile_seconds is not None:
        print(f"torch.compile: first step (compilation) {compile_seconds:.1f} s")
    print(
        f"{'setting':28s} {'s/step':>7s} {'vs first':>8s} {'GFLOP':>6s} {'MFU':>6s} "
        f"{'MFU best':>8s}  precision, attention"
    )
    first = seconds["paper, default"]
    rows = {}
    for name in seconds:
        _, precision, attention = built[name]
        peak = peaks["bf16" if precision == "bf16" else "fp32"]
        rate = flops[name] / seconds[name]
        rows[name] = {
            "seconds_per_step": round(seconds[name], 4),
            "gflop_per_step": round(flops[name] / 1e9, 1),
            "mfu_own_dtype": round(rate / peak, 3),
            "mfu_best_dtype": round(rate / best, 3),
            "precision": precision,
            "attention": attention,
        }
        print(
            f"{name:28s} {seconds[name]:7.3f} {seconds[name] / first:7.2f}x "
            f"{flops[name] / 1e9:6.1f} {rate / peak:6.1%} {rate / best:8.1%}  "
            f"{precision}, {attention}"
        )
    raw = {
        "backbone": args.backbone,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "peak_gflops": {k: round(v / 1e9, 1) for k, v in peaks.items()},
        "compile_seconds": compile_seconds,
        "settings": rows,
    }
    print(json.dumps(raw))
    if args.out:
        table = table_rows(rows, native_bf16=bool(cpu_bf16_flags()))
        about = (
            f"{args.backbone}, batch {args.batch_size} x {args.tokens} tokens, {args.threads} "
            f"threads, medians of {args.rounds} x {args.steps} interleaved steps per setting; "
            "GFLOP counted by torch's FlopCounterMode for one step (forward and the backward "
            "the freeze policy needs); MFU against the matmul peak of the step's dtype "
            f"measured in the same run (fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 "
            f"{peaks['bf16'] / 1e9:.1f} GFLOP/s; CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()})." + compile_note(compile_seconds)
        )
        write_record(args.out, about, ["setting", "s/step", "GFLOP", "MFU (own dtype)",
                                       "precision, attention"], table, **raw)  # fmt: skip


if __name__ == "__main__":
    main()
