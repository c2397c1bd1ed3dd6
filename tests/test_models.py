"""The FPT model: readout with padding, position tables of any length, output shapes."""

from __future__ import annotations

import pytest
import torch

from unicomp.backbones.hf import load_backbone
from unicomp.models.fpt import FPT
from unicomp.tasks.base import TaskSpec


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_bert", "tiny_llama"])
def test_padding_is_never_read(fixture, request):
    """Right padding with a mask: changing padded tokens must not change the logits."""
    backbone = load_backbone(request.getfixturevalue(fixture))
    model = FPT(backbone, TaskSpec(max_len=12, vocab_size=20, d_out=3, n_classes=3)).eval()
    x = torch.randint(1, 20, (4, 12))
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[0, 5:] = 0
    mask[2, 9:] = 0
    noisy = x.clone()
    noisy[mask == 0] = torch.randint(1, 20, (int((mask == 0).sum()),))
    with torch.no_grad():
        a, b = model(x, mask), model(noisy, mask)
    assert a.shape == (4, 3)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_bert"])
def test_longer_tasks_repeat_the_position_table(fixture, request):
    backbone = load_backbone(request.getfixturevalue(fixture))
    table_rows = backbone.position_table()[2].num_embeddings
    spec = TaskSpec(max_len=table_rows * 2 + 3, d_in=2, d_out=4, n_classes=2, n_out_tokens=3)
    model = FPT(backbone, spec)
    assert "repeated to" in model.positions
    out = model(torch.randn(2, spec.max_len, 2))
    assert out.shape == (2, 3, 4)
    assert backbone.position_table()[2].num_embeddings == spec.max_len


def test_shorter_tasks_trim_the_position_table(tiny_gpt2):
    backbone = load_backbone(tiny_gpt2)
    model = FPT(backbone, TaskSpec(max_len=10, d_in=1, d_out=2, n_classes=2))
    assert model.positions.startswith("the backbone's learned table (first 10 of 128")
    assert backbone.position_table()[2].weight.shape == (10, 32)
