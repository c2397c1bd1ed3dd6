"""Adapter files: a trained FPT task without its backbone, and that task served around one
shared frozen backbone (docs/serving.md).

An adapter file is one safetensors file holding the FPT's own layers (input layer, head and,
where it adds one, its position table) and whatever else of the backbone its freeze policy
trained (the paper's policy: the position table and the norms), under the names they have in
the FPT. Its header says what it is: the task, its arguments, input/output spec and size spec,
the freeze policy, the readout, the backbone's name, seed, layers and the SHA-256 of the
backbone's weights as loaded (``backbone_hash``), the run it came from, and the unicomp version.

:func:`load_adapter` builds the task's model around a backbone by reference: the backbone's
parameters are never copied; the adapter's backbone tensors (norms, the position table
fitted to the task's length) stand in for the backbone's own during each forward pass
(``torch.func.functional_call``), so any number of adapters share one backbone in memory.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unicomp.backbones.base import position_table, truncate_layers
from unicomp.errors import UnicompError

FORMAT = "unicomp-adapter/1"
_BACKBONE = "backbone."  # the FPT's name for its backbone; adapter tensors inside it start so
# Adapter forward passes swap tensors into the shared backbone for their duration: one at a time.
_CALL_LOCK = threading.RLock()


def backbone_hash(backbone: nn.Module) -> str:
    """``sha256-2:`` SHA-256 over the backbone's config (what besides its weights decides its
    function: activation, norm epsilon, ...; ``unicomp.features.backbone_config_text``) and
    every parameter (names, dtypes, shapes, bytes, in name order), computed once per backbone
    object. What an adapter file records of the backbone it was trained on, and checks a
    backbone against when loaded (:func:`same_backbone`)."""
    from unicomp.features import backbone_config_text, tensor_digest  # the feature cache's digest

    cached = backbone.__dict__.get("_unicomp_hash")
    if cached:
        return cached
    named = [("config", np.frombuffer(backbone_config_text(backbone).encode(), np.uint8).copy())]
    named += sorted(backbone.named_parameters(), key=lambda item: item[0])
    backbone.__dict__["_unicomp_hash"] = digest = f"{HASH_PREFIX}{tensor_digest(named)}"
    return digest


HASH_PREFIX = "sha256-2:"  # config and weights; "sha256:": weights only (older adapter files)


def same_backbone(backbone: nn.Module, recorded: str) -> bool:
    """Whether ``backbone`` is the one an adapter recorded: by config and weights, or by
    weights alone for files written before the config was part of the hash."""
    if recorded.startswith(HASH_PREFIX):
        return backbone_hash(backbone) == recorded
    from unicomp.features import tensor_digest

    named = sorted(backbone.named_parameters(), key=lambda item: item[0])
    return f"sha256:{tensor_digest(named)}" == recorded


def _load_backbone(name: str, seed: int, layers: int | None) -> nn.Module:
    """A backbone as an FPT run builds it before fitting positions (its name, seed, layers)."""
    from unicomp.backbones.loading import load_backbone

    backbone = load_backbone(name, seed=seed)
    if layers is not None:
        truncate_layers(backbone, layers)
    return backbone.eval()


# --- export --------------------------------------------------------------------------------------
def export_adapter(run: str | Path, path: str | Path) -> dict[str, Any]:
    """Write the adapter file of the finished FPT run folder ``run`` to ``path`` (atomically);
    return a summary (tensors, parameters, bytes, backbone hash)."""

    from safetensors.torch import save

    from unicomp.experiments.fpt import rebuild_fpt_run
    from unicomp.files import atomic_write
    from unicomp.serving.codecs import input_form
    from unicomp.version import __version__

    built = rebuild_fpt_run(run)
    cfg, model = built.cfg, built.model
    # The FPT's own layers always (an untrained input layer is still the task's, and only the
    # run's seed could rebuild it), and every backbone tensor the freeze policy trained.
    tensors = {
        name: p.detach().contiguous().clone()
        for name, p in model.named_parameters()
        if p.requires_grad or not name.startswith(_BACKBONE)
    }
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    backbone = _load_backbone(cfg.backbone, cfg.train.seed, cfg.backbone_layers)
    spec = built.task.spec
    codec, codec_record = input_form(built.task, cfg.task, cfg.task_args)
    io = codec.describe() if codec is not None else {}
    metrics = _metrics(Path(run))
    meta = {
        "format": FORMAT,
        "task": cfg.task,
        "task_args": json.dumps(cfg.task_args, sort_keys=True),
        "spec": json.dumps(dataclasses.asdict(spec)),
        "input": io.get("input", "(no natural input form: tokens as the model takes them)"),
        "output": io.get("output", "(logits)"),
        "readout": cfg.readout,
        "freeze": cfg.freeze,
        "backbone": cfg.backbone,
        "backbone_seed": str(cfg.train.seed),
        "backbone_layers": "" if cfg.backbone_layers is None else str(cfg.backbone_layers),
        "backbone_hash": backbone_hash(backbone),
        "backbone_source": backbone.source,
        "trainable_params": str(trainable),
        "params": str(sum(t.numel() for t in tensors.values())),
        "run": str(run),
        "best_step": str(built.best_step),
        "metrics": json.dumps(metrics),
        "unicomp_version": __version__,
    }
    if codec_record:  # a form the task declared: rebuilt from its class and state when loaded
        meta["codec"] = json.dumps(codec_record)
    if cfg.task_source:
        meta["task_source"] = cfg.task_source
    data = save(tensors, metadata=meta)
    atomic_write(path, lambda f: f.write(data))
    return {
        "path": str(path),
        "task": cfg.task,
        "tensors": len(tensors),
        "params": int(meta["params"]),
        "trainable_params": trainable,
        "bytes": len(data),
        "backbone": cfg.backbone,
        "backbone_params": sum(p.numel() for p in backbone.parameters()),
        "backbone_hash": meta["backbone_hash"],
        "input": io.get("input"),
        "warning": None
        if codec is not None
        else (
            f"task {cfg.task!r} declares no natural input form, so load_adapter(...).predict "
            "and unicomp serve refuse this adapter; give the task class an input_form() "
            "(README: Extending)"
        ),
    }


def _metrics(run: Path) -> dict[str, Any]:
    """The run's test scores from metrics.json (what the adapter is known to do)."""
    try:
        data = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if k.startswith("test_") and isinstance(v, int | float)}


