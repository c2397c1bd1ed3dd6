"""Settings resolved once and passed down whole: a run's device and precision
(``unicomp.train.Placement``, for the attention probe, the feature cache and the loop) and
how a trained policy acts (``unicomp.experiments.dt.EvalSettings``, for dt train, dt eval
and dt external)."""

from __future__ import annotations

import pytest
import torch

import unicomp.train as loop
from tests.conftest import small_train
from tests.test_features import TinyTensorTask
from unicomp import features as fc
from unicomp.config import DTConfig, FPTConfig
from unicomp.experiments.dt import DT_EVAL_DEFAULTS, EvalSettings
from unicomp.registry import Entry
from unicomp.tasks.catalog import TASKS
from unicomp.train import Placement


@pytest.fixture
def counted_precision(monkeypatch):
    """Every resolution of a precision, counted; ``auto`` resolves to fp32 for a reason."""
    calls = []

    def resolve(device, requested):
        calls.append((device, requested))
        return "fp32", "resolved once for the test"

    monkeypatch.setattr(loop, "resolve_precision", resolve)
    return calls


def test_an_fpt_run_resolves_its_device_and_precision_once(
    tmp_path, tiny_gpt2, monkeypatch, counted_precision
):
    """The attention probe, the cached features and the loop of one output-only run read one
    Placement: one resolution, and what metrics.json records is what the features used."""
    from unicomp.experiments.fpt import run_fpt

    monkeypatch.setitem(TASKS._entries, TinyTensorTask.name, Entry(TinyTensorTask.name,
                                                                   TinyTensorTask))  # fmt: skip
    monkeypatch.setenv("UNICOMP_CACHE", str(tmp_path / "cache"))
    fc.clear_memory()
    used = []
    real = fc.extract_features
    monkeypatch.setattr(fc, "extract_features", lambda m, t, device, precision, **kw: used.append(
        (device, precision)) or real(m, t, device, precision, **kw))  # fmt: skip
    train = small_train(steps=30, eval_every=10, precision="auto", device="cpu")
    cfg = FPTConfig(task="tiny-tensor", backbone=tiny_gpt2, freeze="output-only",
                    attn_implementation="measure", feature_cache="memory", out=str(tmp_path / "r"),
                    train=train)  # fmt: skip
    metrics = run_fpt(cfg)
    fc.clear_memory()
    assert counted_precision == [(torch.device("cpu"), "auto")]
    assert "measured per training step" in metrics["attention"]
    assert metrics["feature_cache"].startswith("computed, kept in memory")
    assert used == [(torch.device("cpu"), "fp32")]
    assert (metrics["device"], metrics["precision"]) == ("cpu", "fp32")
    assert metrics["precision_reason"] == "resolved once for the test"


class _Linear(torch.nn.Module):
    """A model as the loop calls one, ``model(x, mask)``, for the tiny tensor task."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(18, 3))

    def forward(self, x, mask=None):
        return self.net(x)


def test_the_loop_trains_in_the_placement_it_is_given(tmp_path, counted_precision):
    given = Placement(torch.device("cpu"), "fp32", "chosen by the caller")
    cfg = small_train(precision="auto")
    metrics = loop.train(_Linear(), TinyTensorTask(), cfg, tmp_path, placement=given)
    assert not counted_precision  # nothing resolved again
    assert (metrics["precision"], metrics["precision_reason"]) == ("fp32", "chosen by the caller")


def test_ranks_that_measured_differently_agree_on_fp32(monkeypatch):
    """The loop's rule, now where the placement is resolved: one of two ranks has native bf16,
    the other not, so both run in fp32 (the features as well as the training)."""

    class OtherRankDiffers:
        world, rank, enabled, is_main = 2, 0, True, True

        def __init__(self, device):
            pass

        def sum(self, values):
            return [1.0]  # this rank's bf16 vote, and none from the other

    monkeypatch.setattr(loop, "Dist", OtherRankDiffers)
    monkeypatch.setattr(loop, "cpu_bf16_flags", lambda: ["amx_bf16"])
    monkeypatch.setattr(loop, "_RESOLVED", {})
    placement = Placement.resolve(small_train(precision="auto", device="cpu"))
    assert placement.precision == "fp32"
    assert placement.reason == "ranks measured differently; fp32 everywhere"
    assert isinstance(placement.dist, OtherRankDiffers)


def test_eval_settings_default_to_a_dt_runs_and_complete_from_the_run():
    assert EvalSettings() == EvalSettings.of(DTConfig())
    cfg = DTConfig(eval_seed=7, eval_window="rolling", eval_sample=True, eval_targets="1, 0.5")
    assert EvalSettings.of(cfg).targets == (1.0, 0.5)
    done = DT_EVAL_DEFAULTS.completed(cfg)
    assert (done.seed, done.window, done.sample) == (7, "rolling", True)
    assert (done.episodes, done.n_envs, done.max_steps) == (10, 16, 0)  # dt eval's own
    asked = EvalSettings(seed=3, window="exact", sample=False).completed(cfg)
    assert (asked.seed, asked.window, asked.sample) == (3, "exact", False)


def test_dt_eval_and_dt_external_pass_their_flags_as_one_object(monkeypatch, capsys):
    import unicomp.experiments.dt as dt
    import unicomp.experiments.external as external
    from unicomp.cli import main

    seen = {}
    monkeypatch.setattr(dt, "evaluate_run", lambda run, evaluation, **kw: seen.update(
        eval=evaluation) or {"eval": []})  # fmt: skip
    monkeypatch.setattr(external, "run_external", lambda *a, evaluation, **kw: seen.update(
        external=evaluation) or {})  # fmt: skip
    argv = ["dt", "eval", "--run", "r", "--eval-episodes", "3", "--eval-targets", "5,1"]
    assert main(argv) == 0
    assert seen["eval"] == EvalSettings(
        episodes=3, seed=None, window=None, sample=None, targets=(5.0, 1.0)
    )
    assert main(["dt", "eval", "--run", "r"]) == 0
    assert seen["eval"] == DT_EVAL_DEFAULTS
    argv = ["dt", "external", "--algo", "cql", "--data", "d", "--out", "o", "--eval-seed", "4"]
    assert main(argv) == 0
    assert seen["external"] == EvalSettings(seed=4)
    capsys.readouterr()
