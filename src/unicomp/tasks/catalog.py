"""The task registry, :data:`TASKS`, with every built-in task (one ``register(...)`` line
each; the classes are imported on first use), and how tasks of other packages join it.

Tasks from other packages, without editing this one: an entry point in the group
``unicomp.tasks`` (its name is the task's name, its value "module:Class"), e.g. in the other
package's pyproject.toml::

    [project.entry-points."unicomp.tasks"]
    parity = "mypackage.tasks:Parity"

or, from Python, :func:`register_task`. Both are read after the built-in tasks, on the first
lookup; a name that is already a task is an error. A run of such a task records where it came
from (``task_source``, "module:attribute", in its config.yaml), so that a re-run from that file
in another process imports the module again (:func:`ensure_task`).

A task name may carry its main argument: ``array:data.npz`` is the task ``array`` with
``path=data.npz`` (``TASK_SHORTHANDS``; :func:`expand_task`).
"""

from __future__ import annotations

import importlib
from typing import Any

from unicomp.errors import UnicompError
from unicomp.registry import Entry, Registry

TASK_ENTRY_POINTS = "unicomp.tasks"  # the entry-point group of other packages' tasks
_entry_points_read = False


def _read_entry_points() -> None:
    """On the first lookup of a task, register the tasks of the ``unicomp.tasks`` entry
    points (after the built-in ones below, so a clash names the built-in task)."""
    global _entry_points_read
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


TASKS = Registry("task", on_lookup=_read_entry_points)

# --- tasks --------------------------------------------------------------------------------------
TASKS.register(
    "bit-memory",
    "unicomp.tasks.bits:BitMemory",
    "5 strings of 1000 bits, then one with bits masked (p=0.5): reconstruct it",
)
TASKS.register(
    "bit-xor",
    "unicomp.tasks.bits:BitXOR",
    "two 5-bit strings, one bit per token: output their elementwise XOR",
)
TASKS.register("mnist", "unicomp.tasks.images:MNIST", "MNIST digits as 64 tokens of 4x4 patches")
TASKS.register("cifar10", "unicomp.tasks.images:CIFAR10", "CIFAR-10 as 64 tokens of 4x4x3 patches")
TASKS.register("cifar10-lra", "unicomp.tasks.images:CIFAR10LRA", "CIFAR-10, LRA: 1024 gray pixels")
TASKS.register("digits-inpaint", "unicomp.tasks.dense:DigitsInpaint", "8x8 digit inpainting")
TASKS.register("listops", "unicomp.tasks.listops:ListOps", "ListOps (LRA): nested MIN/MAX/MED/SM")
TASKS.register("remote-homology", "unicomp.tasks.proteins:RemoteHomology", "protein -> SCOP fold")
TASKS.register(
    "array",
    "unicomp.tasks.arrays:ArrayTask",
    "your own data: array:PATH, a .npz, .npy (+ target=FILE), .csv/.parquet (+ target=COLUMN) "
    "or a folder of train/val/test files; classification or regression",
)
TASKS.register(
    "ucr",
    "unicomp.tasks.timeseries:UCRClassification",
    "UCR/UEA series -> class (name=GunPoint: aeon's copy; path=FOLDER: an archive's .ts files)",
)
TASKS.register(
    "forecast",
    "unicomp.tasks.timeseries:Forecast",
    "look-back window -> next steps (path=FILE.csv, ETT-style; or name=Airline, aeon's copy)",
)


def register_task(name: str, cls_or_target: type | str, help: str = "") -> None:
    """Add a task under ``name``: a :class:`unicomp.tasks.base.Task` subclass, or its
    "module:Class" (imported on first use). After the built-in tasks and the entry points
    (read first), so a name that is already a task is an error naming it. A class object
    lives in this process only, but a run of it records where it is defined (``task_source``
    in config.yaml: the class's "module:Class"), so ``unicomp fpt train --config`` on that
    file imports the module again; the class must then be importable (not defined in
    ``__main__``). For ``unicomp --task NAME`` on the command line, declare a ``unicomp.tasks``
    entry point (or pass ``--task-source module:Class``)."""
    _read_entry_points()
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
