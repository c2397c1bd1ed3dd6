"""Output-only training from cached features.

Under the ``output-only`` freeze policy only the FPT's ``head`` trains. Everything below it
(input layer, positions, the frozen backbone, the readout) maps an example to the same
features at every step: (N, H) for classification (readout ``last`` or ``mean``), or
(N, n_out_tokens, H) for sequence outputs. So they are computed once per example, without
gradients and in evaluation mode (no dropout), in the run's precision on the run's device;
then the head alone trains on them through the one training loop (``unicomp.train.train``):

* :class:`CachedFeatureTask` wraps a :class:`TensorTask`: its ``train_batch`` returns the
  features of exactly the examples the wrapped task's ``train_batch`` picks for
  (step, batch_size, seed) (the same ``train_indices``), ``split`` the cached val/test
  features; the metric is the wrapped task's;
* :class:`HeadOnly` holds the FPT's own ``head`` (the same module, not a copy), so the
  trained weights are the FPT's, and checkpoints name them ``head.weight``/``head.bias`` as a
  normal output-only run does: best.safetensors and checkpoint.pt load into the full FPT.

It applies only where the normal path's features are fixed too (:func:`why_not_cached`):
not to generated tasks (a fresh example every step), to tasks that augment or otherwise
transform their training batches, or with dropout in the backbone (fresh noise every step).

The cache. Features are keyed by everything that determines them: the backbone (name, where
its weights came from, a SHA-256 of every frozen parameter and buffer, which also covers the
seeded input layer), the task (name, arguments, data_source and a SHA-256 of its
train/val/test data), readout, max_len, output tokens, precision, device type and freeze
policy. Not keyed: what changes only the rounding (chunk size, the attention kernel), as
between two batch sizes of the normal path. They are kept in this process's memory (a few
entries) and, with
``feature_cache`` ``auto`` or ``disk``, in ``$UNICOMP_CACHE/features/<key>.safetensors``
(default ``~/.cache/unicomp``), written atomically. A file's metadata holds its key, the
description the key hashes, every tensor's shape and dtype and a SHA-256 of the contents; a
file that does not match (truncated, corrupted, another key's) is reported on stderr and
recomputed. Clearing the cache is deleting that folder.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from unicomp.backbones.base import LoadedBackbone
from unicomp.backbones.catalog import FREEZE_POLICIES
from unicomp.data import cache_dir
from unicomp.errors import UnicompError
from unicomp.files import atomic_write
from unicomp.tasks.base import Batch, Scored, Task, TensorTask, shard_range
from unicomp.train import Placement, autocast, is_main_process

MODES = ("auto", "off", "memory", "disk")
FORMAT = "1"  # bump when the file layout or what the key covers changes
SPLITS = ("train", "val", "test")
_MEMORY: OrderedDict[str, dict[str, Batch]] = OrderedDict()
_MEMORY_ENTRIES = 4


# --- when the cache applies ---------------------------------------------------------------------
def why_not_cached(task: Task, freeze: str, backbone_dropout: float | None) -> str | None:
    """None where a run's features are fixed and can be cached; else the reason they are not."""
    if freeze != "output-only":
        return (
            f"the freeze policy {freeze!r} trains layers below the head, so the features "
            "change at every step (only output-only keeps them fixed)"
        )
    if not isinstance(task, TensorTask):
        return (
            f"task {task.name!r} draws fresh examples at every step (generated data), so there "
            "is no fixed set of examples to compute features for"
        )
    if getattr(task, "augment", False):
        return (
            f"task {task.name!r} augments every training batch (augment=true), so an "
            "example's features differ from step to step"
        )
    own = type(task).train_batch is TensorTask.train_batch
    if not own and getattr(task, "augment", None) is not False:
        return (
            f"task {task.name!r} transforms its training examples at every step "
            f"({type(task).__name__}.train_batch), so they have no fixed features"
        )
    if backbone_dropout != 0:
        return (
            f"backbone_dropout={backbone_dropout}: the normal path draws new dropout noise "
            "in the frozen layers at every step, cached features have none (set it to 0)"
        )
    return None


