"""The verdict rules (unicomp.reports.verdicts) and every claim's judge (unicomp.reports.claims) on
synthetic figures: each outcome, and each over-claim the old rules made, comes out as the rules
say."""

from __future__ import annotations

import pytest

from unicomp.reports.claims import CLAIMS, Evidence, judge
from unicomp.reports.verdicts import (
    DOES_NOT_HOLD,
    HOLDS,
    INDICATIVE,
    MISSING,
    NOT_AT_BUDGET,
    NOT_MEASURED,
    PARTLY,
    Figure,
    MissingFigure,
    about_as_good,
    above,
    decide,
    margin,
    trained,
)

CLAIM = {c.name: c for c in CLAIMS}
XOR_TEST = 1280  # bit XOR's test split: 256 pairs x 5 bits


def row(values, *, steps=300, batch=32, constant=0.5008, train=None, to_target=None,
        backbone="minilm-l6", family="bert", label=None):  # fmt: skip
    n = len(values)
    return {
        "label": label,
        "backbone": backbone,
        "family": family,
        "test_accuracy": list(values),
        "failed": [],
        "test_elements": [XOR_TEST] * n,
        "test_constant_accuracy": [constant] * n,
        "train_split_accuracy": list(train) if train is not None else [None] * n,
        "steps": [steps] * n,
        "batch_size": [batch] * n,
        "steps_to_target": list(to_target) if to_target is not None else [None] * n,
        "target_accuracy": 0.99,
        "total_params": 22_713_216,
    }


def fpt_evidence(**rows) -> Evidence:
    labels = {"fpt": "FPT", "random": "frozen random init", "full": "full transformer",
              "lstm": "LSTM", "out": "output only", "norms": "+ norms", "inp": "+ input",
              "frozen": "norms frozen", "ff": "+ feed-forward", "attn": "+ attention"}  # fmt: skip
    fpt = {labels[k]: v for k, v in rows.items() if k in labels}
    size = {k: v for k, v in rows.items() if k in ("smaller FPT", "larger FPT")}
    return Evidence(fpt, size, {}, {}, chance=0.5, data_success=None)


def dt_run(success, episodes=300, context=16):
    return {"success_rate": success, "episodes": episodes, "context": context}


def dt_evidence(data_success=0.06, **runs) -> Evidence:
    labels = {"dt": "DT", "k1": "DT K=1", "bc": "BC", "delayed": "DT delayed reward"}
    dt = {labels[k]: [dt_run(v) for v in vals] for k, vals in runs.items()}
    return Evidence({}, {}, dt, {}, chance=0.5, data_success=data_success)


GOOD = (0.99, 0.995, 0.985)


# --- the rules -------------------------------------------------------------------------------


def test_margin_counts_evaluation_noise_and_one_seed_is_not_zero_spread():
    a = Figure("a", (0.80,), evaluations=XOR_TEST)
    b = Figure("b", (0.815,), evaluations=XOR_TEST)
    assert a.spread is None and a.text() == "80.0 (n=1)"
    assert margin(a, b) > 0.03  # two 1,280-element evaluations: about 3.2 points
    assert not above(b, a)
    # with the old rule (1 point, one seed's spread taken as 0) 81.5 "beat" 80.0
    v = decide([("b above a", above(b, a))], (a, b))
    assert v.verdict == INDICATIVE and "fewer than 3 seeds" in v.reason


def test_trained_needs_clearance_above_the_floor():
    at_constant = Figure("full", (0.5008, 0.5008, 0.5008), XOR_TEST, floor=0.5008)
    assert trained(at_constant) is False
    assert trained(Figure("x", (0.90, 0.92, 0.91), XOR_TEST, floor=0.5)) is True
    assert trained(Figure("x", (0.9,), XOR_TEST)) is None  # no floor: unknown


def test_missing_values_are_missing_never_a_default():
    with pytest.raises(MissingFigure):
        Figure("x", ())
    with pytest.raises(MissingFigure):
        Figure("x", (0.5, None))  # type: ignore[arg-type]


def test_three_seeds_decide_each_outcome():
    hi = Figure("hi", (0.90, 0.91, 0.92), XOR_TEST)
    lo = Figure("lo", (0.70, 0.71, 0.72), XOR_TEST)
    assert decide([("hi above lo", above(hi, lo))], (hi, lo)).verdict == HOLDS
    assert decide([("lo above hi", above(lo, hi))], (hi, lo)).verdict == DOES_NOT_HOLD
    parts = [("hi above lo", above(hi, lo)), ("lo above hi", above(lo, hi))]
    assert decide(parts, (hi, lo)).verdict == PARTLY
    # a part this command does not run caps the verdict
    capped = decide([("hi above lo", above(hi, lo))], (hi, lo), cap="CQL not run")
    assert capped.verdict == PARTLY and "CQL not run" in capped.reason


