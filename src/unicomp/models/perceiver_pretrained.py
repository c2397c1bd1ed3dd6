"""DeepMind's released Perceiver IO checkpoints (through ``transformers``) in our PerceiverIO.

How a checkpoint plugs in, kept simple: its **encoder and process** (the latent array, the
input cross-attention and the latent self-attention block) are copied into a
:class:`~unicomp.models.perceiver_io.PerceiverIO`; the **input adapter** (``embed_in`` and
the input positions) and the **decoder** (output queries, decoder cross-attention, head) are
new, built for the task, as FPT builds a new input and output layer around a pretrained
transformer. The checkpoint's own preprocessor (bytes, pixels, conv stem) and decoder are not
used. The input adapter maps each token to the C channels the checkpoint's cross-attention
reads (``d_model``; e.g. 768 for ``language-perceiver``).

Where weights come from (recorded as ``model_source`` in metrics.json): a local folder, or a
hub id (the local hub cache first, then the network). Missing weights raise
:class:`WeightsNotFoundError` naming where we looked; there is no silent random fallback.

The parameter names of transformers' ``PerceiverModel`` map one to one onto ours
(:func:`parameter_names`); tests/test_perceiver.py copies a random transformers model into
ours with it and checks that both compute the same outputs.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unicomp.errors import UnicompError, WeightsNotFoundError
from unicomp.models.perceiver_io import PerceiverIO, PerceiverIOArch
from unicomp.tasks.base import TaskSpec

# Short names for DeepMind's checkpoints on the hub (any other hub id or folder works too).
KNOWN = {
    "language-perceiver": "deepmind/language-perceiver",
    "vision-perceiver-learned": "deepmind/vision-perceiver-learned",
    "vision-perceiver-fourier": "deepmind/vision-perceiver-fourier",
    "vision-perceiver-conv": "deepmind/vision-perceiver-conv",
    "optical-flow-perceiver": "deepmind/optical-flow-perceiver",
    "multimodal-perceiver": "deepmind/multimodal-perceiver",
}

# transformers' PerceiverLayer -> our Layer (submodule names, each with .weight and .bias).
_LAYER = {
    "attention.self.layernorm1": "ln_q",
    "attention.self.layernorm2": "ln_kv",  # cross-attention only
    "attention.self.query": "attn.query",
    "attention.self.key": "attn.key",
    "attention.self.value": "attn.value",
    "attention.output.dense": "attn.proj",
    "layernorm": "ln_mlp",
    "mlp.dense1": "mlp.fc",
    "mlp.dense2": "mlp.proj",
}


def _layer(hf: str, ours: str, cross: bool) -> dict[str, str]:
    return {
        f"{hf}.{a}.{p}": f"{ours}.{b}.{p}"
        for a, b in _LAYER.items()
        if cross or b != "ln_kv"
        for p in ("weight", "bias")
    }


def parameter_names(
    num_self_attends: int, decoder: str | None = None, text_inputs: bool = False
) -> dict[str, str]:
    """transformers ``PerceiverModel`` parameter name -> our PerceiverIO parameter name.

    Always the encoder and process. ``decoder``: also map a transformers decoder —
    ``"basic"`` (PerceiverBasicDecoder with trainable queries), ``"classification"``
    (PerceiverClassificationDecoder) or ``"projection"`` (PerceiverProjectionDecoder, our
    ``decoder="pool"``). ``text_inputs``: also map a PerceiverTextPreprocessor (token
    embedding and learned positions) onto our ``embed_in`` and ``pos``.
    """
    names = {"embeddings.latents": "latents"}
    names |= _layer("encoder.cross_attention", "encode", cross=True)
    for i in range(num_self_attends):
        # transformers always shares one block across its num_blocks repeats: our block 0.
        names |= _layer(f"encoder.self_attends.{i}", f"process.0.{i}", cross=False)
    if text_inputs:
        names["input_preprocessor.embeddings.weight"] = "embed_in.weight"
        names["input_preprocessor.position_embeddings.weight"] = "pos.weight"
    if decoder in ("basic", "classification"):
        d = "decoder." if decoder == "basic" else "decoder.decoder."
        names[f"{d}output_position_encodings.position_embeddings"] = "queries"
        names |= _layer(f"{d}decoding_cross_attention", "decode", cross=True)
        names |= {f"{d}final_layer.{p}": f"head.{p}" for p in ("weight", "bias")}
    elif decoder == "projection":
        names |= {f"decoder.classifier.{p}": f"head.{p}" for p in ("weight", "bias")}
    elif decoder is not None:
        raise ValueError(f"unknown transformers decoder {decoder!r}")
    return names


def arch_from_config(config: Any, kv_dim: int, **overrides: Any) -> PerceiverIOArch:
    """Our sizes from a transformers PerceiverConfig. ``kv_dim``: the channels its input
    cross-attention reads (its preprocessor's output width, not always ``d_model``)."""
    arch = PerceiverIOArch(
        num_latents=config.num_latents,
        d_latent=config.d_latents,
        d_model=kv_dim,
        num_blocks=config.num_blocks,
        self_attends_per_block=config.num_self_attends_per_block,
        share_weights=True,  # transformers repeats one block num_blocks times
        self_heads=config.num_self_attention_heads,
        cross_heads=config.num_cross_attention_heads,
        qk_channels=config.qk_channels,
        v_channels=config.v_channels,
        cross_qk=config.cross_attention_shape_for_attention,
        self_widening=config.self_attention_widening_factor,
        cross_widening=config.cross_attention_widening_factor,
        query_residual=config.use_query_residual,
    )
    return replace(arch, **overrides)


@torch.no_grad()
def copy_from_transformers(model: PerceiverIO, hf_model: nn.Module, names: dict[str, str]) -> None:
    """Copy transformers parameters into ``model`` by the explicit name map ``names``."""
    theirs = dict(hf_model.named_parameters())
    ours = dict(model.named_parameters())
    for hf_name, our_name in names.items():
        if hf_name not in theirs or our_name not in ours:
            side = "transformers model" if hf_name not in theirs else "our model"
            raise UnicompError(f"cannot map {hf_name} -> {our_name}: missing in the {side}")
        src, dst = theirs[hf_name], ours[our_name]
        if src.shape != dst.shape:
            raise UnicompError(
                f"{hf_name} {tuple(src.shape)} does not fit {our_name} {tuple(dst.shape)}"
            )
        dst.copy_(src)


def load_hf_perceiver(name: str) -> tuple[nn.Module, str]:
    """A transformers ``PerceiverModel`` (the base model, whatever head the checkpoint was
    saved with) from a known short name, hub id or local folder; and where it came from."""
    import transformers

    from unicomp.backbones.hf import hub_cache_only

    location = KNOWN.get(name, name)
    try:
        config = transformers.AutoConfig.from_pretrained(
            location, local_files_only=hub_cache_only(location)
        )
    except OSError as err:
        from huggingface_hub.constants import HF_HUB_CACHE

        where = (
            f"local folder {location}"
            if Path(location).is_dir()
            else f"hub id {location} (cache {HF_HUB_CACHE}, then huggingface.co)"
        )
        raise WeightsNotFoundError(
            f"no weights for Perceiver {name!r}; looked in: {where}: "
            f"{str(err).splitlines()[0]}. Provide them: run 'hf download {location}' on a "
            "machine with network and copy its hub cache here, or pass a local model folder; "
            "omit --pretrained for random init"
        ) from None
    if config.model_type != "perceiver":
        raise UnicompError(f"{location} holds a {config.model_type!r} model, not a Perceiver")
    # The checkpoint's own class builds its preprocessor, which fixes the width the input
    # cross-attention reads; we keep only its base PerceiverModel.
    arch = (config.architectures or ["PerceiverModel"])[0]
    cls = getattr(transformers, arch, transformers.PerceiverModel)
    try:
        hf_model = cls.from_pretrained(location, config=config)
    except OSError as err:
        raise WeightsNotFoundError(
            f"no weights for Perceiver {name!r} in {location} (its config was found): "
            f"{str(err).splitlines()[0]}"
        ) from None
    base = hf_model.base_model
    where = "local folder" if Path(location).is_dir() else "hub (via the local cache or network)"
    return base, f"pretrained, {where} {location} ({arch}: encoder + process)"


def pretrained_perceiver(
    name: str,
    spec: TaskSpec,
    in_grid: tuple[int, ...] | None = None,
    out_grid: tuple[int, ...] | None = None,
    **overrides: Any,
) -> tuple[PerceiverIO, str]:
    """Our PerceiverIO with a checkpoint's encoder + process, and a new input adapter and
    decoder for ``spec``. ``overrides``: PerceiverIOArch fields for the new parts (queries,
    decoder, input_pos, decoder_heads, ...)."""
    hf_model, source = load_hf_perceiver(name)
    kv_dim = hf_model.encoder.cross_attention.attention.self.key.in_features
    arch = arch_from_config(hf_model.config, kv_dim, **overrides)
    model = PerceiverIO(spec, arch, in_grid=in_grid, out_grid=out_grid)
    copy_from_transformers(model, hf_model, parameter_names(arch.self_attends_per_block))
    return model, source
