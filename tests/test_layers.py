"""The architecture, checked: layers import one way, no cycles, no imports hidden in functions.

spec (language) -> graph (resolved records) -> bind (modules, shapes) -> compile (plan, passes)
-> runtime (executor, trainer, evaluation) -> app (commands); the vocabulary (registry, kinds,
zoo, data, settings) sits under them all. Nothing below graph imports spec.
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ktgraph"
LAYERS = [("errors", "registry", "config"), ("kinds", "zoo", "data"), ("settings",), ("spec",), ("graph",),
          ("bind",), ("compile",), ("runtime",), ("app",), ("__init__", "__main__")]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The ktgraph modules an import statement reads."""
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [target] if target == "ktgraph" or target.startswith("ktgraph.") else []


def imports() -> tuple[nx.DiGraph, list[str]]:
    graph, nested = nx.DiGraph(), []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        graph.add_node(module)
        tree = ast.parse(path.read_text())
        top_level = set(map(id, tree.body))
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.ImportFrom):
                targets = resolve(module, path.name == "__init__.py", node)
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("ktgraph")]
            if targets and id(node) not in top_level and not _under_type_checking(tree, node):
                nested.append(f"{module}: line {node.lineno}")
            graph.add_edges_from((module, t) for t in targets if t != module)
    return graph, nested


def _under_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    return any(isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING" and node in ast.walk(n)
               for n in tree.body)


def layer(module: str) -> int:
    parts = module.split(".")
    return RANK["__init__"] if len(parts) == 1 else RANK[parts[1]]


GRAPH, NESTED = imports()


def test_no_import_of_ktgraph_inside_a_function():
    assert NESTED == []


def test_no_import_cycles():
    # A package's __init__ re-exports its modules; the cycles that matter are between modules.
    modules = GRAPH.subgraph(n for n in GRAPH if n.count(".") >= 1)
    assert list(nx.simple_cycles(modules)) == []


@pytest.mark.parametrize("module", sorted(GRAPH), ids=sorted(GRAPH))
def test_imports_go_down_the_layers(module):
    upward = [t for t in GRAPH.successors(module) if t in GRAPH and layer(t) > layer(module)]
    assert upward == [], f"{module} imports a later layer"


def test_nothing_below_graph_reads_the_spec():
    later = [m for m in GRAPH if layer(m) > RANK["graph"] and layer(m) < RANK["__init__"]]
    readers = sorted(m for m in later if any(t.startswith("ktgraph.spec") for t in GRAPH.successors(m)))
    assert readers == []


def test_modules_stay_small():
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
