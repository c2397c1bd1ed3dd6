"""Output-only training from cached features (unicomp.features) against the FPT recipe: seconds
per epoch of the same task at the same batch size.

    .venv/bin/python benchmarks/output_only_cache.py --task mnist --backbone minilm-l6

* (a) ``paper`` policy: one training step of the FPT (forward, loss, backward through the
  frozen layers, gradient clipping, AdamW; the step of ``unicomp.train.train``), timed over
  ``--paper-steps`` steps after a warm-up, times the steps in an epoch;
* (b) ``output-only`` through the cache: a real full epoch of head training through
  ``unicomp.train.train`` (``HeadOnly`` on ``CachedFeatureTask``; its train_seconds, which
  include its one evaluation of the validation features and its checkpoint writes), and the
  same epoch timed step by step with the step function of (a);
* (c) the feature extraction, once for all splits, reported separately, with the cost of the
  cache key (hashing weights and data), of writing the cache file and of reading it back (a
  later run's disk hit).

Both models are built by ``unicomp.experiments.fpt.build_fpt`` (seed 0), in the chosen precision
(fp32 by default). The extracted features are written to the cache as ``run_fpt`` would, so
``unicomp fpt train --freeze output-only`` with the same settings then starts from a disk
hit. Prints a table, the ratios and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _measure import write_record  # benchmarks/ helper

from unicomp import features as fc
from unicomp.config import FPTConfig, TrainConfig
from unicomp.experiments.common import build_task, task_defaults
from unicomp.experiments.fpt import build_fpt
from unicomp.tasks.base import Batch, Task
from unicomp.train import autocast, make_optimizer, train


def _task_args(items: list[str]) -> dict:
    import yaml

    args = {}
    for item in items:
        key, _, value = item.partition("=")
        args[key] = yaml.safe_load(value)
    return args


def _step_fn(model, task: Task, train_cfg: TrainConfig, device: torch.device):
    """One optimizer step as ``unicomp.train.train`` takes it (no accumulation)."""
    model.to(device).train()
    opt = make_optimizer(model, train_cfg)
    params = [p for p in model.parameters() if p.requires_grad]

    def step(batch: Batch) -> None:
        batch = batch.to(device)
        with autocast(device, train_cfg.precision):
            logits = model(batch.x, batch.mask)
        loss = task.loss(logits, batch.y, batch.target_mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, train_cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="mnist")
    ap.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--backbone", default="minilm-l6")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--paper-steps", type=int, default=10, help="timed paper-policy steps")
    ap.add_argument(
        "--out",
        help="write the record behind the docs' table here (results/benchmarks/<name>.json)",
    )
    ap.add_argument("--chunk", type=int, default=256, help="examples per extraction chunk")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    task = build_task(args.task, _task_args(args.task_arg))
    train_cfg = TrainConfig(
        **{
            **task_defaults(args.task),
            "batch_size": args.batch_size,
            "precision": args.precision,
            "device": args.device,
            "eval_batch_size": args.chunk,
            "progress": False,
        }
    )

    def config(freeze: str) -> FPTConfig:
        return FPTConfig(
            task=args.task,
            backbone=args.backbone,
            freeze=freeze,
            attn_implementation="eager",
            task_args=_task_args(args.task_arg),
            train=train_cfg,
        )

    n_train = len(task.data["train"])
    steps_per_epoch = math.ceil(n_train / args.batch_size)

    # (a) the paper policy: a few real steps, times the steps of an epoch
    paper_model, paper_summary = build_fpt(config("paper"), task)
    paper_step = _step_fn(paper_model, task, train_cfg, device)
    for s in range(2):  # warm-up
        paper_step(task.train_batch(s, args.batch_size, train_cfg.seed))
    paper_times = []
    for s in range(2, 2 + args.paper_steps):
        batch = task.train_batch(s, args.batch_size, train_cfg.seed)
        t = time.perf_counter()
        paper_step(batch)
        paper_times.append(time.perf_counter() - t)
    paper_s = statistics.median(paper_times)
    del paper_model, paper_step

    # (c) the features: key, extraction, cache file written and read back
    cfg = config("output-only")
    model, summary = build_fpt(cfg, task)
    t = time.perf_counter()
    key, description = fc.feature_key(cfg, task, model, args.precision, device)
    key_s = time.perf_counter() - t
    t = time.perf_counter()
    feats = fc.extract_features(
        model, task, device, args.precision, chunk_size=args.chunk, progress=True
    )
    extract_s = time.perf_counter() - t
    path = fc.cache_path(key)
    t = time.perf_counter()
    fc.save_features(path, key, description, feats)
    save_s = time.perf_counter() - t
    t = time.perf_counter()
    sizes = {s: len(task.data[s]) for s in fc.SPLITS}
    fc.load_features(path, key, sizes)
    load_s = time.perf_counter() - t

    # (b) output-only through the cache: one real epoch through train(), then step by step
    cached = fc.CachedFeatureTask(task, feats)
    head = fc.HeadOnly(model.head)
    epoch_cfg = TrainConfig(
        **{**vars(train_cfg), "steps": steps_per_epoch, "eval_every": steps_per_epoch}
    )
    with tempfile.TemporaryDirectory() as out:
        result = train(head, cached, epoch_cfg, Path(out))
    loop_epoch_s = result["train_seconds"]
    head_step = _step_fn(head, cached, train_cfg, device)
    t = time.perf_counter()
    for s in range(steps_per_epoch):
        head_step(cached.train_batch(s, args.batch_size, train_cfg.seed))
    step_epoch_s = time.perf_counter() - t

    paper_epoch_s = paper_s * steps_per_epoch
    rows = [
        ("(a) paper policy, per step x steps/epoch", paper_epoch_s),
        ("(b) output-only, cached: train() epoch", loop_epoch_s),
        ("(b) output-only, cached: step function", step_epoch_s),
        ("(c) feature extraction, all splits", extract_s),
        ("    cache key (weights + data SHA-256)", key_s),
        ("    cache file write", save_s),
        ("    cache file read + check (disk hit)", load_s),
    ]
    split_desc = ", ".join(f"{s} {n}" for s, n in sizes.items())
    print(
        f"{args.backbone} on {args.task} ({split_desc}), batch {args.batch_size}, "
        f"{steps_per_epoch} steps/epoch, {args.precision}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )
    print(f"paper step: median {paper_s:.3f} s of {args.paper_steps}")
    print(f"{'what':44s} {'seconds':>10s}")
    for name, seconds in rows:
        print(f"{name:44s} {seconds:10.3f}")
    ratio_loop = paper_epoch_s / loop_epoch_s
    ratio_step = paper_epoch_s / step_epoch_s
    first = paper_epoch_s / (loop_epoch_s + extract_s + key_s + save_s)
    print(f"epoch speed-up, train() loop: {ratio_loop:.0f}x; step function: {ratio_step:.0f}x")
    print(f"first epoch including extraction, key and cache write: {first:.1f}x")
    print(f"cache file: {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    raw = {
                "backbone": args.backbone,
                "task": args.task,
                "task_args": _task_args(args.task_arg),
                "splits": sizes,
                "batch_size": args.batch_size,
                "steps_per_epoch": steps_per_epoch,
                "precision": args.precision,
                "threads": torch.get_num_threads(),
                "paper_step_s": round(paper_s, 4),
                "paper_epoch_s": round(paper_epoch_s, 1),
                "cached_epoch_train_loop_s": round(loop_epoch_s, 3),
                "cached_epoch_step_fn_s": round(step_epoch_s, 3),
                "extract_s": round(extract_s, 2),
                "key_s": round(key_s, 3),
                "cache_write_s": round(save_s, 3),
                "cache_read_s": round(load_s, 3),
                "speedup_train_loop": round(ratio_loop, 1),
                "speedup_step_fn": round(ratio_step, 1),
                "speedup_first_epoch": round(first, 2),
                "head_epoch_val_accuracy": result["val_accuracy"],
                "trainable_params": {
                    "paper": paper_summary["trainable_params"],
                    "output-only": summary["trainable_params"],
                },
            }  # fmt: skip
    print(json.dumps(raw))
    if args.out:
        mib = path.stat().st_size / 2**20
        table = [[name.strip(), f"{seconds:.3f}"] for name, seconds in rows]
        table[0][0] = f"(a) paper policy: median step {paper_s:.3f} s x {steps_per_epoch} steps"
        about = (
            f"{args.backbone} on {args.task} ({split_desc}), batch {args.batch_size}, "
            f"{steps_per_epoch} steps per epoch, {args.precision}, {torch.get_num_threads()} "
            f"threads. Epoch speed-up of output-only training from the cache: {ratio_loop:.0f}x "
            f"through train(), {ratio_step:.0f}x with the step function of (a); the first "
            f"epoch, extraction, key and cache write included: {first:.1f}x. Cache file "
            f"{mib:.1f} MiB."
        )
        write_record(args.out, about, ["what", "seconds"], table, **raw)


if __name__ == "__main__":
    main()
