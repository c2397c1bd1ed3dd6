"""Run folders read back as tables, for every model family: ``unicomp report runs/*`` (one
markdown row per run, or ``--by-seed``: mean +- std over seeds) and ``unicomp dt compare``
(Decision Transformer / BC runs: returns and normalised scores, mean +- std over training
seeds; .md and .csv).

The numbers come from each run's metrics.json and config.yaml, so a table in docs/ can be
regenerated from the folders that produced it. Writing a run folder: unicomp.experiments.common;
loading one back into its model: ``unicomp.experiments.load_run``.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from unicomp.errors import UnicompError
from unicomp.experiments.kinds import KINDS
from unicomp.experiments.offline_rl import data_label, run_label
from unicomp.files import atomic_write_text, read_record

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
    from unicomp.config import load_yaml, recorded_kind, to_dict

    ignore = ignore or NOT_SETTINGS.__contains__
    saved = load_yaml(path)
    kind = KINDS.get(recorded_kind(saved) or "")
    cls = cls or (kind.config if kind else None)
    saved.pop("kind", None)  # the family, not a setting (runs before it have none)
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
        metrics = read_record(path)
        _check_table_fields(metrics, path)
        runs.append({**metrics, "run": str(folder), "settings": run_settings(folder)})
    if not runs:
        raise UnicompError(f"no finished runs (metrics.json) in {', '.join(folders)}")
    return runs


def markdown_table(
    head: Sequence[str], rows: Iterable[Sequence[Any]], align: Sequence[str] | None = None
) -> str:
    """A Markdown table: a header row, the alignment row (``align``: per column "---",
    "---:" or ":--"; default "---") and one row per ``rows`` item; cells are ``str()``'d, with
    "|" escaped and line breaks made spaces. Every table unicomp prints or writes uses it."""

    def line(cells: Iterable[Any]) -> str:
        text = (str(c).replace("|", "\\|").replace("\n", " ") for c in cells)
        return "| " + " | ".join(text) + " |"

    rule = "|" + "|".join(align or ["---"] * len(head)) + "|"
    return "\n".join([line(head), rule, *(line(r) for r in rows)])


def _cell(value, precise: bool = False) -> str:
    """Fractions (and ``precise`` numbers: losses) to 4 decimals, larger numbers whole."""
    if isinstance(value, float):
        return f"{value:.4f}" if precise or abs(value) <= 1 else f"{value:.0f}"
    return "-" if value is None else str(value)


def runs_table(runs: list[dict]) -> str:
    columns = COLUMNS + (DT_COLUMNS if any(r.get("task") == "dt" for r in runs) else ())
    rows = ([_cell(_get(r, c), precise=c == "test_loss") for c in columns] for r in runs)
    return markdown_table(columns, rows)


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
    head = ["task", "backbone", "freeze", "seeds"]
    head += [f"{'test accuracy' if accuracy_only else 'score'} mean ± std"]
    head += ["steps to target (each seed)", "settings that differ"]
    rows = []
    for key, rs in groups.items():
        task, backbone, freeze, setting = key
        peers = [dict(k[3]) for k in groups if k[:3] == key[:3] and k != key]
        shown = (", ".join(differing_settings(dict(setting), peers)) if peers else "") or "-"
        label = _score(rs[0])[0]
        key_of = next(k for k, name in SCORES if name == label)
        values = [r[key_of] for r in rs if r.get(key_of) is not None]
        score = "-"
        if values:
            mean, spread = mean_std(values, single=0.0)
            score = f"{mean:.4f} ± {spread:.4f}"
            if not accuracy_only:  # the metric named, and how many runs have it
                partial = f" ({len(values)} runs)" if len(values) < len(rs) else ""
                score = f"{label} {score}{partial}"
        reached = ", ".join(_cell(r.get("steps_to_target")) for r in rs)
        rows.append([task, backbone, freeze, len(rs), score, reached, shown])
    return markdown_table(head, rows)


def _check_table_fields(metrics: dict, path: Path) -> None:
    """The values the report tables read: text or numbers (a list or an object where one
    belongs was a TypeError inside the table), scores numbers."""
    scores = {key for key, _ in SCORES}
    for key in (*COLUMNS, *DT_COLUMNS, *scores, "model", "num_latents"):
        value = metrics.get(key)
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if value is None or (numeric if key in scores else numeric or isinstance(value, str)):
            continue
        wanted = "a number" if key in scores else "text or a number"
        raise UnicompError(f"{path}: {key} must be {wanted}, got {json.dumps(value)[:60]}")


# --- comparison table ---------------------------------------------------------------------------
def _scores(run: Path) -> dict:
    """A run's metrics, with eval.json's scores over metrics.json's where both exist."""
    metrics = read_record(run / "metrics.json")
    row = {**metrics, "run": str(run), "label": run_label(metrics)}
    if "data_path" not in row and (run / "config.yaml").exists():  # runs before data_path
        from unicomp.config import load_yaml

        row["data_path"] = str(load_yaml(run / "config.yaml").get("data", ""))
    if (run / "eval.json").exists():
        row.update({k: v for k, v in read_record(run / "eval.json").items() if k != "label"})
    return row