def feature_cache_plan(cfg: Any, task: Task) -> str | None:
    """None: train the head on cached features; else why the run takes the normal path.

    Raises :class:`UnicompError` where ``cfg.feature_cache`` asks for ``memory`` or ``disk``
    explicitly and the cache cannot apply.
    """
    mode = cfg.feature_cache
    if mode not in MODES:
        raise UnicompError(f"feature_cache must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off":
        return "feature_cache=off was asked for"
    FREEZE_POLICIES.entry(cfg.freeze)  # an unknown policy is that error, not this one
    why = why_not_cached(task, cfg.freeze, cfg.backbone_dropout)
    if why is not None and mode != "auto":
        raise UnicompError(f"feature_cache={mode} cannot apply: {why}")
    if why is None and mode == "auto":
        # Computing the features costs one forward pass per training example; a run that
        # sees fewer examples than that is cheaper on the normal path (its output-only
        # backward stops at the head). memory/disk asked for explicitly still cache.
        seen = cfg.train.steps * cfg.train.batch_size
        n_train = len(task.split("train"))
        if seen < n_train:
            return (
                f"auto: the run sees {seen:,} training examples ({cfg.train.steps} steps x "
                f"{cfg.train.batch_size}), fewer than the {n_train:,} the cache would compute "
                "features for (feature_cache=disk caches anyway)"
            )
    return why


# --- the head-only model and the task over features ---------------------------------------------
class HeadOnly(nn.Module):
    """forward(features, mask) -> head(features), with the FPT's own head module (shared), so
    its parameters are named ``head.weight``/``head.bias`` as in the FPT."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(x)


class CachedFeatureTask(Task):
    """``task`` with each example replaced by its cached features (``x``: (N, H) or
    (N, n_out_tokens, H), no mask); batches, splits and metric are the wrapped task's."""

    def __init__(self, task: TensorTask, features: dict[str, Batch]):
        self.task, self.features = task, features
        self.name = task.name
        self.spec = task.spec
        self.data_source = task.data_source
        self.select_by = task.select_by
        self.default_train = task.default_train

    stored = ("features",)

    def train_batch(self, step: int, batch_size: int, seed: int) -> Batch:
        return self.features["train"][self.task.train_indices(step, batch_size, seed)]

    def train_shard(self, step: int, batch_size: int, seed: int, rank: int, world: int) -> Batch:
        idx = self.task.train_indices(step, batch_size, seed)
        return self.features["train"][idx[shard_range(batch_size, rank, world)]]

    def split(self, name: str) -> Batch:
        return self.features[name]

    def fixed_train_split(self) -> Batch | None:
        return self.features.get("train")

    def split_sizes(self) -> dict[str, int]:
        return self.task.split_sizes()

    def record(self, result: dict) -> dict:
        return self.task.record(result)

    def loss(
        self, logits: torch.Tensor, y: torch.Tensor, target_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.task.loss(logits, y, target_mask)

    def correct(
        self, logits: torch.Tensor, y: torch.Tensor, target_mask: torch.Tensor | None = None
    ) -> Scored:
        return self.task.correct(logits, y, target_mask)


# --- extraction ---------------------------------------------------------------------------------
def _chunks(data: Any, size: int, trim: bool) -> Iterator[tuple[torch.Tensor, Batch]]:
    """(indices, Batch) chunks of a split: a Batch, or ragged sequences (``lengths``), which go
    shortest first so that each chunk is padded only to its own longest."""
    n = len(data)
    lengths = getattr(data, "lengths", None)
    if isinstance(lengths, np.ndarray):
        order = torch.from_numpy(np.argsort(lengths, kind="stable"))
    else:
        order = torch.arange(n)
    for i in range(0, n, size):
        idx = order[i : i + size]
        chunk = data[idx]
        if trim and chunk.mask is not None:
            # Right padding, masked: the readout never reads past the last real token, so the
            # columns where every example is padding can go (as training batches are padded).
            real = chunk.mask.bool().any(0).nonzero()
            if len(real):
                width = int(real.max()) + 1
                chunk = Batch(chunk.x[:, :width], chunk.y, chunk.mask[:, :width], chunk.target_mask)
        yield idx, chunk


def extract_features(
    model: nn.Module,
    task: TensorTask,
    device: torch.device,
    precision: str,
    chunk_size: int = 256,
    progress: bool = False,
) -> dict[str, Batch]:
    """Every example's input to ``model.head`` (the FPT's features), per split, on the CPU.

    Runs the model itself (its forward up to the head, read by a hook), in evaluation mode,
    under ``torch.inference_mode()`` and ``autocast(device, precision)``, in chunks of
    ``chunk_size``; the results are copied into ordinary tensors (inference tensors could not
    be saved for the head's backward pass).
    """
    seen: list[torch.Tensor] = []
    hook = model.head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    was_training = model.training
    model.eval()
    model.to(device)
    trim = task.spec.n_out_tokens is None  # sequence outputs read the last positions: keep them
    total = sum(len(task.data[s]) for s in SPLITS)
    bar = tqdm(total=total, disable=not progress, desc=f"{task.name} features", leave=False)
    out: dict[str, Batch] = {}
    try:
        for split in SPLITS:
            data = task.data[split]
            feats: torch.Tensor | None = None
            ys: torch.Tensor | None = None
            scored: torch.Tensor | None = None  # the split's target_mask, where it has one
            for idx, chunk in _chunks(data, chunk_size, trim):
                chunk = chunk.to(device)
                seen.clear()
                with torch.inference_mode(), autocast(device, precision):
                    model(chunk.x, chunk.mask)
                f, y = seen[0].detach().cpu(), chunk.y.cpu()
                if feats is None or ys is None:
                    feats = torch.empty((len(data), *f.shape[1:]), dtype=f.dtype)
                    ys = torch.empty((len(data), *y.shape[1:]), dtype=y.dtype)
                feats[idx], ys[idx] = f, y
                if chunk.target_mask is not None:
                    tm = chunk.target_mask.cpu()
                    if scored is None:
                        scored = torch.empty((len(data), *tm.shape[1:]), dtype=tm.dtype)
                    scored[idx] = tm
                bar.update(len(idx))
            if feats is None or ys is None:
                raise UnicompError(f"task {task.name!r}: the {split} split is empty")
            out[split] = Batch(feats, ys, target_mask=scored)
    finally:
        hook.remove()
        model.train(was_training)
        bar.close()
    return out


# --- the key ------------------------------------------------------------------------------------
def _tensor_bytes(t: torch.Tensor) -> memoryview:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def tensor_digest(named: Iterable[tuple[str, Any]]) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of tensors and numpy arrays, in the given order."""
    h = hashlib.sha256()
    for name, value in named:
        t = value
        if isinstance(value, np.ndarray):
            t = torch.from_numpy(np.ascontiguousarray(value))
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


# Config fields that do not change what a backbone computes: where it was read from and the
# library that wrote it (the versions in use enter the feature key on their own).
_CONFIG_NOISE = ("_name_or_path", "transformers_version", "_commit_hash", "name_or_path")


def backbone_config_text(backbone: nn.Module | None) -> str:
    """What, besides its weights, decides a backbone's function, as canonical JSON: its
    ``config_dict()`` (a Hugging Face backbone's config: activation, norm epsilon, attention
    settings, ...; an LSTM's sizes and dropout) without where it came from; "" for a module
    without one (a user's own)."""
    if not isinstance(backbone, LoadedBackbone):
        return ""
    fields = {k: v for k, v in backbone.config_dict().items() if k not in _CONFIG_NOISE}
    return json.dumps(fields, sort_keys=True, default=str)


def library_versions() -> dict[str, str | None]:
    """The versions that change computed features: torch, transformers, unicomp."""
    from importlib.metadata import PackageNotFoundError, version

    from unicomp.version import __version__

    try:
        transformers_version = version("transformers")
    except PackageNotFoundError:
        transformers_version = None
    return {"torch": torch.__version__, "transformers": transformers_version,
            "unicomp": __version__}  # fmt: skip


def frozen_weights_sha256(model: nn.Module) -> str:
    """SHA-256 of every frozen parameter and every buffer: the weights the features depend on."""
    named = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    named += [(f"buffer:{n}", b) for n, b in model.named_buffers()]
    return tensor_digest(sorted(named, key=lambda item: item[0]))


def _split_arrays(split: str, data: Any) -> list[tuple[str, Any]]:
    if isinstance(data, Batch):
        if not isinstance(data.x, torch.Tensor):
            raise UnicompError("feature cache: dict inputs are not supported")
        parts = [("x", data.x), ("y", data.y)]
        if data.mask is not None:
            parts.append(("mask", data.mask))
        if data.target_mask is not None:
            parts.append(("target_mask", data.target_mask))
    else:  # ragged token sequences (unicomp.tasks.sequences.TokenSequences)
        parts = [(a, getattr(data, a)) for a in ("flat", "offsets", "labels")]
    return [(f"{split}.{name}", value) for name, value in parts]


def data_sha256(task: TensorTask) -> str:
    """SHA-256 of the task's train/val/test inputs and targets."""
    return tensor_digest([item for s in SPLITS for item in _split_arrays(s, task.data[s])])


def feature_key(
    cfg: Any, task: TensorTask, model: nn.Module, precision: str, device: torch.device
) -> tuple[str, dict]:
    """(key, what it hashes) for the features of ``model`` on ``task`` (``cfg``: FPTConfig)."""
    backbone = getattr(model, "backbone", None)
    description = {
        "format": FORMAT,
        "backbone": cfg.backbone,
        "backbone_source": getattr(backbone, "source", None),
        "frozen_weights_sha256": frozen_weights_sha256(model),
        "backbone_config_sha256": hashlib.sha256(
            backbone_config_text(backbone).encode()
        ).hexdigest(),
        "versions": library_versions(),
        "task": cfg.task,
        "task_args": cfg.task_args,
        "data_source": task.data_source,
        "data_sha256": data_sha256(task),
        "readout": cfg.readout,
        "max_len": task.spec.max_len,
        "n_out_tokens": task.spec.n_out_tokens,
        "precision": precision,
        "device_type": device.type,
        "freeze": cfg.freeze,
    }
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32], description


# --- files --------------------------------------------------------------------------------------
def cache_path(key: str) -> Path:
    return cache_dir() / "features" / f"{key}.safetensors"


def _flat(features: dict[str, Batch]) -> dict[str, torch.Tensor]:
    parts = ("x", "y", "target_mask")  # the targets, and which of them are scored (if set)
    flat = {f"{s}.{p}": getattr(features[s], p) for s in SPLITS for p in parts}
    return {name: t for name, t in flat.items() if t is not None}


def _contents_sha256(tensors: dict[str, torch.Tensor]) -> str:
    return tensor_digest(sorted(tensors.items()))


def _shapes(tensors: dict[str, torch.Tensor]) -> dict[str, list]:
    return {k: [str(t.dtype), list(t.shape)] for k, t in sorted(tensors.items())}


def save_features(path: Path, key: str, description: dict, features: dict[str, Batch]) -> None:
    """Write ``features`` to ``path`` atomically, with the metadata :func:`load_features`
    checks. Raises UnicompError if the file cannot be written."""
    from safetensors.torch import save

    tensors = {k: t.contiguous() for k, t in _flat(features).items()}
    metadata = {
        "format": FORMAT,
        "key": key,
        "description": json.dumps(description, sort_keys=True, default=str),
        "shapes": json.dumps(_shapes(tensors)),
        "sha256": _contents_sha256(tensors),
    }
    data = save(tensors, metadata=metadata)
    atomic_write(path, lambda f: f.write(data), own_folder=True)  # a cache folder


class UnusableCacheFile(Exception):
    """A cache file that cannot be trusted; the message says why."""


def load_features(path: Path, key: str, sizes: dict[str, int]) -> dict[str, Batch]:
    """The features in ``path``, checked against ``key``, the expected example counts per
    split, the shapes recorded in the file and its checksum; raises UnusableCacheFile."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as err:  # truncated or garbled files fail in the reader, whatever the type
        raise UnusableCacheFile(f"unreadable ({str(err).splitlines()[0][:200]})") from None
    if metadata.get("format") != FORMAT or metadata.get("key") != key:
        raise UnusableCacheFile(
            f"its metadata names format {metadata.get('format')!r}, key {metadata.get('key')!r}"
        )
    try:
        recorded = json.loads(metadata.get("shapes", ""))
    except json.JSONDecodeError:
        raise UnusableCacheFile("its recorded shapes are not readable") from None
    if recorded != _shapes(tensors):
        raise UnusableCacheFile("its tensors do not have the recorded names, shapes and dtypes")
    for s in SPLITS:
        if f"{s}.x" not in tensors or len(tensors[f"{s}.x"]) != sizes[s]:
            raise UnusableCacheFile(f"its {s} split does not hold the task's {sizes[s]} examples")
    if metadata.get("sha256") != _contents_sha256(tensors):
        raise UnusableCacheFile("its contents do not match their recorded SHA-256")
    return {
        s: Batch(tensors[f"{s}.x"], tensors[f"{s}.y"], target_mask=tensors.get(f"{s}.target_mask"))
        for s in SPLITS
    }


def _warn(message: str) -> None:
    print(f"unicomp: warning: {message}", file=sys.stderr, flush=True)


def _remember(key: str, features: dict[str, Batch]) -> None:
    _MEMORY[key] = features
    _MEMORY.move_to_end(key)
    while len(_MEMORY) > _MEMORY_ENTRIES:
        _MEMORY.popitem(last=False)


def clear_memory() -> None:
    """Forget the features kept in this process."""
    _MEMORY.clear()


# --- one call for run_fpt -----------------------------------------------------------------------
@dataclass
class Prepared:
    features: dict[str, Batch]
    report: str  # what was used, for metrics.json's feature_cache
    seconds: float  # fingerprinting plus loading or extracting
    key: str


def prepare_features(
    cfg: Any,
    task: TensorTask,
    model: nn.Module,
    placement: Placement,
    mode: str,
) -> Prepared:
    """The features of ``model`` (an FPT whose freeze policy trains only ``head``) on every
    example of ``task``: from this process's memory, the disk cache (``mode`` ``disk`` or
    ``auto``) or computed (and then kept there), on the run's device in its precision
    (``placement``, the one the loop trains the head with)."""
    t0 = time.perf_counter()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable or any(not n.startswith("head.") for n in trainable):
        raise UnicompError(
            f"cached features need a model where only head.* trains; trainable: {trainable[:4]}"
        )
    key, description = feature_key(cfg, task, model, placement.precision, placement.device)
    sizes = {s: len(task.data[s]) for s in SPLITS}

    def done(features: dict[str, Batch], report: str) -> Prepared:
        _remember(key, features)
        return Prepared(features, report, round(time.perf_counter() - t0, 3), key)

    if key in _MEMORY:
        return done(_MEMORY[key], f"memory hit (key {key})")
    use_disk = mode in ("disk", "auto")
    path = cache_path(key)
    replaced = ""
    if use_disk and path.exists():
        try:
            return done(load_features(path, key, sizes), f"disk hit {path}")
        except UnusableCacheFile as err:
            _warn(f"feature cache file {path} is unusable: {err}; recomputing the features")
            replaced = f" (replaced an unusable cache file: {err})"
    features = extract_features(
        model,
        task,
        placement.device,
        placement.precision,
        chunk_size=cfg.train.eval_batch_size,
        progress=cfg.train.progress,
    )
    if not use_disk:
        return done(features, f"computed, kept in memory (key {key})")
    if not is_main_process():  # under torchrun rank 0 writes the cache
        return done(features, f"computed (rank 0 writes {path})")
    try:
        save_features(path, key, description, features)
    except UnicompError as err:
        _warn(f"{err}; training on the computed features without caching them")
        return done(features, f"computed, not saved: {err}")
    return done(features, f"computed, saved to {path}{replaced}")
