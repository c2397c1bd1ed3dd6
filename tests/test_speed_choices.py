"""The fast-step choices (issue 11): precision and attention picked by measurement, fused
AdamW, torch.compile, and the accuracy they must not cost."""

from __future__ import annotations

import pytest
import torch
import yaml

from tests.conftest import small_train
from unicomp import train as train_mod
from unicomp.config import FPTConfig, TrainConfig
from unicomp.experiments.common import task_defaults
from unicomp.experiments.fpt import run_fpt


@pytest.fixture
def fresh_precision(monkeypatch):
    """An empty per-process cache of measured precisions."""
    monkeypatch.setattr(train_mod, "_RESOLVED", {})


@pytest.mark.parametrize(
    ("flags", "expected"),
    [([], "fp32"), (["avx512_bf16"], "bf16"), (["amx_bf16", "avx512_bf16"], "bf16")],
)
def test_auto_precision_follows_the_cpu_flags_not_a_timing(
    fresh_precision, monkeypatch, flags, expected
):
    monkeypatch.setattr(train_mod, "cpu_bf16_flags", lambda: flags)
    precision, why = train_mod.resolve_precision(torch.device("cpu"), "auto")
    assert precision == expected
    assert all(f in why for f in flags) and why.startswith("this CPU has")


def test_auto_precision_does_not_depend_on_load(fresh_precision, monkeypatch):
    """Two resolutions under different (simulated) load agree: no clock is read."""
    import time

    first = train_mod.resolve_precision(torch.device("cpu"), "auto")
    monkeypatch.setattr(train_mod, "_RESOLVED", {})
    monkeypatch.setattr(time, "perf_counter", lambda: (_ for _ in ()).throw(AssertionError))
    assert train_mod.resolve_precision(torch.device("cpu"), "auto") == first
    assert train_mod.resolve_precision(torch.device("cpu"), "bf16") == ("bf16", "asked for")
    assert train_mod.resolve_precision(torch.device("cpu"), "fp32") == ("fp32", "asked for")


def test_cuda_precision_follows_compute_capability(fresh_precision, monkeypatch):
    for cap, expected in (((7, 0), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")):
        monkeypatch.setattr(train_mod, "_RESOLVED", {})
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d, c=cap: c)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: "a GPU")
        assert train_mod.resolve_precision(torch.device("cuda", 0), "auto")[0] == expected


def test_run_records_precision_and_attention_by_rule(tmp_path, tiny_gpt2, fresh_precision):
    cfg = FPTConfig(
        task="bit-xor", backbone=tiny_gpt2, out=str(tmp_path / "r"), train=small_train()
    )
    cfg.train.precision = "auto"
    import unicomp.experiments.fpt as experiments

    def must_not_time(*args, **kwargs):
        raise AssertionError("auto timed the attention: machine load would change the pick")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(experiments, "choose_attention", must_not_time)
        metrics = run_fpt(cfg)
    assert metrics["precision"] in ("bf16", "fp32")
    assert metrics["precision_reason"].startswith("this CPU has")
    assert metrics["attention"].startswith("sdpa (auto: the fused kernel")
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["attn_implementation"] == "sdpa"


def test_measured_attention_is_an_explicit_choice(tmp_path, tiny_gpt2):
    cfg = FPTConfig(
        task="bit-xor", backbone=tiny_gpt2, out=str(tmp_path / "r"), train=small_train(),
        attn_implementation="measure",
    )  # fmt: skip
    metrics = run_fpt(cfg)
    assert "measured per training step" in metrics["attention"]
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    # The concrete choice is saved, so a resumed or repeated run uses the same kernels.
    assert saved["attn_implementation"] in ("eager", "sdpa")
    assert metrics["attention"].startswith(saved["attn_implementation"])


def test_resume_keeps_the_attention_measured_at_the_start(tmp_path, tiny_gpt2, monkeypatch):
    out = tmp_path / "r"
    cfg = FPTConfig(
        task="bit-xor", backbone=tiny_gpt2, out=str(out), train=small_train(steps=4, eval_every=2)
    )
    run_fpt(cfg)
    saved = yaml.safe_load((out / "config.yaml").read_text())["attn_implementation"]
    import unicomp.experiments.fpt as experiments

    def must_not_measure(*args, **kwargs):
        raise AssertionError("a resumed run measured the attention again")

    monkeypatch.setattr(experiments, "choose_attention", must_not_measure)
    again = FPTConfig(
        task="bit-xor", backbone=tiny_gpt2, out=str(out), train=small_train(steps=6, eval_every=2)
    )
    metrics = run_fpt(again, resume=True)
    assert metrics["steps"] == 6
    assert metrics["attention"] == saved


def test_fused_adamw_takes_the_same_step_as_the_loop():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16))
    twin = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16))
    twin.load_state_dict(model.state_dict())
    cfg = small_train(lr=1e-2, weight_decay=0.1)
    fused = train_mod.make_optimizer(model, cfg)
    assert all(g["fused"] for g in fused.param_groups)
    plain = torch.optim.AdamW(
        [
            {"params": [p for p in twin.parameters() if p.ndim >= 2], "weight_decay": 0.1},
            {"params": [p for p in twin.parameters() if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=1e-2,
    )
    x = torch.randn(32, 8)
    for _ in range(5):
        for net, opt in ((model, fused), (twin, plain)):
            net(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        # the fused kernel rounds differently; 1e-4 is 1% of one step of lr 1e-2
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_bit_xor_on_minilm_reaches_99_in_the_recorded_steps(tmp_path):
    """The speed choices must not cost accuracy: pretrained minilm-l6 on bit XOR (seed 0, the
    task's defaults) reached 99% validation accuracy at step 350 before them
    (docs/results.md, bf16 autocast); with precision and attention auto it must not need
    more steps."""
    # The task's own training defaults (lr 3e-3, evaluation every 50 steps), as the CLI
    # resolves them; capped a little past the recorded 350 steps.
    train = {**task_defaults("bit-xor"), "steps": 400, "stop_at_target": True, "progress": False}
    cfg = FPTConfig(
        task="bit-xor", backbone="minilm-l6", out=str(tmp_path / "xor"), train=TrainConfig(**train)
    )
    metrics = run_fpt(cfg)
    assert metrics["backbone_source"].startswith("pretrained")
    assert metrics["steps_to_target"] is not None and metrics["steps_to_target"] <= 350, metrics
    assert metrics["test_accuracy"] >= 0.99


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path, tiny_gpt2):
    """--compile trains the same function: same losses to float rounding (slow: compiling
    takes tens of seconds on a CPU)."""
    results = []
    for compile_ in (False, True):
        cfg = FPTConfig(
            task="bit-xor",
            backbone=tiny_gpt2,
            attn_implementation="eager",
            out=str(tmp_path / f"c{compile_}"),
            train=small_train(steps=4, eval_every=2, compile=compile_),
        )
        results.append(run_fpt(cfg))
    assert results[1]["compiled"] is True
    assert abs(results[0]["test_loss"] - results[1]["test_loss"]) < 1e-4
