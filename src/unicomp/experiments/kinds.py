"""The families of runs ("kinds") in one table, :data:`KINDS`: each kind's config class,
the function that runs one, the loader that gives a finished one back, its default run
folder and the metrics its command prints. Every place that treats families differently
reads it; nothing else tells them apart.

A run records its kind in config.yaml (``kind: fpt``, written first by
unicomp.config.save_yaml); folders written before that, and runs of other programs (no
config.yaml), are recognised from their fields by unicomp.config.recorded_kind.

A new family of runs: its module in unicomp/experiments/ (config class in unicomp.config,
with ``kind: ClassVar[str]``) and one :class:`RunKind` line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unicomp.config import (
    KIND_TITLES,
    DTConfig,
    FPTConfig,
    PerceiverConfig,
    load_yaml,
    recorded_kind,
)
from unicomp.errors import UnicompError
from unicomp.files import read_record
from unicomp.registry import load_target


@dataclass(frozen=True)
class RunKind:
    """One family of runs. ``run``, ``load`` and ``default_out`` are "module:function"
    names, imported when called (the table is read by ``unicomp report`` without torch)."""

    name: str  # what config.yaml's ``kind`` says (a key of unicomp.config.KIND_TITLES)
    config: type | None  # the config class of its config.yaml (None: a record of its own)
    run: str  # runs one: (cfg, resume, overwrite) -> metrics for config kinds
    default_out: str  # the default run folder, from what the run function takes
    summary: tuple[str, ...]  # the metrics its train command prints
    regression: tuple[str, ...] = ()  # printed too where a run has no accuracy
    evaluations: bool = False  # also each evaluation's scores (runs that act)
    load: str | None = None  # (folder) -> a tuple of ``loads``: None where not loadable
    loads: tuple[str, ...] = ("model", "task", "config")  # as fields of LoadedRun

    @property
    def title(self) -> str:
        """What messages call its runs: "an FPT run" (unicomp.config.KIND_TITLES)."""
        return KIND_TITLES[self.name]

    def function(self, which: str) -> Any:
        """The function named by the field ``which`` (run, load, default_out), imported now."""
        return load_target(getattr(self, which))

    def summary_of(self, metrics: dict) -> dict[str, Any]:
        """What the kind's command prints of a finished run's metrics."""
        keys = self.summary + (self.regression if metrics.get("test_accuracy") is None else ())
        shown = {k: metrics[k] for k in keys if k in metrics}
        if self.evaluations:
            shown["eval"] = [evaluation_summary(e) for e in metrics.get("eval", [])]
        return shown


def evaluation_summary(evaluation: dict) -> dict[str, Any]:
    """The scores printed of one evaluation (one target return) of a run that acts."""
    keys = ("target_return", "return_mean", "return_std", "normalized_score_mean")
    return {k: evaluation[k] for k in (*keys, "success_rate") if k in evaluation}


_TRAINED = ("steps", "steps_to_target")
_SIZE = ("trainable_params", "total_params", "train_seconds")
_REGRESSION = ("test_loss", "test_rmse")

KINDS: dict[str, RunKind] = {
    k.name: k
    for k in (
        RunKind("fpt", FPTConfig,
                "unicomp.experiments.fpt:run_fpt", "unicomp.experiments.fpt:default_out",
                ("task", "backbone", "freeze", "test_accuracy", *_TRAINED, *_SIZE,
                 "backbone_source"), _REGRESSION,
                load="unicomp.experiments.fpt:load_fpt_run"),
        RunKind("perceiver", PerceiverConfig,
                "unicomp.experiments.perceiver:run_perceiver",
                "unicomp.experiments.perceiver:default_perceiver_out",
                ("task", "model", "test_accuracy", *_TRAINED, "num_latents", "flops_per_example",
                 *_SIZE, "model_source"), _REGRESSION,
                load="unicomp.experiments.perceiver:load_perceiver_run"),
        RunKind("dt", DTConfig,
                "unicomp.experiments.dt:run_dt", "unicomp.experiments.dt:dt_default_out",
                ("env", "algo", "test_loss", "best_step", "steps", "trainable_params",
                 "train_seconds"), evaluations=True, load="unicomp.experiments.dt:load_dt_run",
                loads=("model", "config", "metrics")),
        RunKind("external", None,
                "unicomp.experiments.external:run_external",
                "unicomp.experiments.external:default_out",
                ("algo", "env", "train_steps", "return_mean", "normalized_score_mean")),
        RunKind("ts-baseline", None,
                "unicomp.experiments.timeseries:run_baseline",
                "unicomp.experiments.timeseries:default_out",
                ("task", "method", "test_accuracy", "test_mse", "test_mae", "season",
                 "wall_seconds")),
    )
}  # fmt: skip


def kind_of_config(cfg: Any) -> RunKind:
    """The kind whose config ``cfg`` is."""
    return KINDS[type(cfg).kind]


def folder_kind(folder: str | Path) -> RunKind | None:
    """The kind of the run in ``folder`` (unicomp.config.recorded_kind), None where its
    records name none (or there are none)."""
    folder = Path(folder)
    config = folder / "config.yaml"
    metrics = None
    if not config.is_file() and (folder / "metrics.json").is_file():
        metrics = read_record(folder / "metrics.json")
    name = recorded_kind(load_yaml(config) if config.is_file() else None, metrics)
    return KINDS.get(name) if name else None


def run_kind(folder: str | Path) -> str:
    """ "fpt", "perceiver", "dt", ...: the kind of the run in ``folder``; a one-line error
    where it is none."""
    path = Path(folder) / "config.yaml"
    kind = folder_kind(folder)
    if kind is not None:
        return kind.name
    if not path.is_file():
        raise UnicompError(f"{folder} is not a run folder (no config.yaml)")
    raise UnicompError(f"{path} is not the config of an FPT, Perceiver or Decision Transformer run")


@dataclass
class LoadedRun:
    """A finished run folder back in memory (:func:`load_run`), alike for every kind."""

    kind: str
    folder: Path
    model: Any  # the trained network, best weights loaded, in eval mode on the CPU
    config: Any  # the run's config (FPTConfig, PerceiverConfig, DTConfig)
    # FPT and Perceiver: the run's task (its test split gives back the run's test metrics);
    # Decision Transformer: None (unicomp.experiments.dt.build_dt_task(config) reads its data)
    task: Any
    metrics: dict  # metrics.json


def load_run(folder: str | Path) -> LoadedRun:
    """A finished run folder's trained model, rebuilt from its config.yaml with its best
    weights checked and loaded, in eval mode on the CPU, with its config, task and metrics
    (acting with a Decision Transformer's gives back its returns: ``unicomp dt eval``)."""

    kind = KINDS[run_kind(folder)]
    if kind.load is None:
        raise UnicompError(
            f"{folder} is {kind.title}: load_run rebuilds FPT, Perceiver and Decision "
            "Transformer runs"
        )
    fields = dict(zip(kind.loads, kind.function("load")(folder), strict=True))
    if "metrics" not in fields:
        fields["metrics"] = read_record(Path(folder) / "metrics.json")
    return LoadedRun(kind.name, Path(folder), **{"task": None, **fields})
