"""Freeze policies and parameter counts, checked against the FPT paper's arithmetic."""

from __future__ import annotations

import pytest

from unicomp.backbones.loading import load_backbone
from unicomp.freezing import apply_freeze_policy, count_parameters, parameter_groups
from unicomp.models.fpt import FPT
from unicomp.tasks.base import TaskSpec

CIFAR = TaskSpec(max_len=64, d_in=16, d_out=10, n_classes=10)


@pytest.fixture(scope="module")
def gpt2_base_cifar():
    model = FPT(load_backbone("random:gpt2"), CIFAR)
    return model


def test_paper_policy_counts_gpt2_base_cifar10(gpt2_base_cifar):
    """Paper sec. 2, CIFAR-10 on GPT-2 base: output 768*10, input 16*768 (+bias) = 13,056,
    LayerNorm 4*768*12 = 36,864, positions 64*768 = 49,152. We also count what the paper's
    tally leaves out: the output bias (10) and GPT-2's final LayerNorm ln_f (2*768)."""
    counts = apply_freeze_policy(gpt2_base_cifar, "paper")
    n = 768
    assert counts == {
        "output": n * 10 + 10,
        "input": 16 * n + n,
        "norm": 4 * n * 12 + 2 * n,
        "pos": 64 * n,
    }
    trainable, total = count_parameters(gpt2_base_cifar)
    assert trainable == 7_690 + 13_056 + 36_864 + 1_536 + 49_152
    # GPT-2 base: 124,439,808 parameters with its 1024-row position table; we keep 64 rows.
    assert total == 124_439_808 - (1024 - 64) * n + 7_690 + 13_056
    assert trainable / total == pytest.approx(0.00087, abs=0.00002)  # paper: 0.086%


@pytest.mark.parametrize(
    ("policy", "groups"),
    [
        ("output-only", {"output"}),
        ("no-norm", {"input", "output", "pos"}),
        ("+ff", {"input", "output", "pos", "norm", "ff"}),
        ("+attn", {"input", "output", "pos", "norm", "attn"}),
        ("+ff+attn", {"input", "output", "pos", "norm", "ff", "attn"}),
    ],
)
def test_policies_train_exactly_their_groups(gpt2_base_cifar, policy, groups):
    counts = apply_freeze_policy(gpt2_base_cifar, policy)
    assert set(counts) == groups
    n, layers = 768, 12
    if "attn" in groups:  # c_attn (768x2304 + 2304) and c_proj (768x768 + 768) per layer
        assert counts["attn"] == layers * (n * 3 * n + 3 * n + n * n + n)
    if "ff" in groups:  # c_fc (768x3072 + 3072) and c_proj (3072x768 + 768) per layer
        assert counts["ff"] == layers * (n * 4 * n + 4 * n + 4 * n * n + n)


def test_full_policy_trains_everything_the_model_uses(gpt2_base_cifar):
    """Not the token embeddings: the FPT's inputs bypass them, and a trainable parameter
    without a gradient fails DistributedDataParallel."""
    apply_freeze_policy(gpt2_base_cifar, "full")
    trainable, total = count_parameters(gpt2_base_cifar)
    wte = gpt2_base_cifar.backbone.model.wte.weight
    assert trainable == total - wte.numel() and not wte.requires_grad


def test_groups_for_bert_and_llama_norms(tiny_llama):
    bert = FPT(load_backbone("random:minilm-l6"), CIFAR)
    groups = parameter_groups(bert)
    assert groups["backbone.model.encoder.layer.0.attention.output.dense.weight"] == "attn"
    assert groups["backbone.model.encoder.layer.0.output.dense.weight"] == "ff"
    assert groups["backbone.model.encoder.layer.0.output.LayerNorm.weight"] == "norm"
    assert groups["backbone.model.embeddings.position_embeddings.weight"] == "pos"
    assert groups["backbone.model.embeddings.word_embeddings.weight"] == "embed"
    llama = FPT(load_backbone(tiny_llama), CIFAR)
    groups = parameter_groups(llama)
    assert groups["backbone.model.layers.0.input_layernorm.weight"] == "norm"  # RMSNorm
    assert groups["backbone.model.norm.weight"] == "norm"
    assert groups["pos.weight"] == "pos"  # our learned table: Llama has rotary positions
    assert groups["backbone.model.layers.1.mlp.gate_proj.weight"] == "ff"
    assert groups["backbone.model.layers.1.self_attn.q_proj.weight"] == "attn"
    assert "other" not in set(groups.values())
