"""Every claim of the three papers (../shared/MISSION.md) with the paper's figure, the rows
it reads and how :mod:`unicomp.reports.verdicts` decides it. ``unicomp reproduce`` measures
the rows; this module only reads them (from run records: nothing here trains).

Each judge returns (ours, verdict, reason): the measured figures in one line, one of
:data:`unicomp.reports.verdicts.VERDICTS`, and the rule's parts with yes / no / not measured.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from unicomp.errors import UnicompError
from unicomp.reports.verdicts import (
    MISSING,
    NOT_MEASURED,
    Figure,
    MissingFigure,
    about_as_good,
    above,
    budget_text,
    decide,
    margin,
    surely_worse,
    trained,
)

# The paper's training budget (examples: steps x batch) per FPT row on bit XOR, from
# REFERENCE_RESULTS.md: steps to converge 5e2 (FPT) and 2e4 (random init; also used for the
# models trained from scratch), at the paper's largest batch, 16.
PAPER_BATCH = 16
PAPER_STEPS = {"pretrained": 500, "scratch": 20_000}
SCRATCH_ROWS = ("frozen random init", "full transformer", "LSTM")


@dataclass
class Evidence:
    """What the runs measured, by group: FPT and size rows as ``unicomp fpt ablate`` row
    summaries by label; DT and Perceiver runs as the metrics.json of each seed's chosen run."""

    fpt: dict[str, dict]
    size: dict[str, dict]
    dt: dict[str, list[dict]]
    perceiver: dict[str, list[dict]]
    chance: float
    data_success: float | None  # the Key-to-Door data's own success rate (None: unknown)
    atari: dict[str, dict[str, list[dict]]] = dataclasses.field(default_factory=dict)  # by game

    def fpt_figure(self, group: str, label: str, value: str = "test_accuracy") -> Figure:
        row = getattr(self, group).get(label)
        if not row or not row["test_accuracy"]:
            why = "; ".join(row["failed"]) if row and row["failed"] else "not run"
            raise MissingFigure(f"{group} row {label!r}: {why}")
        values = row[value]
        floors = [f for f in row.get("test_constant_accuracy") or [] if f is not None]
        floor = max([self.chance, *floors])
        elements = [e for e in row.get("test_elements") or [] if e]
        kind = "scratch" if label in SCRATCH_ROWS else "pretrained"
        steps, batch = row.get("steps") or [], row.get("batch_size") or []
        budget = (
            statistics.fmean(s * b for s, b in zip(steps, batch, strict=True))
            / (PAPER_STEPS[kind] * PAPER_BATCH)
            if steps and len(steps) == len(batch)
            else None
        )
        if row.get("failed"):  # a failed seed is named, never dropped silently
            label = f"{label} ({len(row['failed'])} seed(s) failed: {row['failed'][0]})"
        evaluations = min(elements) if elements else None
        params, rates = row.get("total_params"), tuple(row.get("lr") or ())
        return Figure(label, tuple(values), evaluations, floor, budget, params=params, rates=rates)

    def run_figure(self, group: str, label: str, key: str, floor: float | None = None) -> Figure:
        runs = getattr(self, group).get(label) or []
        if not runs:
            raise MissingFigure(f"{group} runs {label!r}: not run or failed")
        values = [r.get(key) for r in runs]
        counts = [r.get("episodes") or r.get("test_elements") for r in runs]
        counts = [c for c in counts if c]
        if floor is None:
            floors = [r.get("test_constant_accuracy") for r in runs]
            floor = max(floors) if floors and all(f is not None for f in floors) else None
        rates = tuple(r["lr"] for r in runs if r.get("lr") is not None)
        return Figure(label, tuple(values), min(counts) if counts else None, floor, None,
                      rates=rates)  # fmt: skip

    def atari_figure(self, game: str, label: str) -> Figure:
        """A MinAtar row: each seed's normalised score (0 the random policy, 100 the DQN that
        made the data) as a fraction, with its evaluation noise; the budget against the
        paper's Atari training (20,000 steps of batch 128)."""
        runs = self.atari.get(game, {}).get(label) or []
        if not runs:
            raise MissingFigure(f"{game} {label}: not run or failed")
        if any(r.get("normalized_score_mean") is None for r in runs):
            raise MissingFigure(f"{game}: no reference scores (the data's DQN did not beat "
                                "random), so no normalised score")  # fmt: skip
        values = tuple(r["normalized_score_mean"] / 100 for r in runs)
        eval_se = tuple(r["normalized_score_std"] / 100 / r["episodes"] ** 0.5 for r in runs)
        budget = statistics.fmean(r["steps"] * r["batch_size"] for r in runs) / ATARI_PAPER
        name = f"{game.split('/')[-1].split('-v')[0]} {label}"  # "Breakout DT"
        return Figure(name, values, None, 0.0, budget, params=runs[0].get("total_params"),
                      rates=tuple(r["lr"] for r in runs), eval_se=eval_se)  # fmt: skip


