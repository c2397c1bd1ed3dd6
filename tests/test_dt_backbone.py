"""A frozen pretrained transformer as the Decision Transformer's backbone (``dt train
--backbone NAME --freeze POLICY``): what trains, causality for encoders and decoders, acting,
the run folder reloading for ``dt eval``, and the default DT unchanged."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import small_train
from tests.test_rl import _episodes, _inputs, check_causal
from unicomp.errors import UnicompError
from unicomp.freezing import parameter_groups
from unicomp.models.decision_transformer import build_decision_transformer

pytest.importorskip("gymnasium")
pytest.importorskip("minari")

OBS, ACT, K = 5, 3, 5  # K = 5 steps: 15 tokens fit tiny_bert's 16-row position table


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing a library writes to the working folder lands in the repo


@pytest.fixture(params=["tiny_bert", "tiny_llama", "tiny_gpt2"])
def backbone(request) -> str:
    """Each tiny backbone's folder: an encoder with a position table, a rotary decoder, and
    a decoder with a position table."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def hopper_data(tmp_path_factory) -> str:
    """A small random-policy data set from Hopper-v5 (Minari folder)."""
    from unicomp.cli import main

    data = tmp_path_factory.mktemp("data") / "hopper-random"
    argv = ["dt", "collect", "--env", "Hopper-v5", "--policy", "random", "--episodes", "8"]
    assert main(argv + ["--out", str(data), "--max-episode-steps", "25", "--n-envs", "4"]) == 0
    return str(data)


def _model(name: str, freeze: str = "paper", attn: str = "sdpa"):
    torch.manual_seed(0)
    kw = {"max_length": K, "max_ep_len": 64, "attn_implementation": attn}
    return build_decision_transformer(OBS, ACT, backbone=name, freeze=freeze, **kw)


# --- what the freeze policies train --------------------------------------------------------------
def test_paper_policy_trains_only_the_dt_layers_norms_and_positions(tiny_bert, tiny_llama):
    for name, has_pos in ((tiny_bert, True), (tiny_llama, False)):
        m = _model(name)
        groups = parameter_groups(m)
        for module in ("embed_timestep", "embed_return", "embed_state", "embed_action", "embed_ln"):
            assert groups[f"{module}.weight"] == "input", module
        assert groups["predict_action.0.weight"] == "output"
        trainable = {n for n, p in m.named_parameters() if p.requires_grad}
        assert trainable == {
            n for n, g in groups.items() if g in ("input", "output", "pos", "norm")
        }
        assert any(groups[n] == "pos" for n in trainable) == has_pos  # Llama: rotary, no table
        assert not any(groups[n] in ("attn", "ff", "embed") for n in trainable)
        assert m.config.hidden_size == 32 and m.config.n_layer == 2  # the backbone's sizes
        by_group = m.trainable_by_group
        assert sum(by_group.values()) == sum(p.numel() for p in m.parameters() if p.requires_grad)
    full = _model(tiny_bert, freeze="full")
    groups = parameter_groups(full)
    # everything the model uses; not the token embeddings or the pooler (inputs bypass them)
    assert all(p.requires_grad == (groups[n] not in ("embed", "unused"))
               for n, p in full.named_parameters())  # fmt: skip
    only_head = _model(tiny_bert, freeze="output-only")
    assert {n.split(".")[0] for n, p in only_head.named_parameters() if p.requires_grad} == {
        "predict_action"
    }


def test_training_changes_only_the_trainable_parameters(tiny_bert):
    """A few steps of the one training loop under ``paper``: every frozen tensor stays
    bit-identical, the DT's own layers and the norms move."""
    from unicomp.rl.dt_task import DTTask
    from unicomp.rl.trajectories import TrajectoryDataset
    from unicomp.train import train

    ds = TrajectoryDataset(_episodes([9, 7, 12, 8, 10, 6], obs_dim=OBS, act_dim=ACT), source="t")
    task = DTTask(ds, context=K, max_ep_len=64, val_fraction=0.2, test_fraction=0.2)
    m = _model(tiny_bert)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    train(m, task, small_train(steps=4, eval_every=2, lr=1e-2), Path("run"))
    groups = parameter_groups(m)
    for n, p in m.named_parameters():
        if p.requires_grad:
            continue
        assert torch.equal(p, before[n]), n  # frozen: bit-identical
    moved = {groups[n] for n, p in m.named_parameters() if not torch.equal(p, before[n])}
    assert {"input", "output", "norm", "pos"} <= moved
    assert not moved & {"attn", "ff", "embed", "other"}


def test_freeze_needs_a_backbone_and_the_backbone_a_transformer(tmp_path):
    from unicomp.config import DTConfig, check_config

    with pytest.raises(UnicompError, match="needs a backbone"):
        check_config(DTConfig(data="x", freeze="paper"))
    check_config(DTConfig(data="x", backbone="minilm-l6", freeze="paper"))
    with pytest.raises(UnicompError, match="transformer backbone"):
        build_decision_transformer(OBS, ACT, backbone="lstm", freeze="paper")


# --- causality ---------------------------------------------------------------------------------
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_later_tokens_never_change_earlier_predictions(backbone, attn):
    check_causal(_model(backbone, attn=attn).eval(), K=K, step=3)


def test_the_encoder_alone_would_see_the_future(tiny_bert):
    """What the DT's mask prevents: BERT with a plain padding mask attends both ways."""
    m = _model(tiny_bert).eval()
    tokens = torch.randn(1, 3 * K, 32)
    later = tokens.clone()
    later[:, -1] += torch.randn(32)  # not a constant: BERT's embedding LayerNorm drops it
    plain = torch.ones(1, 3 * K, dtype=torch.long)
    with torch.no_grad():
        a, b = (m.transformer(t, plain) for t in (tokens, later))
        assert not torch.allclose(a[:, 0], b[:, 0], atol=1e-4)
        a, b = (m._pretrained_backbone(t) for t in (tokens, later))
        assert torch.allclose(a[:, :-1], b[:, :-1], atol=1e-6)


