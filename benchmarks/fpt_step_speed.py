"""FPT training-step cost on the CPU: where an MNIST/CIFAR-10 step's time goes, measured side
by side in one process (rounds interleave the settings, so machine noise hits all alike).

    .venv/bin/python benchmarks/fpt_step_speed.py --backbone minilm-l6 --steps 5 --rounds 3

One training step (forward, backward, AdamW) of the FPT at the image tasks' size (64 tokens of
16 values, 10 classes; batch 32 by default) under four settings:

* ``paper, bf16, 1 thread``: what the issue-3 runs used (two runs shared the 2 cores);
* ``paper, bf16, 2 threads``: the same step with the whole machine;
* ``paper, fp32, 1 thread``: no autocast;
* ``output-only, bf16, 1 thread``: only the output layer trains, so the backward pass stops
  at the top of the network: the gap to the first row is the price of training the input
  layer (and positions and norms) through the frozen layers.

Prints median seconds per step of each and the ratios to the first row, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import unicomp.catalog  # noqa: F401  (registers the backbones)
from unicomp.backbones.hf import load_backbone
from unicomp.freezing import apply_freeze_policy
from unicomp.models.fpt import FPT
from unicomp.tasks.base import TaskSpec

SETTINGS = (
    ("paper, bf16, 1 thread", "paper", True, 1),
    ("paper, bf16, 2 threads", "paper", True, 2),
    ("paper, fp32, 1 thread", "paper", False, 1),
    ("output-only, bf16, 1 thread", "output-only", True, 1),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="minilm-l6")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per setting and round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    spec = TaskSpec(max_len=args.tokens, d_out=10, n_classes=10, d_in=16)
    models, opts = {}, {}
    for name, policy, _, _ in SETTINGS:
        torch.manual_seed(0)
        model = FPT(load_backbone(args.backbone, dropout=0.0, seed=0), spec)
        apply_freeze_policy(model, policy)
        models[name] = model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opts[name] = torch.optim.AdamW(params, lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, args.tokens, 16, generator=gen)
    mask = torch.ones(args.batch_size, args.tokens, dtype=torch.long)
    y = torch.randint(0, 10, (args.batch_size,), generator=gen)

    def step(name: str, bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = models[name](x, mask)
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(len(y), -1), y)
        loss.backward()
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {name: [] for name, *_ in SETTINGS}
    for _ in range(args.rounds):
        for name, _, bf16, threads in SETTINGS:
            torch.set_num_threads(threads)
            step(name, bf16)  # warm-up after the thread change
            for _ in range(args.steps):
                t = time.perf_counter()
                step(name, bf16)
                times[name].append(time.perf_counter() - t)
    base = statistics.median(times[SETTINGS[0][0]])
    size = f"batch {args.batch_size} x {args.tokens} tokens"
    print(f"{args.backbone}, {size}, torch {torch.__version__}")
    print(f"{'setting':32s} {'s/step':>8s} {'vs first':>9s}")
    result = {}
    for name, *_ in SETTINGS:
        med = statistics.median(times[name])
        result[name] = round(med, 4)
        print(f"{name:32s} {med:8.3f} {med / base:8.2f}x")
    print(
        json.dumps(
            {
                "backbone": args.backbone,
                "machine": platform.processor() or platform.machine(),
                "seconds_per_step": result,
            }
        )
    )


if __name__ == "__main__":
    main()
