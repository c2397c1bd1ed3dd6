"""The Frozen Pretrained Transformer's runs: ``build_fpt`` (backbone, freeze policy, new layers),
``run_fpt`` (a complete run folder; output-only runs on cached features), and a finished run
folder rebuilt (``rebuild_fpt_run``, ``load_fpt_run``; the ``run:<DIR>`` backbones use it)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from unicomp.backbones.base import LoadedBackbone, truncate_layers
from unicomp.backbones.catalog import FREEZE_POLICIES
from unicomp.backbones.loading import load_backbone
from unicomp.config import (
    KIND_TITLES,
    FPTConfig,
    check_config,
    from_dict,
    load_yaml,
    recorded_kind,
    to_dict,
)
from unicomp.errors import UnicompError, WeightsNotFoundError
from unicomp.experiments.common import (
    build_task,
    load_checked,
    read_best,
    recorded_best_step,
    settle_task,
    train_and_record,
)
from unicomp.freezing import apply_freeze_policy, count_parameters
from unicomp.models.fpt import FPT
from unicomp.provenance import provenance
from unicomp.tasks.base import Task
from unicomp.tasks.catalog import TASKS, ensure_task
from unicomp.train import Placement


def build_fpt(cfg: FPTConfig, task: Task, placement: Placement | None = None) -> tuple[FPT, dict]:
    """The FPT model with its freeze policy applied, and a summary of what was built.
    ``placement``: the run's, where attention ``measure`` times the step (None: resolved
    from ``cfg.train`` where it is needed)."""
    from unicomp import features as fc

    FREEZE_POLICIES.entry(cfg.freeze)  # fail on a bad name before loading any weights
    torch.manual_seed(cfg.train.seed)  # new layers (and random:<name> backbones) are seeded
    chosen_here = cfg.attn_implementation in ATTENTION_CHOSEN_AT_START
    backbone = load_backbone(
        cfg.backbone,
        dropout=cfg.backbone_dropout,
        attn_implementation=None if chosen_here else cfg.attn_implementation,
        seed=cfg.train.seed,
    )
    layers = "all"
    if cfg.backbone_layers is not None:
        layers = truncate_layers(backbone, cfg.backbone_layers)
    model = FPT(backbone, task.spec, readout=cfg.readout)
    groups = apply_freeze_policy(model, cfg.freeze)
    trainable, total = count_parameters(model)
    attention = cfg.attn_implementation or "transformers' default"
    if cfg.attn_implementation == "auto":
        attention = default_attention(model)
    elif cfg.attn_implementation == "measure":
        # Timed on this run's device, batch and precision (machine load can change the
        # pick: an explicit choice, never the default)
        placement = placement or Placement.resolve(cfg.train)
        micro = max(1, min(32, cfg.train.batch_size // cfg.train.grad_accum))
        probe = task.train_batch(0, micro, cfg.train.seed).to(placement.device)
        attention = choose_attention(
            model,
            probe.x,
            probe.mask,
            lambda out: task.loss(out, probe.y, probe.target_mask),
            placement,
        )
    if chosen_here:  # written into config.yaml: a resumed or repeated run uses the same one
        cfg.attn_implementation = attention.split()[0]
    summary = {
        "attention": attention,
        "backbone_source": backbone.source,
        "backbone_type": backbone.model_type,
        "backbone_layers": layers,
        "backbone_is_decoder": backbone.is_decoder,
        "positions": model.positions,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": trainable / total,
        "trainable_by_group": groups,
        # What best.safetensors does not hold: a random:/stats: backbone is re-created from
        # code (the seed and transformers' init), so rebuilding the run checks this.
        "frozen_weights_sha256": fc.frozen_weights_sha256(model),
    }
    return model, summary


def default_out(cfg: FPTConfig) -> Path:
    backbone = cfg.backbone.replace("/", "_").replace(":", "-")
    # a task whose data set is an argument names it (``ucr-GunPoint``), so runs on two data
    # sets do not claim one folder
    label = getattr(TASKS.entry(cfg.task).load(), "run_label", None)
    task = label(cfg.task_args) if label else cfg.task
    return Path("runs") / f"{task}-{backbone}-{cfg.freeze}-s{cfg.train.seed}"


def run_fpt(cfg: FPTConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Build the FPT and train it into ``cfg.out`` (``resume``: continue the run there;
    ``overwrite``: replace it; else a folder holding a run is an error). Output-only runs on
    fixed data train the head alone on
    features computed once (unicomp.features; ``cfg.feature_cache``); metrics.json records
    ``feature_cache`` (what was used, or why not) and ``feature_seconds``. The device and
    precision are resolved once (``Placement``) for the attention probe, the features and the
    loop."""
    from unicomp import features as fc

    settle_task(cfg)
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    cfg.out = str(out)
    chosen_at_start = cfg.attn_implementation in ATTENTION_CHOSEN_AT_START
    if resume and chosen_at_start and (out / "config.yaml").is_file():
        # The attention chosen when the run started, so a resumed run computes alike.
        cfg.attn_implementation = load_yaml(out / "config.yaml").get("attn_implementation")
    task = build_task(cfg.task, cfg.task_args)
    why_not = fc.feature_cache_plan(cfg, task)  # an explicit memory/disk that cannot apply fails
    placement = Placement.resolve(check_config(cfg).train)  # a device this machine has
    model, summary = build_fpt(cfg, task, placement)
    header = {"task": cfg.task, "backbone": cfg.backbone, "freeze": cfg.freeze}
    if why_not is not None:
        summary["feature_cache"] = f"off: {why_not}"
        return train_and_record(
            cfg, task, model, header, summary, out, resume, overwrite, placement
        )
    prepared = fc.prepare_features(cfg, task, model, placement, cfg.feature_cache)
    summary["feature_cache"] = prepared.report
    summary["feature_seconds"] = prepared.seconds
    summary["feature_key"] = prepared.key
    # The head module is the FPT's own: the trained weights land in ``model.head``, and
    # best.safetensors / checkpoint.pt name them head.weight / head.bias as the FPT does.
    cached = fc.CachedFeatureTask(task, prepared.features)
    head = fc.HeadOnly(model.head)
    return train_and_record(cfg, cached, head, header, summary, out, resume, overwrite, placement)


