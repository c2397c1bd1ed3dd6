"""A backbone family added through the registry alone: a toy module and its loader, registered
in ``BACKBONE_SOURCES`` under a prefix, then loaded by name, trained by ``unicomp fpt train``
and recorded like any built-in backbone, with no other file of unicomp changed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.conftest import cli_train
from unicomp.backbones.base import LoadedBackbone, truncate_layers
from unicomp.backbones.loading import BACKBONE_SOURCES, load_backbone
from unicomp.errors import UnicompError, UnknownNameError
from unicomp.registry import Entry

FP32 = ("--precision", "fp32", "--eval-batch-size", "64")


class ToyMixer(nn.Module):
    """hidden = gain * (x + mixer(x)): a width-``width`` module whose parameter names the
    default freeze rules do not know (``gain`` would be ``other``); it classifies them itself."""

    mask_optional = True
    model_type = "toy-mixer"
    is_decoder = False

    def __init__(self, name: str, width: int, seed: int):
        super().__init__()
        self.name, self.hidden_size = name, width
        self.source = f"random init (seed {seed}), toy mixer of width {width}"
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.mixer = nn.Linear(width, width)
        self.gain = nn.Parameter(torch.ones(width))

    def forward(self, inputs_embeds, attention_mask):
        return self.gain * (inputs_embeds + self.mixer(inputs_embeds))

    def set_attention(self, name: str) -> None:
        """No attention to switch."""

    def config_dict(self) -> dict:
        return {"toy-mixer": self.hidden_size}

    def parameter_groups(self) -> dict[str, str]:
        return {"mixer.weight": "attn", "mixer.bias": "attn", "gain": "norm"}


def load_toy(name: str, *, dropout, attn_implementation, seed: int) -> ToyMixer:
    """``toy`` (width 8) or ``toy:<width>``."""
    width = name.partition(":")[2] or "8"
    return ToyMixer(name, int(width), seed)


@pytest.fixture
def toy_family(monkeypatch):
    """The family's one registry line (``BACKBONE_SOURCES.register("toy", ...)`` in a
    catalogue), for this test only."""
    entry = Entry("toy", load_toy, "a toy mixer", {"forms": ("toy", "toy:<width>")})
    monkeypatch.setitem(BACKBONE_SOURCES._entries, "toy", entry)


def test_a_registered_family_loads_by_its_prefix(toy_family):
    toy = load_backbone("toy:6", seed=1)
    assert isinstance(toy, ToyMixer) and isinstance(toy, LoadedBackbone)
    assert (toy.name, toy.hidden_size) == ("toy:6", 6)
    assert load_backbone("toy").hidden_size == 8  # the bare prefix: it is one of its forms
    with pytest.raises(UnknownNameError, match=r"choices: .*toy, toy:<width>"):
        load_backbone("not-a-backbone")
    with pytest.raises(UnicompError, match="does not apply to backbone 'toy:6'"):
        truncate_layers(toy, 1)  # no blocks to cut: refused by name, not by class


def test_a_registered_family_trains_and_is_recorded(toy_family, tmp_path):
    metrics = cli_train(
        tmp_path / "run", "--task", "bit-xor", "--backbone", "toy:16", "--freeze", "paper", *FP32
    )
    assert metrics["backbone_source"] == "random init (seed 0), toy mixer of width 16"
    assert metrics["backbone_type"] == "toy-mixer" and metrics["backbone_is_decoder"] is False
    assert metrics["positions"].startswith("a learned table added at the input")
    # its own groups: the gain is a norm (trains under paper), the mixer attention (frozen)
    by_group = metrics["trainable_by_group"]
    assert by_group["norm"] == 16 and "attn" not in by_group
    assert metrics["total_params"] - metrics["trainable_params"] == 16 * 16 + 16