# --- load ----------------------------------------------------------------------------------------
def read_adapter(
    path: str | Path, data: bytes | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and header metadata of an adapter file; one-line errors for anything else.
    ``data``: the file's bytes, where the caller has read them already (the server hashes
    the bytes it builds from), else they are read from ``path``."""
    from safetensors.torch import load

    path = Path(path)
    if data is None and not path.is_file():
        raise UnicompError(f"adapter file {path} does not exist")
    try:
        # The whole file is read into memory and the tensors copied out of it: nothing stays
        # mapped from a file that a writer may truncate or rewrite in place while it is served.
        data = path.read_bytes() if data is None else data
        (size,) = struct.unpack("<Q", data[:8])
        meta = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
        tensors = load(data)
    except Exception as err:  # truncated, not safetensors
        first = str(err).splitlines()[0] if str(err) else ""
        raise UnicompError(f"cannot read adapter {path} ({type(err).__name__}: {first})") from None
    if meta.get("format") != FORMAT:
        raise UnicompError(
            f"{path} is not a unicomp adapter file (header format {meta.get('format')!r}, "
            f"expected {FORMAT!r}; unicomp fpt export-adapter RUN -o FILE writes one)"
        )
    return tensors, meta


def load_adapter(
    path: str | Path,
    backbone: str | nn.Module | None = None,
    device: str | torch.device | None = None,
    data: bytes | None = None,
) -> Adapter:
    """The task model of an adapter file, ready to ``predict``.

    ``backbone``: None loads the one the file names (its name, seed and layers); a name loads
    that one; a loaded backbone (``unicomp.load_backbone(...)``) is used by reference, so
    adapters loaded onto the same object share it. A backbone whose weights' hash differs
    from the one the adapter was trained on is refused, naming both hashes.
    ``device``: where the adapter runs (None: where the backbone is); the shared backbone
    moves with it, as it does with ``adapter.to(device)``.
    ``data``: the file's bytes, where the caller has read them already.
    """
    tensors, meta = read_adapter(path, data)
    seed = int(meta["backbone_seed"])
    layers = int(meta["backbone_layers"]) if meta["backbone_layers"] else None
    if backbone is None or isinstance(backbone, str):
        backbone = _load_backbone(backbone or meta["backbone"], seed, layers)
    if not same_backbone(backbone, meta["backbone_hash"]):
        found = backbone_hash(backbone)
        cut = f", first {layers} layers" if layers else ""
        raise UnicompError(
            f"adapter {path} was trained on backbone {meta['backbone']!r} (seed {seed}{cut}) "
            f"with weights {meta['backbone_hash']}; the backbone given "
            f"({getattr(backbone, 'name', type(backbone).__name__)}) has {found}"
        )
    check_adapter(meta, tensors, backbone, f"adapter {path}")
    adapter = Adapter(backbone, meta, tensors, name=Path(path).stem)
    return adapter if device is None else adapter.to(device)


# The longest input an adapter may declare (spec.max_len): the position table fitted to it is
# allocated when the adapter is built (65,536 rows x 768 floats is 200 MB).
MAX_ADAPTER_TOKENS = 65_536
_HEADER_TEXT = ("task", "input", "output", "readout", "freeze", "backbone", "backbone_hash")
_HEADER_JSON = {"task_args": dict, "spec": dict, "metrics": dict}


def check_adapter(
    meta: dict[str, str], tensors: dict[str, torch.Tensor], backbone: nn.Module, where: str
) -> None:
    """Everything an adapter file says, checked before anything is built from it: every header
    field there with its type; the sizes of ``spec`` against the tensors that realise them (so
    a header cannot make the server allocate what the file does not hold); every tensor float32
    and finite. One line naming the first thing wrong."""
    from unicomp.models.fpt import READOUTS
    from unicomp.tasks.base import TaskSpec

    for key in _HEADER_TEXT:
        if not isinstance(meta.get(key), str) or not meta[key]:
            raise UnicompError(f"{where}: header field {key!r} is missing or empty")
    parsed = {}
    for key, kind in _HEADER_JSON.items():
        try:
            parsed[key] = json.loads(meta.get(key) or "")
        except ValueError:
            raise UnicompError(f"{where}: header field {key!r} is not JSON") from None
        if not isinstance(parsed[key], kind):
            raise UnicompError(f"{where}: header field {key!r} is not a JSON object")
    if meta["readout"] not in READOUTS:
        raise UnicompError(f"{where}: readout {meta['readout']!r} is not one of {READOUTS}")
    for key, low in (("backbone_seed", 0), ("backbone_layers", 1)):
        text = meta.get(key, "")
        if key == "backbone_layers" and text == "":
            continue
        if not text.isdigit() or int(text) < low:
            raise UnicompError(f"{where}: header field {key!r} is {text!r}, not an integer")
    spec_fields = {f.name for f in dataclasses.fields(TaskSpec)}
    unknown = sorted(set(parsed["spec"]) - spec_fields)
    try:
        if unknown:
            raise TypeError(f"unknown fields {unknown}")
        spec = TaskSpec(**parsed["spec"])
    except TypeError as err:
        raise UnicompError(
            f"{where}: spec {meta['spec'][:80]} is not a task spec ({err})"
        ) from None
    for name in spec_fields:
        value = getattr(spec, name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise UnicompError(f"{where}: spec.{name} is {value!r}, not a positive integer")
    if spec.max_len > MAX_ADAPTER_TOKENS:
        raise UnicompError(
            f"{where}: spec.max_len {spec.max_len:,} is above the {MAX_ADAPTER_TOKENS:,} tokens "
            "an adapter may declare"
        )
    if spec.d_out % spec.n_classes or (spec.n_out_tokens or 1) > spec.max_len:
        raise UnicompError(
            f"{where}: spec d_out {spec.d_out}, n_classes {spec.n_classes}, n_out_tokens "
            f"{spec.n_out_tokens} do not fit together (max_len {spec.max_len})"
        )
    hidden = int(backbone.hidden_size)
    expect = {
        "head.weight": (spec.d_out, hidden),
        "embed_in.weight": (spec.vocab_size, hidden) if spec.vocab_size else (hidden, spec.d_in),
    }
    if "pos.weight" in tensors:
        expect["pos.weight"] = (spec.max_len, hidden)
    for name, shape in expect.items():
        found = tuple(tensors[name].shape) if name in tensors else None
        if found != shape:
            raise UnicompError(
                f"{where}: tensor {name} has shape {found}, its spec needs {shape} "
                "(the header and the tensors disagree)"
            )
    for name, t in tensors.items():
        if t.dtype != torch.float32:
            raise UnicompError(f"{where}: tensor {name} is {t.dtype}, adapters hold float32")
        if not torch.isfinite(t).all():
            raise UnicompError(f"{where}: tensor {name} holds NaN or infinite values")


class SharedBackbone(nn.Module):
    """A backbone used by reference, with some of its tensors replaced by an adapter's.

    Looks like a backbone to :class:`unicomp.models.fpt.FPT` (``hidden_size``,
    ``position_table``, ``fit_positions``, ``forward``) but holds no backbone parameters:
    ``shared`` is the backbone itself (not a submodule), and the replacements are buffers of
    this module (dots in their names written ``:``)."""

    def __init__(self, backbone: nn.Module, tensors: dict[str, torch.Tensor], where: str):
        super().__init__()
        self.__dict__["shared"] = backbone  # by reference: not registered, never copied
        for attr in ("name", "source", "model_type", "hidden_size", "is_decoder"):
            setattr(self, attr, getattr(backbone, attr))
        params = dict(backbone.named_parameters())
        table = position_table(backbone)
        table_name = next((n for n, p in params.items() if table and p is table[2].weight), None)
        for name, value in tensors.items():
            if name not in params:
                raise UnicompError(f"{where}: tensor backbone.{name} is not in the backbone")
            want = params[name].shape
            fits = value.shape == want or (name == table_name and value.shape[1:] == want[1:])
            if not fits:
                raise UnicompError(
                    f"{where}: tensor backbone.{name} has shape {tuple(value.shape)}, the "
                    f"backbone's {tuple(want)}"
                )
            self._replace(name, value)

    def _apply(self, fn, recurse: bool = True):
        # .to(), .cuda(), .half(): the shared backbone moves with the model that uses it (it
        # is no submodule, so nn.Module would leave it behind); its other users move with it
        self.shared._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def _replace(self, name: str, value: torch.Tensor) -> None:
        self.register_buffer(name.replace(".", ":"), value, persistent=False)

    def replaced(self) -> dict[str, torch.Tensor]:
        return {name.replace(":", "."): t for name, t in self.named_buffers()}

    def position_table(self):
        return position_table(self.shared)

    def fit_positions(self, max_len: int) -> str:
        """The shared table fitted to ``max_len`` rows as the run's was, unless the adapter
        brings its own (trained) one; the shared backbone stays as it is."""
        tensors, description = self.shared.fitted_positions(max_len)
        have = self.replaced()
        for name, value in tensors.items():
            if name not in have:
                self._replace(name, value)
        return description

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call

        with _CALL_LOCK:
            return functional_call(
                self.shared, self.replaced(), (inputs_embeds, attention_mask), strict=False
            )


class Adapter(nn.Module):
    """A task's FPT around a shared backbone: ``predict(inputs)`` on natural inputs.

    ``fpt`` is an :class:`unicomp.models.fpt.FPT` whose backbone is a :class:`SharedBackbone`;
    ``codec`` turns inputs into tokens and logits into outputs (unicomp.serving.codecs); ``meta`` is
    the file's header; ``params`` the parameters the file holds."""

    def __init__(
        self, backbone: nn.Module, meta: dict[str, str], tensors: dict[str, torch.Tensor], name: str
    ):
        from unicomp.models.fpt import FPT
        from unicomp.serving.codecs import codec_from_header
        from unicomp.tasks.base import TaskSpec

        super().__init__()
        self.name, self.meta = name, meta
        self.task = meta["task"]
        spec = TaskSpec(**json.loads(meta["spec"]))
        inside = {k[len(_BACKBONE) :]: v for k, v in tensors.items() if k.startswith(_BACKBONE)}
        own = {k: v for k, v in tensors.items() if not k.startswith(_BACKBONE)}
        with torch.random.fork_rng():  # the new layers' random init is overwritten below
            view = SharedBackbone(backbone, inside, f"adapter {name}")
            self.fpt = FPT(view, spec, meta["readout"])
        mine = dict(self.fpt.named_parameters())
        missing = sorted(set(mine) - set(own))
        unexpected = sorted(set(own) - set(mine))
        wrong = sorted(k for k in own if k in mine and own[k].shape != mine[k].shape)
        if missing or unexpected or wrong:
            raise UnicompError(
                f"adapter {name}: its tensors do not fit the task's model (missing "
                f"{missing or 'none'}, unexpected {unexpected or 'none'}, shapes {wrong or 'ok'})"
            )
        self.fpt.load_state_dict(own, strict=False)
        self.requires_grad_(False)
        self.eval()
        self.params = sum(t.numel() for t in tensors.values())
        self.codec = codec_from_header(meta, spec, f"adapter {name}")

    @property
    def device(self) -> torch.device:
        """Where the adapter runs (its parameters and the shared backbone)."""
        return next(self.fpt.parameters()).device

    @property
    def backbone(self) -> nn.Module:
        """The shared backbone (the object itself)."""
        return self.fpt.backbone.shared

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.fpt(x, mask)

    @torch.inference_mode()
    def predict(self, inputs: Sequence[Any]) -> list[Any]:
        """Natural outputs for a list of natural inputs (see ``describe()``); an input that is
        not what the task takes raises :class:`unicomp.serving.codecs.InputError` naming it."""
        if isinstance(inputs, str | bytes) or not isinstance(inputs, Sequence):
            raise UnicompError(
                f"predict takes a list of inputs, got {type(inputs).__name__}; for one input "
                "pass [input]"
            )
        return self.run(*self.codec.encode_context(list(inputs)))

    @torch.inference_mode()
    def run(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, context: list[Any] | None = None
    ) -> list[Any]:
        """Natural outputs for inputs already encoded (``codec.encode_context``'s ``(x, mask,
        context)``: x (B, T) token ids or (B, T, d_in) features, mask (B, T) or None, context
        one entry per input or None)."""
        if not len(x):
            return []
        device = self.device  # the inputs go where the model is, whole
        x, mask = x.to(device), None if mask is None else mask.to(device)
        return self.codec.finish(self.fpt(x, mask), context)

    def describe(self) -> dict[str, Any]:
        """What ``GET /tasks`` lists: the task, its input/output spec, sizes, provenance."""
        return {
            "name": self.name,
            "task": self.task,
            **self.codec.describe(),
            "params": self.params,
            "freeze": self.meta["freeze"],
            "backbone": self.meta["backbone"],
            "metrics": json.loads(self.meta.get("metrics") or "{}"),
        }