# FPTConfig fields whose effect on the model rebuild_fpt_run reproduces (through build_fpt), or
# that do not change the model's weights. A run whose config sets another field to a non-default
# value is refused: a new field that changes the model must be handled there and listed here.
_RUN_FIELDS_HANDLED = frozenset(
    {
        "task", "backbone", "freeze", "readout", "backbone_dropout", "attn_implementation",
        "task_args", "out", "feature_cache", "train", "backbone_layers", "task_source",
    }
)  # fmt: skip


@dataclasses.dataclass
class FPTRun:
    """An FPT run folder rebuilt by :func:`rebuild_fpt_run`."""

    folder: Path
    cfg: FPTConfig  # the run's config.yaml
    task: Task
    model: FPT  # with the weights of best.safetensors; its freeze policy applied
    summary: dict  # build_fpt's description of the rebuilt model
    loaded: list[str]  # the tensors best.safetensors held: what the run trained
    best_step: int | None  # from metrics.json; None where the folder has none (yet)


def _run_config(folder: Path, where: str) -> FPTConfig:
    """The FPTConfig of ``folder``'s config.yaml; errors for anything but an FPT run folder."""
    config_path = folder / "config.yaml"
    if not folder.is_dir():
        raise WeightsNotFoundError(f"{where}run folder {folder} does not exist")
    if not config_path.is_file():
        raise WeightsNotFoundError(f"{where}{folder} has no config.yaml (not a unicomp run folder)")
    data = load_yaml(config_path)
    kind = recorded_kind(data)
    if kind != FPTConfig.kind:
        what = f" (it is {KIND_TITLES[kind]})" if kind in KIND_TITLES else ""
        what = what or ": its config.yaml is no run's config"
        raise UnicompError(f"{where}{folder} is not an FPT run{what}")
    cfg = from_dict(FPTConfig, data, f"config file {config_path}")
    ensure_task(cfg.task, cfg.task_source, f"{where}{config_path}")
    defaults = to_dict(FPTConfig())
    unknown = sorted(
        k for k in data if k not in (*_RUN_FIELDS_HANDLED, "kind") and data[k] != defaults.get(k)
    )
    if unknown:  # a setting added to FPTConfig that may change the model: refuse, not guess
        raise UnicompError(
            f"{where}{config_path} sets {', '.join(unknown)}, which rebuilding a run's model "
            "(run: backbones, fpt attention) does not handle yet "
            "(unicomp.experiments.fpt._RUN_FIELDS_HANDLED)"
        )
    return cfg


