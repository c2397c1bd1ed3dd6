"""The FPT paper's baseline backbones through load_backbone: a random LSTM (lstm, lstm:LxW),
random weights matched to the pretrained statistics (stats:<name>), the backbone of a
finished run (run:<DIR>), and truncate_layers (the first n transformer blocks)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tests.conftest import small_train
from unicomp import features as fc
from unicomp.backbones.base import position_table, truncate_layers
from unicomp.backbones.hf import HFBackbone
from unicomp.backbones.loading import load_backbone
from unicomp.backbones.lstm import LSTMBackbone
from unicomp.cli import main
from unicomp.config import FPTConfig
from unicomp.errors import UnicompError, UnknownNameError, WeightsNotFoundError
from unicomp.experiments import fpt as experiments
from unicomp.experiments.common import build_task
from unicomp.experiments.fpt import build_fpt, run_fpt
from unicomp.freezing import apply_freeze_policy, parameter_groups
from unicomp.models.fpt import FPT
from unicomp.registry import Entry
from unicomp.tasks.base import TaskSpec
from unicomp.tasks.catalog import TASKS

XOR_SPEC = TaskSpec(max_len=10, d_in=1, d_out=2, n_classes=2, n_out_tokens=5)


def _fpt_cfg(backbone: str, out: Path, **kw) -> FPTConfig:
    train = small_train(**kw.pop("train", {"steps": 4, "eval_every": 2}))
    return FPTConfig(
        task=kw.pop("task", "bit-xor"),
        backbone=backbone,
        freeze=kw.pop("freeze", "paper"),
        attn_implementation=kw.pop("attn_implementation", "eager"),
        out=str(out),
        train=train,
        **kw,
    )


def _step(model: FPT, spec: TaskSpec = XOR_SPEC) -> torch.Tensor:
    """One forward/backward on random inputs; returns the logits."""
    x = torch.randn(3, spec.max_len, spec.d_in)
    out = model(x, torch.ones(3, spec.max_len, dtype=torch.long))
    out.float().pow(2).mean().backward()
    return out


# --- lstm ---------------------------------------------------------------------------------------
def test_lstm_names_and_interface():
    paper = load_backbone("lstm")
    assert isinstance(paper, LSTMBackbone)
    assert (paper.lstm.num_layers, paper.hidden_size) == (3, 768)
    assert paper.source == "random init (seed 0), LSTM 3 layers width 768, no pretrained weights"
    small = load_backbone("lstm:2x16", dropout=0.1, attn_implementation="sdpa", seed=5)
    assert small.name == "lstm:2x16" and small.model_type == "lstm" and small.is_decoder
    assert (small.lstm.num_layers, small.hidden_size, small.lstm.dropout) == (2, 16, 0.1)
    assert small.source.startswith("random init (seed 5), LSTM 2 layers width 16")
    assert position_table(small) is None  # no table of its own: the FPT adds one
    small.set_attention("eager")  # a no-op
    out = small(torch.randn(2, 7, 16), torch.ones(2, 7, dtype=torch.long))
    assert out.shape == (2, 7, 16) and torch.isfinite(out).all()
    assert load_backbone("lstm:1x8", dropout=None).lstm.dropout == 0.0


def test_lstm_init_is_seeded_and_keeps_the_global_random_state():
    state = torch.random.get_rng_state()
    a = load_backbone("lstm:2x8", seed=3).lstm.weight_hh_l1
    assert torch.equal(state, torch.random.get_rng_state())
    b = load_backbone("lstm:2x8", seed=3).lstm.weight_hh_l1
    c = load_backbone("lstm:2x8", seed=4).lstm.weight_hh_l1
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name", ["lstm:3", "lstm:0x16", "lstm:2x0", "lstm:ax3", "lstm:2x3x4"])
def test_bad_lstm_names(name):
    with pytest.raises(UnicompError, match=r"expected lstm or lstm:<layers>x<width>|at least 1"):
        load_backbone(name)


def test_lstm_right_padding_never_reaches_real_positions():
    backbone = load_backbone("lstm:2x8").eval()
    x = torch.randn(1, 6, 8)
    padded = torch.cat([x[:, :4], torch.randn(1, 2, 8)], 1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        full = backbone(padded, mask)
        short = backbone(x[:, :4], mask[:, :4])
    torch.testing.assert_close(full[:, :4], short)


def test_lstm_in_the_fpt_and_its_freeze_groups():
    model = FPT(load_backbone("lstm:2x16"), XOR_SPEC)
    assert model.pos is not None  # no table of its own: the FPT adds one at the input
    groups = parameter_groups(model)
    lstm = {n for n in groups if n.startswith("backbone.")}
    kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    assert lstm == {f"backbone.lstm.{w}_l{i}" for w in kinds for i in (0, 1)}
    assert {groups[n] for n in lstm} == {"other"}
    assert groups["pos.weight"] == "pos"
    full = apply_freeze_policy(model, "full")
    assert full["other"] == sum(p.numel() for p in model.backbone.parameters())
    _step(model)
    assert all(p.grad is not None for p in model.backbone.parameters())
    model.zero_grad(set_to_none=True)
    paper = apply_freeze_policy(model, "paper")
    assert "other" not in paper and set(paper) == {"input", "output", "pos"}
    _step(model)
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.embed_in.weight.grad is not None and model.pos.weight.grad is not None


def test_lstm_runs_in_float32_inside_a_bf16_run():
    """oneDNN's bf16 LSTM failed on an AVX2 CPU; cuDNN's autocast LSTM would be float16."""
    model = FPT(load_backbone("lstm:2x16"), XOR_SPEC)
    seen = []
    model.backbone.register_forward_hook(lambda _m, _a, out: seen.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _step(model)
    assert seen == [torch.float32] and out.dtype == torch.bfloat16  # the head under autocast
    assert torch.isfinite(model.backbone.lstm.weight_hh_l1.grad).all()


def test_lstm_with_measured_attention():
    """build_fpt times eager and sdpa when attention is auto: a no-op switch for the LSTM."""
    cfg = _fpt_cfg("lstm:1x16", Path("unused"), attn_implementation="auto", freeze="full")
    model, summary = build_fpt(cfg, build_task("bit-xor", {}))
    assert summary["attention"].split()[0] in ("eager", "sdpa")
    assert summary["backbone_type"] == "lstm" and summary["backbone_is_decoder"]
    assert summary["trainable_by_group"]["other"] == sum(
        p.numel() for p in model.backbone.parameters()
    )
    model2, summary2 = build_fpt(_fpt_cfg("lstm:1x16", Path("unused")), build_task("bit-xor", {}))
    assert "other" not in summary2["trainable_by_group"]  # paper: the LSTM stays frozen
    assert summary["backbone_source"] == summary2["backbone_source"]
    assert all(not p.requires_grad for p in model2.backbone.parameters())


def test_lstm_output_only_features_are_cached(tmp_path, monkeypatch):
    from tests.test_features import TinyTensorTask

    monkeypatch.setitem(
        TASKS._entries, TinyTensorTask.name, Entry(TinyTensorTask.name, TinyTensorTask)
    )
    monkeypatch.setenv("UNICOMP_CACHE", str(tmp_path / "cache"))
    fc.clear_memory()
    try:
        kw = {
            "task": "tiny-tensor",
            "freeze": "output-only",
            "train": {"steps": 6, "eval_every": 3, "lr": 1e-2},
        }
        normal = run_fpt(_fpt_cfg("lstm:1x8", tmp_path / "normal", feature_cache="off", **kw))
        first = run_fpt(_fpt_cfg("lstm:1x8", tmp_path / "first", feature_cache="disk", **kw))
        fc.clear_memory()
        second = run_fpt(_fpt_cfg("lstm:1x8", tmp_path / "second", feature_cache="disk", **kw))
    finally:
        fc.clear_memory()
    assert first["feature_cache"].startswith("computed, saved to ")
    assert second["feature_cache"].startswith("disk hit ")
    assert second["feature_key"] == first["feature_key"]
    for key in ("test_loss", "val_accuracy"):
        assert first[key] == pytest.approx(normal[key], abs=1e-4), key
    seeded = _fpt_cfg("lstm:1x8", tmp_path / "seed1", feature_cache="disk", **kw)
    seeded.train.seed = 1  # another LSTM init (and input layer): other frozen weights
    fc.clear_memory()
    assert run_fpt(seeded)["feature_key"] != first["feature_key"]
    fc.clear_memory()


# --- stats:<name> -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shifted_gpt2(tmp_path_factory, tiny_gpt2) -> str:
    """The tiny GPT-2 with every tensor scaled and shifted by its own amount, so each has its
    own mean and std (LayerNorm weights stay constant: std 0)."""
    from transformers import GPT2Model

    model = GPT2Model.from_pretrained(tiny_gpt2)
    with torch.no_grad():
        for i, (name, p) in enumerate(model.named_parameters()):
            if "ln_" not in name:
                p.add_(torch.randn_like(p) * 0.01).mul_(1 + 0.2 * i).add_(0.05 * i - 0.3)
    path = tmp_path_factory.mktemp("shifted-gpt2")
    model.save_pretrained(path)
    return str(path)


def test_stats_match_each_tensor_and_redraw_it(shifted_gpt2):
    original = load_backbone(shifted_gpt2)
    matched = load_backbone(f"stats:{shifted_gpt2}", seed=2)
    assert isinstance(matched, HFBackbone) and matched.name == f"stats:{shifted_gpt2}"
    assert matched.source.startswith(
        f"random init (seed 2) matched per tensor to the mean and std of pretrained, local "
        f"folder {shifted_gpt2}"
    )
    redrawn = kept = 0
    for (name, a), (_, b) in zip(
        original.named_parameters(), matched.named_parameters(), strict=True
    ):
        a64, b64 = a.detach().double(), b.detach().double()
        std = float(a64.std(correction=0))
        if std == 0:
            assert torch.equal(a, b), name
            kept += 1
            continue
        n = a.numel()
        assert not torch.equal(a, b), name
        assert abs(float(b64.mean()) - float(a64.mean())) < 6 * std / n**0.5 + 1e-6, name
        assert abs(float(b64.std(correction=0)) / std - 1) < 6 / (2 * n) ** 0.5 + 0.01, name
        redrawn += 1
    assert kept >= 4 and redrawn >= 8  # the LayerNorm weights are constant, the rest varies
    assert f"{redrawn} tensors re-drawn, {kept} kept" in matched.source
    again = load_backbone(f"stats:{shifted_gpt2}", seed=2).model.h[0].attn.c_attn.weight
    other = load_backbone(f"stats:{shifted_gpt2}", seed=3).model.h[0].attn.c_attn.weight
    mine = matched.model.h[0].attn.c_attn.weight
    assert torch.equal(mine, again) and not torch.equal(mine, other)


def test_stats_backbone_trains_in_the_fpt(tiny_llama):
    backbone = load_backbone(f"stats:{tiny_llama}")
    model = FPT(backbone, XOR_SPEC)
    apply_freeze_policy(model, "paper")
    out = _step(model)
    assert out.shape == (3, 5, 2) and torch.isfinite(out).all()
    with pytest.raises(UnicompError, match="stats:<name>"):
        load_backbone("stats:")
    with pytest.raises(UnknownNameError, match="unknown backbone 'nothing-here'"):
        load_backbone("stats:nothing-here")


# --- truncate_layers ----------------------------------------------------------------------------
def _from_config(model_class: str, **config) -> HFBackbone:
    import transformers

    cfg = getattr(transformers, model_class.replace("Model", "Config"))(**config)
    torch.manual_seed(0)
    return HFBackbone(getattr(transformers, model_class)(cfg), "tiny", "test")


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_truncate_gpt2_and_bert():
    gpt2 = _from_config("GPT2Model", n_layer=4, n_embd=32, n_head=2, vocab_size=64)
    before = _count(gpt2)
    assert truncate_layers(gpt2, 3) == "first 3 of 4 layers"
    assert len(gpt2.model.h) == 3 and gpt2.model.config.n_layer == 3
    assert _count(gpt2) < before
    model = FPT(gpt2, XOR_SPEC)
    apply_freeze_policy(model, "paper")
    assert torch.isfinite(_step(model)).all()

    bert = _from_config(
        "BertModel",
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=64,
    ).eval()
    x, mask = torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.long)
    with torch.no_grad():
        hidden = bert.model(inputs_embeds=x, attention_mask=mask, output_hidden_states=True)
    before = _count(bert)
    assert truncate_layers(bert, 2) == "first 2 of 4 layers"
    assert len(bert.model.encoder.layer) == 2 and bert.model.config.num_hidden_layers == 2
    assert _count(bert) < before
    with torch.no_grad():  # the first two blocks compute what they did in the full model
        torch.testing.assert_close(bert(x, mask), hidden.hidden_states[2])


def test_truncate_llama_and_errors(tiny_llama):
    llama = load_backbone(tiny_llama)
    assert truncate_layers(llama, 1) == "first 1 of 2 layers"
    assert len(llama.model.layers) == 1
    out = llama(torch.randn(1, 4, 32), torch.ones(1, 4, dtype=torch.long))
    assert out.shape == (1, 4, 32) and torch.isfinite(out).all()
    for n in (0, 2, -1):
        with pytest.raises(UnicompError, match=r"has 1 layers; choose 1 to 1"):
            truncate_layers(llama, n)
    with pytest.raises(UnicompError, match="does not apply to the LSTM backbone 'lstm:1x4'"):
        truncate_layers(load_backbone("lstm:1x4"), 1)


# --- run:<DIR> ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory, tiny_gpt2) -> Path:
    """Pretrain a random tiny GPT-2 in full on a small bit-memory (24 tokens)."""
    out = tmp_path_factory.mktemp("runs") / "memory-full"
    cfg = _fpt_cfg(
        f"random:{tiny_gpt2}",
        out,
        task="bit-memory",
        freeze="full",
        task_args={"n_bits": 20, "bits_per_token": 5, "n_val": 16, "n_test": 16},
        train={"steps": 4, "eval_every": 2, "lr": 1e-2},
    )
    cfg.train.seed = 3
    run_fpt(cfg)
    return out


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory, tiny_llama) -> Path:
    """The tiny Llama (no position table: the FPT adds one), its first block only, trained
    under paper (norms)."""
    out = tmp_path_factory.mktemp("runs") / "xor-paper"
    train = {"steps": 4, "eval_every": 2, "lr": 1e-2}
    run_fpt(_fpt_cfg(tiny_llama, out, backbone_layers=1, train=train))
    return out


def test_run_backbone_has_the_trained_weights(gpt2_run, tiny_gpt2):
    backbone = load_backbone(f"run:{gpt2_run}")
    assert isinstance(backbone, HFBackbone) and backbone.name == f"run:{gpt2_run}"
    best_step = json.loads((gpt2_run / "metrics.json").read_text())["best_step"]
    assert backbone.source.startswith(
        f"the backbone of run {gpt2_run} (task bit-memory, backbone random:{tiny_gpt2}, "
        f"freeze full, trained weights from best.safetensors, step {best_step}); "
        "position table: the backbone's learned table (first 24 of 128 rows)"
    )
    rebuilt = f"rebuilt from: random init (seed 3) from the config of {tiny_gpt2}"
    assert backbone.source.endswith(f"{rebuilt}; no pretrained weights")
    saved = load_file(str(gpt2_run / "best.safetensors"))
    mine = dict(backbone.named_parameters())
    fresh = dict(load_backbone(f"random:{tiny_gpt2}", seed=3).named_parameters())
    # what trained comes from the run; what never trains (the token embeddings, bypassed by
    # the inputs) is the rebuilt initialisation, as the run had it
    assert {n for n in mine if f"backbone.{n}" not in saved} == {"model.wte.weight"}
    for name, param in mine.items():
        want = saved.get(f"backbone.{name}", fresh[name])
        assert torch.equal(param, want), name
    changed = [n for n in mine if n in fresh and not torch.equal(mine[n], fresh[n])]
    assert "model.h.0.attn.c_attn.weight" in changed  # full: training moved the blocks too


def test_run_backbone_rebuilds_the_frozen_weights(llama_run, tiny_llama):
    backbone = load_backbone(f"run:{llama_run}")
    assert "freeze paper, first 1 of 2 layers, trained weights" in backbone.source
    assert len(backbone.model.layers) == 1
    assert "the run's own input position table (pos, added by its FPT wrapper" in backbone.source
    assert "is not transferred" in backbone.source
    saved = load_file(str(llama_run / "best.safetensors"))
    pretrained = dict(load_backbone(tiny_llama).named_parameters())
    norms = 0
    for name, param in backbone.named_parameters():
        key = f"backbone.{name}"
        if key in saved:  # trained (the norms): the run's values
            assert torch.equal(param, saved[key]) and not torch.equal(param, pretrained[name])
            norms += 1
        else:  # frozen: rebuilt as the run loaded them
            assert torch.equal(param, pretrained[name]), name
    assert norms == 3  # 1 layer x 2 RMSNorms + the final one
    # The file decides: a changed tensor in best.safetensors comes through.
    copy = llama_run.parent / "xor-paper-changed"
    shutil.copytree(llama_run, copy)
    key = "backbone.model.norm.weight"
    saved[key] = saved[key] + 1.0
    save_file(saved, str(copy / "best.safetensors"))
    changed = load_backbone(f"run:{copy}")
    torch.testing.assert_close(changed.model.norm.weight, backbone.model.norm.weight + 1.0)


def test_run_backbone_used_frozen_on_another_task(gpt2_run, tmp_path):
    """The typical use: pretrained in full on bit-memory, frozen (paper) on bit-xor."""
    cfg = _fpt_cfg(f"run:{gpt2_run}", tmp_path / "xor", attn_implementation="auto")
    metrics = run_fpt(cfg)
    assert metrics["backbone"] == f"run:{gpt2_run}"
    assert metrics["backbone_source"].startswith(f"the backbone of run {gpt2_run} (task bit-memory")
    assert metrics["positions"] == "the backbone's learned table (first 10 of 24 rows)"
    assert set(metrics["trainable_by_group"]) == {"input", "output", "pos", "norm"}
    # and a run of that run: the chain is rebuilt
    chained = load_backbone(f"run:{tmp_path / 'xor'}")
    assert f"rebuilt from: the backbone of run {gpt2_run}" in chained.source


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("unicomp: error: "), err
    return err[0]


def test_run_errors(tmp_path, gpt2_run, capsys, monkeypatch):
    with pytest.raises(WeightsNotFoundError, match="run folder .*nowhere does not exist"):
        load_backbone(f"run:{tmp_path / 'nowhere'}")
    with pytest.raises(UnicompError, match=r"needs a run folder: run:<DIR>"):
        load_backbone("run:")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsNotFoundError, match="has no config.yaml"):
        load_backbone(f"run:{empty}")
    no_best = tmp_path / "no-best"
    no_best.mkdir()
    shutil.copy(gpt2_run / "config.yaml", no_best / "config.yaml")
    with pytest.raises(WeightsNotFoundError, match="has no best.safetensors"):
        load_backbone(f"run:{no_best}")
    for kind, config in (
        ("Decision Transformer", {"data": "d", "algo": "dt", "n_layer": 3}),
        ("Perceiver", {"task": "bit-xor", "model": "perceiver-io", "num_latents": 8}),
    ):
        other = tmp_path / kind.split()[0]
        other.mkdir()
        (other / "config.yaml").write_text(yaml.safe_dump(config))
        shutil.copy(gpt2_run / "best.safetensors", other / "best.safetensors")
        with pytest.raises(UnicompError, match=f"is not an FPT run \\(it is a {kind}"):
            load_backbone(f"run:{other}")

    def damaged(label: str, change) -> Path:
        folder = tmp_path / label
        shutil.copytree(gpt2_run, folder)
        saved = load_file(str(folder / "best.safetensors"))
        change(saved)
        save_file(saved, str(folder / "best.safetensors"))
        return folder

    shape = damaged("shape", lambda s: s.update({"head.weight": torch.zeros(3, 32)}))
    with pytest.raises(UnicompError, match=r"does not fit .* shape \(file vs model\): head.weight"):
        load_backbone(f"run:{shape}")
    extra = damaged("extra", lambda s: s.update({"backbone.model.h.7.ln_1.weight": torch.ones(32)}))
    with pytest.raises(UnicompError, match=r"not in the model: backbone.model.h.7.ln_1.weight"):
        load_backbone(f"run:{extra}")
    missing = damaged("missing", lambda s: s.pop("backbone.model.ln_f.bias"))
    trains = r"missing \(freeze full trains them\): backbone.model.ln_f.bias"
    with pytest.raises(UnicompError, match=trains):
        load_backbone(f"run:{missing}")
    garbled = tmp_path / "garbled"
    shutil.copytree(gpt2_run, garbled)
    (garbled / "best.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UnicompError, match="cannot read .*best.safetensors"):
        load_backbone(f"run:{garbled}")
    loop = tmp_path / "loop"
    shutil.copytree(gpt2_run, loop)
    config = yaml.safe_load((loop / "config.yaml").read_text())
    (loop / "config.yaml").write_text(yaml.safe_dump({**config, "backbone": f"run:{loop}"}))
    with pytest.raises(UnicompError, match="name each other's backbones in a loop"):
        load_backbone(f"run:{loop}")
    # a config field that may change the backbone, not rebuilt by run: yet, is refused
    mean = tmp_path / "mean"
    shutil.copytree(gpt2_run, mean)
    (mean / "config.yaml").write_text(yaml.safe_dump({**config, "readout": "mean"}))
    handled = experiments._RUN_FIELDS_HANDLED - {"readout"}
    monkeypatch.setattr(experiments, "_RUN_FIELDS_HANDLED", handled)
    with pytest.raises(UnicompError, match="sets readout, which rebuilding a run's model"):
        load_backbone(f"run:{mean}")
    # through the CLI: one line
    args = ["fpt", "train", "--backbone", f"run:{tmp_path / 'nowhere'}", "--steps", "2"]
    assert main([*args, "--no-progress", "--out", str(tmp_path / "r")]) != 0
    assert "does not exist" in _one_error(capsys)


# --- the CLI ------------------------------------------------------------------------------------
def test_cli_trains_an_lstm(tmp_path):
    out = tmp_path / "r"
    args = ["fpt", "train", "--task", "bit-xor", "--backbone", "lstm:1x16", "--freeze", "full"]
    budget = ["--steps", "4", "--eval-every", "2", "--batch-size", "4", "--no-progress"]
    assert main([*args, *budget, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backbone"] == "lstm:1x16" and metrics["backbone_type"] == "lstm"
    assert metrics["backbone_source"].startswith("random init (seed 0), LSTM 1 layers width 16")
    assert metrics["trainable_by_group"]["other"] == 4 * 16 * (16 + 16 + 2)
    assert metrics["steps"] == 4
