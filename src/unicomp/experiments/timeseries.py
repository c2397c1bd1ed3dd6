"""The time-series baselines (``unicomp ts baseline``) in our run-folder format, beside the
FPT runs of the same task: for ``ucr`` classification, aeon's MiniRocket and ROCKET and a
1-nearest-neighbour classifier with (unconstrained) dynamic time warping, aeon's own
implementations; for ``forecast``, the naive and seasonal-naive forecasts and a DLinear-style
linear model (unicomp.models.forecasters).

The classifiers see the series the FPT sees (z-normalised per series where the task's
``normalize`` is ``instance``) and fit on the archive's whole train file (train + our
validation draw: they select nothing on it), as the archive's published baselines do; series
of unequal length are padded at the end with their last value for MiniRocket and ROCKET
(1-NN DTW takes them as they are). The forecasters are scored by the task's own loss and
metrics on the same windows; DLinear trains in the one training loop (unicomp.train) with
the task's training defaults, selected on the validation windows like an FPT run.

Run folder: config.yaml (method, task, task arguments, seed, settings, and the command that
repeats the run), metrics.json (test_accuracy, or test_mse/test_mae; seconds; what was used),
and for DLinear the loop's curve.csv and best.safetensors.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unicomp.config import TrainConfig
from unicomp.errors import UnicompError
from unicomp.experiments.common import build_task
from unicomp.files import atomic_write_json
from unicomp.provenance import provenance

CLASSIFIERS = ("minirocket", "rocket", "1nn-dtw")
FORECASTERS = ("naive", "seasonal-naive", "dlinear")
METHODS = {"ucr": CLASSIFIERS, "forecast": FORECASTERS}


def default_out(task: str, task_args: dict, method: str, seed: int) -> Path:
    from unicomp.tasks.catalog import TASKS

    label = getattr(TASKS.entry(task).load(), "run_label", None)
    name = label(task_args) if label else task
    return Path("runs") / "ts-baselines" / f"{name}-{method}-s{seed}"


def command_text(task: str, task_args: dict, method: str, seed: int, out: Path, **extra) -> str:
    """The command line that repeats the run."""
    words = ["unicomp", "ts", "baseline", "--task", task]
    for key, value in task_args.items():
        words += ["--task-arg", f"{key}={value}"]
    words += ["--method", method, "--seed", str(seed)]
    for key, value in extra.items():
        if value is not None:
            words += [f"--{key.replace('_', '-')}", str(value)]
    return shlex.join([*words, "--out", str(out)])


def run_baseline(
    task: str,
    task_args: dict[str, Any],
    method: str,
    out: str | Path | None = None,
    *,
    seed: int = 0,
    season: int | None = None,
    steps: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit and score ``method`` on the task; write the run folder ``out``; return its metrics
    (and ``out``, the folder)."""
    if task not in METHODS:
        raise UnicompError(f"ts baseline: task {task!r}; time-series tasks: {', '.join(METHODS)}")
    if method not in METHODS[task]:
        raise UnicompError(
            f"ts baseline: method {method!r} is not for task {task}; choices: "
            f"{', '.join(METHODS[task])}"
        )
    out = Path(out) if out else default_out(task, task_args, method, seed)
    if (out / "metrics.json").exists() and not overwrite:
        raise UnicompError(f"{out} already holds a run (metrics.json); pass --overwrite or --out")
    built = build_task(task, task_args)
    extra = {"season": season, "steps": steps, "lr": lr, "batch_size": batch_size}
    command = command_text(task, task_args, method, seed, out, **extra)
    out.mkdir(parents=True, exist_ok=True)
    config = {"method": method, "task": task, "task_args": task_args, "seed": seed}
    config.update({k: v for k, v in extra.items() if v is not None})
    config["command"] = command
    t0 = time.perf_counter()
    if task == "ucr":
        result = _classify(built, method, seed)
    else:
        cfg = TrainConfig(**{**built.default_train, "seed": seed, "device": device,
                             "progress": progress, "precision": "fp32"})  # fmt: skip
        for key in ("steps", "lr", "batch_size"):
            if extra[key] is not None:
                setattr(cfg, key, extra[key])
        result = _forecast(built, method, season, cfg, out)
    import yaml

    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    metrics = {
        "task": task,
        "model": method,
        "method": method,
        "seed": seed,
        **result,
        "data_source": built.data_source,
        "split_sizes": built.split_sizes(),
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "command": command,
        "threads": torch.get_num_threads(),
        **provenance(),
    }
    atomic_write_json(out / "metrics.json", metrics)
    return {**metrics, "out": str(out)}


