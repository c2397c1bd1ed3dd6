"""Build and run experiments from configs: ``run_fpt(cfg)`` writes a complete run folder.

Run folder: config.yaml (resolved config), metrics.json, curve.csv, best.safetensors,
checkpoint.pt.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import unicomp.catalog  # noqa: F401  (registers everything)
from unicomp.backbones.hf import load_backbone
from unicomp.config import (
    DTConfig,
    FPTConfig,
    PerceiverConfig,
    check_config,
    from_dict,
    load_yaml,
    save_yaml,
    to_dict,
)
from unicomp.errors import UnicompError, WeightsNotFoundError
from unicomp.files import atomic_write_json, claim_run_folder
from unicomp.freezing import apply_freeze_policy, count_parameters
from unicomp.models.fpt import FPT, choose_attention
from unicomp.provenance import provenance
from unicomp.registry import FREEZE_POLICIES, TASKS
from unicomp.tasks.base import Task
from unicomp.train import pick_device, resolve_precision, train


def task_defaults(name: str) -> dict:
    return dict(TASKS.entry(name).load().default_train)


def task_arguments(cls: type) -> dict[str, Any]:
    """A task class's constructor arguments (the --task-arg keys) and their defaults
    ("required" for those without one), from its signature."""
    import inspect

    return {
        p.name: "required" if p.default is p.empty else p.default
        for p in inspect.signature(cls).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def build_task(name: str, args: dict) -> Task:
    cls = TASKS.entry(name).load()
    valid = task_arguments(cls)
    unknown = [k for k in args if k not in valid]
    if unknown:  # (a task taking **kwargs would list them nowhere; none does)
        keys = ", ".join(f"{k} (default {v!r})" for k, v in valid.items()) or "none"
        raise UnicompError(
            f"task {name!r}: bad --task-arg {', '.join(map(str, unknown))}; valid keys: {keys}"
        )
    try:
        return cls(**args)
    except TypeError as err:
        raise UnicompError(f"task {name!r}: bad --task-arg: {err}") from None
    except ValueError as err:
        raise UnicompError(f"task {name!r}: {err}") from None


def build_fpt(cfg: FPTConfig, task: Task) -> tuple[FPT, dict]:
    """The FPT model with its freeze policy applied, and a summary of what was built."""
    from unicomp import features as fc

    FREEZE_POLICIES.entry(cfg.freeze)  # fail on a bad name before loading any weights
    torch.manual_seed(cfg.train.seed)  # new layers (and random:<name> backbones) are seeded
    auto_attention = cfg.attn_implementation == "auto"
    backbone = load_backbone(
        cfg.backbone,
        dropout=cfg.backbone_dropout,
        attn_implementation=None if auto_attention else cfg.attn_implementation,
        seed=cfg.train.seed,
    )
    layers = "all"
    if cfg.backbone_layers is not None:
        from unicomp.backbones.hf import truncate_layers

        layers = truncate_layers(backbone, cfg.backbone_layers)
    model = FPT(backbone, task.spec, readout=cfg.readout)
    groups = apply_freeze_policy(model, cfg.freeze)
    trainable, total = count_parameters(model)
    attention = cfg.attn_implementation or "transformers' default"
    if auto_attention:
        # Measured on this run's device, batch and precision; the choice is written into
        # the config (config.yaml), so a resumed or repeated run uses the same one.
        device = pick_device(cfg.train.device)
        micro = max(1, min(32, cfg.train.batch_size // cfg.train.grad_accum))
        probe = task.train_batch(0, micro, cfg.train.seed)
        precision = resolve_precision(device, cfg.train.precision)[0]
        attention = choose_attention(
            model, probe.x, probe.mask, lambda out: task.loss(out, probe.y), device, precision
        )
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
    return Path("runs") / f"{cfg.task}-{backbone}-{cfg.freeze}-s{cfg.train.seed}"


def run_fpt(cfg: FPTConfig, resume: bool = False) -> dict:
    """Build the FPT and train it. Output-only runs on fixed data train the head alone on
    features computed once (unicomp.features; ``cfg.feature_cache``); metrics.json records
    ``feature_cache`` (what was used, or why not) and ``feature_seconds``."""
    from unicomp import features as fc

    out = Path(cfg.out) if cfg.out else default_out(cfg)
    cfg.out = str(out)
    if resume and cfg.attn_implementation == "auto" and (out / "config.yaml").is_file():
        # The attention measured when the run started, so a resumed run computes alike.
        cfg.attn_implementation = load_yaml(out / "config.yaml").get("attn_implementation")
    task = build_task(cfg.task, cfg.task_args)
    why_not = fc.feature_cache_plan(cfg, task)  # an explicit memory/disk that cannot apply fails
    model, summary = build_fpt(cfg, task)
    header = {"task": cfg.task, "backbone": cfg.backbone, "freeze": cfg.freeze}
    if why_not is not None:
        summary["feature_cache"] = f"off: {why_not}"
        return train_and_record(cfg, task, model, header, summary, out, resume)
    device = fc.run_device(cfg.train.device)
    precision = fc.resolved_precision(device, cfg.train.precision)
    prepared = fc.prepare_features(cfg, task, model, device, precision, cfg.feature_cache)
    summary["feature_cache"] = prepared.report
    summary["feature_seconds"] = prepared.seconds
    summary["feature_key"] = prepared.key
    # The head module is the FPT's own: the trained weights land in ``model.head``, and
    # best.safetensors / checkpoint.pt name them head.weight / head.bias as the FPT does.
    cached = fc.CachedFeatureTask(task, prepared.features)
    return train_and_record(cfg, cached, fc.HeadOnly(model.head), header, summary, out, resume)


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 writes


def train_and_record(
    cfg: Any, task: Task, model: nn.Module, header: dict, summary: dict, out: Path, resume: bool
) -> dict:
    """The part every ``run_*`` shares: save config.yaml, train, write metrics.json.

    metrics.json: ``header`` (what was run), the seed, the training result, ``summary``
    (what was built), then the data and the machine.
    """
    check_config(cfg)  # every value in range before anything is written
    is_main = _is_main()
    changes = check_resume(cfg, out) if resume else {}
    # Claimed (locked) for the run; a new run into a folder holding one is refused before
    # config.yaml is written; a start that fails before its first checkpoint is undone.
    with claim_run_folder(out, resume=resume, enabled=is_main):
        if is_main and (not resume or changes):
            # on resume: the changes applied, recorded; the device ``auto`` picks, as a comment
            # (the setting stays auto, so the file runs again on another machine)
            used = f"train.device {cfg.train.device}: this run used {pick_device(cfg.train.device)}"
            save_yaml(cfg, out / "config.yaml", comments=[used])
        t0 = time.perf_counter()
        result = train(model, task, cfg.train, out, resume=resume, run_config=to_dict(cfg))
        metrics = {
            **header,
            "seed": cfg.train.seed,
            **result,
            **summary,
            "data_source": task.data_source,
            "split_sizes": task.split_sizes(),
            "wall_seconds": round(time.perf_counter() - t0, 2),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            **provenance(),  # unicomp and transformers versions, git commit
        }
        if changes:
            metrics["resume_changes"] = changes
        if is_main:
            atomic_write_json(out / "metrics.json", metrics)
    return metrics


# Settings a resumed run may change: they do not change what the run has learnt so far.
RESUMABLE_CHANGES = (
    "train.steps",
    "train.time_limit_minutes",
    "train.patience",
    "train.progress",
    "train.track",
    "train.eval_batch_size",
    "train.device",
    "feature_cache",  # FPT: the same head training, on features cached or computed each step
    "eval_episodes",  # DT: acting after training
    "eval_seed",
    "eval_envs",
    "eval_max_steps",
    "eval_window",
    "eval_sample",
    "eval_targets",
)


def _flat(data: dict) -> dict:
    train_part = data.get("train") or {}
    return {
        **{k: v for k, v in data.items() if k != "train"},
        **{f"train.{k}": v for k, v in train_part.items()},
    }


def config_changes(cfg: Any, out: Path) -> tuple[dict, dict]:
    """Every setting of ``cfg`` that differs from the run's ``out/config.yaml``, as
    ``{key: [saved, asked]}`` (keys flattened: ``train.lr``), and the part of those that a
    resume may not change (outside ``RESUMABLE_CHANGES``)."""
    path = out / "config.yaml"
    saved = _flat(to_dict(from_dict(type(cfg), load_yaml(path), f"config file {path}")))
    asked = _flat(to_dict(cfg))
    diffs = {k: [saved.get(k), v] for k, v in asked.items() if k != "out" and saved.get(k) != v}
    return diffs, {k: v for k, v in diffs.items() if k not in RESUMABLE_CHANGES}


def check_resume(cfg: Any, out: Path) -> dict:
    """Compare the config a resume asks for with the run's own config.yaml: a difference in
    a setting outside ``RESUMABLE_CHANGES`` is refused, naming each; the allowed ones are
    returned as ``{key: [saved, requested]}`` (recorded in config.yaml and metrics.json)."""
    path = out / "config.yaml"
    if not path.is_file():
        raise UnicompError(f"nothing to resume: {path} does not exist")
    diffs, refused = config_changes(cfg, out)
    if refused:
        listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in refused.items())
        allowed = ", ".join(k.removeprefix("train.") for k in RESUMABLE_CHANGES[:5])
        raise UnicompError(
            f"--resume would change what {out} was trained with: {listed}; only {allowed} "
            "(and feature_cache, DT eval settings) may change on resume; start a new run for "
            "the others"
        )
    return diffs


# --- a finished FPT run folder, rebuilt ----------------------------------------------------------
# FPTConfig fields whose effect on the model rebuild_fpt_run reproduces (through build_fpt), or
# that do not change the model's weights. A run whose config sets another field to a non-default
# value is refused: a new field that changes the model must be handled there and listed here.
_RUN_FIELDS_HANDLED = frozenset(
    {
        "task", "backbone", "freeze", "readout", "backbone_dropout", "attn_implementation",
        "task_args", "out", "feature_cache", "train", "backbone_layers",
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
    if "backbone" not in data or "freeze" not in data:
        kind = ""
        if "algo" in data or "data" in data:
            kind = " (it is a Decision Transformer / behaviour cloning run)"
        elif "num_latents" in data or "pretrained" in data:
            kind = " (it is a Perceiver run)"
        raise UnicompError(
            f"{where}{folder} is not an FPT run{kind}: its config.yaml has no backbone and freeze"
        )
    cfg = from_dict(FPTConfig, data, f"config file {config_path}")
    defaults = to_dict(FPTConfig())
    unknown = sorted(k for k in data if k not in _RUN_FIELDS_HANDLED and data[k] != defaults.get(k))
    if unknown:  # a setting added to FPTConfig that may change the model: refuse, not guess
        raise UnicompError(
            f"{where}{config_path} sets {', '.join(unknown)}, which rebuilding a run's model "
            "(run: backbones, fpt attention) does not handle yet "
            "(unicomp.experiments._RUN_FIELDS_HANDLED)"
        )
    return cfg


def _best_step(folder: Path, where: str, finished: bool) -> int | None:
    """metrics.json's best_step; without a readable metrics.json an error where ``finished``
    is asked for, else None."""
    import json

    path = folder / "metrics.json"
    try:
        return int(json.loads(path.read_text())["best_step"])
    except FileNotFoundError:
        why = "has no metrics.json (the run has not finished"
        resume = f"; unicomp fpt train --resume --out {folder} finishes it)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        why = f"has an unreadable metrics.json ({type(err).__name__}"
        resume = ")"
    if finished:
        raise UnicompError(f"{where}{folder} {why}{resume}")
    return None


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
    Used by :func:`load_fpt_run` and the ``run:<DIR>`` backbones (unicomp.backbones.hf).
    """
    folder = Path(folder)
    where = f"{where}: " if where else ""
    cfg = _run_config(folder, where)
    best_path = folder / "best.safetensors"
    state = _read_best(folder, where)
    best_step = _best_step(folder, where, finished)
    build = dataclasses.replace(cfg)  # build_fpt reads it; the run's own stays as saved
    if backbone_overrides is None:
        if build.attn_implementation == "auto":  # not measured again: no training here
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
    _load_checked(model, state, f"{where}{best_path}", what, f"freeze {cfg.freeze} trains them")
    return FPTRun(folder, cfg, task, model, summary, sorted(state), best_step)


