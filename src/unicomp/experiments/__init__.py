"""Runs of each model family, from a config to a run folder and back.

``unicomp.experiments.fpt`` (``run_fpt``), ``.perceiver`` (``run_perceiver``) and ``.dt``
(``run_dt``) build their model and train it through the one loop (unicomp.train); ``.common``
holds what they share. ``load_run(folder)`` loads any finished run folder back into its model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unicomp.config import DTConfig, FPTConfig, PerceiverConfig, load_yaml
from unicomp.errors import UnicompError
from unicomp.runs import config_class


def run_kind(folder: str | Path) -> str:
    """ "fpt", "perceiver" or "dt": the family of the run in ``folder``, from its config.yaml."""
    path = Path(folder) / "config.yaml"
    if not path.is_file():
        raise UnicompError(f"{folder} is not a run folder (no config.yaml)")
    kind = {DTConfig: "dt", FPTConfig: "fpt", PerceiverConfig: "perceiver"}
    cls = config_class(load_yaml(path))
    if cls in kind:
        return kind[cls]
    raise UnicompError(f"{path} is not the config of an FPT, Perceiver or Decision Transformer run")


def load_run(folder: str | Path) -> tuple[Any, ...]:
    """A finished run folder's trained model, rebuilt from its config.yaml with its best
    weights checked and loaded, in eval mode on the CPU: ``(model, task, config)`` for FPT and
    Perceiver runs (the task's test split gives back the run's test metrics), ``(model, config,
    metrics)`` for Decision Transformer / BC runs (acting in the environment gives back its
    returns: ``unicomp dt eval``)."""
    kind = run_kind(folder)
    if kind == "fpt":
        from unicomp.experiments.fpt import load_fpt_run

        return load_fpt_run(folder)
    if kind == "perceiver":
        from unicomp.experiments.perceiver import load_perceiver_run

        return load_perceiver_run(folder)
    from unicomp.experiments.dt import load_dt_run

    model, cfg, metrics = load_dt_run(folder)
    return model, cfg, metrics
