"""What every model family's run shares: the task by name, the run folder written around the
one training loop (``train_and_record``), resuming with changed settings, and a finished
folder's weights read back and checked.

Run folder: config.yaml (resolved config), metrics.json, curve.csv, best.safetensors,
checkpoint.pt. The families: ``unicomp.experiments.fpt``, ``.perceiver``, ``.dt``.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unicomp.config import (
    check_config,
    from_dict,
    load_yaml,
    save_yaml,
    to_dict,
)
from unicomp.errors import RunFolderError, UnicompError, WeightsNotFoundError
from unicomp.files import atomic_write_json, claim_run_folder
from unicomp.provenance import provenance
from unicomp.tasks.base import Task
from unicomp.tasks.catalog import TASKS, ensure_task, expand_task, task_source
from unicomp.train import Placement, is_main_process, train


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


def settle_task(cfg: Any, where: str = "config") -> None:
    """``cfg.task`` as a run records it: a shorthand expanded (``array:PATH`` -> task
    ``array``, ``path=PATH``), the task made known from ``cfg.task_source`` where it is not
    (a config of a task registered elsewhere), and ``cfg.task_source`` set to where the task
    is defined (None for built-in tasks), so that the run's config.yaml finds it again."""
    cfg.task, cfg.task_args = expand_task(cfg.task, dict(cfg.task_args))
    ensure_task(cfg.task, cfg.task_source, where)
    cfg.task_source = task_source(cfg.task)


def build_task(name: str, args: dict) -> Task:
    cls = TASKS.entry(name).load()
    valid = task_arguments(cls)
    unknown = [k for k in args if k not in valid]
    if unknown:  # (a task taking **kwargs would list them nowhere; none does)
        keys = ", ".join(f"{k} (default {v!r})" for k, v in valid.items()) or "none"
        raise UnicompError(
            f"task {name!r}: bad --task-arg {', '.join(map(str, unknown))}; valid keys: {keys}"
        )
    _check_task_sizes(name, cls, valid, args)
    try:
        return cls(**args)
    except TypeError as err:
        raise UnicompError(f"task {name!r}: bad --task-arg: {err}") from None
    except ValueError as err:
        raise UnicompError(f"task {name!r}: {err}") from None


def _check_task_sizes(name: str, cls: type, defaults: dict, args: dict) -> None:
    """Refuse task arguments outside their bounds (the task's ``arg_limits``, else 0..
    MAX_TASK_INT; seeds 0..2^63-1) and arguments whose sizes multiply past MAX_TASK_NUMBERS
    stored numbers, before the task allocates anything (bit memory with n_bits=10^8 tried to
    allocate 1 TB; n_bits=-50 gave torch's error for a negative dimension)."""
    from unicomp.config import MAX_SEED
    from unicomp.tasks.base import MAX_TASK_INT, MAX_TASK_NUMBERS

    limits = getattr(cls, "arg_limits", {})
    for key, value in args.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not (
            key in limits or isinstance(defaults.get(key), int) or isinstance(value, int)
        ):
            continue  # floats of float arguments (fractions, probabilities), text, paths
        default = (0, MAX_SEED) if key.endswith("seed") else (0, MAX_TASK_INT)
        low, high = limits.get(key, default)
        if not low <= value <= high:
            raise UnicompError(
                f"task {name!r}: --task-arg {key}={value!r} is outside {low}..{high}"
            )
    stored_numbers = getattr(cls, "stored_numbers", None)
    if stored_numbers is None:
        return
    every = {k: v for k, v in defaults.items() if v != "required"} | args
    try:
        numbers = stored_numbers(every)
    except (TypeError, ValueError):  # a value of the wrong kind: the constructor says which
        return
    if numbers > MAX_TASK_NUMBERS:
        sizes = ", ".join(f"{k}={v}" for k, v in every.items() if isinstance(v, int))
        raise UnicompError(
            f"task {name!r}: {sizes} would store {numbers:.3g} numbers; the limit is "
            f"{MAX_TASK_NUMBERS:.3g} (make the largest --task-arg smaller)"
        )


