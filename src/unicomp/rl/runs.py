"""Finished Decision Transformer / BC run folders: evaluate one again in its environment
(``unicomp dt eval``) and compare many in one table (``unicomp dt compare``).

A run folder (``unicomp dt train``) holds config.yaml, metrics.json (with ``model_config``
and ``normalization``) and best.safetensors (the validation-selected weights). ``eval.json``,
written by ``evaluate_run``, holds the same top-level score keys as metrics.json:
``return_mean``, ``return_std``, ``normalized_score_mean``, ``normalized_score_std``
(D4RL environments), ``success_rate`` (Key-to-Door), ``episodes`` and ``train_steps``, taken
from the first target return, and every target's result under ``eval``.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from unicomp.errors import UnicompError
from unicomp.files import atomic_write_json, atomic_write_text
from unicomp.report import differing_settings, run_settings


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UnicompError(f"{path} does not exist: not a finished run folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UnicompError(f"{path}: not readable JSON ({err})") from None


def load_run(run: str | Path):
    """(config, metrics, model with its best weights) of a finished DT/BC run folder."""
    import torch
    from safetensors.torch import load_file

    from unicomp.config import DTConfig, from_dict, load_yaml
    from unicomp.experiments import build_dt_policy
    from unicomp.rl.baselines import build_policy
    from unicomp.train import load_trainable_state

    run = Path(run)
    cfg = from_dict(DTConfig, load_yaml(run / "config.yaml"), f"{run / 'config.yaml'}")
    metrics = _read_json(run / "metrics.json")
    if "normalization" not in metrics:
        raise UnicompError(f"{run / 'metrics.json'}: no 'normalization'; not a dt train run")
    if "model_config" in metrics:
        model = build_policy(metrics["model_config"])
    else:  # runs written before model_config was recorded: rebuild from the data set
        from unicomp.rl.dt_task import DTTask

        task = DTTask(cfg.data, context=cfg.context, max_ep_len=cfg.max_ep_len, env_id=cfg.env)
        torch.manual_seed(0)
        model = build_dt_policy(cfg, task)
    best = run / "best.safetensors"
    if not best.exists():
        raise UnicompError(f"{best} does not exist: the run saved no weights")
    load_trainable_state(model, load_file(best))
    return cfg, metrics, model.eval()


def evaluate_run(
    run: str | Path,
    episodes: int = 10,
    seed: int | None = None,
    targets: list[float] | None = None,
    n_envs: int = 16,
    max_steps: int | None = None,
    window: str | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Act with a run's best weights in its environment: ``episodes`` episodes per target
    return (episode i resets with ``seed + i``; default the run's ``eval_seed``), many at
    once in vector environments. Targets default to the ones the run was evaluated with
    (else the paper's for the environment); BC runs ignore them. Writes ``out``
    (default ``run/eval.json``) and returns its content."""
    from unicomp.experiments import primary_scores
    from unicomp.provenance import provenance
    from unicomp.rl.evaluate import default_targets, evaluate_dt
    from unicomp.rl.trajectories import register_env_spec

    cfg, metrics, model = load_run(run)
    env_id = metrics.get("env") or cfg.env
    if not env_id:
        raise UnicompError(f"{run}: the run names no environment to act in")
    if metrics.get("env_spec"):  # the data set's environment, registered as it recorded it
        register_env_spec(metrics["env_spec"])
    reference = metrics.get("reference_scores")  # runs before it was recorded: our table
    norm = metrics["normalization"]
    if cfg.algo != "dt":
        chosen: list[float | None] = [None]
    elif targets:
        chosen = list(targets)
    elif metrics.get("eval"):
        chosen = [e["target_return"] for e in metrics["eval"]]
    else:
        chosen = list(default_targets(env_id, float(metrics["data"]["return_max"])))
    seed = cfg.eval_seed if seed is None else seed
    evals = [
        evaluate_dt(
            model,
            env_id,
            target,
            norm["state_mean"],
            norm["state_std"],
            norm["rtg_scale"],
            episodes=episodes,
            seed=seed,
            n_envs=n_envs,
            max_episode_steps=max_steps or None,
            window=window or cfg.eval_window,
            delayed_reward=bool(norm.get("delayed_reward", False)),
            sample=cfg.eval_sample,
            ref_scores=reference and (reference["ref_min_score"], reference["ref_max_score"]),
        )
        for target in chosen
    ]
    result = {
        "run": str(run),
        "env": env_id,
        "algo": cfg.algo,
        "label": run_label(metrics, cfg.algo),
        "data_path": cfg.data,
        "seed": cfg.train.seed,
        "eval_seed": seed,
        "train_steps": metrics.get("steps"),
        "best_step": metrics.get("best_step"),
        **primary_scores(evals),
        "eval": evals,
        **provenance(),
    }
    atomic_write_json(Path(out) if out else Path(run) / "eval.json", result)
    return result


# --- comparison table ---------------------------------------------------------------------------
def run_label(metrics: dict, algo: str | None = None) -> str:
    """DT, DT K=1, DT delayed, BC (mlp), %BC 10% (dt-noreturn), ... from a run's metrics."""
    algo = algo or metrics.get("algo", "dt")
    top = float(metrics.get("top_percent", 100.0))
    if algo == "dt":
        label = "DT"
        if metrics.get("context", 20) != 20:
            label += f" K={metrics['context']}"
        if top < 100:
            label += f" top {top:g}%"
    elif algo in ("bc", "pbc"):
        label = f"%BC {top:g}%" if algo == "pbc" else "BC"
        label += f" ({metrics.get('policy', 'dt-noreturn')})"
    else:  # runs of other programs in our format (scripts/d3rlpy_baseline.py: cql, iql)
        label = algo.upper()
    if metrics.get("delayed_reward"):
        label += " delayed"
    return label


def _scores(run: Path) -> dict:
    """A run's metrics, with eval.json's scores over metrics.json's where both exist."""
    metrics = _read_json(run / "metrics.json")
    row = {**metrics, "run": str(run), "label": run_label(metrics)}
    if "data_path" not in row and (run / "config.yaml").exists():  # runs before data_path
        from unicomp.config import load_yaml

        row["data_path"] = str(load_yaml(run / "config.yaml").get("data", ""))
    if (run / "eval.json").exists():
        row.update({k: v for k, v in _read_json(run / "eval.json").items() if k != "label"})
    return row


# Config keys that do not make two runs different settings: the seed (and the split it
# seeds), where the run was written, how it was shown, and how it was evaluated.
_NOT_SETTINGS = {"out", "train.seed", "train.progress", "train.device", "train.eval_batch_size"}


def _settings(run: Path) -> dict[str, str]:
    """The run's setting (unicomp.report.run_settings), evaluation settings aside."""
    from unicomp.config import DTConfig

    return run_settings(run, DTConfig, lambda k: k in _NOT_SETTINGS or k.startswith("eval_"))


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else None


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
        data = Path(str(row.get("data_path", ""))).name
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
                entry[f"{name}_mean"], entry[f"{name}_std"] = _mean_std(values)
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
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
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
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
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