def rebuild_fpt_run(
    folder: str | Path,
    *,
    where: str = "",
    finished: bool = True,
    backbone_overrides: dict[str, Any] | None = None,
) -> FPTRun:
    """Rebuild the FPT of the run in ``folder`` as its run built it (``build_fpt`` from its
    config.yaml: the same seed, backbone, layers, position table, new layers and freeze
    policy) and load its best.safetensors, checked against the model: every tensor the
    file holds must fit, and every tensor the run's freeze policy trains must be there.

    ``where`` prefixes error messages (e.g. ``backbone 'run:DIR'``). ``finished``: a
    metrics.json must be present (else only best.safetensors, the first evaluation).
    ``backbone_overrides``: ``dropout`` (None: the run's) and ``attn_implementation`` (None:
    transformers' default) for the backbone; None keeps the run's own settings.
    Used by :func:`load_fpt_run` and the ``run:<DIR>`` backbones (:func:`backbone_from_run`).
    """
    folder = Path(folder)
    where = f"{where}: " if where else ""
    cfg = _run_config(folder, where)
    best_path = folder / "best.safetensors"
    state = read_best(folder, where)
    best_step = recorded_best_step(folder, where, finished)
    build = dataclasses.replace(cfg)  # build_fpt reads it; the run's own stays as saved
    if backbone_overrides is None:
        if build.attn_implementation in ATTENTION_CHOSEN_AT_START:  # not again: no training
            build.attn_implementation = None
    else:
        dropout = backbone_overrides.get("dropout")
        build.backbone_dropout = cfg.backbone_dropout if dropout is None else dropout
        build.attn_implementation = backbone_overrides.get("attn_implementation")
    task = build_task(cfg.task, cfg.task_args)
    with torch.random.fork_rng():  # build_fpt seeds the global state; the caller's is kept
        model, summary = build_fpt(build, task)
    _check_frozen_weights(folder, cfg, summary["frozen_weights_sha256"], where)
    what = f"backbone {cfg.backbone}, task {cfg.task}"
    load_checked(model, state, f"{where}{best_path}", what, f"freeze {cfg.freeze} trains them")
    return FPTRun(folder, cfg, task, model, summary, sorted(state), best_step)


def _check_frozen_weights(folder: Path, cfg: FPTConfig, rebuilt: str, where: str) -> None:
    """Refuse a rebuilt FPT whose frozen weights differ from those the run recorded (runs
    from before it was recorded are not checked): for ``random:``/``stats:`` backbones, a
    sign that the init code (transformers) changed since; for hub names, other weights."""
    import json

    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return  # an unfinished run (run: backbones may use one), or recorded_best_step's error
    recorded = metrics.get("frozen_weights_sha256")
    if recorded and recorded != rebuilt:
        then, now = metrics.get("transformers_version"), provenance()["transformers_version"]
        raise UnicompError(
            f"{where}{folder}: its frozen weights rebuilt now (sha256 {rebuilt[:12]}) are not "
            f"the ones it trained with ({recorded[:12]}); backbone {cfg.backbone} (seed "
            f"{cfg.train.seed}) gives other weights under transformers {now} than under "
            f"{then} when the run trained"
        )


def load_fpt_run(folder: str | Path) -> tuple[FPT, Task, FPTConfig]:
    """The whole trained FPT of a finished run folder (input layer, positions, norms, head and
    backbone, with best.safetensors loaded and checked; see :func:`rebuild_fpt_run`), in eval
    mode on the CPU, with the run's task and config. Runs trained from cached features
    (output-only) load too: their best.safetensors holds the head under the FPT's names.

    Raises a one-line UnicompError for a folder that is not a finished FPT run (missing,
    no config.yaml, another kind of run, no best.safetensors or metrics.json, weights that
    do not fit).
    """
    run = rebuild_fpt_run(folder)
    return run.model.eval(), run.task, run.cfg


# --- run:<DIR> backbones --------------------------------------------------------------------------
_RUNS_LOADING: set[Path] = set()  # run folders being loaded now: a loop of run: names is an error


