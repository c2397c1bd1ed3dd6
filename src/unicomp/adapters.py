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

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unicomp.backbones.base import position_table
from unicomp.errors import UnicompError

FORMAT = "unicomp-adapter/1"
_BACKBONE = "backbone."  # the FPT's name for its backbone; adapter tensors inside it start so
# Adapter forward passes swap tensors into the shared backbone for their duration: one at a time.
_CALL_LOCK = threading.RLock()


def backbone_hash(backbone: nn.Module) -> str:
    """SHA-256 over every parameter of ``backbone`` (names, dtypes, shapes, bytes, in name
    order), computed once per backbone object. What an adapter file records of the backbone it
    was trained on, and checks a backbone against when loaded."""
    from unicomp.features import _digest  # the feature cache's key: the same digest

    cached = backbone.__dict__.get("_unicomp_hash")
    if cached:
        return cached
    named = sorted(backbone.named_parameters(), key=lambda item: item[0])
    backbone.__dict__["_unicomp_hash"] = digest = f"sha256:{_digest(named)}"
    return digest


def _load_backbone(name: str, seed: int, layers: int | None) -> nn.Module:
    """A backbone as an FPT run builds it before fitting positions (its name, seed, layers)."""
    from unicomp.backbones.hf import load_backbone, truncate_layers

    backbone = load_backbone(name, seed=seed)
    if layers is not None:
        truncate_layers(backbone, layers)
    return backbone.eval()


# --- export --------------------------------------------------------------------------------------
def export_adapter(run: str | Path, path: str | Path) -> dict[str, Any]:
    """Write the adapter file of the finished FPT run folder ``run`` to ``path`` (atomically);
    return a summary (tensors, parameters, bytes, backbone hash)."""
    import dataclasses

    from safetensors.torch import save

    from unicomp import __version__
    from unicomp.codecs import CODECS, codec_for
    from unicomp.experiments.fpt import rebuild_fpt_run
    from unicomp.files import atomic_write

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
    io = codec_for(cfg.task, cfg.task_args, spec).describe() if cfg.task in CODECS else {}
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
    }


def _metrics(run: Path) -> dict[str, Any]:
    """The run's test scores from metrics.json (what the adapter is known to do)."""
    try:
        data = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if k.startswith("test_") and isinstance(v, int | float)}


# --- load ----------------------------------------------------------------------------------------
def read_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and header metadata of an adapter file; one-line errors for anything else."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UnicompError(f"adapter file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
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
) -> Adapter:
    """The task model of an adapter file, ready to ``predict``.

    ``backbone``: None loads the one the file names (its name, seed and layers); a name loads
    that one; a loaded backbone (``unicomp.load_backbone(...)``) is used by reference, so
    adapters loaded onto the same object share it. A backbone whose weights' hash differs
    from the one the adapter was trained on is refused, naming both hashes.
    ``device``: where the adapter runs (None: where the backbone is); the shared backbone
    moves with it, as it does with ``adapter.to(device)``.
    """
    tensors, meta = read_adapter(path)
    seed = int(meta["backbone_seed"])
    layers = int(meta["backbone_layers"]) if meta["backbone_layers"] else None
    if backbone is None or isinstance(backbone, str):
        backbone = _load_backbone(backbone or meta["backbone"], seed, layers)
    found = backbone_hash(backbone)
    if found != meta["backbone_hash"]:
        cut = f", first {layers} layers" if layers else ""
        raise UnicompError(
            f"adapter {path} was trained on backbone {meta['backbone']!r} (seed {seed}{cut}) "
            f"with weights {meta['backbone_hash']}; the backbone given "
            f"({getattr(backbone, 'name', type(backbone).__name__)}) has {found}"
        )
    adapter = Adapter(backbone, meta, tensors, name=Path(path).stem)
    return adapter if device is None else adapter.to(device)


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
    ``codec`` turns inputs into tokens and logits into outputs (unicomp.codecs); ``meta`` is
    the file's header; ``params`` the parameters the file holds."""

    def __init__(
        self, backbone: nn.Module, meta: dict[str, str], tensors: dict[str, torch.Tensor], name: str
    ):
        from unicomp.codecs import codec_for
        from unicomp.models.fpt import FPT
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
        self.codec = codec_for(self.task, json.loads(meta["task_args"]), spec)

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
        not what the task takes raises :class:`unicomp.codecs.InputError` naming it."""
        if isinstance(inputs, str | bytes) or not isinstance(inputs, Sequence):
            raise UnicompError(
                f"predict takes a list of inputs, got {type(inputs).__name__}; for one input "
                "pass [input]"
            )
        x, mask = self.codec.encode(list(inputs))
        if not len(x):
            return []
        device = self.device  # the inputs go where the model is, whole
        x, mask = x.to(device), None if mask is None else mask.to(device)
        return self.codec.decode(self.fpt(x, mask))

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