# The paper's Atari training (the official code: 5 epochs over 500,000 transitions at batch
# 128, about 20,000 steps), in examples.
ATARI_PAPER = 20_000 * 128


def _ours(*figs: Figure) -> str:
    return "; ".join(f"{f.label} {f.text()} [{budget_text(f)}]" for f in figs)


def _fpt_vs_full(ev: Evidence):
    fpt, full, lstm = (ev.fpt_figure("fpt", k) for k in ("FPT", "full transformer", "LSTM"))
    tests = [
        ("FPT about as good as the full transformer (within 5 points, noise counted)",
         about_as_good(fpt, full)),
        ("FPT about as good as the LSTM", about_as_good(fpt, lstm)),
    ]  # fmt: skip
    worse = [o.label for o in (full, lstm) if surely_worse(fpt, o)]
    v = decide(tests, (fpt, full, lstm), baselines=(full, lstm))
    reason = v.reason + (f"; FPT surely worse than: {', '.join(worse)}" if worse else "")
    return _ours(fpt, full, lstm), v.verdict, reason


def _pretrained_vs_random(ev: Evidence):
    fpt, rnd = ev.fpt_figure("fpt", "FPT"), ev.fpt_figure("fpt", "frozen random init")
    s_fpt = _median_steps(ev.fpt["FPT"])
    s_rnd = _median_steps(ev.fpt["frozen random init"])
    target = f"{100 * (ev.fpt['FPT']['target_accuracy'] or 0):.0f}%"
    if s_fpt == float("inf") and s_rnd == float("inf"):
        faster = None  # neither got there: nothing to compare
    else:
        faster = s_fpt <= s_rnd / 2
    tests = [
        (f"better beyond the margin ({100 * margin(fpt, rnd):.1f} points)", above(fpt, rnd)),
        (f"at most half the random init's median steps to {target} validation "
         f"({s_fpt:g} vs {s_rnd:g}; inf: never in the budget)", faster),
    ]  # fmt: skip
    v = decide(tests, (fpt, rnd), baselines=(rnd,))
    return _ours(fpt, rnd), v.verdict, v.reason


def _median_steps(row: dict) -> float:
    steps = [float("inf") if s is None else s for s in row["steps_to_target"]]
    return statistics.median(steps)