def _check_frozen_weights(folder: Path, cfg: FPTConfig, rebuilt: str, where: str) -> None:
    """Refuse a rebuilt FPT whose frozen weights differ from those the run recorded (runs
    from before it was recorded are not checked): for ``random:``/``stats:`` backbones, a
    sign that the init code (transformers) changed since; for hub names, other weights."""
    import json

    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return  # an unfinished run (run: backbones may use one), or _best_step's error
    recorded = metrics.get("frozen_weights_sha256")
    if recorded and recorded != rebuilt:
        then, now = metrics.get("transformers_version"), provenance()["transformers_version"]
        raise UnicompError(
            f"{where}{folder}: its frozen weights rebuilt now (sha256 {rebuilt[:12]}) are not "
            f"the ones it trained with ({recorded[:12]}); backbone {cfg.backbone} (seed "
            f"{cfg.train.seed}) gives other weights under transformers {now} than under "
            f"{then} when the run trained"
        )


def _read_best(folder: Path, where: str = "") -> dict[str, torch.Tensor]:
    """A run folder's best.safetensors; a one-line error where it is missing or unreadable."""
    from safetensors.torch import load_file

    best_path = folder / "best.safetensors"
    if not best_path.is_file():
        raise WeightsNotFoundError(
            f"{where}{folder} has no best.safetensors (the run has not reached its first "
            "evaluation)"
        )
    try:
        return load_file(str(best_path))
    except Exception as err:  # truncated, not safetensors
        raise UnicompError(
            f"{where}cannot read {best_path} "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None


def _load_checked(
    model: nn.Module, state: dict[str, torch.Tensor], path: str, what: str, trains: str
) -> None:
    """Load a run's saved tensors into its rebuilt ``model`` after checking them: every
    tensor must fit a parameter, and every parameter the run trained must be there."""
    params = dict(model.named_parameters())
    unexpected = sorted(k for k in state if k not in params)
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(params[k].shape)}"
        for k in state
        if k in params and state[k].shape != params[k].shape
    )
    missing = sorted(k for k, p in params.items() if p.requires_grad and k not in state)
    if unexpected or shapes or missing:
        parts = [
            f"{label} {', '.join(items[:3])}"
            + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")
            for label, items in (
                ("not in the model:", unexpected),
                ("shape (file vs model):", shapes),
                (f"missing ({trains}):", missing),
            )
            if items
        ]
        raise UnicompError(
            f"{path} does not fit the run's rebuilt model ({what}): {'; '.join(parts)}"
        )
    model.load_state_dict(state, strict=False)


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


