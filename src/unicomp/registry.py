"""Name -> object registries with lazy imports, in the style of gymnasium's registration.

A new task, backbone or freeze policy is one file plus one ``register(...)`` line in
``unicomp/catalog.py``. Entries are "module:attribute" strings so that ``unicomp list`` and
name validation never import torch-heavy modules.

Tasks from other packages, without editing this one: an entry point in the group
``unicomp.tasks`` (its name is the task's name, its value "module:Class"), e.g. in the other
package's pyproject.toml::

    [project.entry-points."unicomp.tasks"]
    parity = "mypackage.tasks:Parity"

or, from Python, :func:`register_task`. Both are read after the catalogue, on the first lookup;
a name that is already a task is an error.
"""

from __future__ import annotations

import importlib
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


TASK_ENTRY_POINTS = "unicomp.tasks"  # the entry-point group of other packages' tasks
_entry_points_read = False


def _load_catalog() -> None:
    """Import ``unicomp.catalog`` (its ``register`` lines) on the first lookup, then register
    the tasks of the ``unicomp.tasks`` entry points, so that ``import unicomp;
    unicomp.load_backbone("minilm-l6")`` works without importing anything first. (While the
    catalogue is being imported, Python's module cache returns the partial module.)"""
    global _entry_points_read
    importlib.import_module("unicomp.catalog")
    if not _entry_points_read:
        _register_entry_points()
        _entry_points_read = True


def _register_entry_points() -> None:
    """Register each ``unicomp.tasks`` entry point as a task (lazily: its target is imported
    on first use). All or none: a name that is already a task, or that two packages both
    claim, is a one-line error naming both."""
    from importlib.metadata import entry_points

    found: dict[str, Entry] = {}
    for point in entry_points(group=TASK_ENTRY_POINTS):
        package = point.dist.name if point.dist is not None else "an unknown package"
        if point.name in TASKS._entries:
            other = f"the built-in task ({TASKS._entries[point.name].where})"
        elif point.name in found:
            other = f"{found[point.name].where} ({found[point.name].help})"
        else:
            found[point.name] = Entry(point.name, point.value, f"from package {package}")
            continue
        raise UnicompError(
            f"task {point.name!r}: {TASK_ENTRY_POINTS} entry point {point.value} (from package "
            f"{package}) clashes with {other}; rename the entry point"
        )
    TASKS._entries.update(found)


class Registry:
    """Entries by name; every lookup (``entry``, ``names``, ``in``, iteration) sees the whole
    catalogue (``unicomp.catalog``), imported on the first one."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, target: Any, help: str = "", **kwargs: Any) -> None:
        if name in self._entries:
            raise UnicompError(
                f"{self.kind} {name!r} is already registered ({self._entries[name].where})"
            )
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
# Backbones built by a layer above unicomp.backbones (``run:<DIR>``: a finished FPT run's)
BACKBONE_SOURCES = Registry("backbone source")


def register_task(name: str, cls_or_target: type | str, help: str = "") -> None:
    """Add a task under ``name``: a :class:`unicomp.tasks.base.Task` subclass, or its
    "module:Class" (imported on first use). After the built-in tasks and the entry points
    (read first), so a name that is already a task is an error naming it. A class object
    lives in this process only; for ``unicomp`` on the command line (and re-running a saved
    config.yaml), declare a ``unicomp.tasks`` entry point instead."""
    _load_catalog()
    TASKS.register(name, cls_or_target, help)
