"""Every claim of the three papers, checked by one command: ``unicomp reproduce``.

    unicomp reproduce --preset tiny|quick|paper [--claims NAME,...] [--out DIR] [--jobs N]

A registry (:data:`CLAIMS`) names each claim of ../shared/MISSION.md with the paper's figure,
the experiments it needs and a verdict rule. A preset (:func:`preset`) sizes the experiments:

- FPT (``fpt``, ``size``): ``unicomp fpt ablate`` suites written to ``OUT/_suites/`` and run
  by :mod:`unicomp.ablate` (same cells, same skipping of finished runs, same tables and plots);
- Decision Transformer (``dt``): a Key-to-Door data set collected by a random policy
  (:func:`unicomp.rl.collect.collect`), then DT, DT K=1, BC and DT with delayed rewards
  trained and evaluated by :func:`unicomp.experiments.dt.run_dt` (``unicomp dt train``);
- Perceiver (``perceiver``): Perceiver IO and the plain Perceiver on the dense
  ``digits-inpaint`` task (:func:`unicomp.experiments.perceiver.run_perceiver`).

Every run is an ordinary run folder under ``OUT``; a finished one is skipped on a re-run (its
config.yaml checked against what the preset asks), a killed one resumes. Then
``OUT/report.md``, ``OUT/report.html`` (one self-contained page: images embedded as data:
URIs, no external resource) and ``OUT/claims.json`` are written.
"""

from __future__ import annotations

import base64
import html
import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml

from unicomp.ablate import Cell, _plan, load_suite, run_suites
from unicomp.errors import UnicompError
from unicomp.files import atomic_write_json, atomic_write_text
from unicomp.plots import plot_returns, pyplot, save_figure
from unicomp.runs import markdown_table, mean_std

PRESETS = ("tiny", "quick", "paper")
VERDICTS = ("holds", "partly", "does not hold", "not measured at this budget")
GROUPS = ("fpt", "size", "dt", "perceiver")

# --- presets ---------------------------------------------------------------------------------

# Paper figures of the bit-XOR rows (REFERENCE_RESULTS.md, GPT-2 base).
_XOR_PAPER = {"FPT": 100, "frozen random init": 100, "full transformer": 100, "LSTM": 50.1,
              "output only": 56, "+ norms": 98, "+ input": 98}  # fmt: skip


def _fpt_tables(backbone: str, layers: int, lstm: str, lstm_lr: float) -> list[dict]:
    def row(label, **kw):
        return {"label": label, "backbone": backbone, "freeze": "paper", **kw} | (
            {"paper": _XOR_PAPER[label]} if label in _XOR_PAPER else {}
        )

    rand = f"random:{backbone}"
    return [
        {"title": "Backbones (Table 1)", "rows": [
            row("FPT"),
            row("frozen random init", backbone=rand),
            row("full transformer", backbone=rand, backbone_layers=layers, freeze="full"),
            row("LSTM", backbone=lstm, freeze="full", train={"lr": lstm_lr}),
        ]},
        {"title": "Parameters finetuned (Tables 9-13)", "rows": [
            row("output only", freeze="output-only"),
            row("+ norms", freeze="output+norm"),
            row("+ input", freeze="output+norm+input"),
            row("FPT"),
            row("+ feed-forward", freeze="+ff"),
            row("+ attention", freeze="+attn"),
            row("norms frozen", freeze="no-norm"),
        ]},
    ]  # fmt: skip


def _size_tables(small: str, large: str) -> list[dict]:
    return [{"title": "Model size", "rows": [
        {"label": "smaller FPT", "backbone": small, "freeze": "paper"},
        {"label": "larger FPT", "backbone": large, "freeze": "paper"},
    ]}]  # fmt: skip


def _dt_runs() -> dict[str, dict]:
    """The DT runs every preset trains on its Key-to-Door data (DTConfig fields)."""
    return {
        "DT": {},
        "DT K=1": {"context": 1},
        "BC": {"algo": "bc"},
        "DT delayed reward": {"delayed_reward": True},
    }