# --- Perceiver IO ------------------------------------------------------------------------------
# Training defaults for Perceiver runs where the task's own (tuned for FPT) do not suit; they
# sit where the task's defaults do, below --config and explicit flags.
PERCEIVER_TRAIN_DEFAULTS: dict[str, dict] = {
    # Measured (default sizes, seed 0): at FPT's lr 3e-3 validation accuracy stalled at 0.65
    # after 800 steps; at 1e-3 it reached 1.0 at step 600 (test accuracy 1.0 at 1000 steps).
    "bit-xor": {"lr": 1e-3, "steps": 1000},
}


def perceiver_task_defaults(name: str) -> dict:
    return {**task_defaults(name), **PERCEIVER_TRAIN_DEFAULTS.get(name, {})}


def build_perceiver(cfg: PerceiverConfig, task: Task) -> tuple[nn.Module, dict]:
    """A Perceiver IO (or plain Perceiver) for ``task``, random init or with a pretrained
    encoder + process, and a summary of what was built."""
    from unicomp.models.perceiver_io import PerceiverIO, PerceiverIOArch
    from unicomp.models.perceiver_pretrained import pretrained_perceiver

    if cfg.freeze_pretrained and not cfg.pretrained:
        raise UnicompError("--freeze-pretrained needs --pretrained (a checkpoint to freeze)")
    torch.manual_seed(cfg.train.seed)  # new layers are seeded
    # Tasks on a grid (images) say so, for 2-D Fourier features; others are 1-D sequences.
    grids = {
        "in_grid": getattr(task, "input_grid", None),
        "out_grid": getattr(task, "output_grid", None),
    }
    new_parts = {  # built for the task even when the encoder + process are pretrained
        "decoder": "pool" if cfg.model == "perceiver" else "query",
        "queries": cfg.queries,
        "input_pos": cfg.input_pos,
        "decoder_heads": cfg.num_heads,
        "dropout": cfg.dropout,
    }
    try:
        if cfg.pretrained:
            model, source = pretrained_perceiver(cfg.pretrained, task.spec, **grids, **new_parts)
            if cfg.freeze_pretrained:
                for p in [model.latents, *model.encode.parameters(), *model.process.parameters()]:
                    p.requires_grad_(False)
        else:
            arch = PerceiverIOArch(
                num_latents=cfg.num_latents,
                d_latent=cfg.d_latent,
                num_blocks=cfg.num_blocks,
                self_attends_per_block=cfg.self_attends_per_block,
                share_weights=cfg.share_weights,
                self_heads=cfg.num_heads,
                cross_heads=cfg.num_heads,
                self_widening=cfg.widening,
                **new_parts,
            )
            model = PerceiverIO(task.spec, arch, **grids)
            source = f"random init (seed {cfg.train.seed})"
    except ValueError as err:
        raise UnicompError(f"perceiver for task {cfg.task!r}: {err}") from None
    trainable, total = count_parameters(model)
    summary = {
        "model_source": source,
        "queries": model.queries_kind,
        "num_latents": model.arch.num_latents,
        "arch": dataclasses.asdict(model.arch),
        "flops_per_example": model.flops_per_example(),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": trainable / total,
    }
    return model, summary