def test_a_failure_below_half_the_papers_budget_is_not_at_this_budget():
    hi = Figure("hi", (0.90, 0.91, 0.92), XOR_TEST, budget=0.03)
    lo = Figure("lo", (0.70, 0.71, 0.72), XOR_TEST, budget=0.03)
    v = decide([("lo above hi", above(lo, hi))], (hi, lo))
    assert v.verdict == NOT_AT_BUDGET and "3.0%" in v.reason
    full = Figure("lo", (0.70, 0.71, 0.72), XOR_TEST, budget=1.2)
    assert decide([("lo above hi", above(full, hi))], (hi, full)).verdict == NOT_AT_BUDGET
    both = Figure("hi", (0.90, 0.91, 0.92), XOR_TEST, budget=1.0)
    assert decide([("x", above(full, both))], (both, full)).verdict == DOES_NOT_HOLD


def test_a_setting_chosen_on_test_results_is_at_most_indicative():
    hi = Figure("DT", (0.90, 0.91, 0.92), 300, chosen_on_test="target return 1300")
    lo = Figure("BC", (0.70, 0.71, 0.72), 300)
    v = decide([("DT above BC", above(hi, lo))], (hi, lo))
    assert v.verdict == INDICATIVE and "target return 1300 chosen after seeing test" in v.reason


def test_about_as_good_is_an_equivalence_with_noise():
    a = Figure("a", (0.97, 0.98, 0.96), XOR_TEST)
    assert about_as_good(a, Figure("b", (0.99, 0.99, 0.99), XOR_TEST))
    assert not about_as_good(a, Figure("b", (1.0, 1.0, 1.0), XOR_TEST), within=0.01)
    assert not about_as_good(Figure("c", (0.80, 0.85, 0.90), XOR_TEST), a)


# --- each over-claim of the old rules ---------------------------------------------------------


def test_fpt_vs_full_against_a_transformer_that_never_trained_is_not_measured():
    ev = fpt_evidence(fpt=row((0.99, 0.988)), full=row((0.5008, 0.5008)),
                      lstm=row((0.994, 0.992)))  # fmt: skip
    ours, verdict, reason = judge(CLAIM["fpt-vs-full"], ev)
    assert verdict == NOT_MEASURED
    assert "full transformer did not train (50.1" in reason
    ev = fpt_evidence(fpt=row(GOOD), full=row(GOOD, steps=20_000, batch=16),
                      lstm=row(GOOD, steps=20_000, batch=16))  # fmt: skip
    assert judge(CLAIM["fpt-vs-full"], ev)[1] == HOLDS


def test_larger_fpt_on_one_seed_and_two_families_does_not_hold_or_hold():
    ev = fpt_evidence(
        **{
            "smaller FPT": row((0.736,)),
            "larger FPT": row((0.90,), backbone="smollm2-135m", family="llama"),
        }
    )
    ours, verdict, reason = judge(CLAIM["larger-fpt"], ev)
    assert verdict == NOT_MEASURED and "not sizes of one model family" in reason
    assert "± 0.0" not in ours and "(partly: level)" not in reason
    same = fpt_evidence(**{"smaller FPT": row((0.736,)), "larger FPT": row((0.90,),
                           backbone="minilm-l12")})  # fmt: skip
    assert judge(CLAIM["larger-fpt"], same)[1] == INDICATIVE


def test_no_overfit_reads_the_selected_weights_on_the_train_split():
    # no train-split accuracy recorded (only running means): missing, not "holds"
    ev = fpt_evidence(fpt=row(GOOD), full=row((0.68, 0.70, 0.69)))
    assert judge(CLAIM["no-overfit"], ev)[1] == MISSING
    ev = fpt_evidence(fpt=row(GOOD, train=(0.995, 0.996, 0.99), steps=20_000, batch=16),
                      full=row((0.68, 0.70, 0.69), train=(0.99, 1.0, 0.98), steps=20_000,
                               batch=16))  # fmt: skip
    assert judge(CLAIM["no-overfit"], ev)[1] == HOLDS
    ev = fpt_evidence(
        fpt=row(GOOD, train=GOOD, steps=20_000, batch=16),
        full=row((0.5008,) * 3, train=(0.5,) * 3, steps=20_000, batch=16),
    )
    assert judge(CLAIM["no-overfit"], ev)[1] == NOT_MEASURED


