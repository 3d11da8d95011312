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


# --- the picture in docs/index.md -----------------------------------------------------------------
PICTURE = PACKAGE.parent / "docs" / "images" / "layers.dot"
ROLES = {
    "spec": "the language: schema from the registries,\nsafe YAML with lines, overrides, imports",
    "graph": "resolved records: networks, paths,\naggregators, links, stages; typed ids",
    "bind": "models built and cut; shapes, adapters,\nregressors from a dry run",
    "compile": "plan IR (values with shapes),\nlowering and passes -> program",
    "runtime": "executor, trainer, hooks, evaluation,\nmeasurement, checkpoints, run directory",
    "app": "run, eval, pick, report, render, CLI",
    "kinds": "link kinds, gates,\naggregators, adapters", "zoo": "models, cuts, segments,\nchannel matching",
    "data": "data sets", "settings": "data and train sections",
    "registry": "one registry mechanism", "config": "strict sections", "errors": "located errors",
}


def package_edges() -> set[tuple[str, str]]:
    """(importer, imported) between ktgraph's packages, transitively reduced: what the picture draws."""
    packages = nx.DiGraph()
    for a, b in GRAPH.edges():
        pa, pb = (m.split(".")[1] if "." in m else "" for m in (a, b))
        if pa in ROLES and pb in ROLES and pa != pb:
            packages.add_edge(pa, pb)
    return set(nx.transitive_reduction(packages).edges())


def layers_dot() -> str:
    """The picture: data flows down the pipeline; an arrow points from what is used to its user."""
    lines = ["digraph layers {", '  rankdir=TB; nodesep=0.3; ranksep=0.35; fontname="Helvetica";',
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10, fillcolor="#dbe9f6"];',
             '  edge [dir=back, color="#555555"];',
             '  input [label="graph file (YAML) + overrides", shape=note, fillcolor="#eeeeee"];',
             '  output [label="run directory: config, metrics, checkpoints,\\nXross table, report", shape=note,'
             ' fillcolor="#eeeeee"];', "  \"spec\" -> input;", "  output -> \"app\";"]
    vocabulary = {"kinds", "zoo", "data", "settings", "registry", "config", "errors"}
    for name, role in ROLES.items():
        fill = ', fillcolor="#fde0c5"' if name in vocabulary else ""
        label = f"{name}/\\n{role}".replace("\n", "\\n")
        lines.append(f'  "{name}" [label="{label}"{fill}];')  # quoted: `graph` is a DOT keyword
    lines.append('  { rank=same; "kinds"; "zoo"; "data"; }')
    lines.append('  { rank=same; "registry"; "config"; "errors"; }')
    lines += [f'  "{a}" -> "{b}";' for a, b in sorted(package_edges())]
    return "\n".join(lines + ["}"]) + "\n"


def test_the_layers_picture_matches_the_code():
    drawn = set()
    for line in PICTURE.read_text().splitlines():
        parts = line.strip().rstrip(";").replace('"', "").split(" -> ")
        if len(parts) == 2 and parts[0] in ROLES and parts[1] in ROLES:
            drawn.add((parts[0], parts[1]))
    assert drawn == package_edges(), "regenerate it: python tests/test_layers.py"


if __name__ == "__main__":  # writes docs/images/layers.dot and .svg from the code as it is
    from ktgraph.app.render.dot import find_renderer  # noqa: E402 -- only when regenerating
    import subprocess  # noqa: E402

    PICTURE.write_text(layers_dot())
    svg = subprocess.run([*find_renderer(), "-Tsvg"], input=PICTURE.read_bytes(), capture_output=True, check=True)
    PICTURE.with_suffix(".svg").write_bytes(svg.stdout)