def _norms_matter_most(ev: Evidence):
    out, norm, inp, fpt, frozen = (
        ev.fpt_figure("fpt", k)
        for k in ("output only", "+ norms", "+ input", "FPT", "norms frozen")
    )
    gains = {"norms": (norm, out), "input": (inp, norm), "positions": (fpt, inp)}
    diff = {k: a.mean - b.mean for k, (a, b) in gains.items()}
    others = [k for k in gains if k != "norms"]
    # the norms' gain beats each other gain by more than the noise of the two differences
    noise = {k: 2 * (a.se**2 + b.se**2) ** 0.5 for k, (a, b) in gains.items()}
    largest = all(
        diff["norms"] - diff[k] > max(0.01, (noise["norms"] ** 2 + noise[k] ** 2) ** 0.5)
        for k in others
    )
    tests = [
        ("gains of adding " + ", ".join(f"{k} {100 * v:+.1f}" for k, v in diff.items())
         + " points: the norms' the largest beyond the noise", largest),
        (f"freezing the norms costs beyond the margin ({100 * margin(fpt, frozen):.1f} points)",
         above(fpt, frozen)),
    ]  # fmt: skip
    v = decide(tests, (out, norm, inp, fpt, frozen), baselines=(out,))
    return _ours(out, norm, inp, fpt, frozen), v.verdict, v.reason


def _ff_helps_attn_hurts(ev: Evidence):
    fpt, ff, attn = (ev.fpt_figure("fpt", k) for k in ("FPT", "+ feed-forward", "+ attention"))
    ceiling = fpt.mean + margin(fpt, ff) > 1.0
    helps = None if ceiling else above(ff, fpt)
    tests = [
        ("+ feed-forward above FPT beyond the margin"
         + (" (FPT at the ceiling: no room for a gain)" if ceiling else ""), helps),
        (f"+ attention below FPT beyond the margin ({100 * margin(fpt, attn):.1f} points)",
         above(fpt, attn)),
    ]  # fmt: skip
    v = decide(tests, (fpt, ff, attn), baselines=(ff, attn))
    return _ours(fpt, ff, attn), v.verdict, v.reason


def _output_only(ev: Evidence):
    out, fpt = ev.fpt_figure("fpt", "output only"), ev.fpt_figure("fpt", "FPT")
    tests = [
        (f"above its floor ({100 * out.floor:.1f}) beyond the noise", trained(out)),
        (f"below FPT beyond the margin ({100 * margin(out, fpt):.1f} points)", above(fpt, out)),
        ("far faster per epoch: the paper's speed comes from features cached once, which a "
         "task drawing fresh examples each step (bit XOR) cannot use; measured by "
         "benchmarks/output_only_cache.py, not here", None),
    ]  # fmt: skip
    v = decide(tests, (out, fpt))
    return _ours(out, fpt), v.verdict, v.reason


def _larger_better(ev: Evidence):
    small, large = ev.fpt_figure("size", "smaller FPT"), ev.fpt_figure("size", "larger FPT")
    # a backbone's name; a local folder by its last part (the same wherever the records are)
    names = {k: Path(str(ev.size[k]["backbone"])).name for k in ("smaller FPT", "larger FPT")}
    small = dataclasses.replace(small, label=names["smaller FPT"])
    large = dataclasses.replace(large, label=names["larger FPT"])
    tests = [(f"larger above smaller beyond the margin ({100 * margin(large, small):.1f} "
              "points)", above(large, small))]  # fmt: skip
    v = decide(tests, (small, large), baselines=(small,))
    verdict, reason = v.verdict, v.reason
    families = ev.size["smaller FPT"].get("family"), ev.size["larger FPT"].get("family")
    if verdict != NOT_MEASURED and (None in families or families[0] != families[1]):
        # the paper compares sizes of one family (GPT-2 small, medium, large)
        verdict = NOT_MEASURED
        reason = (
            f"the two backbones are not sizes of one model family ({names['smaller FPT']}, "
            f"{names['larger FPT']}): a difference is not a size effect. ({reason})"
        )
    return _ours(small, large), verdict, reason


