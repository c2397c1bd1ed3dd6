"""Runs of each model family, from a config to a run folder and back.

``unicomp.experiments.fpt`` (``run_fpt``), ``.perceiver`` (``run_perceiver``) and ``.dt``
(``run_dt``; its offline-RL methods in ``.offline_rl``) build their model and train it
through the one loop (unicomp.train); ``.external`` and ``.timeseries`` write other programs'
and baselines' runs in the same folder format; ``.common`` holds what they share. ``.kinds``
is the table of these families; ``load_run(folder)`` loads any finished run folder back
into its model (a :class:`~unicomp.experiments.kinds.LoadedRun`). ``.catalog`` adds what
this layer builds to the registries below (the ``run:`` backbones, the offline-RL methods),
whenever any module of the package is imported.
"""

from __future__ import annotations

from unicomp.experiments import catalog  # noqa: F401 (registers this layer's entries)
from unicomp.experiments.kinds import LoadedRun, load_run, run_kind

__all__ = ["LoadedRun", "load_run", "run_kind"]
