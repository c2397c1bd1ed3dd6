"""The rules that turn measured figures into a verdict on a paper's claim, stated once.

A *figure* is one row of a comparison: its per-seed values (accuracies or success rates as
fractions), how many things each value was measured on (test elements, evaluation episodes:
the evaluation noise), the floor a row that did not learn sits at (chance, the test split's
constant answer), its budget as a fraction of the paper's, and whether a setting of it was
chosen after looking at test results. The rules, each tested in tests/test_verdicts.py:

- **Noise.** A row's standard error combines the spread over seeds and each value's
  evaluation noise: ``se^2 = s^2 / n + p (1 - p) / (n N)`` (``s``: the seeds' sample standard
  deviation, ``n`` seeds, ``p`` the mean, ``N`` evaluations per seed); a score that is not a
  fraction of successes (a normalised return) brings each seed's own evaluation standard error
  ``e_i`` (its episodes' std over the square root of their number) instead:
  ``se^2 = s^2 / n + mean(e_i^2) / n``. With one seed the
  spread is unknown, not zero: only the evaluation noise enters, and the verdict is at most
  *indicative*.
- **Margin.** Two rows differ when their means are further apart than the larger of 1 point
  and twice the standard error of the difference, ``2 sqrt(se_a^2 + se_b^2)``.
- **Trained.** A row learned when its mean is above its floor by more than the larger of 1
  point and twice its standard error. A claim that compares against a row that did not learn
  is "not measured: <row> did not train (<figure>)", never "holds".
- **About as good as.** An equivalence margin stated by the claim (5 points for the FPT's
  "about as good as"): A is about as good as B when the lower end of the difference's
  interval, ``mean_A - mean_B - 2 se``, is above minus that margin.
- **Helps / better.** A gain beyond the margin; "not worse" is not "helps".
- **Seeds.** "holds" and "does not hold" need at least 3 seeds in every compared row; with
  fewer the verdict is "indicative" and the reason says what it would read.
- **Budget.** A baseline trained on less than :data:`BUDGET_FLOOR` of the paper's budget
  (steps x batch) has not had its chance: a claim compared against it reads "not at this
  budget", whichever way it came out; and a claim that does not hold while any compared row
  trained below that fraction reads "not at this budget" too.
- **Selection.** A row whose setting was chosen after seeing test results is flagged; the
  verdict is at most "indicative".
- **Missing.** A figure that is not there is "missing", never a default value.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

# The verdicts, strongest first; every report and document uses these words only.
HOLDS, PARTLY, DOES_NOT_HOLD = "holds", "partly", "does not hold"
INDICATIVE, NOT_AT_BUDGET, NOT_MEASURED, MISSING = (
    "indicative", "not at this budget", "not measured", "missing",
)  # fmt: skip
VERDICTS = (HOLDS, PARTLY, DOES_NOT_HOLD, INDICATIVE, NOT_AT_BUDGET, NOT_MEASURED, MISSING)

MIN_SEEDS = 3  # seeds every compared row needs for "holds" or "does not hold"
MIN_MARGIN = 0.01  # 1 point
BUDGET_FLOOR = 0.5  # below half the paper's budget a failure reads "not at this budget"
EQUIVALENCE = 0.05  # "about as good as": within 5 points


class MissingFigure(Exception):
    """A figure a claim needs is not in the records (a run failed or was not part of them)."""


@dataclass(frozen=True)
class Figure:
    """One row of a comparison, as measured."""

    label: str
    values: tuple[float, ...]  # per seed, fractions (accuracy, success rate)
    evaluations: int | None = None  # what each value was measured on (elements, episodes)
    floor: float | None = None  # chance or the constant answer: where a row that did not learn sits
    budget: float | None = None  # steps x batch as a fraction of the paper's (None: unknown)
    chosen_on_test: str | None = None  # a setting picked after seeing test results (say which)
    params: int | None = None  # the model's size (all parameters, frozen ones included)
    rates: tuple[float, ...] = ()  # each seed's learning rate (chosen on validation)
    eval_se: tuple[float, ...] = ()  # each seed's evaluation standard error (scores, not rates)
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self):
        if not self.values:
            raise MissingFigure(f"{self.label}: no finished run")
        if any(v is None or not math.isfinite(v) for v in self.values):
            raise MissingFigure(f"{self.label}: a value is missing or not finite")

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def spread(self) -> float | None:
        """The seeds' sample standard deviation; None with one seed (unknown, not zero)."""
        return statistics.stdev(self.values) if self.n > 1 else None

    @property
    def se(self) -> float:
        """Standard error of the mean: seeds' spread and evaluation noise together."""
        var = (self.spread or 0.0) ** 2 / self.n
        if self.eval_se:
            var += statistics.fmean(e * e for e in self.eval_se) / self.n
        elif self.evaluations:
            p = min(max(self.mean, 0.0), 1.0)
            var += p * (1 - p) / (self.n * self.evaluations)
        return math.sqrt(var)

    def text(self) -> str:
        """``57.3 ± 2.1 (n=3)``: mean ± the seeds' std in points; ``(n=1)`` has no ± part."""
        spread = "" if self.spread is None else f" ± {100 * self.spread:.1f}"
        return f"{100 * self.mean:.1f}{spread} (n={self.n})"