def load_perceiver_run(folder: str | Path) -> tuple[nn.Module, Task, PerceiverConfig]:
    """The trained Perceiver (IO) of a finished ``perceiver train`` run folder, rebuilt from
    its config.yaml as :func:`build_perceiver` built it (the same seed; a pretrained encoder
    is loaded again from where the run found it) with best.safetensors loaded and checked
    (every tensor must fit, every trained one must be there), in eval mode on the CPU, with
    the run's task and config. One-line UnicompError for anything else."""
    folder = Path(folder)
    config_path = folder / "config.yaml"
    if not config_path.is_file():
        raise UnicompError(f"{folder} is not a run folder (no config.yaml)")
    data = load_yaml(config_path)
    if "num_latents" not in data:
        raise UnicompError(f"{folder} is not a Perceiver run: its config.yaml has no num_latents")
    cfg = from_dict(PerceiverConfig, data, f"config file {config_path}")
    state = _read_best(folder)
    _best_step(folder, "", finished=True)  # a finished run: metrics.json is there
    task = build_task(cfg.task, cfg.task_args)
    with torch.random.fork_rng():  # build_perceiver seeds the global state; the caller's kept
        model, _ = build_perceiver(cfg, task)
    best = str(folder / "best.safetensors")
    _load_checked(model, state, best, f"task {cfg.task}", "the run trained them")
    return model.eval(), task, cfg