def preset(name: str, out: Path) -> dict:
    """The experiments of one preset; ``out`` is where tiny writes its random backbones."""
    if name == "tiny":
        small, large = str(out / "_backbones" / "gpt2-w32"), str(out / "_backbones" / "gpt2-w64")
        return {
            "about": "a smoke test (seconds per run): tiny random GPT-2s (2 layers, width 32 "
            "and 64) stand in for the pretrained models, a few steps each; verdicts mean "
            "nothing at this size",
            "expected": "about 1.5 CPU-minutes (each FPT run is a process of its own)",
            "tiny_backbones": {small: 32, large: 64},
            "fpt": {"task": "bit-xor", "seeds": [0], "chance": 0.5,
                    "train": {"steps": 6, "batch_size": 8, "lr": 3e-3, "eval_every": 3,
                              "eval_batch_size": 64, "target_accuracy": 0.99},
                    "tables": _fpt_tables(small, 1, "lstm:1x32", 3e-4)},
            "size": {"task": "bit-xor", "seeds": [0],
                     "train": {"steps": 6, "batch_size": 8, "lr": 3e-3, "eval_every": 3,
                               "eval_batch_size": 64},
                     "tables": _size_tables(small, large)},
            "dt": {"episodes": 200, "seeds": [0], "runs": _dt_runs(),
                   "settings": {"context": 4, "max_ep_len": 16, "rtg_scale": 0.1,
                                "hidden_size": 16, "n_layer": 1, "dropout": 0.0,
                                "eval_targets": "1,0", "eval_episodes": 20, "eval_envs": 20,
                                "train": {"steps": 10, "batch_size": 16, "lr": 1e-3,
                                          "warmup_steps": 0, "eval_every": 5}}},
            "perceiver": {"task": "digits-inpaint", "seeds": [0],
                          "settings": {"num_latents": 8, "d_latent": 16, "num_blocks": 1,
                                       "self_attends_per_block": 1,
                                       "train": {"steps": 10, "eval_every": 5,
                                                 "batch_size": 16}}},
        }  # fmt: skip
    if name == "quick":
        return {
            "about": "2 CPU cores, about 30 minutes, offline: bit XOR (2 seeds, 300 steps "
            "of batch 32; the paper trains to convergence) on minilm-l6 for the FPT claims; "
            "model size as minilm-l6 against smollm2-135m (1 seed, 150 steps); "
            "Key-to-Door from 3,000 random-policy episodes, a 2-layer width-32 DT (2 seeds, "
            "1,500 steps, 300 evaluation episodes); Perceiver IO against Perceiver on "
            "digits-inpaint (2 seeds, 400 steps)",
            "expected": "about 25-30 minutes on 2 CPU cores (estimated from the "
            "train_seconds of earlier runs: docs/reproduce.md)",
            "fpt": {"task": "bit-xor", "seeds": [0, 1], "chance": 0.5,
                    "train": {"steps": 300, "batch_size": 32, "lr": 3e-3, "eval_every": 25,
                              "target_accuracy": 0.99},
                    "tables": _fpt_tables("minilm-l6", 3, "lstm:3x384", 3e-4)},
            "size": {"task": "bit-xor", "seeds": [0],
                     "train": {"steps": 150, "batch_size": 32, "lr": 3e-3, "eval_every": 25,
                               "target_accuracy": 0.99},
                     "tables": _size_tables("minilm-l6", "smollm2-135m")},
            "dt": {"episodes": 3000, "seeds": [0, 1], "runs": _dt_runs(),
                   "settings": {"context": 16, "max_ep_len": 16, "rtg_scale": 0.1,
                                "hidden_size": 32, "n_layer": 2, "dropout": 0.0,
                                "eval_targets": "1,0", "eval_episodes": 300, "eval_envs": 100,
                                "train": {"steps": 1500, "batch_size": 64, "lr": 2e-3,
                                          "warmup_steps": 100, "eval_every": 500}}},
            "perceiver": {"task": "digits-inpaint", "seeds": [0, 1],
                          "settings": {"train": {"steps": 400, "eval_every": 100}}},
        }  # fmt: skip
    if name == "paper":
        return {
            "about": "for a GPU: the paper's protocol where this library has it: bit XOR "
            "and model size at 3 seeds and 5,000 steps at the paper's lr 1e-3 (the paper "
            "reports convergence at 5e2 steps for FPT, 2e4 for random init), the paper's "
            "3-layer full transformer and 3 x 768 LSTM; Key-to-Door from 10,000 random "
            "episodes with the paper's gym DT size (3 layers, width 128), 3 seeds, 10,000 "
            "steps; Perceivers at 3 seeds, 5,000 steps",
            "expected": "not measured; estimated at 1-3 hours on one GPU (docs/reproduce.md)",
            "fpt": {"task": "bit-xor", "seeds": [0, 1, 2], "chance": 0.5,
                    "train": {"steps": 5000, "batch_size": 32, "lr": 1e-3, "eval_every": 100,
                              "target_accuracy": 0.99},
                    "tables": _fpt_tables("minilm-l6", 3, "lstm:3x768", 3e-4)},
            "size": {"task": "bit-xor", "seeds": [0, 1, 2],
                     "train": {"steps": 5000, "batch_size": 32, "lr": 1e-3, "eval_every": 100,
                               "target_accuracy": 0.99},
                     "tables": _size_tables("minilm-l6", "smollm2-135m")},
            "dt": {"episodes": 10000, "seeds": [0, 1, 2], "runs": _dt_runs(),
                   "settings": {"context": 16, "max_ep_len": 16, "rtg_scale": 0.1,
                                "hidden_size": 128, "n_layer": 3, "dropout": 0.1,
                                "eval_targets": "1,0", "eval_episodes": 1000,
                                "eval_envs": 100,
                                "train": {"steps": 10000, "batch_size": 64, "lr": 1e-4,
                                          "warmup_steps": 1000, "eval_every": 1000}}},
            "perceiver": {"task": "digits-inpaint", "seeds": [0, 1, 2],
                          "settings": {"train": {"steps": 5000, "eval_every": 250}}},
        }  # fmt: skip
    raise UnicompError(f"--preset {name!r}: choose one of {', '.join(PRESETS)}")


# --- claims ----------------------------------------------------------------------------------


class Missing(Exception):
    """A claim's evidence is not there (a run failed, or was not part of this invocation)."""


@dataclass
class Evidence:
    """What the runs measured, by group; values are lists over seeds."""

    fpt: dict[str, dict]  # ablate row summaries by label
    size: dict[str, dict]
    dt: dict[str, list[dict]]  # metrics.json of each seed, by run label
    perceiver: dict[str, list[dict]]
    chance: float
    data_success: float | None  # the Key-to-Door data's own success rate

    def row(self, group: str, label: str) -> dict:
        r = getattr(self, group).get(label)
        if not r or not r["test_accuracy"]:
            why = "; ".join(r["failed"]) if r and r["failed"] else "not run"
            raise Missing(f"{group} row {label!r}: {why}")
        return r

    def acc(self, group: str, label: str) -> list[float]:
        return self.row(group, label)["test_accuracy"]

    def runs(self, group: str, label: str) -> list[dict]:
        found = getattr(self, group).get(label) or []
        if not found:
            raise Missing(f"{group} runs {label!r}: not run or failed")
        return found


def _pm(values: list[float], scale: float = 100, digits: int = 1) -> str:
    mean, std = mean_std(values, single=0.0)
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f} (n={len(values)})"


def _margin(*groups: list[float]) -> float:
    """A difference counts when it exceeds the larger of 1 point and any group's std."""
    return max([0.01] + [mean_std(g, single=0.0)[1] for g in groups])


def _mean(values: list[float]) -> float:
    return statistics.mean(values)


def _steps(row: dict) -> float:
    """Median steps to the target accuracy over seeds (inf where a seed never got there)."""
    steps = [float("inf") if s is None else s for s in row["steps_to_target"]]
    return statistics.median(steps)


