"""Backbones: what one is (``base``), how one is loaded by name (``loading.load_backbone``,
through the registry ``BACKBONE_SOURCES`` of loaders by prefix), the loaders of this package
(``hf``, ``stats``, ``lstm``) and the backbones known by name (``catalog``).

This package's loaders are registered here, one ``register(...)`` line each, so that they are
there whenever any module of the package is imported (they cannot sit in ``loading``, which
``stats`` imports; the targets are imported on first use). A loader built in a higher layer is
registered by that layer: ``run:<DIR>``, a finished FPT run's backbone, by
unicomp.experiments.catalog.
"""

from unicomp.backbones.loading import BACKBONE_SOURCES

# --- backbone loaders, by the prefix of a backbone's name ----------
BACKBONE_SOURCES.register(
    "random",
    "unicomp.backbones.hf:load_random",
    "random:<name>: the architecture of a transformers backbone with random weights",
    forms=("random:<name>",),
)
BACKBONE_SOURCES.register(
    "stats",
    "unicomp.backbones.stats:load_statistics_matched",
    "stats:<name>: random weights matched per tensor to the mean and std of <name>'s",
    forms=("stats:<name>",),
)
BACKBONE_SOURCES.register(
    "lstm",
    "unicomp.backbones.lstm:load_lstm",
    "lstm, lstm:<layers>x<width>: a randomly initialised LSTM (the FPT paper's baseline)",
    forms=("lstm", "lstm:<layers>x<width>"),
)
BACKBONE_SOURCES.register(
    "hub",
    "unicomp.backbones.hf:load_pretrained",
    "a registered name, hub id or local folder: pretrained transformers weights (folder, hub "
    "cache, hub, offline package)",
    forms=("<hub owner/name>", "<local folder>"),
    fallback=True,
)
