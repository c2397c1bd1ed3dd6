"""Name -> object registries with lazy imports, in the style of gymnasium's registration.

A new task, backbone family (its loader in ``BACKBONE_SOURCES``) or freeze policy is one
file plus one ``register(...)`` line in ``unicomp/catalog.py``. Entries are
"module:attribute" strings so that ``unicomp list`` and name validation never import
torch-heavy modules.

Tasks from other packages, without editing this one: an entry point in the group
``unicomp.tasks`` (its name is the task's name, its value "module:Class"), e.g. in the other
package's pyproject.toml::

    [project.entry-points."unicomp.tasks"]
    parity = "mypackage.tasks:Parity"

or, from Python, :func:`register_task`. Both are read after the catalogue, on the first lookup;
a name that is already a task is an error. A run of such a task records where it came from
(``task_source``, "module:attribute", in its config.yaml), so that a re-run from that file in
another process imports the module again (:func:`ensure_task`).

A task name may carry its main argument: ``array:data.npz`` is the task ``array`` with
``path=data.npz`` (``TASK_SHORTHANDS``; :func:`expand_task`).
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
            found[point.name] = Entry(
                point.name, point.value, f"from package {package}", origin="entry point"
            )
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

    def register(
        self, name: str, target: Any, help: str = "", origin: str = "catalog", **kwargs: Any
    ) -> None:
        if name in self._entries:
            raise UnicompError(
                f"{self.kind} {name!r} is already registered ({self._entries[name].where})"
            )
        self._entries[name] = Entry(name, target, help, kwargs, origin)

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
# Backbone loaders by the prefix of a name (``random:``, ``lstm``, ``run:`` ...; one is the
# fallback for hub ids and folders): unicomp.backbones.loading
BACKBONE_SOURCES = Registry("backbone source")
# Offline-RL methods (unicomp.experiments.offline_rl): trained by the loop (dt train), or by
# another program (``external=True``: dt external)
OFFLINE_RL_METHODS = Registry("offline-RL method")


def register_task(name: str, cls_or_target: type | str, help: str = "") -> None:
    """Add a task under ``name``: a :class:`unicomp.tasks.base.Task` subclass, or its
    "module:Class" (imported on first use). After the built-in tasks and the entry points
    (read first), so a name that is already a task is an error naming it. A class object
    lives in this process only, but a run of it records where it is defined (``task_source``
    in config.yaml: the class's "module:Class"), so ``unicomp fpt train --config`` on that
    file imports the module again; the class must then be importable (not defined in
    ``__main__``). For ``unicomp --task NAME`` on the command line, declare a ``unicomp.tasks``
    entry point (or pass ``--task-source module:Class``)."""
    _load_catalog()
    TASKS.register(name, cls_or_target, help, origin="python")


# --- tasks named with their argument, and tasks found again from a run's config ------------------
# "<task>:<value>" is the task <task> with the argument <key>=<value>.
TASK_SHORTHANDS = {"array": "path"}


def expand_task(name: str, task_args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``("array:data.npz", {})`` -> ``("array", {"path": "data.npz"})``; other names as they
    are. The argument given both ways is an error."""
    prefix, sep, value = name.partition(":")
    if not sep or prefix not in TASK_SHORTHANDS:
        return name, task_args
    key = TASK_SHORTHANDS[prefix]
    if not value:
        raise UnicompError(f"task {name!r}: expected {prefix}:<{key}>, e.g. {prefix}:data.npz")
    if key in task_args and str(task_args[key]) != value:
        raise UnicompError(
            f"task {name!r} names {key} {value!r}, and --task-arg {key}={task_args[key]!r} "
            "another: give it once"
        )
    return prefix, {key: value, **{k: v for k, v in task_args.items() if k != key}}


def task_source(name: str) -> str | None:
    """Where task ``name`` is defined, for a run's config (``task_source``): "module:attribute"
    for a task registered from Python or by an entry point; None for a built-in task, which
    every unicomp finds by name."""
    entry = TASKS.entry(name)
    return None if entry.origin == "catalog" else entry.where


def ensure_task(name: str, source: str | None, where: str = "config") -> None:
    """Make task ``name`` known where a config names it with its ``source`` ("module:Class",
    recorded by its run): nothing if it is known (built in, an entry point, registered in this
    process); else import the module (which may register it itself) and, if that did not,
    register the attribute under ``name``. One line naming the module where that fails."""
    if not isinstance(source, str) or not source or name in TASKS:
        return
    module, _, qualname = source.partition(":")
    hint = "put it on PYTHONPATH, or install the package that provides it"
    if module == "__main__":
        hint = "it was defined in a script; move it into a module that can be imported"
    try:
        obj: Any = importlib.import_module(module)
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise UnicompError(
            f"{where}: task {name!r} comes from {source} (task_source), but module {module!r} "
            f"cannot be imported ({type(err).__name__}: {first}); {hint}"
        ) from None
    if name in TASKS:  # importing it registered the task
        return
    try:
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise UnicompError(
            f"{where}: task {name!r} comes from {source} (task_source), but module {module!r} "
            f"has no {qualname!r}; {hint}"
        ) from None
    if not isinstance(obj, type):
        raise UnicompError(f"{where}: task {name!r}: {source} (task_source) is not a class")
    TASKS.register(name, obj, f"from {source}", origin="python")
