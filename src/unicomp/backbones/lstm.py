"""A randomly initialised LSTM as an FPT backbone: the FPT paper's LSTM baseline (Lu et al.
2021, sec. 3.2 and Table 3: a 3-layer LSTM of width 768, trained in full from random init).

Names: ``lstm`` (3 layers, width 768) or ``lstm:<layers>x<width>`` (e.g. ``lstm:3x384``),
loaded through :func:`unicomp.backbones.loading.load_backbone` like every other backbone (its
loader :func:`load_lstm` is registered in ``BACKBONE_SOURCES`` under ``lstm``).

It implements :class:`unicomp.backbones.base.LoadedBackbone`: ``hidden_size``,
``forward(inputs_embeds, attention_mask)`` and what a run records and calls (``name``,
``source``, ``model_type``, ``is_decoder``, ``set_attention()``, ``config_dict()``); its
``truncate_layers`` refuses (its layers are named in its name).

* Positions: it has no position table (it does not implement the optional
  :class:`~unicomp.backbones.base.PositionTable`), so the FPT adds its own learned table at
  the input, as for rotary backbones. A recurrent network knows the order of
  its inputs anyway; the table keeps the FPT recipe (trainable positions) the same for every
  backbone.
* Padding: the LSTM is unidirectional and reads left to right, so its output at position t
  depends only on positions 0..t. FPT batches are right-padded and the readout reads the last
  real token (or real positions only, for the mean), so padding after the real tokens never
  changes an output that is read. The mask is therefore not needed and not used.
* Freezing: the module is called ``lstm``, so the default rules of
  :func:`unicomp.freezing.parameter_groups` put its weights in group ``other``: they train
  only under ``--freeze full`` (the paper's LSTM row); under ``paper`` the LSTM stays frozen
  at its random init.
* Precision: the LSTM always runs in float32, with autocast off around it, also in a bf16
  run (the input layer and head still run under autocast). Under CPU autocast, PyTorch sends
  it to oneDNN in bf16, which failed on this project's AVX2 machine ("could not create a
  primitive descriptor for the LSTM forward propagation primitive"); under CUDA autocast,
  cuDNN's LSTM runs in float16 whatever the autocast dtype (ATen's AutocastRNN.cpp casts to
  half), and the training loop has no loss scaling for float16.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from unicomp.errors import UnicompError

DEFAULT_LAYERS = 3  # the FPT paper's LSTM
DEFAULT_WIDTH = 768
_NAME = re.compile(r"lstm(?::(\d+)x(\d+))?")


def parse_lstm_name(name: str) -> tuple[int, int]:
    """``lstm`` -> (3, 768); ``lstm:<layers>x<width>`` -> (layers, width)."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise UnicompError(
            f"backbone {name!r}: expected lstm or lstm:<layers>x<width> (e.g. lstm:3x384)"
        )
    if match.group(1) is None:
        return DEFAULT_LAYERS, DEFAULT_WIDTH
    layers, width = int(match.group(1)), int(match.group(2))
    if layers < 1 or width < 1:
        raise UnicompError(f"backbone {name!r}: layers and width must be at least 1")
    return layers, width


class LSTMBackbone(nn.Module):
    """forward(inputs_embeds (B, T, H), attention_mask (B, T)) -> hidden (B, T, H).

    A unidirectional ``nn.LSTM`` (batch first) with input and hidden size H = ``width``;
    ``dropout`` between its layers (PyTorch applies it to every layer's output but the last).
    The weights are PyTorch's default init, drawn under ``seed`` without touching the global
    random state, so a run rebuilds the same LSTM from its saved config.
    """

    mask_optional = True  # forward takes attention_mask=None: every token is real

    model_type = "lstm"
    is_decoder = True  # reads left to right: the last real token has seen the whole input

    def __init__(
        self, name: str, layers: int, width: int, dropout: float | None = None, seed: int = 0
    ):
        super().__init__()
        self.name = name
        self.hidden_size = width
        self.num_layers = layers
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.lstm = nn.LSTM(
                width,
                width,
                num_layers=layers,
                batch_first=True,
                dropout=float(dropout or 0.0) if layers > 1 else 0.0,
            )
        self.source = (
            f"random init (seed {seed}), LSTM {layers} layers width {width}, no pretrained weights"
        )

    def set_attention(self, name: str) -> None:
        """No attention to switch (``choose_attention`` times both names alike)."""

    def config_dict(self) -> dict[str, Any]:
        """Its sizes and dropout."""
        lstm = self.lstm
        return {"lstm": [lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.dropout]}

    def truncate_layers(self, n: int) -> str:
        raise UnicompError(
            f"backbone_layers does not apply to the LSTM backbone {self.name!r}; "
            "name its layers in it instead (lstm:<layers>x<width>)"
        )

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # attention_mask is unused: right padding never reaches a real position (module doc).
        with torch.autocast(inputs_embeds.device.type, enabled=False):  # float32 (module doc)
            out, _ = self.lstm(inputs_embeds.float())
        return out  # (B, T, H)


def load_lstm(
    name: str, *, dropout: float | None, attn_implementation: str | None, seed: int
) -> LSTMBackbone:
    """The loader of ``lstm`` and ``lstm:<layers>x<width>`` (``attn_implementation`` does
    not apply)."""
    layers, width = parse_lstm_name(name)
    return LSTMBackbone(name, layers, width, dropout=dropout, seed=seed)