def default_perceiver_out(cfg: PerceiverConfig) -> Path:
    size = cfg.pretrained.replace("/", "_") if cfg.pretrained else f"L{cfg.num_latents}"
    return Path("runs") / f"{cfg.task}-{cfg.model}-{size}-s{cfg.train.seed}"


def run_perceiver(cfg: PerceiverConfig, resume: bool = False) -> dict:
    """Train a Perceiver (IO) on a task; writes the same run folder as ``run_fpt``, plus
    ``examples.png`` for tasks that draw their outputs (dense tasks)."""
    out = Path(cfg.out) if cfg.out else default_perceiver_out(cfg)
    cfg.out = str(out)
    task = build_task(cfg.task, cfg.task_args)
    model, summary = build_perceiver(cfg, task)
    header = {"task": cfg.task, "model": cfg.model, "pretrained": cfg.pretrained}
    metrics = train_and_record(cfg, task, model, header, summary, out, resume)
    if _is_main() and hasattr(task, "save_examples"):
        task.save_examples(model, out / "examples.png")  # the selected (best) weights
    return metrics


# --- Decision Transformer ----------------------------------------------------------------------
def dt_task_defaults(name: str) -> dict:
    from unicomp.rl.dt_task import DTTask

    return dict(DTTask.default_train)


