"""The package's import graph, read from the source (every import, also those inside
functions): no loops, and no module imports one of a higher layer (docs/architecture.md).
Data flows one way: source -> dataset -> batch -> model -> loop -> run folder -> report."""

from __future__ import annotations

import ast
from pathlib import Path

import unicomp

ROOT = Path(unicomp.__file__).parent

# Lowest first. A module may import its own layer and the ones below it, never above.
LAYERS = [
    ("base", ["", "errors", "registry", "catalog", "files", "config", "provenance", "tracking",
              "data", "plots", "verdicts"]),
    ("tasks and backbones", ["tasks", "backbones", "freezing"]),
    ("models", ["models"]),
    ("the loop", ["train", "features"]),
    ("reinforcement learning data and environments", ["rl"]),
    ("runs of each family", ["experiments"]),
    ("run folders as tables", ["runs"]),
    ("tools on runs", ["jobs", "ablate", "attention", "adapters", "codecs", "serve", "demo",
                       "reproduce", "presets", "evidence", "claims_report", "claims",
                       "documents", "tsreport", "latent_search", "rl.export"]),
    ("command line", ["cli", "__main__"]),
]  # fmt: skip


def module_names() -> dict[str, Path]:
    names = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def layer_of(module: str) -> int:
    best, found = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            match = module == prefix or (prefix and module.startswith(prefix + "."))
            if match and len(prefix) >= best:  # the longest prefix decides (rl.export)
                best, found = len(prefix), i
    assert found is not None, f"unicomp.{module} is in no layer of tests/test_architecture.py"
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".") if package else []
                    up = up[: len(up) - node.level + 1]
                    base = ".".join([*up, base]) if base else ".".join(up)
                    base = f"unicomp.{base}" if base else "unicomp"
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                if target != "unicomp" and not target.startswith("unicomp."):
                    continue
                name = target.removeprefix("unicomp").removeprefix(".")
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name != module and (name or target == "unicomp"):
                    graph[module].add(name)  # "": the package's lazy __init__ (base layer)
    return graph


def test_the_import_graph_has_no_loop():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                loop = path[path.index(target) :] + [target]
                raise AssertionError("import loop: " + " -> ".join(f"unicomp.{m}" for m in loop))
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_no_module_imports_a_higher_layer():
    graph = import_graph()
    upward = [
        f"unicomp.{m} ({LAYERS[layer_of(m)][0]}) imports unicomp.{t} ({LAYERS[layer_of(t)][0]})"
        for m, targets in graph.items()
        for t in sorted(targets)
        if layer_of(t) > layer_of(m)
    ]
    assert not upward, "\n".join(upward)


def test_the_graph_reader_sees_lazy_imports():
    # the run: backbones are built a layer above unicomp.backbones, found through the registry
    graph = import_graph()
    assert "experiments.fpt" in graph["experiments"] or "experiments.fpt" in graph["cli"]
    assert "backbones.loading" in graph["experiments.fpt"]
    assert "train" in graph["experiments.common"]