def test_ff_and_attention_at_the_constant_answer_are_not_measured():
    ev = fpt_evidence(fpt=row((0.99, 0.988)), ff=row((0.5008, 0.5008)),
                      attn=row((0.5008, 0.5008)))  # fmt: skip
    ours, verdict, reason = judge(CLAIM["ff-helps-attn-hurts"], ev)
    assert verdict == NOT_MEASURED and "+ feed-forward did not train" in reason
    # "helps" needs a gain beyond the margin: level is not help
    ev = fpt_evidence(fpt=row((0.80, 0.81, 0.79)), ff=row((0.80, 0.81, 0.80)),
                      attn=row((0.60, 0.62, 0.61)))  # fmt: skip
    _, verdict, reason = judge(CLAIM["ff-helps-attn-hurts"], ev)
    assert verdict == PARTLY and "above FPT beyond the margin: no" in reason
    # at the ceiling a gain cannot be seen: not measured, never "helps"
    ev = fpt_evidence(fpt=row((1.0, 1.0, 1.0)), ff=row((1.0, 1.0, 1.0)), attn=row((0.9,) * 3))
    _, verdict, reason = judge(CLAIM["ff-helps-attn-hurts"], ev)
    assert verdict == PARTLY and "no room for a gain): not measured" in reason


def test_perceiver_io_scoring_lower_does_not_hold():
    def runs(values):
        return [{"test_accuracy": v, "test_elements": 5760, "test_constant_accuracy": 0.328}
                for v in values]  # fmt: skip

    ev = Evidence({}, {}, {}, {"perceiver-io": runs((0.415, 0.41, 0.418)),
                               "perceiver": runs((0.424, 0.424, 0.425))}, 0.5, None)  # fmt: skip
    assert judge(CLAIM["perceiver-io"], ev)[1] == DOES_NOT_HOLD
    ev.perceiver["perceiver"] = runs((0.33, 0.328, 0.33))  # the plain one at its floor
    assert judge(CLAIM["perceiver-io"], ev)[1] == NOT_MEASURED


def test_pretrained_faster_needs_half_the_steps_and_is_counted_once():
    ev = fpt_evidence(fpt=row(GOOD, to_target=(280, 300, 290), steps=20_000, batch=16),
                      random=row((0.62, 0.60, 0.64), to_target=(None, None, None),
                                 steps=20_000, batch=16))  # fmt: skip
    _, verdict, reason = judge(CLAIM["pretrained-vs-random"], ev)
    assert verdict == HOLDS and reason.count("yes") == 2
    # neither reached the target: the speed part is not measured, and cannot make "holds"
    ev.fpt["FPT"]["steps_to_target"] = [None] * 3
    _, verdict, reason = judge(CLAIM["pretrained-vs-random"], ev)
    assert verdict == PARTLY and "not measured" in reason
    # FPT 250 against random 300: faster, but not twice as fast
    ev.fpt["FPT"]["steps_to_target"] = [250] * 3
    ev.fpt["frozen random init"]["steps_to_target"] = [300] * 3
    assert (
        "(250 vs 300; inf: never in the budget): no" in judge(CLAIM["pretrained-vs-random"], ev)[2]
    )


def test_key_to_door_with_an_unknown_data_success_rate_is_missing():
    ev = dt_evidence(data_success=None, dt=(0.7, 0.75, 0.72))
    assert judge(CLAIM["key-to-door"], ev)[1] == MISSING
    ev = dt_evidence(data_success=0.06, dt=(0.7, 0.75, 0.72))
    assert judge(CLAIM["key-to-door"], ev)[1] == HOLDS


def test_dt_claims_on_key_to_door():
    ev = dt_evidence(dt=(0.70, 0.75, 0.72), bc=(0.05, 0.06, 0.04), k1=(0.06, 0.07, 0.05),
                     delayed=(0.71, 0.74, 0.73))  # fmt: skip
    assert judge(CLAIM["dt-vs-bc-cql"], ev)[1] == PARTLY  # CQL/IQL are not part of it
    assert judge(CLAIM["k1-worse"], ev)[1] == HOLDS
    assert judge(CLAIM["delayed-reward"], ev)[1] == PARTLY
    # a DT with delayed rewards at or below BC does not hold, however the DT does
    ev = dt_evidence(dt=(0.70, 0.75, 0.72), bc=(0.40, 0.41, 0.42), delayed=(0.38, 0.40, 0.39))
    assert judge(CLAIM["delayed-reward"], ev)[1] == DOES_NOT_HOLD
    # two seeds: indicative at most
    ev = dt_evidence(dt=(0.70, 0.75), bc=(0.05, 0.06))
    assert judge(CLAIM["dt-vs-bc-cql"], ev)[1] == INDICATIVE


