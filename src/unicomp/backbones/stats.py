"""``stats:<name>``: the backbone ``<name>`` (any name :func:`load_backbone` takes) with every
parameter tensor re-drawn from a normal distribution with that tensor's own mean and standard
deviation: the FPT paper's "random init whose statistics match the pretrained weights".
Registered in ``BACKBONE_SOURCES`` under ``stats``.
"""

from __future__ import annotations

import torch
from torch import nn

from unicomp.backbones.base import LoadedBackbone
from unicomp.backbones.loading import load_backbone
from unicomp.errors import UnicompError


def match_statistics(module: nn.Module, seed: int) -> tuple[int, int]:
    """Re-draw every parameter tensor of ``module`` in place from a normal distribution with
    that tensor's own mean and standard deviation (population std, over all its elements).
    Tensors with a single element, or with std 0 (e.g. a LayerNorm bias still at 0), keep
    their values. Drawn from a generator seeded by ``seed``, in ``named_parameters`` order;
    the global random state is untouched. Returns (re-drawn, kept) tensor counts."""
    gen = torch.Generator().manual_seed(seed)
    redrawn = kept = 0
    with torch.no_grad():
        for _, param in module.named_parameters():
            if param.numel() < 2:
                kept += 1
                continue
            values = param.detach().double()
            std, mean = torch.std_mean(values, correction=0)
            if not bool(torch.isfinite(std)) or float(std) == 0.0:
                kept += 1
                continue
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float64)
            param.copy_((noise * std + mean).to(param.dtype))
            redrawn += 1
    return redrawn, kept


def load_statistics_matched(
    name: str, *, dropout: float | None, attn_implementation: str | None, seed: int
) -> LoadedBackbone:
    """The loader of ``stats:<name>`` (module doc), its tensors re-drawn under ``seed``."""
    base = name.removeprefix("stats:")
    if not base:
        raise UnicompError("backbone 'stats:' needs a name: stats:<name> (e.g. stats:minilm-l6)")
    backbone = load_backbone(
        base, dropout=dropout, attn_implementation=attn_implementation, seed=seed
    )
    redrawn, kept = match_statistics(backbone, seed)
    backbone.name = name
    backbone.source = (
        f"random init (seed {seed}) matched per tensor to the mean and std of "
        f"{backbone.source} ({redrawn} tensors re-drawn, {kept} kept: single values or std 0)"
    )
    return backbone