def check_run_call(resume: bool, overwrite: bool) -> None:
    """``resume`` and ``overwrite`` ask for opposite things: one at most."""
    if resume and overwrite:
        raise RunFolderError(
            "resume=True continues the run in cfg.out, overwrite=True replaces it: pass one",
            "--resume continues the run in --out, --overwrite replaces it: pass one",
        )


def train_and_record(
    cfg: Any,
    task: Task,
    model: nn.Module,
    header: dict,
    summary: dict,
    out: Path,
    resume: bool,
    overwrite: bool = False,
    placement: Placement | None = None,
) -> dict:
    """The part every ``run_*`` shares: save config.yaml, train, write metrics.json.
    ``resume``: continue the run in ``out``; ``overwrite``: replace the run there (see
    ``check_run_call``); ``placement``: the run's device and precision where the caller
    resolved them already (else resolved here, once, for the whole run).

    metrics.json: ``header`` (what was run), the seed, the training result, ``summary``
    (what was built), then the data and the machine.
    """
    check_config(cfg)  # every value in range before anything is written
    check_run_call(resume, overwrite)
    is_main = is_main_process()
    changes = check_resume(cfg, out) if resume else {}
    placement = placement or Placement.resolve(cfg.train)
    # Claimed (locked) for the run; a new run into a folder holding one is refused before
    # config.yaml is written; a start that fails before its first checkpoint is undone.
    with claim_run_folder(out, resume=resume, enabled=is_main, overwrite=overwrite):
        if is_main and (not resume or changes):
            # on resume: the changes applied, recorded; the device ``auto`` picks, as a comment
            # (the setting stays auto, so the file runs again on another machine)
            used = f"train.device {cfg.train.device}: this run used {placement.device}"
            save_yaml(cfg, out / "config.yaml", comments=[used])
        t0 = time.perf_counter()
        result = train(
            model, task, cfg.train, out, resume=resume, run_config=to_dict(cfg), placement=placement
        )
        if is_main:  # the task's own test scores, with the best weights train() left loaded
            result.update(task.test_metrics(model, cfg.train.eval_batch_size))
        metrics = {
            **header,
            "seed": cfg.train.seed,
            **result,
            **summary,
            "data_source": task.data_source,
            "split_sizes": task.split_sizes(),
            **task.record(result),  # the task's own: checksums, statistics, ...
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
    saved = _moved_with_the_folder(saved, asked.get("out"))
    diffs = {k: [saved.get(k), v] for k, v in asked.items() if k != "out" and saved.get(k) != v}
    return diffs, {k: v for k, v in diffs.items() if k not in RESUMABLE_CHANGES}


def _moved_with_the_folder(saved: dict, out: str | None) -> dict:
    """A run folder copied or moved elsewhere (records committed in one checkout, read in
    another) names paths under its old location: those paths, read as under the new one."""
    old = saved.get("out")
    if not (isinstance(old, str) and out) or old == out:
        return saved
    a, b = Path(old).parts, Path(out).parts
    common = 0  # the shared tail: the folder's place inside the moved tree
    while common < min(len(a), len(b)) and a[-1 - common] == b[-1 - common]:
        common += 1
    if not common:
        return saved
    old_root, new_root = str(Path(*a[: len(a) - common])), str(Path(*b[: len(b) - common]))
    # also after a prefix such as random:, stats: or run:
    return {
        k: v.replace(old_root + "/", new_root + "/") if isinstance(v, str) else v
        for k, v in saved.items()
    }


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
        why = (
            f"would change what {out} was trained with: {listed}; only {allowed} (and "
            "feature_cache, DT eval settings) may change on resume; start a new run for the "
            "others"
        )
        raise RunFolderError(f"resume=True {why}", f"--resume {why}")
    return diffs


# --- reading a finished run folder back ---------------------------------------------------------
def recorded_best_step(folder: Path, where: str, finished: bool) -> int | None:
    """The run folder's best_step, from its metrics.json; without a readable metrics.json an
    error where ``finished`` is asked for, else None. ``where`` prefixes the message."""
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


def read_best(folder: Path, where: str = "") -> dict[str, torch.Tensor]:
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


def load_checked(
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