def test_left_padding_equals_a_shorter_context(backbone):
    """Positions count from the first real token: a padded training window and the short
    context of an episode's first steps in acting give the same predictions."""
    m = _model(backbone).eval()
    x = _inputs(K=K)
    mask = torch.ones(2, K)
    mask[0, :2] = 0
    padded = m(x, mask)[0, 2:]
    short = m({k: v[:1, 2:] for k, v in x.items()})[0]
    assert torch.allclose(padded, short, atol=1e-5)


def test_acting_equals_the_training_forward(backbone):
    """Acting recomputes the window each step (no cache); past K steps it slides."""
    m = _model(backbone).eval()
    steps = K + 3
    g = torch.Generator().manual_seed(1)
    rtg, states = torch.randn(2, steps, 1, generator=g), torch.randn(2, steps, OBS, generator=g)
    actions = torch.randn(2, steps, ACT, generator=g).tanh()
    timesteps = torch.arange(steps).repeat(2, 1)
    rollout = m.start(2)
    for t in range(steps):
        acted = m.step(rollout, rtg[:, t], states[:, t], timesteps[:, t])
        m.record_action(rollout, actions[:, t])
        lo = max(0, t + 1 - K)
        window = {
            "returns_to_go": rtg[:, lo : t + 1],
            "states": states[:, lo : t + 1],
            "actions": actions[:, lo : t + 1],
            "timesteps": timesteps[:, lo : t + 1],
        }
        with torch.no_grad():
            assert torch.allclose(acted, m(window)[:, -1], atol=1e-5), t


def test_padded_rows_keep_gradients_finite(backbone):
    m = _model(backbone, freeze="full").train()
    mask = torch.ones(2, K)
    mask[0, :4] = 0  # row 0: one real step
    out = m(_inputs(K=K), mask)
    out[mask.bool()].pow(2).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


# --- dt train / dt eval ------------------------------------------------------------------------
def _dt_train(data: str, out, *extra: str) -> dict:
    from unicomp.cli import main

    argv = ["dt", "train", "--data", data, "--out", str(out), "--steps", "4", "--eval-every", "2"]
    argv += ["--batch-size", "8", "--warmup-steps", "1", "--no-progress", "--precision", "fp32"]
    argv += ["--context", str(K), "--val-fraction", "0.2", "--hidden-size", "16", "--n-layer", "1"]
    argv += ["--eval-episodes", "1", "--eval-max-steps", "10", "--eval-targets", "100"]
    assert main([*argv, *extra]) == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize(
    "name, freeze", [("tiny_bert", "paper"), ("random:tiny_llama", "paper"), ("tiny_gpt2", "full")]
)
def test_dt_train_with_a_backbone_then_dt_eval_reloads_it(
    request, hopper_data, tmp_path, capsys, name, freeze
):
    from safetensors.torch import load_file

    from unicomp.config import load_yaml
    from unicomp.experiments.dt import DT_EVAL_DEFAULTS, evaluate_run, load_dt_run

    prefix, _, fixture = name.rpartition(":")
    backbone = f"{prefix}:" * bool(prefix) + request.getfixturevalue(fixture)
    run = tmp_path / "run"
    metrics = _dt_train(hopper_data, run, "--backbone", backbone, "--freeze", freeze)
    assert metrics["backbone"] == backbone and metrics["freeze"] == freeze
    assert ("random init" in metrics["backbone_source"]) == bool(prefix)
    assert metrics["model_config"]["hidden_size"] == 32  # the backbone's width, not 16
    assert 0 < metrics["trainable_params"] <= metrics["total_params"]
    assert sum(metrics["trainable_by_group"].values()) == metrics["trainable_params"]
    if freeze != "full":
        assert metrics["trainable_params"] < metrics["total_params"]
    assert metrics["eval"][0]["episodes"] == 1 and 1 <= metrics["eval"][0]["length_mean"] <= 10
    assert load_yaml(run / "config.yaml")["backbone"] == backbone
    saved = load_file(run / "best.safetensors")
    assert sum(t.numel() for t in saved.values()) == metrics["trainable_params"]  # trained only
    model, _, _ = load_dt_run(run)  # frozen weights rebuilt from the backbone name
    assert model.config.backbone == backbone
    capsys.readouterr()
    result = evaluate_run(run, dataclasses.replace(DT_EVAL_DEFAULTS, episodes=1, max_steps=10))
    for key in ("return_mean", "return_min", "length_mean"):  # the same actions, step by step
        assert result["eval"][0][key] == metrics["eval"][0][key], key


def test_without_a_backbone_nothing_changes(hopper_data, tmp_path):
    from unicomp.config import load_yaml

    metrics = _dt_train(hopper_data, tmp_path / "run")
    assert metrics["backbone"] is None and metrics["freeze"] == "full"
    config = load_yaml(tmp_path / "run" / "config.yaml")
    assert config["backbone"] is None and config["freeze"] == "full"
    model_config = metrics["model_config"]
    assert model_config["backbone"] is None and model_config["hidden_size"] == 16
    # the paper's GPT-2 with no position table and its unused token table frozen, as before
    torch.manual_seed(0)
    m = build_decision_transformer(11, 3, max_length=K, hidden_size=16, n_layer=1)
    assert m.trainable_by_group is None and not m.transformer.wte.weight.requires_grad
    assert not any("wpe" in n for n, _ in m.named_parameters())