def _no_overfit(ev: Evidence):
    fpt_row, full_row = ev.fpt.get("FPT"), ev.fpt.get("full transformer")
    for label, row in (("FPT", fpt_row), ("full transformer", full_row)):
        if not row or any(a is None for a in row.get("train_split_accuracy") or [None]):
            raise MissingFigure(f"{label}: no training-split accuracy of the selected weights")
    fpt, full = ev.fpt_figure("fpt", "FPT"), ev.fpt_figure("fpt", "full transformer")
    gap = {}
    for label, row in (("FPT", fpt_row), ("full transformer", full_row)):
        gaps = [a - b for a, b in zip(row["train_split_accuracy"], row["test_accuracy"],
                                      strict=True)]  # fmt: skip
        gap[label] = Figure(f"{label} gap", tuple(gaps), None, None, None)
    small_gap = gap["FPT"].mean + 2 * gap["FPT"].se < 0.05
    tests = [
        (f"FPT's train - test gap under 5 points with its noise ({gap['FPT'].text()})",
         small_gap),
        (f"the full transformer's gap larger beyond the margin ({gap['full transformer'].text()})",
         above(gap["full transformer"], gap["FPT"])),
    ]  # fmt: skip
    v = decide(tests, (fpt, full), baselines=(full,))
    return _ours(fpt, full), v.verdict, v.reason


def _dt_vs_bc(ev: Evidence):
    dt, bc = (ev.run_figure("dt", k, "success_rate", floor=0.0) for k in ("DT", "BC"))
    tests = [(f"DT above BC beyond the margin ({100 * margin(dt, bc):.1f} points)",
              above(dt, bc))]  # fmt: skip
    cap = ("CQL/IQL run through d3rlpy in its own environment (unicomp dt external), not "
           "part of this command: at most partly")  # fmt: skip
    v = decide(tests, (dt, bc), cap=cap)
    return _ours(dt, bc) + "; CQL/IQL not run", v.verdict, v.reason


def _k1_worse(ev: Evidence):
    dt, k1 = (ev.run_figure("dt", k, "success_rate", floor=0.0) for k in ("DT", "DT K=1"))
    tests = [
        (f"K=1 below K={ev.dt['DT'][0]['context']} beyond the margin "
         f"({100 * margin(dt, k1):.1f} points)", above(dt, k1)),
        ("K=1 at most half", k1.mean + 2 * k1.se <= 0.5 * dt.mean),
    ]  # fmt: skip
    v = decide(tests, (dt, k1))
    return _ours(k1, dt), v.verdict, v.reason


def _key_to_door(ev: Evidence):
    if ev.data_success is None:
        raise MissingFigure("the Key-to-Door data's success rate is not recorded")
    dt = ev.run_figure("dt", "DT", "success_rate", floor=ev.data_success)
    data = Figure("the data (random policy)", (ev.data_success,))
    tests = [
        (f"DT above the data's success rate ({100 * ev.data_success:.1f}%) beyond the noise",
         trained(dt)),
        ("at least 50% with its noise (the paper: 71.8% from 1K episodes)",
         dt.mean - 2 * dt.se >= 0.5),
    ]  # fmt: skip
    v = decide(tests, (dt,))
    return _ours(dt) + f"; {data.label} {100 * ev.data_success:.1f}%", v.verdict, v.reason


def _delayed(ev: Evidence):
    dt, delayed, bc = (
        ev.run_figure("dt", k, "success_rate", floor=0.0) for k in ("DT", "DT delayed reward", "BC")
    )
    tests = [
        ("delayed about as good as DT (within 5 points, noise counted)",
         about_as_good(delayed, dt)),
        (f"delayed above BC beyond the margin ({100 * margin(delayed, bc):.1f} points)",
         above(delayed, bc)),
    ]  # fmt: skip
    cap = ("Key-to-Door's reward already comes at the end of an episode, so this checks the "
           "delayed-reward path, not the paper's Hopper test: at most partly")  # fmt: skip
    v = decide(tests, (dt, delayed, bc), cap=cap)
    return _ours(delayed, dt, bc), v.verdict, v.reason


def _perceiver_io(ev: Evidence):
    io, plain = (ev.run_figure("perceiver", k, "test_accuracy")
                 for k in ("perceiver-io", "perceiver"))  # fmt: skip
    io = dataclasses.replace(io, label="Perceiver IO")
    plain = dataclasses.replace(plain, label="Perceiver")
    tests = [(f"Perceiver IO above Perceiver beyond the margin ({100 * margin(io, plain):.1f} "
              "points); a dense task (digits-inpaint), not the paper's ImageNet",
              above(io, plain))]  # fmt: skip
    v = decide(tests, (io, plain), baselines=(plain,))
    return _ours(io, plain), v.verdict, v.reason


