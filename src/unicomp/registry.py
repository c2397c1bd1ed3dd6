"""Name -> object registries with lazy imports, in the style of gymnasium's registration.

A new task, backbone or freeze policy is one file plus one ``register(...)`` line in
``unicomp/catalog.py``. Entries are "module:attribute" strings so that ``unicomp list`` and
name validation never import torch-heavy modules.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from unicomp.errors import UnknownNameError


@dataclass
class Entry:
    name: str
    target: Any  # "package.module:attribute", imported on first use, or the object itself
    help: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Any:
        if not isinstance(self.target, str):
            return self.target
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


def _load_catalog() -> None:
    """Import ``unicomp.catalog`` (its ``register`` lines) on the first lookup, so that
    ``import unicomp; unicomp.load_backbone("minilm-l6")`` works without importing it first.
    (While the catalogue is being imported, Python's module cache returns the partial module.)"""
    importlib.import_module("unicomp.catalog")


class Registry:
    """Entries by name; every lookup (``entry``, ``names``, ``in``, iteration) sees the whole
    catalogue (``unicomp.catalog``), imported on the first one."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, target: Any, help: str = "", **kwargs: Any) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = Entry(name, target, help, kwargs)

    def names(self) -> list[str]:
        _load_catalog()
        return list(self._entries)

    def entry(self, name: str) -> Entry:
        _load_catalog()
        if name not in self._entries:
            raise UnknownNameError(self.kind, name, self.names())
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        _load_catalog()
        return name in self._entries

    def __iter__(self):
        _load_catalog()
        return iter(self._entries.values())


TASKS = Registry("task")
BACKBONES = Registry("backbone")
FREEZE_POLICIES = Registry("freeze policy")
