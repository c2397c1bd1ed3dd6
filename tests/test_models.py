"""The FPT model: readout with padding, position tables of any length, output shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unicomp.backbones.loading import load_backbone
from unicomp.errors import UnicompError
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


class _MeanMixer(nn.Module):
    """A user's own backbone, not a transformers model: each position adds a projection of the
    mean over the real positions, then a LayerNorm. It implements the Backbone protocol
    (``hidden_size``, ``forward(inputs_embeds, attention_mask)``) and nothing else."""

    def __init__(self, width: int):
        super().__init__()
        self.hidden_size = width
        self.mix = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        m = attention_mask.unsqueeze(-1).to(inputs_embeds.dtype)
        mean = (inputs_embeds * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)
        return self.norm(inputs_embeds + self.mix(mean))


def test_a_users_own_backbone_trains_inside_the_fpt(tmp_path):
    """Any module with the Backbone protocol is a backbone: the FPT adds its own position
    table, the paper's freeze policy trains the norm but not the mixer, and the loop trains."""
    from tests.conftest import small_train
    from unicomp.backbones.base import Backbone, position_table
    from unicomp.freezing import apply_freeze_policy
    from unicomp.tasks.bits import BitXOR
    from unicomp.train import train

    task = BitXOR()
    backbone = _MeanMixer(16)
    assert isinstance(backbone, Backbone) and position_table(backbone) is None
    model = FPT(backbone, task.spec)
    assert model.pos is not None and model.positions.startswith("a learned table added")
    groups = apply_freeze_policy(model, "paper")
    assert groups == {"input": 32, "pos": 160, "norm": 32, "output": 34}
    before = {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}
    metrics = train(model, task, small_train(steps=6, eval_every=3, lr=1e-2), tmp_path)
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["steps"] == 6
    after = model.backbone.state_dict()
    assert not torch.equal(after["norm.weight"], before["norm.weight"])  # trained
    assert torch.equal(after["mix.weight"], before["mix.weight"])  # frozen by the policy


def test_a_module_without_the_protocol_is_refused():
    with pytest.raises(UnicompError, match=r"backbone 'Linear': expected an nn.Module with hid"):
        FPT(nn.Linear(4, 4), TaskSpec(max_len=4, d_in=1, d_out=2, n_classes=2))
