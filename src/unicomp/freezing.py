"""Named freeze policies (FPT paper sec. 2 and the ablations of its sec. 3.10-3.12).

Every parameter of an FPT-style model falls into one group:
``input`` (our new input layer), ``output`` (our head), ``pos`` (positional embeddings, the
backbone's or ours), ``norm`` (LayerNorm and RMSNorm, found by module type), ``attn``
(self-attention projections), ``ff`` (feed-forward), ``embed`` (the backbone's token and
token-type embeddings, unused because inputs bypass them), ``unused`` (the pooler: the FPT
reads the last hidden states; no policy trains it) and ``other``. Neither ``embed`` nor
``unused`` trains under any policy: a trainable parameter without a gradient would fail
DistributedDataParallel at its second step.
A policy is the set of groups that train; see ``unicomp list``.

The rules below name the parameters of transformers models (GPT-2, BERT, Llama, T5) and find
norms by module type; a backbone whose names they do not cover classifies its own parameters
(:class:`unicomp.backbones.base.ParameterGroups`).
"""

from __future__ import annotations

import re

from torch import nn

from unicomp.backbones.base import ParameterGroups
from unicomp.backbones.catalog import FREEZE_POLICIES

_POS = re.compile(r"(^|\.)(wpe|position_embeddings|embed_positions|pos)(\.|$)")
_EMBED = re.compile(r"(^|\.)(wte|word_embeddings|token_type_embeddings|embed_tokens|shared)(\.|$)")
_UNUSED = re.compile(r"(^|\.)pooler(\.|$)")
_ATTN = re.compile(r"(^|\.)(attn|attention|self_attn|SelfAttention|EncDecAttention)(\.|$)")
_FF = re.compile(r"(^|\.)(mlp|intermediate|output|DenseReluDense|feed_forward)(\.|$)")


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()  # LayerNorm, RMSNorm, LlamaRMSNorm, T5LayerNorm


def _classified(model: nn.Module) -> dict[str, str]:
    """The groups that submodules classifying their own parameters (``ParameterGroups``, the
    outermost where they nest) give, under their names in ``model``."""
    groups: dict[str, str] = {}
    taken: list[str] = []
    for mod_name, mod in model.named_modules():
        if not mod_name or any(mod_name.startswith(f"{t}.") for t in taken):
            continue
        if isinstance(mod, ParameterGroups):
            taken.append(mod_name)
            groups.update((f"{mod_name}.{n}", g) for n, g in mod.parameter_groups().items())
    return groups


def parameter_groups(model: nn.Module) -> dict[str, str]:
    """Map each parameter name to its group. Top-level ``embed_in``/``head`` are ours (the
    FPT's); a model names further top-level modules of its own in a ``new_module_groups``
    dict (module name -> ``input`` or ``output``; the Decision Transformer's embeddings and
    head). A backbone that classifies its own parameters does so; everything else is grouped
    by name and module type."""
    own = {"embed_in": "input", "head": "output", **getattr(model, "new_module_groups", {})}
    classified = _classified(model)
    norm_params = {
        f"{mod_name}.{p_name}" if mod_name else p_name
        for mod_name, mod in model.named_modules()
        if _is_norm(mod)
        for p_name, _ in mod.named_parameters(recurse=False)
    }
    groups = {}
    for name, _ in model.named_parameters():
        top = name.split(".", 1)[0]
        if top in own:
            group = own[top]
        elif name in classified:
            group = classified[name]
        elif name in norm_params:
            group = "norm"
        elif _POS.search(name):
            group = "pos"
        elif _EMBED.search(name):
            group = "embed"
        elif _UNUSED.search(name):
            group = "unused"
        elif _ATTN.search(name):  # before ff: BERT's attention.output.dense is attention
            group = "attn"
        elif _FF.search(name):
            group = "ff"
        else:
            group = "other"
        groups[name] = group
    return groups


def apply_freeze_policy(model: nn.Module, policy: str) -> dict[str, int]:
    """Set ``requires_grad`` by policy; return trainable parameter counts per group."""
    trainable_groups = FREEZE_POLICIES.entry(policy).load()
    counts: dict[str, int] = {}
    params = dict(model.named_parameters())
    for name, group in parameter_groups(model).items():
        train = group in trainable_groups
        params[name].requires_grad_(train)
        if train:
            counts[group] = counts.get(group, 0) + params[name].numel()
    return counts


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
