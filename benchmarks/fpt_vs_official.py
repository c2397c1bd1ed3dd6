"""FPT training step: unicomp against the official code (kzl/universal-computation), side by
side in one process, with the machine's matmul peaks and the model FLOP utilisation.

    git clone https://github.com/kzl/universal-computation ../official-fpt
    .venv/bin/python benchmarks/fpt_vs_official.py --official ../official-fpt \\
        --out results/benchmarks/fpt-vs-official.json

Both sides train the same architecture at the same sizes: GPT-2 base with random weights
(the speed does not depend on the weights; the official code's ``GPT2Model.from_pretrained``
is patched at run time to build GPT-2 base from its config, as nothing can be downloaded
here), CIFAR-10's sizes (64 tokens of 4x4x3 = 48 values, 10 classes), batch 16, the paper's
freezing (input, output, positions and layer norms train), Adam(W) lr 1e-3, gradient clipping
at 1.0. Settings, timed in rounds that alternate between them (median s/step):

* ``official``: the official ``FPT`` module and ``Trainer.train_epoch`` (one step per call,
  its own batch conversion from numpy, loss, accuracy, clipping and Adam), fp32 and GPT-2's
  dropout of 0.1, as its scripts/run.py configures it; only ``tqdm`` and the weights download
  are patched out. The data set object subclasses the official ``Dataset`` and returns one
  fixed random batch (the official CIFAR-10 loader needs torchvision and the data).
* ``unicomp default``: unicomp's model built by ``unicomp.experiments.fpt.build_fpt`` with the
  defaults (precision auto, attention auto, no dropout in the frozen layers) and unicomp's
  training step (the optimizer of ``unicomp.train.make_optimizer``, autocast as resolved,
  the task's loss and metric, clipping). Run bookkeeping (evaluation, checkpoints) is left
  out on both sides.
* ``unicomp default, attention set to sdpa``: the default with ``--attn-implementation sdpa``,
  so the build does not time a training step with each attention (that measurement's own
  peak shows in the default's peak memory).
* ``unicomp, official arithmetic``: fp32, dropout 0.1 in the frozen layers, sdpa attention.
* ``unicomp, output-only``: only the head trains (no backward through the frozen layers).
* ``unicomp, bf16 autocast`` (``--bf16``): forced bf16, to show what it costs on a CPU
  without native bf16 (``precision: auto`` does this measurement for a run).

It also measures the fp32 and bf16 square-matmul peaks on this machine in the same run and
prints each setting's FLOP/s (FLOPs counted by torch for one step: the forward and the
backward the freeze policy needs) as a fraction of the peak of the dtype it multiplies in,
and of the faster dtype's peak. Peak memory (max RSS) of each side is measured in a separate
process (``--only NAME``), so the sides do not share an allocator.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from _measure import (  # benchmarks/ helper
    fpt_training_step,
    interleaved,
    matmul_peak,
    step_flops,
    write_record,
)

BATCH, TOKENS, D_IN, CLASSES = 16, 64, 48, 10


def _fixed_batch(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, TOKENS, D_IN)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=batch)
    return x, y


def _gpt2_config():
    import transformers

    from unicomp.backbones.catalog import BACKBONES

    cfg = dict(BACKBONES.entry("gpt2").kwargs["config"])
    cfg.pop("model_type")
    return transformers.GPT2Config(**cfg)


def official_step(path: Path, batch: int):
    """One official training step per call: Trainer.train_epoch with steps_per_epoch=1."""
    root = path.resolve()
    if not (root / "universal_computation" / "fpt.py").is_file():
        raise SystemExit(
            f"--official {path}: not a checkout of kzl/universal-computation "
            "(universal_computation/fpt.py is missing)"
        )
    sys.path.insert(0, str(root))
    import transformers

    config = _gpt2_config()
    transformers.GPT2Model.from_pretrained = classmethod(lambda cls, *a, **k: cls(config))
    from universal_computation import trainer as official_trainer
    from universal_computation.datasets.dataset import Dataset
    from universal_computation.fpt import FPT as OfficialFPT

    official_trainer.tqdm = lambda it: it  # no progress bar in the timed loop

    x, y = _fixed_batch(batch)

    class FixedBatch(Dataset):
        def __init__(self):
            super().__init__(device="cpu")

        def get_batch_np(self, batch_size, train):
            return x[:batch_size], y[:batch_size]

    ce = torch.nn.CrossEntropyLoss()

    def loss_fn(out, target, x=None):  # the official classification loss (experiment.py)
        return ce(out[:, 0], target)

    def accuracy_fn(preds, true, x=None):
        return (preds[:, 0].argmax(-1) == true).mean()

    torch.manual_seed(0)
    model = OfficialFPT(
        input_dim=D_IN, output_dim=CLASSES, model_name="gpt2", pretrained=True, dropout=0.1
    )
    trainer = official_trainer.Trainer(
        model,
        FixedBatch(),
        loss_fn=loss_fn,
        accuracy_fn=accuracy_fn,
        steps_per_epoch=1,
        test_steps_per_epoch=0,
        learning_rate=1e-3,
        batch_size=batch,
        eval_batch_size=batch,
    )
    return lambda: trainer.train_epoch(test_steps=0), "fp32"


def unicomp_step(setting: str, batch: int):
    """unicomp's model and training step for one setting; returns (step, precision)."""
    from unicomp.config import FPTConfig, TrainConfig
    from unicomp.tasks.base import Batch

    x, y = _fixed_batch(batch)
    options = {
        "default": {},
        "default, sdpa": {"attn_implementation": "sdpa"},
        "official arithmetic": {
            "backbone_dropout": 0.1,
            "attn_implementation": "sdpa",
            "precision": "fp32",
        },
        "output-only": {"freeze": "output-only"},
        "bf16": {"precision": "bf16"},
    }[setting]
    train = TrainConfig(lr=1e-3, batch_size=batch, precision=options.pop("precision", "auto"))
    cfg = FPTConfig(task="fixed", backbone="random:gpt2", train=train, **options)
    fixed = Batch(torch.from_numpy(x), torch.from_numpy(y))
    step, precision, attention = fpt_training_step(cfg, fixed, n_classes=CLASSES)
    return step, f"{precision}, attention {attention}"


