"""What a model needs from a backbone: the :class:`Backbone` protocol.

A backbone is an ``nn.Module`` that maps embedded tokens to hidden states of the same width::

    forward(inputs_embeds (B, T, H), attention_mask (B, T) of 1 for real tokens) -> (B, T, H)

(a backbone with ``mask_optional = True`` also takes ``attention_mask=None`` where every token
is real: the FPT then passes no mask)

with its width H in ``hidden_size``. Any module with these two is a backbone for
:class:`unicomp.models.fpt.FPT`; :class:`~unicomp.backbones.hf.HFBackbone` (any transformers
model) and :class:`~unicomp.backbones.lstm.LSTMBackbone` (the FPT paper's LSTM) implement it.

Optional, :class:`PositionTable`: a backbone that adds a learned absolute position table to
its inputs itself (GPT-2, BERT) lends that table to the model, fitted to the task's length.
A backbone without one (an LSTM, rotary positions, a user's own module) gets a learned table
added at the input by the FPT instead. :func:`position_table` and :func:`fit_positions` are
the one place that reads the optional part.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Backbone(Protocol):
    """``forward(inputs_embeds, attention_mask) -> hidden`` and its width ``hidden_size``;
    implemented by an ``nn.Module`` (the model calls it and registers it as a submodule)."""

    hidden_size: int

    def forward(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor: ...


@runtime_checkable
class PositionTable(Protocol):
    """A backbone's own learned absolute position table (optional part of a backbone)."""

    def position_table(self) -> tuple[nn.Module, str, nn.Embedding] | None:
        """The table as (parent module, attribute, table), or None where there is none."""
        ...

    def fit_positions(self, max_len: int) -> str:
        """Resize the table to exactly ``max_len`` rows in place; describe what was done."""
        ...


def position_table(backbone: Backbone) -> tuple[nn.Module, str, nn.Embedding] | None:
    """The backbone's own learned position table (parent, attribute, table), or None: it
    implements no :class:`PositionTable`, or has no table (rotary positions)."""
    return backbone.position_table() if isinstance(backbone, PositionTable) else None


def fit_positions(backbone: Backbone, max_len: int) -> str | None:
    """Fit the backbone's own position table to ``max_len`` rows and describe it; None where
    it has none (the model then adds a table of its own)."""
    if position_table(backbone) is None:
        return None
    return backbone.fit_positions(max_len)


def backbone_label(backbone: Backbone) -> str:
    """How messages name a backbone: its ``name`` where it has one, else its class."""
    return getattr(backbone, "name", None) or type(backbone).__name__