def _seconds_per_step(row: dict) -> float:
    return _mean([s / n for s, n in zip(row["train_seconds"], row["steps"], strict=True)])


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _verdict(good: int, total: int) -> str:
    return "holds" if good == total else "partly" if good else "does not hold"


def _fpt_vs_full(ev: Evidence):
    fpt, full, lstm = ev.acc("fpt", "FPT"), ev.acc("fpt", "full transformer"), ev.acc("fpt", "LSTM")
    close = [_mean(fpt) >= _mean(other) - 0.05 for other in (full, lstm)]
    ours = f"FPT {_pm(fpt)}; full transformer {_pm(full)}; LSTM {_pm(lstm)}"
    rule = "FPT within 5 points of (or above) each of the full transformer and the LSTM"
    return ours, _verdict(sum(close), 2), f"{rule}: {sum(close)} of 2"


def _pretrained_vs_random(ev: Evidence):
    fpt, rnd = ev.row("fpt", "FPT"), ev.row("fpt", "frozen random init")
    m = _margin(fpt["test_accuracy"], rnd["test_accuracy"])
    better = _mean(fpt["test_accuracy"]) > _mean(rnd["test_accuracy"]) + m
    not_worse = _mean(fpt["test_accuracy"]) >= _mean(rnd["test_accuracy"]) - m
    s_fpt, s_rnd = _steps(fpt), _steps(rnd)
    faster = s_fpt < s_rnd
    target = f"{100 * (fpt['target_accuracy'] or 0):.0f}%"
    ours = (
        f"test {_pm(fpt['test_accuracy'])} vs {_pm(rnd['test_accuracy'])}; median steps to "
        f"{target} validation {s_fpt:g} vs {s_rnd:g}"
    )
    good = int(better or (not_worse and faster)) + int(faster)
    reason = (
        f"better: {_yes(better)} (margin {100 * m:.1f} points), faster to "
        f"{target}: {_yes(faster)} (inf: never reached in the budget)"
    )
    return ours, _verdict(good, 2), reason


def _norms_matter_most(ev: Evidence):
    out, norm, inp, fpt = (ev.acc("fpt", k) for k in ("output only", "+ norms", "+ input", "FPT"))
    frozen = ev.acc("fpt", "norms frozen")
    gains = {"norms": _mean(norm) - _mean(out), "input": _mean(inp) - _mean(norm),
             "positions": _mean(fpt) - _mean(inp)}  # fmt: skip
    largest = max(gains, key=gains.get)
    drop = _mean(fpt) - _mean(frozen)
    m = _margin(fpt, frozen)
    ours = (
        "gain adding "
        + ", ".join(f"{k} {100 * v:+.1f}" for k, v in gains.items())
        + f" points; freezing the norms of the FPT {-100 * drop:+.1f} points"
    )
    good = int(largest == "norms") + int(drop > m)
    reason = (
        f"largest gain from {largest}; freezing norms costs more than the margin "
        f"({100 * m:.1f} points): {_yes(drop > m)}"
    )
    return ours, _verdict(good, 2), reason


def _ff_helps_attn_hurts(ev: Evidence):
    fpt, ff, attn = (
        ev.acc("fpt", "FPT"),
        ev.acc("fpt", "+ feed-forward"),
        ev.acc("fpt", "+ attention"),
    )
    m = _margin(fpt, ff, attn)
    helps = _mean(ff) >= _mean(fpt) - m
    hurts = _mean(attn) < _mean(fpt) - m
    ours = f"FPT {_pm(fpt)}; + feed-forward {_pm(ff)}; + attention {_pm(attn)}"
    reason = (
        f"+ff not below FPT by more than the margin ({100 * m:.1f} points): "
        f"{_yes(helps)}; +attention below it: {_yes(hurts)}"
    )
    return ours, _verdict(int(helps) + int(hurts), 2), reason


def _output_only(ev: Evidence):
    out, fpt = ev.row("fpt", "output only"), ev.row("fpt", "FPT")
    m = _margin(out["test_accuracy"], fpt["test_accuracy"])
    works = _mean(out["test_accuracy"]) > ev.chance + m
    worse = _mean(out["test_accuracy"]) < _mean(fpt["test_accuracy"]) - m
    speed = _seconds_per_step(fpt) / _seconds_per_step(out)
    faster = speed >= 10
    ours = (
        f"output only {_pm(out['test_accuracy'])} vs FPT {_pm(fpt['test_accuracy'])}; "
        f"{speed:.1f}x faster per step (chance {100 * ev.chance:.0f}%)"
    )
    reason = (
        f"above chance: {_yes(works)}; below FPT: {_yes(worse)}; "
        f"at least 10x faster per step: {_yes(faster)} (the paper's speed comes "
        "from features cached once, which a task drawing fresh examples each step such as "
        "bit XOR cannot use)"
    )
    return ours, _verdict(int(works) + int(worse) + int(faster), 3), reason


def _larger_better(ev: Evidence):
    small, large = ev.row("size", "smaller FPT"), ev.row("size", "larger FPT")
    a, b = small["test_accuracy"], large["test_accuracy"]
    m = _margin(a, b)
    diff = _mean(b) - _mean(a)
    name = {k: Path(r["backbone"]).name for k, r in (("s", small), ("l", large))}
    ours = f"{name['l']} {_pm(b)} vs {name['s']} {_pm(a)}"
    verdict = "holds" if diff > m else "partly" if diff >= -m else "does not hold"
    reason = f"difference {100 * diff:+.1f} points, margin {100 * m:.1f} (partly: level)"
    return ours, verdict, reason


def _no_overfit(ev: Evidence):
    fpt, full = ev.row("fpt", "FPT"), ev.row("fpt", "full transformer")
    if fpt["gap_mean"] is None or full["gap_mean"] is None:
        raise Missing("no train accuracy at the best step")
    small = fpt["gap_mean"] < 0.05
    contrast = full["gap_mean"] > fpt["gap_mean"] + 0.01
    ours = (
        f"train - test gap: FPT {100 * fpt['gap_mean']:+.1f} points, full transformer "
        f"{100 * full['gap_mean']:+.1f}"
    )
    reason = (
        f"FPT gap under 5 points: {_yes(small)}; the full transformer's gap "
        f"larger: {_yes(contrast)}"
    )
    return ours, _verdict(int(small) + int(small and contrast), 2), reason


