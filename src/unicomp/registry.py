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


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, target: Any, help: str = "", **kwargs: Any) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = Entry(name, target, help, kwargs)

    def names(self) -> list[str]:
        return list(self._entries)

    def entry(self, name: str) -> Entry:
        if name not in self._entries:
            raise UnknownNameError(self.kind, name, self.names())
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self._entries.values())


TASKS = Registry("task")
BACKBONES = Registry("backbone")
FREEZE_POLICIES = Registry("freeze policy")