def margin(a: Figure, b: Figure) -> float:
    """The smallest difference of means that counts: max(1 point, 2 se of the difference)."""
    return max(MIN_MARGIN, 2 * math.hypot(a.se, b.se))


def above(a: Figure, b: Figure) -> bool:
    """A is better than B beyond the margin."""
    return a.mean - b.mean > margin(a, b)


def about_as_good(a: Figure, b: Figure, within: float = EQUIVALENCE) -> bool:
    """A is not worse than B by more than ``within``, with the difference's noise counted."""
    return a.mean - b.mean - 2 * math.hypot(a.se, b.se) > -within


def surely_worse(a: Figure, b: Figure, within: float = EQUIVALENCE) -> bool:
    """A is worse than B by more than ``within`` even at the favourable end of the noise."""
    return a.mean - b.mean + 2 * math.hypot(a.se, b.se) < -within


def trained(fig: Figure) -> bool | None:
    """Above its floor beyond max(1 point, 2 se); None where the floor is unknown."""
    if fig.floor is None:
        return None
    return fig.mean - fig.floor > max(MIN_MARGIN, 2 * fig.se)


def untrained_note(fig: Figure) -> str:
    return f"{fig.label} did not train ({fig.text()}, floor {100 * fig.floor:.1f})"


@dataclass
class Verdict:
    verdict: str
    reason: str


def decide(
    tests: Sequence[tuple[str, bool | None]],
    compared: Sequence[Figure],
    baselines: Sequence[Figure] = (),
    cap: str | None = None,
) -> Verdict:
    """The verdict from a claim's parts.

    ``tests``: (description, outcome) per part of the claim; None: that part could not be
    measured (its description says why). ``compared``: every row the claim reads (their seeds,
    budgets and selection flags count). ``baselines``: rows that must have learned for the
    comparison to mean anything. ``cap``: a reason the claim can be at most "partly" (a part
    this command does not run).
    """
    parts = "; ".join(f"{what}: {_yes(ok)}" for what, ok in tests)
    dead = [f for f in baselines if trained(f) is False]
    if dead:
        return Verdict(NOT_MEASURED, "; ".join(untrained_note(f) for f in dead) + f". ({parts})")
    short = [f for f in baselines if f.budget is not None and f.budget < BUDGET_FLOOR]
    if short:  # a baseline that has not had the paper's chance decides nothing either way
        listed = ", ".join(f"{f.label} {100 * f.budget:.1f}%" for f in short)
        return Verdict(NOT_AT_BUDGET, f"baseline trained on less than {100 * BUDGET_FLOOR:.0f}% "
                       f"of the paper's budget: {listed}. ({parts})")  # fmt: skip
    measured = [ok for _, ok in tests if ok is not None]
    if not measured:
        return Verdict(NOT_MEASURED, parts)
    if all(measured) and len(measured) == len(tests) and not cap:
        would = HOLDS
    elif not any(measured):
        would = DOES_NOT_HOLD
    else:
        would = PARTLY
    reasons = [parts]
    if cap and would == HOLDS:
        would = PARTLY
    if cap:
        reasons.append(cap)
    few = [f for f in compared if f.n < MIN_SEEDS]
    flagged = [f for f in compared if f.chosen_on_test]
    if would == DOES_NOT_HOLD:
        short = [f for f in compared if f.budget is not None and f.budget < BUDGET_FLOOR]
        if short:
            listed = ", ".join(f"{f.label} {100 * f.budget:.1f}%" for f in short)
            return Verdict(NOT_AT_BUDGET, f"{parts}; budget below {100 * BUDGET_FLOOR:.0f}% "
                           f"of the paper's: {listed}")  # fmt: skip
    if few or flagged:
        why = []
        if few:
            why.append(
                f"fewer than {MIN_SEEDS} seeds: " + ", ".join(f"{f.label} n={f.n}" for f in few)
            )
        why += [f"{f.label}: {f.chosen_on_test} chosen after seeing test results" for f in flagged]
        return Verdict(INDICATIVE, f"would read {would!r}; " + "; ".join(why) + f". ({parts})")
    return Verdict(would, "; ".join(reasons))


def _yes(ok: bool | None) -> str:
    return "not measured" if ok is None else "yes" if ok else "no"


def budget_text(fig: Figure) -> str:
    """``budget 120.0%, 22.7M params, lr 0.003/0.001/0.003``: training examples as a fraction of
    the paper's, the model's size, and each seed's learning rate."""
    text = "budget unknown" if fig.budget is None else f"budget {100 * fig.budget:.1f}%"
    text += "" if fig.params is None else f", {fig.params / 1e6:.1f}M params"
    return text + ("" if not fig.rates else ", lr " + "/".join(f"{r:g}" for r in fig.rates))
