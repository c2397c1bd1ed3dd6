"""Tables from run folders: ``unicomp report runs/*`` prints one markdown row per run.

The numbers come from each run's metrics.json and config.yaml, so a table in docs/ can be
regenerated from the folders that produced it.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from unicomp.errors import UnicompError

COLUMNS = (
    "task",
    "backbone",
    "freeze",
    "seed",
    "test_accuracy",
    "steps",
    "stopped_by",
    "steps_to_target",
    "train_seconds",
    "trainable_params",
)
# Decision Transformer runs have no accuracy (continuous actions): their loss on held-out
# episodes and what acting scored, columns added where a table holds such runs.
DT_COLUMNS = ("test_loss", "return_mean", "normalized_score_mean")
# A run's score in seeds_table: the first of these it has.
SCORES = (
    ("test_accuracy", "test accuracy"),
    ("normalized_score_mean", "normalized score"),
    ("return_mean", "return"),
    ("test_loss", "test loss"),
)


def _score(run: dict) -> tuple[str, float | None]:
    """(label, value) of the run's headline number (:data:`SCORES`)."""
    found = ((label, run[k]) for k, label in SCORES if run.get(k) is not None)
    return next(found, (SCORES[0][1], None))


def _get(run: dict, column: str):
    if column == "backbone" and run.get("task") == "dt":  # the policy, on its backbone
        backbone = run.get("backbone")
        return run.get("model", "dt") + (f" ({backbone})" if backbone else "")
    if column == "backbone" and "backbone" not in run and "model" in run:
        # Perceiver runs have no backbone: name the model and its latent array instead
        latents = run.get("num_latents")
        return run["model"] + (f" (N={latents})" if latents else "")
    return run.get(column)


# Config keys that do not make two runs different settings: the seed (and the split it
# seeds), where the run was written, how it was shown and on which device, the evaluation
# batch size, and (FPT) which attention kernel (auto: timed per run) or feature cache
# computed the same model.
NOT_SETTINGS = frozenset(
    {
        "out",
        "train.seed",
        "train.progress",
        "train.track",
        "train.device",
        "train.eval_batch_size",
        "attn_implementation",
        "feature_cache",
    }
)


def _config_class(saved: dict) -> type | None:
    from unicomp.config import DTConfig, FPTConfig, PerceiverConfig

    if "data" in saved or "algo" in saved:
        return DTConfig
    if "backbone" in saved or "freeze" in saved:
        return FPTConfig
    if "model" in saved or "num_latents" in saved:
        return PerceiverConfig
    return None


def run_settings(
    folder: str | Path, cls: type | None = None, ignore: Callable[[str], bool] | None = None
) -> dict[str, str]:
    """A run folder's config.yaml flattened (``train.lr``, ...), minus what does not define
    the setting (``ignore``, default :data:`NOT_SETTINGS`), values as JSON text; {} for runs
    without one (other programs' runs). A key the file lacks (a setting added after the run)
    reads as its default (of ``cls``, else the config class the keys belong to), so that a
    run written before ``time_limit_minutes`` existed still groups with runs that left it
    at 0."""
    path = Path(folder) / "config.yaml"
    if not path.exists():
        return {}
    from unicomp.config import load_yaml, to_dict

    ignore = ignore or NOT_SETTINGS.__contains__
    saved = load_yaml(path)
    cls = cls or _config_class(saved)
    config = to_dict(cls()) if cls else {"train": {}}
    config.update({k: v for k, v in saved.items() if k != "train"})
    config["train"].update(saved.get("train") or {})
    flat: dict[str, str] = {}
    for key, value in config.items():
        items = value.items() if key == "train" and isinstance(value, dict) else [(None, value)]
        for sub, v in items:
            name = f"{key}.{sub}" if sub else key
            if not ignore(name):
                flat[name] = json.dumps(v, sort_keys=True)
    return flat


def differing_settings(settings: dict[str, str], peers: list[dict[str, str]]) -> list[str]:
    """``lr=0.001``, ... for each setting in which ``settings`` differs from one of ``peers``
    (the settings of rows that would otherwise read alike)."""
    keys = set().union(settings, *peers)
    differ = sorted(k for k in keys if len({p.get(k) for p in [settings, *peers]}) > 1)
    return [
        f"{k.removeprefix('train.')}={json.loads(settings[k])}" for k in differ if k in settings
    ]


def load_runs(folders: list[str]) -> list[dict]:
    """Each finished run's metrics.json, with ``run`` (its folder) and ``settings`` (its
    config.yaml's, :func:`run_settings`)."""
    runs = []
    for folder in folders:
        path = Path(folder) / "metrics.json"
        if not path.exists():
            continue  # unfinished or not a run folder
        try:
            metrics = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise UnicompError(f"{path} is not valid JSON: {err}") from None
        runs.append({**metrics, "run": str(folder), "settings": run_settings(folder)})
    if not runs:
        raise UnicompError(f"no finished runs (metrics.json) in {', '.join(folders)}")
    return runs


def _cell(value, precise: bool = False) -> str:
    """Fractions (and ``precise`` numbers: losses) to 4 decimals, larger numbers whole."""
    if isinstance(value, float):
        return f"{value:.4f}" if precise or abs(value) <= 1 else f"{value:.0f}"
    return "-" if value is None else str(value)


def runs_table(runs: list[dict]) -> str:
    columns = COLUMNS + (DT_COLUMNS if any(r.get("task") == "dt" for r in runs) else ())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in runs:
        cells = (_cell(_get(r, c), precise=c == "test_loss") for c in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seeds_table(runs: list[dict]) -> str:
    """Mean and spread over seeds of each setting: runs whose config.yaml differ only in the
    seed (and :data:`NOT_SETTINGS`) are one row; rows of the same task, backbone and freeze
    name the settings that tell them apart (runs without a config.yaml: by task, backbone
    and freeze alone)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        setting = tuple(sorted(r.get("settings", {}).items()))
        groups[(r.get("task"), _get(r, "backbone"), r.get("freeze"), setting)].append(r)
    accuracy_only = all(_score(r)[0] == SCORES[0][1] for r in runs)
    lines = [
        f"| task | backbone | freeze | seeds | {'test accuracy' if accuracy_only else 'score'} "
        "mean ± std | steps to target (each seed) | settings that differ |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, rs in groups.items():
        task, backbone, freeze, setting = key
        peers = [dict(k[3]) for k in groups if k[:3] == key[:3] and k != key]
        shown = (", ".join(differing_settings(dict(setting), peers)) if peers else "") or "-"
        label = _score(rs[0])[0]
        key_of = next(k for k, name in SCORES if name == label)
        values = [r[key_of] for r in rs if r.get(key_of) is not None]
        score = "-"
        if values:
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            score = f"{statistics.mean(values):.4f} ± {spread:.4f}"
            if not accuracy_only:  # the metric named, and how many runs have it
                partial = f" ({len(values)} runs)" if len(values) < len(rs) else ""
                score = f"{label} {score}{partial}"
        reached = ", ".join(_cell(r.get("steps_to_target")) for r in rs)
        lines.append(
            f"| {task} | {backbone} | {freeze} | {len(rs)} | {score} | {reached} | {shown} |"
        )
    return "\n".join(lines)