# --- classification ---------------------------------------------------------------------------
def _aeon_classifier(method: str, seed: int):
    try:
        if method == "minirocket":
            from aeon.classification.convolution_based import MiniRocketClassifier

            return MiniRocketClassifier(random_state=seed, n_jobs=1)
        if method == "rocket":
            from aeon.classification.convolution_based import RocketClassifier

            return RocketClassifier(random_state=seed, n_jobs=1)
        from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier

        return KNeighborsTimeSeriesClassifier(distance="dtw", n_neighbors=1, n_jobs=1)
    except ImportError:
        from unicomp.data.timeseries import AEON_INSTALL

        raise UnicompError(f"ts baseline {method} is aeon's: {AEON_INSTALL}") from None


def _series(task, part: str) -> list[np.ndarray]:
    from unicomp.tasks.timeseries import zscore

    rows = task.series[part]
    return [zscore(s) if task.normalize == "instance" else s for s in rows]


def _padded(series: list[np.ndarray], length: int) -> np.ndarray:
    """(N, C, length): each series extended at its end with copies of its last step."""
    return np.stack([np.pad(s, ((0, 0), (0, length - s.shape[1])), mode="edge") for s in series])


def _classify(task, method: str, seed: int) -> dict[str, Any]:
    import aeon  # noqa: F401  (the error above names the install where it is missing)

    train = _series(task, "train") + _series(task, "val")
    y_train = np.concatenate([task.data["train"].y.numpy(), task.data["val"].y.numpy()])
    test, y_test = _series(task, "test"), task.data["test"].y.numpy()
    equal = len({s.shape[1] for s in train + test}) == 1
    longest = max(s.shape[1] for s in train + test)
    note = "equal lengths"
    if equal:
        x_train, x_test = np.stack(train), np.stack(test)
    elif method == "1nn-dtw":
        x_train, x_test = train, test
        note = "unequal lengths, as they are"
    else:
        x_train, x_test = _padded(train, longest), _padded(test, longest)
        note = f"unequal lengths, padded at the end with the last value to {longest}"
    model = _aeon_classifier(method, seed)
    t0 = time.perf_counter()
    model.fit(x_train, y_train.astype(str))
    fit_seconds = time.perf_counter() - t0
    pred = model.predict(x_test).astype(int)
    predict_seconds = time.perf_counter() - t0 - fit_seconds
    majority = np.bincount(y_test).max() / len(y_test)
    from unicomp.data.timeseries import aeon_version

    return {
        "test_accuracy": float((pred == y_test).mean()),
        "test_elements": int(len(y_test)),
        "test_constant_accuracy": float(majority),
        "fit_on": f"train + val ({len(train)} series: the archive's whole train file)",
        "inputs": note,
        "implementation": f"aeon {aeon_version()} {type(model).__name__}",
        "fit_seconds": round(fit_seconds, 2),
        "predict_seconds": round(predict_seconds, 2),
    }


# --- forecasting -------------------------------------------------------------------------------
def _forecast(task, method: str, season: int | None, cfg: TrainConfig, out: Path) -> dict:
    from unicomp.models.forecasters import DLinear, Naive, SeasonalNaive
    from unicomp.train import evaluate, pick_device
    from unicomp.train import train as train_loop

    sizes = (task.lookback, task.horizon, task.patch, task.stride)
    if method != "naive" and task.stride > task.patch:
        raise UnicompError(
            f"{method} reads the window back from the patches: needs stride <= patch"
        )
    result: dict[str, Any] = {"implementation": f"unicomp.models.forecasters.{method}"}
    if method == "dlinear":
        torch.manual_seed(cfg.seed)
        model = DLinear(*sizes)
        trained = train_loop(model, task, cfg, out, run_config={"method": method})
        keep = ("best_step", "steps", "val_loss", "train_seconds", "device", "stopped_by")
        result.update({k: trained[k] for k in keep})
        result["train"] = {k: getattr(cfg, k) for k in ("steps", "lr", "batch_size", "seed")}
    else:
        if method == "seasonal-naive":
            m = season or task.season
            model = SeasonalNaive(*sizes, m)
            result["season"] = m
        else:
            model = Naive(*sizes)
        device = pick_device(cfg.device)
        model.to(device)
        result["val_loss"] = evaluate(model, task, task.split("val"), cfg, device)["loss"]
    result.update(task.test_metrics(model, cfg.eval_batch_size))
    result["test_loss"] = result["test_mse"]
    return result