def _atari_games(ev: Evidence) -> list[str]:
    if not ev.atari:
        raise MissingFigure("no MinAtar runs")
    return sorted(ev.atari)


def _atari_dt_vs_bc(ev: Evidence):
    tests, figs, baselines, ours, no_cql = [], [], [], [], []
    for game in _atari_games(ev):
        dt, bc = (ev.atari_figure(game, k) for k in ("DT", "BC"))
        tests.append((f"{game}: DT above BC beyond the margin ({100 * margin(dt, bc):.1f} "
                      "points)", above(dt, bc)))  # fmt: skip
        figs += [dt, bc]
        baselines.append(bc)
        try:
            cql = ev.atari_figure(game, "CQL")
        except MissingFigure as err:
            no_cql.append(str(err))
            ours.append(_ours(dt, bc))
            continue
        tests.append((f"{game}: DT about as good as CQL (within 5 points, noise counted)",
                      about_as_good(dt, cql)))  # fmt: skip
        figs.append(cql)
        baselines.append(cql)
        ours.append(_ours(dt, bc, cql))
    cap = None
    if no_cql:
        cap = ("CQL (d3rlpy's DiscreteCQL: `unicomp reproduce --d3rlpy-python`) not run for "
               f"every game ({'; '.join(no_cql)}): at most partly")  # fmt: skip
    v = decide(tests, tuple(figs), baselines=tuple(baselines), cap=cap)
    return "; ".join(ours) + ("; CQL not run" if no_cql else ""), v.verdict, v.reason


def _atari_k1_worse(ev: Evidence):
    tests, figs, ours = [], [], []
    for game in _atari_games(ev):
        dt, k1 = (ev.atari_figure(game, k) for k in ("DT", "DT K=1"))
        k = ev.atari[game]["DT"][0]["context"]
        tests.append((f"{game}: K=1 below K={k} beyond the margin ({100 * margin(dt, k1):.1f} "
                      "points)", above(dt, k1)))  # fmt: skip
        figs += [dt, k1]
        ours.append(_ours(k1, dt))
    v = decide(tests, tuple(figs))
    return "; ".join(ours), v.verdict, v.reason


@dataclass(frozen=True)
class Claim:
    name: str
    text: str
    paper: str  # the paper's figure, from ../shared/REFERENCE_RESULTS.md
    group: str  # the experiments it needs (reproduce.GROUPS)
    judge: Callable[[Evidence], tuple[str, str, str]]  # -> ours, verdict, reason
    figures: tuple[str, ...]  # figure keys of the report


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
    Claim("atari-dt-vs-bc", "on Atari (MinAtar here) DT beats BC and is comparable to CQL",
          "1% DQN replay, gamer-normalised: Breakout DT 267.5 vs CQL 211.1; Seaquest 2.5 vs "
          "1.7", "atari", _atari_dt_vs_bc, ("atari-bars",)),
    Claim("atari-k1-worse", "on Atari (MinAtar here) K=1 is much worse than K=30",
          "Breakout: K=1 73.9 vs K=30 267.5", "atari", _atari_k1_worse, ("atari-bars",)),
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


def judge(claim: Claim, ev: Evidence, decides: bool = True) -> tuple[str, str, str]:
    """(ours, verdict, reason) of one claim; a missing figure is "missing", and a preset
    that cannot decide (``decides`` False) gives "not measured" whatever its figures."""
    try:
        ours, verdict, reason = claim.judge(ev)
    except MissingFigure as why:
        return "-", MISSING, f"missing: {why}"
    if not decides:
        return ours, NOT_MEASURED, "this preset checks the machinery; its figures decide nothing"
    return ours, verdict, reason
