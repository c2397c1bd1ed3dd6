"""unicomp: one pretrained sequence model as a universal computation engine.

The public Python API, imported lazily (``import unicomp`` loads neither torch nor
transformers):

* ``load_backbone(name, seed=0)``: a backbone by registered name, hub id, local folder,
  ``random:<name>``, ``stats:<name>``, ``lstm[...]`` or ``run:<DIR>``;
* ``export_adapter(run_folder, path)``: a finished FPT run's trained parameters alone, as one
  safetensors file (see docs/serving.md);
* ``load_adapter(path, backbone=None)``: that file around a backbone (loaded by the name the
  file records, or one given, shared between adapters), with ``predict(inputs)``;
* ``run_fpt(cfg)``, ``run_perceiver(cfg)``, ``run_dt(cfg)``: build and train a model of each
  family into a run folder, as ``unicomp fpt|perceiver|dt train`` do; return its metrics;
* ``FPTConfig``, ``PerceiverConfig``, ``DTConfig`` (each with a ``TrainConfig``): their
  configs, the fields of the commands' flags and config.yaml files;
* ``load_run(folder)``: any finished run folder back as its trained model;
* ``TASKS``, ``BACKBONES``, ``FREEZE_POLICIES``: the registries (``unicomp list``);
* ``register_task(name, cls_or_target, help="")``: add a task of your own (a Task subclass or
  "module:Class"); another package adds one with a ``unicomp.tasks`` entry point.

See the README's "Python API" section for examples.
"""

from __future__ import annotations

import importlib
from typing import Any

import unicomp.experiments  # noqa: F401  (registers run: and the offline-RL methods; no torch)
from unicomp.version import __version__

# Where each name lives. unicomp.experiments, the highest layer that adds entries to the
# registries below it, is imported with the package (above), so that a module imported on
# its own (``from unicomp.reports.presets import ...``, ``DTConfig(algo="bc")``) sees them.
_API = {
    "load_backbone": "unicomp.backbones.loading",
    "export_adapter": "unicomp.serving.adapters",
    "load_adapter": "unicomp.serving.adapters",
    "run_fpt": "unicomp.experiments.fpt",
    "run_perceiver": "unicomp.experiments.perceiver",
    "run_dt": "unicomp.experiments.dt",
    "FPTConfig": "unicomp.config",
    "PerceiverConfig": "unicomp.config",
    "DTConfig": "unicomp.config",
    "TrainConfig": "unicomp.config",
    "load_run": "unicomp.experiments",
    "TASKS": "unicomp.tasks.catalog",
    "BACKBONES": "unicomp.backbones.catalog",
    "FREEZE_POLICIES": "unicomp.backbones.catalog",
    "register_task": "unicomp.tasks.catalog",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'unicomp' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
