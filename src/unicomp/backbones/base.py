"""What a model needs from a backbone (:class:`Backbone`) and what a run records of one it
loaded by name (:class:`LoadedBackbone`).

A backbone is an ``nn.Module`` that maps embedded tokens to hidden states of the same width::

    forward(inputs_embeds (B, T, H), attention_mask (B, T) of 1 for real tokens) -> (B, T, H)

(a backbone with ``mask_optional = True`` also takes ``attention_mask=None`` where every token
is real: the FPT then passes no mask)

with its width H in ``hidden_size``. Any module with these two is a backbone for
:class:`unicomp.models.fpt.FPT`. A backbone loaded by name
(:func:`unicomp.backbones.loading.load_backbone`) is a :class:`LoadedBackbone`: it also says
what it is (``name``, ``source``, ``model_type``, ``is_decoder``: what a run records), switches
its attention (``set_attention``) and describes its configuration (``config_dict``).
:class:`~unicomp.backbones.hf.HFBackbone` (any transformers model) and
:class:`~unicomp.backbones.lstm.LSTMBackbone` (the FPT paper's LSTM) implement it.

Optional parts, each read through one function here, so that no caller looks at a backbone's
class:

* :class:`PositionTable`: a backbone that adds a learned absolute position table to its
  inputs itself (GPT-2, BERT) lends that table to the model, fitted to the task's length
  (:func:`position_table`, :func:`fit_positions`). A backbone without one (an LSTM, rotary
  positions, a user's own module) gets a learned table added at the input by the FPT instead.
* :class:`Transformer`: attention layers run under the caller's mask and position ids, with
  the whole output (attention maps); the Decision Transformer and ``fpt attention`` need it.
* :class:`Layers`: keeps its first n blocks (:func:`truncate_layers`, ``--backbone-layers``).
* :class:`ParameterGroups`: classifies its own parameters into the freeze groups of
  :mod:`unicomp.freezing`; without it, its parameters are grouped by the default name and
  module-type rules there.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from unicomp.errors import UnicompError


@runtime_checkable
class Backbone(Protocol):
    """``forward(inputs_embeds, attention_mask) -> hidden`` and its width ``hidden_size``;
    implemented by an ``nn.Module`` (the model calls it and registers it as a submodule)."""

    hidden_size: int

    def forward(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor: ...


@runtime_checkable
class LoadedBackbone(Backbone, Protocol):
    """What a loader of :data:`unicomp.backbones.loading.BACKBONE_SOURCES` returns: a
    :class:`Backbone` that says what it is, as a run records it."""

    name: str  # the name it was loaded by
    source: str  # where its weights came from (``backbone_source`` in metrics.json)
    model_type: str  # its architecture (``backbone_type``): gpt2, bert, llama, lstm, ...
    is_decoder: bool  # whether a token sees only those before it (``backbone_is_decoder``)

    def set_attention(self, name: str) -> None:
        """Switch to the attention implementation ``name`` (eager | sdpa); raise ValueError,
        NotImplementedError or AttributeError where it has none such (a backbone without
        attention does nothing)."""
        ...

    def config_dict(self) -> dict[str, Any]:
        """What, besides its weights, decides what it computes (JSON-ready): part of the
        feature cache's key and of an adapter's backbone hash."""
        ...


@runtime_checkable
class PositionTable(Protocol):
    """A backbone's own learned absolute position table (optional part of a backbone)."""

    def position_table(self) -> tuple[nn.Module, str, nn.Embedding] | None:
        """The table as (parent module, attribute, table), or None where there is none."""
        ...

    def fit_positions(self, max_len: int) -> str:
        """Resize the table to exactly ``max_len`` rows in place; describe what was done."""
        ...


@runtime_checkable
class Transformer(Protocol):
    """Attention layers run as a transformers model runs them (optional part of a backbone):
    ``run`` takes a 2-D padding mask or a 4-D additive mask (B, 1, T, T) and keyword
    arguments such as ``position_ids`` and ``output_attentions``, and returns the whole
    output (``last_hidden_state``, ``attentions``)."""

    num_layers: int
    num_heads: int

    def run(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any): ...


@runtime_checkable
class Layers(Protocol):
    """A stack of blocks that can keep its first n (optional part of a backbone)."""

    def truncate_layers(self, n: int) -> str:
        """Keep the first ``n`` blocks in place; describe the cut."""
        ...


@runtime_checkable
class ParameterGroups(Protocol):
    """A backbone that puts its own parameters in freeze groups (optional part)."""

    def parameter_groups(self) -> dict[str, str]:
        """Each of its parameters (names as in its ``named_parameters``) -> a group of
        :mod:`unicomp.freezing` (pos, norm, attn, ff, embed, unused or other)."""
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


def truncate_layers(backbone: Backbone, n: int) -> str:
    """Keep the first ``n`` blocks of ``backbone`` (in place); describe the cut. One line
    naming the backbone where it has no blocks to cut (no :class:`Layers`)."""
    if not isinstance(backbone, Layers):
        raise UnicompError(
            f"backbone_layers does not apply to backbone {backbone_label(backbone)!r}: "
            "it has no blocks to cut"
        )
    return backbone.truncate_layers(n)


def backbone_label(backbone: Backbone) -> str:
    """How messages name a backbone: its ``name`` where it has one, else its class."""
    return getattr(backbone, "name", None) or type(backbone).__name__