def _success(runs: list[dict]) -> list[float]:
    return [r["success_rate"] for r in runs]


def _dt_vs_bc(ev: Evidence):
    dt, bc = _success(ev.runs("dt", "DT")), _success(ev.runs("dt", "BC"))
    m = _margin(dt, bc)
    beats = _mean(dt) > _mean(bc) + m
    ours = f"Key-to-Door success: DT {_pm(dt)}, BC {_pm(bc)}; CQL/IQL not run"
    reason = (
        f"DT above BC by more than the margin ({100 * m:.1f} points): "
        f"{_yes(beats)}. CQL/IQL run through d3rlpy in its own environment "
        "(unicomp dt external), not part of this command: at most partly"
    )
    return ours, "partly" if beats else "does not hold", reason


def _k1_worse(ev: Evidence):
    dt, k1 = _success(ev.runs("dt", "DT")), _success(ev.runs("dt", "DT K=1"))
    m = _margin(dt, k1)
    worse = _mean(k1) < _mean(dt) - m
    much = worse and _mean(k1) <= 0.5 * _mean(dt)
    ours = f"Key-to-Door success: K=1 {_pm(k1)} vs K={ev.dt['DT'][0]['context']} {_pm(dt)}"
    reason = f"worse beyond the margin: {_yes(worse)}; at most half: {_yes(much)}"
    return ours, "holds" if much else "partly" if worse else "does not hold", reason


def _key_to_door(ev: Evidence):
    dt = _success(ev.runs("dt", "DT"))
    data = ev.data_success or 0.0
    m = _margin(dt)
    above = _mean(dt) > data + m
    strong = _mean(dt) >= 0.5
    ours = f"DT success {_pm(dt)}; the random policy's data {100 * data:.1f}%"
    reason = (
        f"DT above the data's success rate: {_yes(above)}; at least 50% "
        f"(the paper: 71.8% from 1K episodes): {_yes(strong)}"
    )
    return ours, _verdict(int(above) + int(above and strong), 2), reason


def _delayed(ev: Evidence):
    dt, delayed = _success(ev.runs("dt", "DT")), _success(ev.runs("dt", "DT delayed reward"))
    bc = _success(ev.runs("dt", "BC"))
    m = _margin(dt, delayed, bc)
    kept = _mean(delayed) >= _mean(dt) - m
    over_bc = _mean(delayed) > _mean(bc) + m
    ours = f"Key-to-Door success with delayed reward {_pm(delayed)}; DT {_pm(dt)}; BC {_pm(bc)}"
    reason = (
        f"delayed within the margin of DT: {_yes(kept)}; above BC: "
        f"{_yes(over_bc)}. Key-to-Door's reward already comes at the door, so "
        "this checks sparse reward and the delayed-reward path; the paper's Hopper test "
        "needs trained agents' data (not offline here): at most partly"
    )
    return ours, "partly" if kept and over_bc else "does not hold", reason


def _perceiver_io(ev: Evidence):
    io = [r["test_accuracy"] for r in ev.runs("perceiver", "perceiver-io")]
    plain = [r["test_accuracy"] for r in ev.runs("perceiver", "perceiver")]
    m = _margin(io, plain)
    diff = _mean(io) - _mean(plain)
    ours = f"digits-inpaint hidden-pixel accuracy: Perceiver IO {_pm(io)}, Perceiver {_pm(plain)}"
    verdict = "holds" if diff > m else "partly" if diff >= -m else "does not hold"
    reason = (
        f"difference {100 * diff:+.1f} points, margin {100 * m:.1f} (partly: level); a dense "
        "task, not the paper's ImageNet"
    )
    return ours, verdict, reason


@dataclass(frozen=True)
class Claim:
    name: str
    text: str
    paper: str  # the paper's figure, from ../shared/REFERENCE_RESULTS.md
    group: str  # the experiments it needs (GROUPS)
    judge: Callable[[Evidence], tuple[str, str, str]]  # -> ours, verdict, reason
    figures: tuple[str, ...]  # figure keys (see _figures)


CLAIMS = (
    Claim("fpt-vs-full", "FPT is about as good as a transformer trained fully and an LSTM",
          "bit XOR: FPT 100, full 100, LSTM 50.1", "fpt", _fpt_vs_full, ("fpt-0",)),
    Claim("pretrained-vs-random", "language pretraining beats frozen random init, and "
          "converges faster", "bit XOR: 100 vs 100; 5e2 vs 2e4 steps (40x)", "fpt",
          _pretrained_vs_random, ("fpt-0",)),
    Claim("norms-matter-most", "of the trainable parameters the norms matter most",
          "bit XOR: output only 56, + norms 98, + input 98, + positions 100; CIFAR-10 norms "
          "frozen 61.5 vs 68.2", "fpt", _norms_matter_most, ("fpt-1",)),
    Claim("ff-helps-attn-hurts", "finetuning feed-forward helps, finetuning attention hurts",
          "MNIST: + ff 98.3, + attention 89.0 (FPT 98.0)", "fpt", _ff_helps_attn_hurts,
          ("fpt-1",)),
    Claim("output-only", "training only the output layer works, worse than FPT, far faster",
          "bit XOR 56 (FPT 100); 500-2000x faster per epoch with cached features", "fpt",
          _output_only, ("fpt-1",)),
    Claim("larger-fpt", "a larger FPT does better",
          "CIFAR-10: GPT-2 small 68.2, medium 69.8, large 72.1", "size", _larger_better,
          ("size-0",)),
    Claim("no-overfit", "FPT does not overfit, unlike models trained from scratch",
          "(train-test gap; no single figure in our references)", "fpt", _no_overfit,
          ("fpt-0", "attention")),
    Claim("dt-vs-bc-cql", "DT beats BC and competes with CQL/IQL",
          "Key-to-Door 1K: DT 71.8, BC 1.4, CQL 13.1; D4RL: DT 74.7 avg", "dt", _dt_vs_bc,
          ("dt-bars",)),
    Claim("k1-worse", "with context K=1 the DT is much worse", "Breakout: K=1 73.9 vs 267.5",
          "dt", _k1_worse, ("dt-bars",)),
    Claim("key-to-door", "DT does long-term credit assignment (Key-to-Door) from random data",
          "success 71.8 (1K episodes) / 94.6 (10K); random policy 3.1", "dt", _key_to_door,
          ("dt-bars", "dt-targets")),
    Claim("delayed-reward", "DT works with sparse and delayed rewards",
          "Hopper medium-expert, delayed: DT 107.3, CQL 9.0, BC 59.9", "dt", _delayed,
          ("dt-bars",)),
    Claim("perceiver-io", "Perceiver IO is consistently better than the plain Perceiver",
          "ImageNet: 72.7 vs 67.6 (learned positions), 79.0 vs 78.6 (Fourier)", "perceiver",
          _perceiver_io, ("perceiver-bars", "perceiver-examples")),
)  # fmt: skip
CLAIM_NAMES = tuple(c.name for c in CLAIMS)