def backbone_from_run(
    name: str, *, dropout: float | None, attn_implementation: str | None, seed: int
) -> LoadedBackbone:
    """The loader of ``run:<DIR>``: the backbone of a finished FPT run folder, the run's whole
    FPT rebuilt as that run built it (its backbone name, seed, layers and position table
    fitted to its task), with the trained weights of its best.safetensors loaded
    (``rebuild_fpt_run``). ``load_backbone`` finds it through the registry
    ``BACKBONE_SOURCES`` (unicomp.experiments.catalog). ``dropout``: where given (the new run's
    ``backbone_dropout``), else the run's own; the weights do not depend on it. ``seed`` is
    unused: the run's own seed rebuilds it."""
    folder_text = name.removeprefix("run:")
    if not folder_text:
        raise UnicompError("backbone 'run:' needs a run folder: run:<DIR>")
    folder = Path(folder_text)
    key = folder.resolve()
    if key in _RUNS_LOADING:
        raise UnicompError(f"backbone {name!r}: run folders name each other's backbones in a loop")
    _RUNS_LOADING.add(key)
    try:
        run = rebuild_fpt_run(
            folder,
            where=f"backbone {name!r}",
            finished=False,
            backbone_overrides={"dropout": dropout, "attn_implementation": attn_implementation},
        )
    finally:
        _RUNS_LOADING.discard(key)
    cfg, model = run.cfg, run.model
    layers_note = "" if cfg.backbone_layers is None else f", {run.summary['backbone_layers']}"
    step = "not recorded (no metrics.json)" if run.best_step is None else str(run.best_step)
    has_backbone = any(k.startswith("backbone.") for k in run.loaded)
    notes = [] if has_backbone else ["best.safetensors holds no backbone weights (all frozen)"]
    if model.pos is not None:
        notes.append(
            "the run's own input position table (pos, added by its FPT wrapper because the "
            "backbone has none) is not transferred"
        )
    else:
        notes.append(f"position table: {model.positions}")
    backbone = model.backbone
    backbone.requires_grad_(True)  # as any loaded backbone: the new run's policy decides
    backbone.name = name
    backbone.source = (
        f"the backbone of run {folder} (task {cfg.task}, backbone {cfg.backbone}, freeze "
        f"{cfg.freeze}{layers_note}, trained weights from best.safetensors, step {step}); "
        f"{'; '.join(notes)}; rebuilt from: {backbone.source}"
    )
    return backbone


ATTENTION_CHOICES = ("eager", "sdpa")
# settings resolved to one of ATTENTION_CHOICES when a run starts (saved in its config.yaml)
ATTENTION_CHOSEN_AT_START = ("auto", "measure")


def default_attention(model: FPT) -> str:
    """``auto``: PyTorch's fused ``scaled_dot_product_attention`` (flash and memory-efficient
    kernels on GPUs; on a 2-core AVX2 CPU within 2-4% of eager either way), by rule, never
    timed, so the same command computes alike under any machine load; eager where the backbone
    has no sdpa path."""
    try:
        model.backbone.set_attention("sdpa")
    except (ValueError, NotImplementedError, AttributeError) as err:
        model.backbone.set_attention("eager")
        return f"eager (auto: this backbone has no sdpa path: {str(err).splitlines()[0]})"
    return "sdpa (auto: the fused kernel, chosen by rule, not timed)"


def choose_attention(model: FPT, x, mask, loss_fn, placement: Placement) -> str:
    """Time a training step (forward, loss, backward) of ``model`` on the batch ``(x, mask)``
    with each attention implementation, on the run's device in its precision
    (``placement``); keep the fastest and describe the measurement.

    Which one wins depends on the device, the sizes and the precision (on a 2-core AVX2 CPU in
    fp32 eager was ~4% faster for minilm-l6 at 64 tokens; see docs/benchmarks.md), so it is
    measured for the run rather than fixed. Gradients are cleared afterwards.
    """
    import time

    device = placement.device
    model.to(device)
    x, mask = x.to(device), mask.to(device) if mask is not None else None
    seconds = {}
    for name in ATTENTION_CHOICES:
        model.backbone.set_attention(name)
        best = float("inf")
        for _ in range(3):  # the first call warms up
            t = time.perf_counter()
            with placement.autocast():
                loss = loss_fn(model(x, mask))
            if loss.requires_grad:
                loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - t)
        seconds[name] = best
    model.zero_grad(set_to_none=True)
    pick = min(seconds, key=seconds.get)
    model.backbone.set_attention(pick)
    timing = ", ".join(f"{n} {s * 1000:.1f} ms" for n, s in seconds.items())
    return f"{pick} (measured per training step at batch {len(x)}: {timing})"
