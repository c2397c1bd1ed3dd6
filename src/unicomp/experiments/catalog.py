"""The registry entries of the runs' layer, one ``register(...)`` line each: what this layer
builds, added to the registries of the layers below (imported with any module of
``unicomp.experiments``, by its ``__init__``; the targets are imported on first use):

* the backbone loader ``run:<DIR>`` (``unicomp.backbones.loading.BACKBONE_SOURCES``): a
  finished FPT run's backbone, rebuilt by unicomp.experiments.fpt;
* the offline-RL methods (``unicomp.registry.OFFLINE_RL_METHODS``; the interface in
  unicomp.experiments.offline_rl): DT, BC and %BC trained by the loop (``dt train``),
  d3rlpy's CQL and IQL trained by another program (``external=True``: ``dt external``).
"""

from unicomp.backbones.loading import BACKBONE_SOURCES
from unicomp.registry import OFFLINE_RL_METHODS

# --- backbone loaders -------------------------------------------------------------------------
BACKBONE_SOURCES.register(
    "run",
    "unicomp.experiments.fpt:backbone_from_run",
    "run:<DIR>: the backbone of a finished FPT run folder, with the weights it trained",
    forms=("run:<run folder>",),
)

# --- offline-RL methods -----------------------------------------------------------------------
OFFLINE_RL_METHODS.register(
    "dt", "unicomp.experiments.offline_rl:DT", "Decision Transformer: actions from returns-to-go"
)
OFFLINE_RL_METHODS.register("bc", "unicomp.experiments.offline_rl:BC", "behaviour cloning")
OFFLINE_RL_METHODS.register(
    "pbc", "unicomp.experiments.offline_rl:PBC", "%BC: BC on the best --top-percent of the data"
)
OFFLINE_RL_METHODS.register(
    "cql", "unicomp.experiments.external:CQL", "d3rlpy's CQL (dt external)", external=True
)
OFFLINE_RL_METHODS.register(
    "iql", "unicomp.experiments.external:IQL", "d3rlpy's IQL (dt external)", external=True
)