# Config keys that do not make two runs different settings: the seed (and the split it
# seeds), where the run was written, how it was shown, and how it was evaluated.
_NOT_SETTINGS = {"out", "train.seed", "train.progress", "train.device", "train.eval_batch_size"}


def _settings(run: Path) -> dict[str, str]:
    """The run's setting (unicomp.runs.run_settings), evaluation settings aside."""
    return run_settings(
        run, KINDS["dt"].config, lambda k: k in _NOT_SETTINGS or k.startswith("eval_")
    )


def mean_std(values: list[float], single: float | None = None) -> tuple[float, float | None]:
    """Mean and sample standard deviation of per-seed values (``single`` for one value).
    Every table over seeds uses it: ``report --by-seed``, ``dt compare``, ``fpt ablate``."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else single


def compare_runs(runs: list[str | Path]) -> list[dict[str, Any]]:
    """One row per setting: runs whose config.yaml differ only in seed (and output folder and
    evaluation settings) are grouped; each score is the mean over seeds of the per-run mean,
    ± the sample standard deviation across seeds (None with a single seed). Rows that would
    read alike (same algorithm label, data set, environment, training steps) name the
    settings that tell them apart, e.g. "DT (rtg_scale=0.1)"."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    settings: dict[tuple, dict[str, str]] = {}
    for run in runs:
        row = _scores(Path(run))
        if "return_mean" not in row:
            raise UnicompError(
                f"{run}: no evaluation scores; run `unicomp dt eval --run {run}` first"
            )
        data = data_label(row.get("data_path", ""))
        steps = row.get("train_steps", row.get("steps"))
        config = _settings(Path(run))
        key = (row["label"], data, row.get("env"), steps, tuple(sorted(config.items())))
        groups[key].append(row)
        settings[key] = config
    alike: dict[tuple, list[tuple]] = defaultdict(list)
    for key in groups:
        alike[key[:4]].append(key)
    table = []
    for key, rows in groups.items():
        label, data, env, steps, _ = key
        peers = alike[key[:4]]
        if len(peers) > 1:
            others = [settings[p] for p in peers if p != key]
            label = f"{label} ({', '.join(differing_settings(settings[key], others))})"
        entry: dict[str, Any] = {
            "algo": label,
            "dataset": data,
            "env": env,
            "n_seeds": len(rows),
            "seeds": " ".join(str(r.get("seed")) for r in rows),
            "episodes": rows[0].get("episodes"),
            "train_steps": steps,
        }
        for key in ("return_mean", "normalized_score_mean", "success_rate"):
            values = [r[key] for r in rows if r.get(key) is not None]
            name = key.removesuffix("_mean")
            if len(values) == len(rows):
                entry[f"{name}_mean"], entry[f"{name}_std"] = mean_std(values)
            else:
                entry[f"{name}_mean"] = entry[f"{name}_std"] = None
            if len(rows) == 1:  # one seed: the spread over its episodes, marked in the table
                entry[f"{name}_episode_std"] = rows[0].get(f"{name}_std")
        table.append(entry)
    return table


CSV_FIELDS = (
    "algo",
    "dataset",
    "env",
    "n_seeds",
    "seeds",
    "episodes",
    "train_steps",
    "return_mean",
    "return_std",
    "normalized_score_mean",
    "normalized_score_std",
    "success_rate_mean",
    "success_rate_std",
)


def _pm(mean: float | None, std: float | None, digits: int, episode_std: float | None = None):
    if mean is None:
        return "-"
    if digits == 1 and abs(mean) < 10:
        digits = 3  # small returns (Key-to-Door: 0 or 1) need more than one decimal
    if std is not None:
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    if episode_std is not None:
        return f"{mean:.{digits}f} ± {episode_std:.{digits}f}*"
    return f"{mean:.{digits}f}"


def table_markdown(table: list[dict[str, Any]]) -> str:
    success = any(r["success_rate_mean"] is not None for r in table)
    head = ["algo", "dataset", "env", "steps", "seeds", "return", "normalised score"]
    head += ["success rate"] if success else []
    rows = []
    for r in table:
        cells = [
            r["algo"],
            r["dataset"],
            str(r["env"]),
            str(r["train_steps"]),
            f"{r['n_seeds']} ({r['seeds']})",
            _pm(r["return_mean"], r["return_std"], 1, r.get("return_episode_std")),
            _pm(
                r["normalized_score_mean"],
                r["normalized_score_std"],
                1,
                r.get("normalized_score_episode_std"),
            ),
        ]
        if success:
            cells.append(_pm(r["success_rate_mean"], r["success_rate_std"], 3))
        rows.append(cells)
    lines = [markdown_table(head, rows), ""]
    lines.append(
        "± is the standard deviation across training seeds; * marks a single seed, where it "
        "is the spread over its evaluation episodes."
    )
    return "\n".join(lines) + "\n"


def table_csv(table: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(table)
    return buf.getvalue()


def write_comparison(runs: list[str | Path], out: str | Path) -> tuple[str, list[dict]]:
    """The table as markdown (returned, and written to ``out``.md) and CSV (``out``.csv)."""
    table = compare_runs(runs)
    text = table_markdown(table)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".md"), text)
    atomic_write_text(out.with_suffix(".csv"), table_csv(table))
    return text, table
