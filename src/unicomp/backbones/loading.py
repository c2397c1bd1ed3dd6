"""A backbone by name: :func:`load_backbone` finds the loader of the name's prefix in the
registry ``BACKBONE_SOURCES`` (one ``register`` line each: this package's loaders in
``unicomp/backbones/__init__.py``, ``run:`` in unicomp.experiments.catalog) and calls it.

A name ``<prefix>:<argument>`` goes to the loader registered under ``<prefix>`` (``random:``,
``stats:``, ``lstm:``, ``run:``); the bare ``<prefix>`` too where the loader's ``forms`` list
it (``lstm``). Every other name (a registered name such as ``minilm-l6``, a hub id, a local
folder) goes to the one loader registered with ``fallback=True`` (``hub``,
:func:`unicomp.backbones.hf.load_pretrained`). A local folder called like a prefix (``lstm``)
needs a path such as ``./lstm``.

A loader is ``loader(name, *, dropout, attn_implementation, seed) -> LoadedBackbone`` (the
whole name, its prefix included); what it returns satisfies
:class:`unicomp.backbones.base.LoadedBackbone`. The registry entry's keyword arguments:
``forms``, how its names are written (the choices an unknown name lists), and ``fallback``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unicomp.backbones.catalog import BACKBONES
from unicomp.errors import UnicompError
from unicomp.registry import Entry, Registry

if TYPE_CHECKING:
    from unicomp.backbones.base import LoadedBackbone

# Backbone loaders by the prefix of a name (``random:``, ``lstm``, ``run:`` ...; one is the
# fallback for hub ids and folders). This package's are registered by its __init__.
BACKBONE_SOURCES = Registry("backbone source")


def loader_entry(name: str) -> Entry:
    """The ``BACKBONE_SOURCES`` entry whose loader builds ``name`` (module doc)."""
    prefix, sep, _ = name.partition(":")
    fallback = None
    for entry in BACKBONE_SOURCES:
        if entry.kwargs.get("fallback"):
            fallback = entry
        elif entry.name == prefix and (sep or prefix in entry.kwargs.get("forms", ())):
            return entry
    if fallback is None:
        raise UnicompError(f"backbone {name!r}: no backbone source is registered as fallback")
    return fallback


def backbone_choices() -> list[str]:
    """What a backbone name may be, for the message of an unknown one: the registered names,
    then each loader's forms in registration order (the fallback's last)."""
    entries = sorted(BACKBONE_SOURCES, key=lambda entry: bool(entry.kwargs.get("fallback")))
    return BACKBONES.names() + [form for entry in entries for form in entry.kwargs["forms"]]


def load_backbone(
    name: str,
    *,
    dropout: float | None = None,
    attn_implementation: str | None = None,
    seed: int = 0,
) -> LoadedBackbone:
    """Load a backbone by registered name, hub id, local folder, ``random:<any of those>``,
    ``stats:<any name>``, ``lstm[:<layers>x<width>]``, ``run:<DIR>``, or a name of a family
    registered in ``BACKBONE_SOURCES``. ``dropout`` (None: the backbone's own) and
    ``attn_implementation`` (None: its default) configure it; ``seed`` seeds whatever it
    draws at random (random weights), without touching the global random state."""
    loader = loader_entry(name).load()
    return loader(name, dropout=dropout, attn_implementation=attn_implementation, seed=seed)
