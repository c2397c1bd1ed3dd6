"""Name -> object registries with lazy imports, in the style of gymnasium's registration.

Entries are "module:attribute" strings (or the objects themselves), so that ``unicomp list``
and name validation never import torch-heavy modules. A registry lives with its built-in
entries, in the layer of what they name, and every entry is registered in or above the layer
of what it names (docs/architecture.md):

* tasks: :data:`unicomp.tasks.catalog.TASKS` (also other packages' tasks, through the
  ``unicomp.tasks`` entry-point group, and :func:`unicomp.tasks.catalog.register_task`);
* backbones by name and backbone loaders by prefix: ``BACKBONES`` and ``BACKBONE_SOURCES`` in
  :mod:`unicomp.backbones.catalog` (``run:``, a finished FPT run's backbone, is added by
  :mod:`unicomp.experiments.catalog`, the layer that builds it);
* freeze policies: :data:`unicomp.freezing.FREEZE_POLICIES`;
* offline-RL methods: :data:`OFFLINE_RL_METHODS` here, because the settings layer below the
  runs reads its names (``--algo``'s choices, unicomp.config); its entries are registered by
  :mod:`unicomp.experiments.catalog`, imported with any module of ``unicomp.experiments``.

Adding a task, backbone family or freeze policy is one file plus one ``register(...)`` line in
its layer's catalogue.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from unicomp.errors import UnicompError, UnknownNameError


def load_target(target: str) -> Any:
    """The object a "package.module:attribute" string names, its module imported now."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass
class Entry:
    name: str
    target: Any  # "package.module:attribute", imported on first use, or the object itself
    help: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    # where the entry came from: "catalog" (built in), "entry point", "python" (register_task)
    origin: str = "catalog"

    def load(self) -> Any:
        return load_target(self.target) if isinstance(self.target, str) else self.target

    @property
    def where(self) -> str:
        """What messages call the entry: its "module:attribute" target (for a class or
        function given itself, where it is defined), or its help where it has no target."""
        if self.target is None:
            return self.help
        if isinstance(self.target, str):
            return self.target
        module = getattr(self.target, "__module__", "?")
        return f"{module}:{getattr(self.target, '__qualname__', type(self.target).__name__)}"


class Registry:
    """Entries by name. ``on_lookup``, where given, is called before every lookup (``entry``,
    ``names``, ``in``, iteration): the task registry reads the entry points there, once."""

    def __init__(self, kind: str, on_lookup: Callable[[], None] | None = None):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._on_lookup = on_lookup

    def _lookup(self) -> None:
        if self._on_lookup is not None:
            self._on_lookup()

    def register(
        self, name: str, target: Any, help: str = "", origin: str = "catalog", **kwargs: Any
    ) -> None:
        if name in self._entries:
            raise UnicompError(
                f"{self.kind} {name!r} is already registered ({self._entries[name].where})"
            )
        self._entries[name] = Entry(name, target, help, kwargs, origin)

    def names(self) -> list[str]:
        self._lookup()
        return list(self._entries)

    def entry(self, name: str) -> Entry:
        self._lookup()
        if name not in self._entries:
            raise UnknownNameError(self.kind, name, self.names())
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        self._lookup()
        return name in self._entries

    def __iter__(self):
        self._lookup()
        return iter(self._entries.values())


# Offline-RL methods (unicomp.experiments.offline_rl): trained by the loop (dt train), or by
# another program (``external=True``: dt external). Filled by unicomp.experiments.catalog.
OFFLINE_RL_METHODS = Registry("offline-RL method")