def test_norms_claim_needs_the_largest_gain_beyond_noise():
    ev = fpt_evidence(out=row((0.56, 0.57, 0.55), steps=20_000, batch=16),
                      norms=row((0.97, 0.98, 0.98), steps=20_000, batch=16),
                      inp=row((0.98, 0.98, 0.98), steps=20_000, batch=16),
                      fpt=row((0.99, 1.0, 0.995), steps=20_000, batch=16),
                      frozen=row((0.80, 0.82, 0.81), steps=20_000, batch=16))  # fmt: skip
    assert judge(CLAIM["norms-matter-most"], ev)[1] == HOLDS
    ev.fpt["output only"] = row((0.5008,) * 3)  # the ladder's first rung did not learn
    assert judge(CLAIM["norms-matter-most"], ev)[1] == NOT_MEASURED


def test_a_preset_that_cannot_decide_says_not_measured_for_every_claim():
    ev = fpt_evidence(fpt=row(GOOD), full=row(GOOD), lstm=row(GOOD))
    ours, verdict, reason = judge(CLAIM["fpt-vs-full"], ev, decides=False)
    assert verdict == NOT_MEASURED and "decide nothing" in reason and ours != "-"


def test_every_row_shows_its_budget_fraction():
    ev = fpt_evidence(fpt=row(GOOD), full=row(GOOD), lstm=row(GOOD))
    ours = judge(CLAIM["fpt-vs-full"], ev)[0]
    # FPT: 300 x 32 against the paper's 500 x 16; from scratch: against 20,000 x 16
    assert "FPT 99.0 ± 0.5 (n=3) [budget 120.0%, 22.7M params]" in ours
    assert "full transformer 99.0 ± 0.5 (n=3) [budget 3.0%, 22.7M params]" in ours


def test_a_failed_seed_is_named_and_leaves_the_row_indicative():
    full = row(GOOD, steps=20_000, batch=16)
    ev = fpt_evidence(fpt=row((0.99, 0.995)), full=full, lstm=full)
    ev.fpt["FPT"]["failed"] = ["s2: loss became nan at step 40"]
    ours, verdict, reason = judge(CLAIM["fpt-vs-full"], ev)
    assert "FPT (1 seed(s) failed: s2: loss became nan at step 40)" in ours
    assert verdict == INDICATIVE and "n=2" in reason


def test_each_seeds_chosen_learning_rate_is_shown():
    ev = fpt_evidence(fpt=row(GOOD), full=row(GOOD), lstm=row(GOOD))
    ev.fpt["LSTM"]["lr"] = [3e-4, 3e-4, 1e-3]
    assert (
        "LSTM 99.0 ± 0.5 (n=3) [budget 3.0%, 22.7M params, lr 0.0003/0.0003/0.001]"
        in judge(CLAIM["fpt-vs-full"], ev)[0]
    )
    dt = dt_evidence(dt=(0.7, 0.75, 0.72), bc=(0.05, 0.06, 0.04))
    for r, lr in zip(dt.dt["BC"], (1e-3, 3e-3, 1e-3), strict=True):
        r["lr"] = lr
    assert (
        "BC 5.0 ± 1.0 (n=3) [budget unknown, lr 0.001/0.003/0.001]"
        in judge(CLAIM["dt-vs-bc-cql"], dt)[0]
    )


def test_a_baseline_short_of_the_papers_budget_decides_nothing_either_way():
    """FPT far above a from-scratch transformer that had 3% of the steps the paper gave it
    is not the paper's claim: the baseline has not had its chance."""
    ev = fpt_evidence(fpt=row(GOOD), full=row((0.66, 0.68, 0.65)), lstm=row(GOOD))
    ours, verdict, reason = judge(CLAIM["fpt-vs-full"], ev)
    assert verdict == NOT_AT_BUDGET and "full transformer 3.0%" in reason
    ev = fpt_evidence(fpt=row(GOOD, train=GOOD), full=row((0.66, 0.68, 0.65), train=(0.9,) * 3))
    assert judge(CLAIM["no-overfit"], ev)[1] == NOT_AT_BUDGET