def dt_default_out(cfg: DTConfig) -> Path:
    """runs/<algo>-<data folder>-s<seed>, e.g. runs/dt-hopper-medium-s0, runs/pbc10-...;
    the algo part names the BC network when it is not the default."""
    algo = cfg.algo + (f"{cfg.top_percent:g}" if cfg.algo == "pbc" else "")
    if cfg.algo != "dt" and cfg.policy != "dt-noreturn":
        algo += f"-{cfg.policy}"
    return Path("runs") / f"{algo}-{Path(cfg.data).name}-s{cfg.train.seed}"


def build_dt_policy(cfg: DTConfig, task) -> nn.Module:
    """The network ``cfg`` trains: the DT, or for BC/%BC the DT without return tokens or the
    MLP policy (unicomp.rl.baselines)."""
    from unicomp.models.decision_transformer import build_decision_transformer
    from unicomp.rl.baselines import MLPPolicy, MLPPolicyConfig

    obs_shape = task.dataset.obs_shape
    state_dim = int(obs_shape[0]) if len(obs_shape) == 1 else 0
    if cfg.algo != "dt" and cfg.policy == "mlp":
        if cfg.backbone:
            raise UnicompError("--backbone goes with a transformer policy, not --policy mlp")
        if len(obs_shape) != 1:
            raise UnicompError(f"--policy mlp needs vector states; {cfg.data} has {obs_shape}")
        return MLPPolicy(
            MLPPolicyConfig(
                state_dim=state_dim,
                act_dim=task.act_dim,
                discrete=task.discrete,
                hidden_size=cfg.hidden_size,
                n_layer=cfg.n_layer,
                dropout=cfg.dropout,
                max_ep_len=cfg.max_ep_len,
            )
        )
    return build_decision_transformer(
        state_dim,
        task.act_dim,
        discrete=task.discrete,
        max_length=cfg.context,
        max_ep_len=cfg.max_ep_len,
        hidden_size=cfg.hidden_size,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        dropout=cfg.dropout,
        attn_implementation=cfg.attn_implementation,
        image_shape=tuple(obs_shape) if len(obs_shape) == 3 else None,
        use_returns=cfg.algo == "dt",
        **_dt_backbone_fields(cfg),
    )


def _dt_backbone_fields(cfg: DTConfig) -> dict:
    """The DT's backbone settings (none for the paper's GPT-2: its defaults)."""
    if not cfg.backbone:
        return {}
    return {"backbone": cfg.backbone, "freeze": cfg.freeze, "backbone_seed": cfg.train.seed}


def _dt_backbone_summary(model: nn.Module, cfg: DTConfig) -> dict:
    """What metrics.json records of the DT's transformer, as FPT runs do."""
    if not cfg.backbone:
        return {"backbone": None, "freeze": cfg.freeze}
    backbone = model.transformer
    return {
        "backbone": cfg.backbone,
        "freeze": cfg.freeze,
        "backbone_source": backbone.source,
        "backbone_type": backbone.model_type,
        "backbone_is_decoder": backbone.is_decoder,
        "positions": backbone.positions,
        "trainable_by_group": model.trainable_by_group,
    }


# The score keys a DT run folder's metrics.json (and eval.json) carry at the top level, taken
# from the evaluation with the first target return (the paper's higher one by default).
SCORE_KEYS = (
    "return_mean",
    "return_std",
    "normalized_score_mean",
    "normalized_score_std",
    "success_rate",
    "episodes",
)


def primary_scores(evals: list[dict]) -> dict:
    """The first evaluation's scores, for the top level of metrics.json / eval.json."""
    if not evals:
        return {}
    first = evals[0]
    scores = {k: first[k] for k in SCORE_KEYS if k in first}
    # always present; null where the environment has no D4RL reference returns
    scores.setdefault("normalized_score_mean", None)
    scores.setdefault("normalized_score_std", None)
    return {"primary_target": first["target_return"], **scores}


