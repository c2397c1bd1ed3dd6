"""The Frozen Pretrained Transformer (Lu et al. 2021, arXiv 2103.05247, sec. 2).

    tokens -> embed_in -> (+ pos, only if the backbone has no learned table) -> frozen backbone
           -> readout -> head -> logits

What trains is decided by a freeze policy (unicomp.freezing); the paper's policy trains
``embed_in``, ``head``, the positional embeddings and the norms.
"""

from __future__ import annotations

import torch
from torch import nn

from unicomp.backbones.base import Backbone, Transformer, backbone_label, fit_positions
from unicomp.errors import UnicompError
from unicomp.tasks.base import TaskSpec

READOUTS = ("last", "mean")


class FPT(nn.Module):
    """forward(x, mask) -> logits.

    x: (B, T, d_in) float vector tokens, or (B, T) long token ids (0 = padding).
    mask: (B, T) with 1 for real tokens; None means all real.
    Returns (B, d_out) for classification, or (B, n_out_tokens, d_out) for sequence outputs.
    ``forward_with_attentions`` also returns the backbone's attention weights (unicomp
    fpt attention draws them).
    """

    def __init__(self, backbone: Backbone, spec: TaskSpec, readout: str = "last"):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"unknown readout {readout!r}; choices: {', '.join(READOUTS)}")
        if not isinstance(backbone, nn.Module) or not isinstance(backbone, Backbone):
            raise UnicompError(
                f"backbone {backbone_label(backbone)!r}: expected an nn.Module with hidden_size "
                "and forward(inputs_embeds, attention_mask) (unicomp.backbones.base.Backbone)"
            )
        hidden = backbone.hidden_size
        self.spec, self.readout = spec, readout
        if spec.vocab_size is not None:
            self.embed_in = nn.Embedding(spec.vocab_size, hidden)
        else:
            self.embed_in = nn.Linear(spec.d_in, hidden)
        self.backbone = backbone
        fitted = fit_positions(backbone, spec.max_len)
        if fitted is not None:
            self.pos = None
            self.positions = fitted
        else:
            # Rotary or no positions (SmolLM2/Llama, an LSTM): add a learned table at the input
            # so the FPT recipe (trainable positions) still applies; see DESIGN.md.
            self.pos = nn.Embedding(spec.max_len, hidden)
            nn.init.normal_(self.pos.weight, std=0.02)
            self.positions = "a learned table added at the input (backbone has none)"
        self.head = nn.Linear(hidden, spec.d_out)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # No mask where there is no padding, to backbones that take None (``mask_optional``):
        # transformers then skips its host-syncing check of the mask (padding_mask.all())
        return self.head_outputs(self.backbone(self.backbone_inputs(x), self._mask(x, mask)), mask)

    def _mask(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
        if mask is not None or getattr(self.backbone, "mask_optional", False):
            return mask
        return torch.ones(x.shape[:2], dtype=torch.long, device=x.device)

    def forward_with_attentions(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward``, and the backbone's attention weights (B, layers, heads, T, T): row q of
        a map is query position q's weights over the key positions. Needs a backbone with
        attention layers (:class:`~unicomp.backbones.base.Transformer`) running eager
        attention (``model.backbone.set_attention("eager")``); sdpa and flash kernels do not
        return the weights."""
        if not isinstance(self.backbone, Transformer):
            raise UnicompError(
                f"backbone {backbone_label(self.backbone)!r} ({type(self.backbone).__name__}) "
                "has no attention"
            )
        out = self.backbone.run(self.backbone_inputs(x), mask, output_attentions=True)
        maps = out.attentions
        if not maps or any(m is None for m in maps):
            raise UnicompError(
                f"backbone {self.backbone.name!r} returned no attention weights; switch it to "
                'eager attention first (model.backbone.set_attention("eager"))'
            )
        return self.head_outputs(out.last_hidden_state, mask), torch.stack(maps, 1)

    def backbone_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """What the backbone receives: the input layer's tokens (+ our positions, if any)."""
        h = self.embed_in(x)  # (B, T, H)
        if self.pos is not None:
            h = h + self.pos(torch.arange(x.shape[1], device=x.device))  # (T, H) broadcast
        return h

    def head_outputs(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The logits from the backbone's hidden states ``h`` (B, T, H): readout, then head
        (``mask`` None: every position is real)."""
        if self.spec.n_out_tokens:
            # Sequence outputs: one read position per output token, the last n of the input.
            return self.head(h[:, -self.spec.n_out_tokens :])  # (B, n_out, d_out)
        if mask is None:
            return self.head(h.mean(1) if self.readout == "mean" else h[:, -1])  # (B, d_out)
        if self.readout == "mean":
            m = mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            pooled = (h * m).sum(1) / m.sum(1).clamp_min(1)
        else:
            # The last real token: with right padding, padding is never read. For a decoder it
            # is the only position that has seen the whole input; for an encoder every
            # position has, and we keep the same rule (documented choice).
            last = mask.long().sum(1).clamp_min(1) - 1  # (B,)
            pooled = h[torch.arange(h.shape[0], device=h.device), last]  # (B, H)
        return self.head(pooled)  # (B, d_out)