SETTINGS = {
    "official": "official FPT code (fp32, dropout 0.1, Adam, clipping)",
    "default": "unicomp default (precision auto, attention auto, no dropout)",
    "default, sdpa": "unicomp default, attention set to sdpa (not measured at start)",
    "official arithmetic": "unicomp, official arithmetic (fp32, dropout 0.1, sdpa)",
    "output-only": "unicomp, output-only (no backward through frozen layers)",
    "bf16": "unicomp, bf16 autocast forced",
}


def build(name: str, args):
    if name == "official":
        return official_step(args.official, args.batch_size)
    return unicomp_step(name, args.batch_size)


def _peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM (Linux) starts afresh at exec; getrusage's
    ru_maxrss does not (it keeps the forking parent's peak), so it is only the fallback."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mb(name: str, args) -> float:
    """Run ``--only name`` in a fresh process: its max RSS after a few steps."""
    cmd = [sys.executable, __file__, "--official", str(args.official), "--only", name]
    cmd += ["--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", type=Path, required=True, help="kzl/universal-computation")
    ap.add_argument("--batch-size", type=int, default=BATCH)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per setting and round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="also time forced bf16 autocast")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    ap.add_argument(
        "--out",
        help="write the record behind the docs' table here (results/benchmarks/<name>.json)",
    )
    ap.add_argument("--only", help=argparse.SUPPRESS)  # internal: one side, for its memory
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.only:
        step, _ = build(args.only, args)
        for _ in range(3):
            step()
        print(json.dumps({"peak_rss_mb": round(_peak_rss_mb(), 1)}))
        return

    names = [n for n in SETTINGS if n != "bf16" or args.bf16]
    memory = {} if args.no_memory else {n: peak_rss_mb(n, args) for n in names}
    built = {n: build(n, args) for n in names}
    steps = {n: built[n][0] for n in names}
    flops = {n: step_flops(steps[n]) for n in names}
    seconds = interleaved(steps, args.rounds, args.steps)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    best_peak = max(peaks.values())

    base = seconds["official"]
    print(
        f"GPT-2 base (random init), batch {args.batch_size} x {TOKENS} tokens x {D_IN} values, "
        f"paper freezing, {args.threads} threads, torch {torch.__version__}, "
        f"CPU {torch.backends.cpu.get_cpu_capability()}"
    )
    print(
        f"matmul peak: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} "
        "GFLOP/s"
    )
    head = f"{'setting':58s} {'s/step':>7s} {'samples/s':>9s} {'vs off.':>7s} {'GFLOP':>6s}"
    print(head + f" {'MFU':>6s} {'MFU best':>8s} {'peak MB':>8s}  precision")
    rows = {}
    for n in names:
        dtype = "bf16" if built[n][1].startswith("bf16") else "fp32"
        rate = flops[n] / seconds[n]
        row = {
            "seconds_per_step": round(seconds[n], 4),
            "samples_per_second": round(args.batch_size / seconds[n], 2),
            "speedup_vs_official": round(base / seconds[n], 2),
            "gflop_per_step": round(flops[n] / 1e9, 1),
            "mfu_own_dtype": round(rate / peaks[dtype], 3),
            "mfu_best_dtype": round(rate / best_peak, 3),
            "peak_rss_mb": memory.get(n),
            "precision": built[n][1],
        }
        rows[SETTINGS[n]] = row
        mem = f"{row['peak_rss_mb']:8.0f}" if n in memory else f"{'-':>8s}"
        print(
            f"{SETTINGS[n]:58s} {seconds[n]:7.3f} {row['samples_per_second']:9.1f} "
            f"{row['speedup_vs_official']:6.2f}x {row['gflop_per_step']:6.1f} "
            f"{row['mfu_own_dtype']:6.1%} {row['mfu_best_dtype']:8.1%} {mem}  {built[n][1]}"
        )
    raw = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "peak_gflops": {k: round(v / 1e9, 1) for k, v in peaks.items()},
        "settings": rows,
    }
    print(json.dumps(raw))
    if args.out:
        table = [[name, f"{r['seconds_per_step']:.3f}", f"{r['samples_per_second']:.1f}",
                  f"{r['speedup_vs_official']:.2f}x", f"{r['gflop_per_step']:.1f}",
                  f"{r['mfu_own_dtype']:.1%}",
                  "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:,.0f}"]
                 for name, r in rows.items()]  # fmt: skip
        about = (
            f"GPT-2 base with random weights, CIFAR-10's sizes ({TOKENS} tokens x {D_IN} "
            f"values), batch {args.batch_size}, paper freezing, {args.threads} threads, medians "
            f"of {args.rounds} x {args.steps} interleaved steps per setting; GFLOP counted by "
            "torch's FlopCounterMode for one step; MFU against the matmul peak of the step's "
            f"dtype measured in the same run (fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 "
            f"{peaks['bf16'] / 1e9:.1f} GFLOP/s; CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}); peak MB: the maximum RSS of each "
            "setting in its own process (build, then 3 training steps)."
        )
        columns = ["setting", "s/step", "samples/s", "vs official", "GFLOP/step",
                   "MFU (own dtype)", "peak MB"]  # fmt: skip
        write_record(args.out, about, columns, table, **raw)


if __name__ == "__main__":
    main()
