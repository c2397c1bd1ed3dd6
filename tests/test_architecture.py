"""The package's dependency graph, read from the source: every import (also those inside
functions) and every lookup by string (``importlib.import_module("unicomp.x")``, registry
entries and tables such as ``"unicomp.x:attr"``). No loops, no arrow to a higher layer, and
no private name (leading underscore) taken from another module (docs/architecture.md).
Data flows one way: source -> dataset -> batch -> model -> loop -> run folder -> report."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import unicomp

ROOT = Path(unicomp.__file__).parent

# Lowest first. A module may use its own layer and the ones below it, never one above. A
# prefix names a module or a package and what is in it; the longest prefix decides.
LAYERS = [
    ("base", ["errors", "files", "provenance", "version", "tracking", "plots"]),
    ("registries", ["registry"]),
    ("data files", ["data"]),
    ("tasks", ["tasks"]),
    ("backbones", ["backbones", "freezing"]),
    ("settings", ["config"]),
    ("models", ["models"]),
    ("the loop", ["train", "features"]),
    ("reinforcement learning data and environments", ["rl"]),
    ("runs of each family", ["experiments.common", "experiments.offline_rl", "experiments.fpt",
                             "experiments.perceiver", "experiments.dt", "experiments.external",
                             "experiments.timeseries"]),
    ("the kinds of runs and the runs' registry entries", ["experiments"]),
    ("run folders as tables", ["runs"]),
    ("tools on runs", ["tools"]),
    ("reports", ["reports"]),
    ("serving", ["serving"]),
    ("the public surface", ["", "cli", "__main__"]),
]  # fmt: skip

# "unicomp.module" or "unicomp.module:attribute", the whole string constant
LOOKUP = re.compile(r"unicomp(?:\.[A-Za-z_]\w*)+(?::[A-Za-z_][\w.]*)?")


@dataclass(frozen=True)
class Edge:
    source: str  # the module that uses ...
    target: str  # ... this one ("": the package's own __init__, the lazy public API)
    how: str  # "import" or "string" (a lookup by name)
    line: int


def module_names(root: Path) -> dict[str, Path]:
    """Every module under ``root`` (the package folder) by its dotted name inside the package:
    "" for the package itself, "experiments" for a subpackage's __init__."""
    names = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def resolve(dotted: str, modules: dict[str, Path]) -> str | None:
    """The module a "unicomp.a.b.c" name lives in (the longest existing prefix); None for a
    name outside the package."""
    if dotted != "unicomp" and not dotted.startswith("unicomp."):
        return None
    name = dotted.removeprefix("unicomp").removeprefix(".")
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def _text(node: ast.AST, constants: dict[str, str]) -> str | None:
    """A string constant's value, or an f-string's with module-level string constants filled
    in (``f"{_E}.fpt:run_fpt"``); None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value.value, ast.Name) and value.value.id in constants:
                parts.append(constants[value.value.id])
            else:
                break  # the rest depends on values at run time
        return "".join(parts).rstrip(".")
    return None


def read_module(
    module: str, source: str, modules: dict[str, Path], *, package: bool = False
) -> tuple[list[Edge], list[str]]:
    """The edges from ``module`` (given its ``source`` text), and the private names it takes
    from other modules of the package ("line N: unicomp.x._name")."""
    tree = ast.parse(source)
    here = module if package else module.rpartition(".")[0]
    constants = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }  # fmt: skip
    edges: list[Edge] = []
    private: list[str] = []
    aliases: dict[str, str] = {}  # local name -> the package module it is bound to

    def add(target: str | None, how: str, line: int) -> None:
        if target is not None and target != module:
            edges.append(Edge(module, target, how, line))

    def take(name: str, owner: str, line: int) -> None:
        if name.startswith("_") and not name.startswith("__") and owner != module:
            private.append(f"line {line}: unicomp.{owner}.{name}".replace("unicomp..", "unicomp."))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = resolve(alias.name, modules)
                add(target, "import", node.lineno)
                if target is not None:
                    bound = alias.asname or alias.name.partition(".")[0]
                    aliases[bound] = target if alias.asname else ""
                    for part in alias.name.split(".")[1:]:
                        take(part, "", node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = here.split(".") if here else []
                up = up[: len(up) - node.level + 1]
                base = "unicomp." + ".".join([*up, *([base] if base else [])])
            owner = resolve(base.rstrip("."), modules)
            if owner is None:
                continue
            for alias in node.names:
                submodule = resolve(f"{base}.{alias.name}", modules)
                if submodule != owner:  # from unicomp import features: the module itself
                    add(submodule, "import", node.lineno)
                    aliases[alias.asname or alias.name] = submodule
                else:
                    add(owner, "import", node.lineno)
                take(alias.name, owner, node.lineno)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in aliases:
                take(node.attr, aliases[node.value.id], node.lineno)
        else:
            text = _text(node, constants) if isinstance(node, ast.expr) else None
            if text is not None and LOOKUP.fullmatch(text):
                target = resolve(text.partition(":")[0], modules)
                if target:  # "unicomp.mujoco", a logger's name, names no module
                    add(target, "string", node.lineno)
    return edges, private


def package_graph(root: Path = ROOT) -> tuple[dict[str, list[Edge]], dict[str, list[str]]]:
    """Every module's edges and private names taken, for the package in folder ``root``."""
    modules = module_names(root)
    graph, private = {}, {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        graph[module], private[module] = read_module(
            module, path.read_text(), modules, package=is_package
        )
    return graph, private


def find_loop(graph: dict[str, list[Edge]]) -> list[Edge] | None:
    """One loop of edges, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[Edge] = []

    def visit(module: str) -> list[Edge] | None:
        state[module] = 1
        for edge in sorted(graph.get(module, []), key=lambda e: (e.target, e.line)):
            if state.get(edge.target) == 1:
                start = next((i for i, e in enumerate(path) if e.source == edge.target), len(path))
                return [*path[start:], edge]
            if edge.target not in state:
                path.append(edge)
                found = visit(edge.target)
                if found:
                    return found
                path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def layer_of(module: str, layers: list = LAYERS) -> int:
    best, found = -1, None
    for i, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            match = module == prefix or (prefix and module.startswith(prefix + "."))
            if match and len(prefix) >= best:
                best, found = len(prefix), i
    assert found is not None, f"unicomp.{module} is in no layer of tests/test_architecture.py"
    return found


def upward(graph: dict[str, list[Edge]], layers: list = LAYERS) -> list[str]:
    """Every edge to a higher layer, as a line each."""
    return [
        f"unicomp.{e.source}:{e.line} ({layers[layer_of(e.source, layers)][0]}) -> "
        f"unicomp.{e.target} ({layers[layer_of(e.target, layers)][0]}) by {e.how}"
        for edges in graph.values()
        for e in edges
        if layer_of(e.target, layers) > layer_of(e.source, layers)
    ]


def describe(loop: list[Edge]) -> str:
    return " -> ".join(
        [f"unicomp.{loop[0].source}"] + [f"unicomp.{e.target} ({e.how})" for e in loop]
    )


# --- the package itself -----------------------------------------------------------------------


def test_the_graph_has_no_loop():
    loop = find_loop(package_graph()[0])
    assert loop is None, "loop: " + describe(loop)


def test_no_module_uses_a_higher_layer():
    found = upward(package_graph()[0])
    assert not found, "\n".join(found)


def test_no_private_name_is_taken_from_another_module():
    found = [f"unicomp.{m} {p}" for m, names in package_graph()[1].items() for p in names]
    assert not found, "\n".join(found)


def test_every_module_is_in_a_layer():
    for module in module_names(ROOT):
        layer_of(module)


def test_the_graph_reader_sees_lazy_imports_and_lookups():
    graph = package_graph()[0]
    targets = {m: {(e.target, e.how) for e in edges} for m, edges in graph.items()}
    assert ("backbones.loading", "import") in targets["experiments.fpt"]  # inside a function
    assert ("train", "import") in targets["experiments.common"]
    assert ("experiments.fpt", "string") in targets["experiments.kinds"]  # "module:function"
    assert ("tasks.bits", "string") in targets["tasks.catalog"]  # registry entries


# --- the checks catch what is planted in a made-up package ------------------------------------

TOY_LAYERS = [("low", ["", "low", "helpers"]), ("high", ["high"])]


def toy_graph(tmp_path: Path, files: dict[str, str]):
    root = tmp_path / "unicomp"
    for name, text in {"__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return package_graph(root)


CLEAN = {
    "low.py": "def build():\n    return 1\n",
    "helpers.py": "def _secret():\n    return 2\n",
    "high.py": "from unicomp.low import build\n\nTABLE = {'b': 'unicomp.low:build'}\n",
}


def test_a_clean_toy_package_passes(tmp_path):
    graph, private = toy_graph(tmp_path, CLEAN)
    assert find_loop(graph) is None and not upward(graph, TOY_LAYERS)
    assert not any(private.values())
    assert {(e.target, e.how) for e in graph["high"]} == {("low", "import"), ("low", "string")}


def test_a_planted_upward_string_lookup_is_caught(tmp_path):
    planted = "import importlib\n\ndef run():\n    importlib.import_module('unicomp.high')\n"
    graph, _ = toy_graph(tmp_path, {**CLEAN, "low.py": planted})
    assert upward(graph, TOY_LAYERS) == ["unicomp.low:4 (low) -> unicomp.high (high) by string"]


def test_a_planted_upward_registry_entry_is_caught(tmp_path):
    planted = "_H = 'unicomp'\nENTRIES = {'x': 'unicomp.high:thing', 'y': f'{_H}.high:other'}\n"
    graph, _ = toy_graph(tmp_path, {**CLEAN, "helpers.py": planted})
    assert [(e.target, e.how) for e in graph["helpers"]] == [("high", "string")] * 2
    assert len(upward(graph, TOY_LAYERS)) == 2


def test_a_planted_loop_through_a_string_is_caught(tmp_path):
    planted = "REGISTRY = {'high': 'unicomp.high:TABLE'}\n"
    graph, _ = toy_graph(tmp_path, {**CLEAN, "low.py": CLEAN["low.py"] + planted})
    loop = find_loop(graph)
    assert loop is not None
    assert describe(loop) == "unicomp.high -> unicomp.low (import) -> unicomp.high (string)"


def test_a_planted_private_import_is_caught(tmp_path):
    planted = "from unicomp.helpers import _secret\nfrom unicomp import helpers as h\nh._secret()\n"
    _, private = toy_graph(tmp_path, {**CLEAN, "high.py": planted})
    assert private["high"] == ["line 1: unicomp.helpers._secret", "line 3: unicomp.helpers._secret"]


def test_private_names_within_a_module_and_dunders_pass(tmp_path):
    own = "import unicomp\n\ndef _mine():\n    return unicomp.__version__\n\nX = _mine()\n"
    _, private = toy_graph(tmp_path, {**CLEAN, "high.py": own})
    assert private["high"] == []