def run_dt(cfg: DTConfig, resume: bool = False) -> dict:
    """Train a Decision Transformer (or, ``cfg.algo`` bc/pbc, a behaviour-cloning baseline) on
    ``cfg.data`` through the one loop (checkpoint chosen on held-out episodes' action loss),
    then act in the environment with the chosen weights, conditioned on each target return
    (BC: once, it reads no return). Writes the usual run folder; ``metrics.json`` adds ``eval``
    (return and normalised score per target), the first target's scores at the top level
    (``return_mean``, ``normalized_score_mean``, ..., ``train_steps``), ``normalization``
    (what acting needs: state mean/std, return scale) and ``model_config`` (what
    ``unicomp dt eval`` rebuilds the network from)."""
    from unicomp.rl.baselines import policy_spec
    from unicomp.rl.dt_task import DTTask
    from unicomp.rl.evaluate import default_targets, evaluate_dt, score_reference

    if not cfg.data:
        raise UnicompError(
            "--data is required: a Minari folder (unicomp dt collect), a Minari data set id "
            "or a D4RL .hdf5 file"
        )
    if cfg.algo == "bc" and cfg.top_percent < 100:
        raise UnicompError("--algo bc trains on all the data; use --algo pbc with --top-percent")
    try:
        task = DTTask(
            cfg.data,
            context=cfg.context,
            rtg_scale=cfg.rtg_scale,
            max_ep_len=cfg.max_ep_len,
            val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction,
            split_seed=cfg.train.seed,
            env_id=cfg.env,
            use_returns=cfg.algo == "dt",
            top_percent=cfg.top_percent,
            delayed_reward=cfg.delayed_reward,
        )
    except ValueError as err:
        raise UnicompError(str(err)) from None
    env_id = task.env_id
    if cfg.eval_episodes > 0 and not env_id:
        raise UnicompError(
            f"{cfg.data} names no environment (D4RL files never do); pass --env, e.g. "
            "--env Hopper-v5, to evaluate in one"
        )
    try:
        targets = [float(t) for t in cfg.eval_targets.split(",") if t.strip()]
    except ValueError:
        raise UnicompError(f"--eval-targets {cfg.eval_targets!r}: expected numbers") from None
    targets = targets or list(default_targets(env_id, float(task.dataset.returns().max())))
    eval_targets: list[float | None] = list(targets) if cfg.algo == "dt" else [None]
    out = Path(cfg.out) if cfg.out else dt_default_out(cfg)
    cfg.out = str(out)
    torch.manual_seed(cfg.train.seed)
    model = build_dt_policy(cfg, task)
    trainable, total = count_parameters(model)
    norm = task.normalization()
    reference = score_reference(env_id, task.dataset.metadata)
    summary = {
        **_dt_backbone_summary(model, cfg),
        "env": env_id,
        # the data set's env spec, to rebuild an environment of the user's (mymod:MyEnv-v0)
        "env_spec": None if cfg.env else task.dataset.metadata.get("env_spec"),
        "reference_scores": reference,  # of normalized_score_*: the data set's, else our table
        "data_path": cfg.data,
        "algo": cfg.algo,
        "policy": "decision-transformer" if cfg.algo == "dt" else cfg.policy,
        "top_percent": cfg.top_percent,
        "delayed_reward": cfg.delayed_reward,
        "context": cfg.context,
        "data": task.dataset.summary(),
        "source_data": task.source_summary,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": trainable / total,
        "normalization": norm,
        "model_config": policy_spec(model),
    }
    header = {"task": "dt", "model": summary["policy"], "data": cfg.data}
    metrics = train_and_record(cfg, task, model, header, summary, out, resume)
    metrics["train_steps"] = metrics["steps"]
    if cfg.eval_episodes > 0 and _is_main():
        metrics["eval"] = [
            evaluate_dt(
                model,
                env_id,
                target,
                norm["state_mean"],
                norm["state_std"],
                cfg.rtg_scale,
                episodes=cfg.eval_episodes,
                seed=cfg.eval_seed,
                n_envs=cfg.eval_envs,
                max_episode_steps=cfg.eval_max_steps or None,
                window=cfg.eval_window,
                delayed_reward=cfg.delayed_reward,
                sample=cfg.eval_sample,
                ref_scores=reference and (reference["ref_min_score"], reference["ref_max_score"]),
                progress=cfg.train.progress,
            )
            for target in eval_targets
        ]
        metrics.update(primary_scores(metrics["eval"]))
    if _is_main():
        atomic_write_json(out / "metrics.json", metrics)
    return metrics