def select_claims(text: str | None) -> list[Claim]:
    if not text:
        return list(CLAIMS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CLAIM_NAMES]
    if unknown or not names:
        raise UnicompError(
            f"--claims {text!r}: unknown {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(CLAIM_NAMES)}"
        )
    return [c for c in CLAIMS if c.name in names]


# --- running ---------------------------------------------------------------------------------


def _make_tiny_backbones(backbones: dict[str, int]) -> None:
    """Seeded random GPT-2 folders (2 layers) for the tiny preset, written once."""
    import torch
    from transformers import GPT2Config, GPT2Model

    for folder, width in backbones.items():
        if (Path(folder) / "config.json").is_file():
            continue
        torch.manual_seed(0)
        cfg = GPT2Config(n_layer=2, n_embd=width, n_head=2, n_positions=64, vocab_size=64,
                         bos_token_id=0, eos_token_id=0)  # fmt: skip
        tmp = Path(folder + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        GPT2Model(cfg).save_pretrained(tmp)
        tmp.rename(folder)


def _suite_file(out: Path, name: str, spec: dict) -> Path:
    data = {"name": name, "description": f"unicomp reproduce: the {name} claims",
            "protocol": "paper",
            **{k: spec[k] for k in ("task", "seeds", "train", "tables")}}  # fmt: skip
    if "task_args" in spec:
        data["task_args"] = spec["task_args"]
    path = out / "_suites" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
    return path


def _job_cells(out: Path, spec: dict) -> list[Cell]:
    """The DT and Perceiver runs of a preset as ablate cells (key, label, seed, config)."""
    from unicomp.config import DTConfig, PerceiverConfig, check_config, from_dict

    cells = []
    if "dt" in spec:
        d = spec["dt"]
        for label, extra in d["runs"].items():
            for seed in d["seeds"]:
                key = f"dt/{label.lower().replace(' ', '-').replace('=', '')}/s{seed}"
                data = {**d["settings"], **extra, "data": str(out / "dt" / "key-to-door")}
                data["train"] = {**d["settings"]["train"], "seed": seed, "progress": False}
                cfg = check_config(from_dict(DTConfig, data, f"preset dt {label}"))
                cfg.out = str(out / key)
                cells.append(Cell(key, label, "dt", seed, cfg))
    if "perceiver" in spec:
        p = spec["perceiver"]
        from unicomp.experiments.perceiver import perceiver_task_defaults

        for model in ("perceiver-io", "perceiver"):
            for seed in p["seeds"]:
                key = f"perceiver/{model}/s{seed}"
                data = {**p["settings"], "task": p["task"], "model": model}
                data["train"] = {**perceiver_task_defaults(p["task"]),
                                 **p["settings"].get("train", {}), "seed": seed,
                                 "progress": False}  # fmt: skip
                cfg = check_config(from_dict(PerceiverConfig, data, f"preset perceiver {model}"))
                cfg.out = str(out / key)
                cells.append(Cell(key, model, "perceiver", seed, cfg))
    return cells


def _run_job(cfg: Any, plan: str, threads: int, log: str) -> None:
    """One DT or Perceiver run, in a worker process (library calls, output to ``log``)."""
    import torch

    torch.set_num_threads(threads)
    from unicomp.config import DTConfig
    from unicomp.experiments.dt import run_dt
    from unicomp.experiments.perceiver import run_perceiver

    saved = sys.stdout, sys.stderr
    with open(log, "a") as f:
        sys.stdout = sys.stderr = f
        try:
            (run_dt if isinstance(cfg, DTConfig) else run_perceiver)(cfg, resume=plan == "resume")
        finally:
            sys.stdout, sys.stderr = saved  # the worker runs the next job with its own log


def _run_jobs(cells: list[Cell], logs: Path, jobs: int, threads: int, say) -> None:
    logs.mkdir(parents=True, exist_ok=True)
    todo = []
    for cell in cells:
        try:
            plan = _plan(cell)
        except UnicompError as err:
            cell.status, cell.error = "failed", str(err)
            say(f"{cell.key}: FAILED: {err}")
            continue
        if plan == "skip":
            cell.status = "skipped"
            say(f"{cell.key}: finished before, skipped")
        else:
            todo.append((cell, plan))
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = [
            (cell, pool.submit(_run_job, cell.cfg, plan, threads, f"{logs / cell.file_stem}.log"))
            for cell, plan in todo
        ]  # fmt: skip
        for cell, future in futures:
            try:
                future.result()
                cell.status = "done"
                say(f"{cell.key}: done")
            except Exception as err:  # noqa: BLE001 (reported in the claims table)
                cell.status, cell.error = (
                    "failed",
                    str(err).splitlines()[0] if str(err) else repr(err),
                )
                say(f"{cell.key}: FAILED: {cell.error} (log {logs / cell.file_stem}.log)")


def _describe(cfg: Any) -> str:
    """A DT or Perceiver run's settings in one line (``--dry-run``)."""
    t = cfg.train
    if hasattr(cfg, "algo"):
        what = (
            f"dt {cfg.algo} K={cfg.context} delayed_reward={cfg.delayed_reward} "
            f"{cfg.n_layer} layers x {cfg.hidden_size} data={cfg.data}"
        )
    else:
        what = f"{cfg.task} {cfg.model} {cfg.num_latents} latents x {cfg.d_latent}"
    return f"{what} steps={t.steps} lr={t.lr:g} batch={t.batch_size}"


def _collect_key_to_door(out: Path, episodes: int, say) -> dict:
    from unicomp.rl.collect import Component, collect

    data = out / "dt" / "key-to-door"
    record = data / "collection.json"
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("episodes") == episodes:
            return saved
        raise UnicompError(
            f"{data} holds {saved.get('episodes')} episodes, the preset asks {episodes}; "
            "choose another --out"
        )
    shutil.rmtree(data, ignore_errors=True)  # a collection killed before its record
    say(f"collecting {episodes} random-policy Key-to-Door episodes into {data}")
    return collect("KeyToDoor-v0", (Component("random"),), episodes, data, n_envs=100, log=say)


def _default_out(name: str) -> Path:
    return Path("runs") / f"reproduce-{name}"


def reproduce(
    name: str,
    out: Path | None = None,
    claims: str | None = None,
    jobs: int = 2,
    dry_run: bool = False,
    say=print,
) -> dict:
    """Run (or skip) every experiment the chosen claims need, then write the report."""
    if jobs < 1:
        raise UnicompError(f"--jobs must be >= 1, got {jobs}")
    chosen = select_claims(claims)
    out = (out or _default_out(name)).absolute()
    spec = preset(name, out)
    groups = {c.group for c in chosen}
    threads = max(1, (os.cpu_count() or 1) // jobs)
    suites = {
        g: load_suite(str(_suite_file(out, g, spec[g])), out / "fpt")
        for g in ("fpt", "size")
        if g in groups
    }
    cells = _job_cells(out, {g: spec[g] for g in ("dt", "perceiver") if g in groups})
    if dry_run:
        from unicomp.ablate import describe

        lines = [describe(s) for s in suites.values()]
        lines += [f"  {c.key}: {_describe(c.cfg)}" for c in cells]
        return {"dry_run": "\n".join(lines)}
    t0 = time.time()
    if spec.get("tiny_backbones") and suites:
        _make_tiny_backbones(spec["tiny_backbones"])
    # the size suite first: its larger model's runs are the longest, the others fill the slots
    order = sorted(suites, key=lambda g: g != "size")
    done = (
        run_suites([suites[g] for g in order], out / "fpt" / "logs", jobs, threads, say)
        if suites
        else []
    )
    results = dict(zip(order, done, strict=True))
    collection = _collect_key_to_door(out, spec["dt"]["episodes"], say) if "dt" in groups else None
    _run_jobs(cells, out / "logs", jobs, threads, say)
    figures = _figures(out, suites, results, cells, collection, spec)
    ev = _evidence(results, cells, collection, spec)
    rows = []
    for claim in chosen:
        try:
            ours, verdict, reason = claim.judge(ev)
        except Missing as why:
            ours, verdict, reason = "-", VERDICTS[3], f"not measured: {why}"
        rows.append({"claim": claim.name, "text": claim.text, "paper": claim.paper,
                     "ours": ours, "verdict": verdict, "reason": reason,
                     "figures": [f for f in claim.figures if f in figures]})  # fmt: skip
    info = _about(name, spec, out, time.time() - t0, suites, cells)
    report = {"preset": name, "out": str(out), **info, "claims": rows, "figures": figures}
    atomic_write_json(out / "claims.json", report)
    blocks = _blocks(report, out)
    atomic_write_text(out / "report.md", to_markdown(blocks))
    atomic_write_text(out / "report.html", to_html(blocks, out))
    return report


def _metrics(cell: Cell) -> dict | None:
    path = Path(cell.cfg.out) / "metrics.json"
    return (
        json.loads(path.read_text())
        if cell.status in ("done", "skipped") and path.is_file()
        else None
    )


def _evidence(results: dict, cells: list[Cell], collection: dict | None, spec: dict) -> Evidence:
    by_group: dict[str, dict[str, list[dict]]] = {"dt": {}, "perceiver": {}}
    for cell in cells:
        m = _metrics(cell)
        if m is not None:
            by_group[cell.table].setdefault(cell.row, []).append({**m, "run": cell.cfg.out})
    rows = {g: {r["label"]: r for r in results[g]["rows"]} if g in results else {}
            for g in ("fpt", "size")}  # fmt: skip
    data_success = None
    if collection:
        data_success = (
            collection["components"][0].get("success_rate")
            if collection.get("components")
            else None
        )
        data_success = data_success if data_success is not None else collection.get("success_rate")
    return Evidence(rows["fpt"], rows["size"], by_group["dt"], by_group["perceiver"],
                    spec["fpt"].get("chance", 0.5), data_success)  # fmt: skip


# --- figures ---------------------------------------------------------------------------------


def _shown(path: str | Path) -> str:
    """A path for a command line: relative to the working folder where it is inside it."""
    path, here = Path(path).absolute(), Path.cwd()
    return str(path.relative_to(here)) if path.is_relative_to(here) else str(path)


def _rel(path: str | Path, out: Path) -> str:
    """A path for a link in the report (relative to the report's folder)."""
    path = Path(path).absolute()
    return str(path.relative_to(out)) if path.is_relative_to(out) else str(path)


def _figures(out: Path, suites: dict, results: dict, cells: list[Cell], collection, spec) -> dict:
    """Every figure of the report: {key: {title, file, runs, command}} (paths relative to
    ``out``); FPT plots come from ablate, the rest are drawn here from the run folders."""
    figs: dict[str, dict] = {}
    for group, suite in suites.items():
        cmd = f"unicomp fpt ablate --suite {_shown(suite.path)} --out {_shown(suite.root)}"
        for i, table in enumerate(suite.tables):
            rows = [r for r in results[group]["rows"] if r["table"] == table["title"]]
            runs = sorted({run for r in rows for run in r["runs"]})
            stem = suite.out / _slug(table["title"])
            for kind, what in (("bars", "test accuracy (mean ± std over seeds; red: paper)"),
                               ("curves", "validation accuracy against step")):  # fmt: skip
                figs[f"{group}-{i}" + ("" if kind == "bars" else "-curves")] = {
                    "title": f"{table['title']}: {what}",
                    "file": _rel(f"{stem}-{kind}.png", out),
                    "runs": [_rel(r, out) for r in runs],
                    "command": cmd,
                }
    fpt_run = out / "fpt" / "fpt" / "fpt" / f"s{spec['fpt']['seeds'][0]}"
    if "fpt" in suites and (fpt_run / "metrics.json").is_file():
        from unicomp.attention import attention_command

        png = out / "figures" / "attention.png"
        if not png.is_file():
            attention_command(fpt_run, example=0, split="test", out=png)
        figs["attention"] = {
            "title": "attention of the trained FPT (test example 0), mean over heads per layer",
            "file": _rel(png, out), "runs": [_rel(fpt_run, out)],
            "command": f"unicomp fpt attention {_shown(fpt_run)} --example 0 "
                       f"--out {_shown(png)}",
        }  # fmt: skip
    dt = [c for c in cells if c.table == "dt" and _metrics(c)]
    if dt:
        figs.update(_dt_figures(out, dt, collection))
    pc = [c for c in cells if c.table == "perceiver" and _metrics(c)]
    if pc:
        figs.update(_perceiver_figures(out, pc))
    return {k: v for k, v in figs.items() if (out / v["file"]).is_file()}


def _slug(text: str) -> str:
    from unicomp.ablate import slug

    return slug(text)


def _train_command(cell: Cell, kind: str) -> str:
    run = _shown(cell.cfg.out)
    return f"unicomp {kind} train --config {run}/config.yaml --out {run}"


def _dt_figures(out: Path, cells: list[Cell], collection) -> dict:
    plt = pyplot()
    by_label: dict[str, list[dict]] = {}
    for c in cells:
        by_label.setdefault(c.row, []).append(_metrics(c))
    figs = {}
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = list(by_label)
    means = [100 * _mean([m["success_rate"] for m in by_label[k]]) for k in labels]
    stds = [100 * mean_std([m["success_rate"] for m in by_label[k]], single=0.0)[1] for k in labels]
    ax.bar(range(len(labels)), means, yerr=stds, capsize=3, label="unicomp")
    paper = {"DT": 71.8, "BC": 1.4}
    marks = [(i, paper[k]) for i, k in enumerate(labels) if k in paper]
    if marks:
        ax.scatter(*zip(*marks, strict=True), color="red", marker="_", s=500, linewidths=2.5,
                   zorder=3, label="paper (1K episodes)")  # fmt: skip
    if collection:
        rate = collection["components"][0].get("success_rate")
        if rate is not None:
            ax.axhline(100 * rate, color="gray", ls="--", label="random policy (the data)")
    ax.set_xticks(range(len(labels)), labels, rotation=15)
    ax.set_ylabel("Key-to-Door success (%)")
    ax.set_ylim(0, 102)
    ax.legend(fontsize=7)
    ax.set_title("Decision Transformer on Key-to-Door (target return 1)")
    fig.tight_layout()
    save_figure(fig, out / "figures" / "dt-bars.png")
    cmd = "; ".join(_train_command(c, "dt") for c in cells[:1]) + " (each run likewise)"
    figs["dt-bars"] = {"title": "Key-to-Door success by algorithm (mean ± std over seeds)",
                       "file": "figures/dt-bars.png", "runs": [_rel(c.cfg.out, out) for c in cells],
                       "command": cmd}  # fmt: skip
    dts = [c for c in cells if c.row == "DT"]
    if dts:  # the same picture as unicomp plot draws for DT runs
        png = out / "figures" / "dt-targets.png"
        plot_returns({Path(c.cfg.out): _metrics(c)["eval"] for c in dts}, png)
        runs = [_shown(c.cfg.out) for c in dts]
        figs["dt-targets"] = {"title": "DT return against target return (each seed)",
                              "file": _rel(png, out), "runs": [_rel(c.cfg.out, out) for c in dts],
                              "command": f"unicomp plot {' '.join(runs)} -o curves.png "
                                         "(-> curves-returns.png)"}  # fmt: skip
    return figs


def _perceiver_figures(out: Path, cells: list[Cell]) -> dict:
    plt = pyplot()
    by: dict[str, list[float]] = {}
    for c in cells:
        by.setdefault(c.row, []).append(_metrics(c)["test_accuracy"])
    fig, ax = plt.subplots(figsize=(5, 4))
    labels = list(by)
    ax.bar(labels, [100 * _mean(by[k]) for k in labels],
           yerr=[100 * mean_std(by[k], single=0.0)[1] for k in labels], capsize=3)  # fmt: skip
    ax.set_ylabel("hidden-pixel test accuracy (%)")
    ax.set_title("Perceiver IO vs Perceiver: digits-inpaint")
    fig.tight_layout()
    save_figure(fig, out / "figures" / "perceiver-bars.png")
    runs = [_rel(c.cfg.out, out) for c in cells]
    figs = {"perceiver-bars": {"title": "Perceiver IO against Perceiver (mean ± std over seeds)",
                               "file": "figures/perceiver-bars.png", "runs": runs,
                               "command": _train_command(cells[0], "perceiver")}}  # fmt: skip
    first = cells[0]
    if (Path(first.cfg.out) / "examples.png").is_file():
        figs["perceiver-examples"] = {
            "title": f"{first.row} test images: input, prediction, target",
            "file": _rel(Path(first.cfg.out) / "examples.png", out), "runs": [runs[0]],
            "command": _train_command(first, "perceiver"),
        }  # fmt: skip
    return figs


# --- the report ------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _about(name: str, spec: dict, out: Path, seconds: float, suites: dict, cells) -> dict:
    import torch

    from unicomp.provenance import provenance

    folders = [c.cfg.out for s in suites.values() for c in s.prepare + s.cells] + [
        c.cfg.out for c in cells
    ]
    train_seconds = 0.0
    for folder in folders:
        path = Path(folder) / "metrics.json"
        if path.is_file():
            m = json.loads(path.read_text())
            train_seconds += (m.get("train_seconds") or 0) + (m.get("feature_seconds") or 0)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "budget": spec["about"],
        "expected": spec["expected"],
        "runs": len(folders),
        "train_seconds": round(train_seconds, 1),
        "wall_seconds_this_call": round(seconds, 1),
        "machine": f"{_cpu_model()}, {os.cpu_count()} cores, GPU {gpu}, {platform.platform()}",
        "versions": {
            **provenance(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"unicomp reproduce --preset {name} --out {_shown(out)}",
    }


def _blocks(report: dict, out: Path) -> list[tuple]:
    """The report as blocks, rendered to Markdown and to HTML alike."""
    v = report["versions"]
    commit = f"{v['git_commit']}{' (with uncommitted changes)' if v['git_dirty'] else ''}"
    b: list[tuple] = [
        ("h", 1, f"unicomp reproduce: the papers' claims ({report['preset']} preset)"),
        ("p", f"Budget: {report['budget']}. Expected time: {report['expected']}."),
        (
            "table",
            ["what", "value"],
            [
                ["command", report["command"]],
                ["date", report["date"]],
                ["machine", report["machine"]],
                [
                    "versions",
                    f"unicomp {v['unicomp_version']}, torch {v['torch']}, transformers "
                    f"{v['transformers_version']}, Python {v['python']}",
                ],
                ["git commit", commit or "unknown (not a git checkout)"],
                [
                    "runs",
                    f"{report['runs']} run folders, {report['train_seconds'] / 60:.1f} "
                    f"minutes of training in all; this call "
                    f"{report['wall_seconds_this_call'] / 60:.1f} minutes",
                ],
            ],
        ),  # fmt: skip
        ("h", 2, "Claims"),
        (
            "p",
            "Ours: mean ± std over seeds (n = seeds). A difference counts when it exceeds "
            "the larger of 1 point and the seeds' std (the margin). Each verdict names its rule.",
        ),
        (
            "table",
            ["claim", "paper's figure", "ours", "verdict", "reason", "figures"],
            [
                [
                    f"{r['claim']}: {r['text']}",
                    r["paper"],
                    r["ours"],
                    r["verdict"],
                    r["reason"],
                    Refs(r["figures"]),
                ]
                for r in report["claims"]
            ],
        ),  # fmt: skip
        ("h", 2, "Figures"),
    ]
    for key, f in report["figures"].items():
        b += [("h", 3, f"{key}: {f['title']}", f"fig-{key}"), ("img", f["file"], f["title"]),
              ("links", [("run folder " + r, r) for r in f["runs"]]),
              ("code", f["command"])]  # fmt: skip
    return b


class Refs(list):
    """A table cell naming figures: plain names in Markdown, links in HTML."""

    def __str__(self) -> str:
        return ", ".join(self) or "-"


def to_markdown(blocks: list[tuple]) -> str:
    lines: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            lines += ["#" * block[1] + " " + block[2], ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "table":
            lines += [markdown_table(block[1], block[2]), ""]
        elif kind == "img":
            lines += [f"![{block[2]}]({block[1]})", ""]
        elif kind == "links":
            lines += [", ".join(f"[{text}]({href})" for text, href in block[1]), ""]
        elif kind == "code":
            lines += ["```bash", block[1], "```", ""]
    return "\n".join(lines)


_CSS = """body{font-family:sans-serif;max-width:1150px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:4px 6px;
vertical-align:top;font-size:13px}th{background:#eee}img{max-width:100%;border:1px solid #ddd}
pre{background:#f4f4f4;padding:6px;white-space:pre-wrap}.holds{background:#d8f5d8}
.partly{background:#fff3c4}.does-not-hold{background:#f8d0d0}.not-measured{background:#e4e4e4}"""


def to_html(blocks: list[tuple], out: Path) -> str:
    """One page, nothing loaded from elsewhere: images as data: URIs, the style inline."""
    e = html.escape
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>{e(blocks[0][2])}</title><style>{_CSS}</style></head><body>"]  # fmt: skip
    for block in blocks:
        kind = block[0]
        if kind == "h":
            anchor = f" id='{e(block[3])}'" if len(block) > 3 else ""
            parts.append(f"<h{block[1]}{anchor}>{e(block[2])}</h{block[1]}>")
        elif kind == "p":
            parts.append(f"<p>{e(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in block[1])
            body = ""
            for row in block[2]:
                tds = []
                for x in row:
                    if isinstance(x, Refs):  # links to the figures below
                        refs = ", ".join(f"<a href='#fig-{e(k)}'>{e(k)}</a>" for k in x)
                        tds.append(f"<td>{refs or '-'}</td>")
                        continue
                    verdict = str(x).split(" ")[0] if str(x) in VERDICTS else ""
                    css = {"holds": "holds", "partly": "partly", "does": "does-not-hold",
                           "not": "not-measured"}.get(verdict, "")  # fmt: skip
                    tds.append(f"<td class='{css}'>" if css else "<td>")
                    tds[-1] += f"{e(str(x))}</td>"
                body += "<tr>" + "".join(tds) + "</tr>"
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        elif kind == "img":
            data = base64.b64encode((out / block[1]).read_bytes()).decode()
            parts.append(f"<p><img alt='{e(block[2])}' src='data:image/png;base64,{data}'></p>")
        elif kind == "links":
            links = ", ".join(f"<a href='{e(href)}'>{e(text)}</a>" for text, href in block[1])
            parts.append(f"<p>{links}</p>")
        elif kind == "code":
            parts.append(f"<pre>{e(block[1])}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
