"""Pictures of graphs and plans: every bundled graph renders, the DOT is stable, the CLI writes files."""
from __future__ import annotations

import importlib
import re
import shutil
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import ROOT
from svg_text import misplaced_text, overlapping_edge_labels
from ktgraph.app.cli import main
from ktgraph.app.commands import titled_plans
from ktgraph.graph import load_graph
from ktgraph.app.render import Details
from ktgraph.compile import Aggregate
from ktgraph.compile.format import display_names
from ktgraph.errors import GraphError
from ktgraph.graph import AdapterId, RegressorId, SegmentId, build_graph
from ktgraph.runtime import prepare
from ktgraph.spec import load_document, parse_yaml

viz = importlib.import_module("ktgraph.app.render")
dot = importlib.import_module("ktgraph.app.render.dot")

GRAPHS = sorted((ROOT / "graphs").glob("*.yaml"))
EXPECTED = Path(__file__).parent / "expected"

# Two resnet8 cut at layer2, one xml cross, and a ce, a kl and a mimic link. The DOT is
# drawn with an adapter on one junction and a regressor on the mimic, as a model with
# different widths would have them, and with the stages resnet8's segments run.
SMALL = """
name: small
description: Two resnet8 cut at layer2, crossed, with ce, kl and mimic links.
networks:
  a: {model: resnet8, cuts: [layer2], parts: [up, down]}
  b: {model: resnet8, cuts: [layer2], parts: [up, down]}
crosses:
  - {kind: xml, networks: [a, b], cut: up}
links:
  - {kind: ce, target: a}
  - {kind: kl, source: a, target: b-a, T: 2, weight: 0.5, gate: {kind: ramp, length: 10}}
  - {kind: mimic, source: a.up, target: b.up, trains: [b.up], gate: linear}
"""
TINY_STAGED = """
name: tiny
data: {name: digits}
networks:
  a: {model: tiny_test}
  b: {model: tiny_test}
links:
  - {kind: ce, target: a}
  - {kind: kl, source: a, target: b, T: 2}
stages:
  - {name: first, epochs: 1, links: ["ce:a"]}
  - {name: second, epochs: 1, links: ["kl:a->b"], freeze: [a]}
"""
A_UP, A_DOWN, B_UP, B_DOWN = (SegmentId(n, p) for n in "ab" for p in ("up", "down"))
STAGES = {A_UP: ("stem", "layer1", "layer2"), A_DOWN: ("layer3", "head"),
          B_UP: ("stem", "layer1", "layer2"), B_DOWN: ("layer3", "head")}
SMALL_DETAILS = Details(adapters={AdapterId(A_UP, B_DOWN): "conv1x1_relu"},
                        regressors={"mimic:a.up->b.up": (RegressorId("b.up", "a.up"), "conv_bn_relu")},
                        segment_stages=STAGES)


def small_graph():
    raw, source = parse_yaml(textwrap.dedent(SMALL), "small.yaml")
    return build_graph(load_document(raw, source))


def svg_content(path: Path) -> tuple[set[str], str]:
    """The <title>s of an SVG (node ids, ``a->b`` for edges) and all its text and attribute values."""
    root = ET.parse(path).getroot()  # raises when the SVG is not well-formed XML
    assert root.tag.endswith("svg")
    titles = {el.text or "" for el in root.iter() if el.tag.endswith("}title") or el.tag == "title"}
    words = [el.text or "" for el in root.iter()] + [v for el in root.iter() for v in el.attrib.values()]
    return titles, "\n".join(words)


@pytest.mark.parametrize("path", GRAPHS, ids=[p.stem for p in GRAPHS])
def test_every_graph_renders_to_svg(path: Path, tmp_path: Path):
    graph = load_graph(path)
    out = viz.render(viz.graph_dot(graph), tmp_path / "graph.svg", "svg")
    titles, text = svg_content(out)
    for name, net in graph.networks.items():
        assert f"cluster_{name}" in titles and f"{name} ({net.model})" in text
    for segment in graph.segments:
        assert str(segment) in titles
    for name in graph.paths:
        assert name in titles
    for link in graph.links:
        assert f"link:{link.name}" in text
    assert not misplaced_text(out)  # a title, a legend entry or a node's text drawn past its box
    assert not overlapping_edge_labels(out)  # e.g. the labels of DML's two opposite kl links

    plans = titled_plans(prepare(graph, with_data=False), path.name)
    out = viz.render(viz.plans_dot(plans), tmp_path / "plan.svg", "svg")
    titles, text = svg_content(out)
    prefixes = [""] if len(plans) == 1 else [f"s{i}/" for i in range(1, len(plans) + 1)]
    for prefix, (_, plan) in zip(prefixes, plans):
        names = display_names(plan)
        for step in plan.steps:
            if isinstance(step, Aggregate):
                assert all(f"{prefix}agg#{out}" in titles for out in step.outs)
            else:
                assert prefix + names[step.out] in titles and str(step.module) in text
        for term in plan.terms:
            assert f"L[{term.node}] += {term.link}" in text
        for i, group in enumerate(plan.groups, 1):
            assert f"{prefix}legend#g{i}" in titles
    assert not misplaced_text(out)


def test_small_graph_dot_is_stable():
    drawn = viz.graph_dot(small_graph(), SMALL_DETAILS)
    expected = (EXPECTED / "small.dot").read_text(encoding="utf-8")
    assert drawn.source == expected, "regenerate tests/expected/small.dot if the change is intended"
    # Same input, same text: ids and statement order do not depend on the order details are given in.
    again = viz.graph_dot(small_graph(), Details(dict(SMALL_DETAILS.adapters), dict(SMALL_DETAILS.regressors),
                                                 dict(reversed(list(STAGES.items())))))
    assert again.source == expected


def test_small_graph_draws_adapter_regressor_and_links():
    source = viz.graph_dot(small_graph(), SMALL_DETAILS).source
    assert '"adapter#a.up>b.down" [label="1x1 conv+ReLU"' in source
    assert '"a.up" -> "adapter#a.up>b.down"' in source and '"adapter#a.up>b.down" -> "b.down"' in source
    assert '"regressor#1"' in source and '"regressor#1" -> "b.up"' in source
    assert 'label="kl T=2 w=0.5\\nramp(E=10)"' in source
    assert 'xlabel="mimic w=1\\nlinear(k/k_end)\\ntrains b.up"' in source
    assert '"label#1" -> a [label="ce w=1"' in source
    assert "subgraph cluster_legend" in source
    plain = viz.graph_dot(small_graph(), legend=False).source
    assert "adapter#" not in plain and "regressor#" not in plain and "cluster_legend" not in plain


def test_cli_renders_graph_and_plan(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    graph_file = str(ROOT / "graphs" / "xml.yaml")
    assert main(["render", graph_file]) == 0
    titles, text = svg_content(tmp_path / "xml.svg")
    assert {"net1.up", "net2.down", "net1-net2", "net2-net1"} <= titles
    assert "stem, layer1, layer2" in text  # the segments' stages, known once the model is built

    # The plan of a small two-stage graph (tiny networks build fast), as DOT by the suffix of -o.
    (tmp_path / "tiny.yaml").write_text(TINY_STAGED)
    assert main(["render", "tiny.yaml", "--plan", "-o", "tiny.gv", "train.seed=1"]) == 0
    source = (tmp_path / "tiny.gv").read_text()
    assert source.startswith("digraph plans {")
    assert "cluster_stage1" in source and "cluster_stage2" in source and "s2/legend#g1" in source
    assert "L[b] += kl:a->b" in source and "wrote tiny.gv" in capsys.readouterr().err
    assert main(["render", "tiny.yaml", "--plan", "--format", "svg"]) == 0
    titles, text = svg_content(tmp_path / "tiny.plan.svg")
    assert {"s1/v1", "s2/v1", "s2/v2"} <= titles and "L[a] += ce:a" in text

    assert main(["render", graph_file, "-o", "xml.pdf"]) == 2  # unknown suffix: a located error, no traceback
    assert "cannot tell the picture format" in capsys.readouterr().err


def test_missing_renderer_is_a_graph_error(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    monkeypatch.setattr(dot, "_graphviz_pure_binary", lambda: None)
    with pytest.raises(GraphError, match="no Graphviz renderer"):
        viz.render(viz.graph_dot(small_graph()), tmp_path / "small.svg", "svg")
    assert not (tmp_path / "small.svg").exists()
    # DOT needs no renderer.
    viz.render(viz.graph_dot(small_graph()), tmp_path / "small.dot", "dot")
    assert (tmp_path / "small.dot").read_text().startswith("digraph small {")


def test_graphviz_pure_binary_is_found():
    found = dot._graphviz_pure_binary()
    assert found is not None and Path(found).name.startswith("graphviz-pure")


def _legend_keys(source: str) -> set[str]:
    """The styles a drawing's legend lists (its example nodes, without the edge examples' text nodes)."""
    return {m for m in re.findall(r'"legend#([^"]+)" \[', source) if not m.endswith("_text")}


def _used_keys(graph) -> set[str]:
    """The styles the drawing of ``graph`` must use, from the graph itself."""
    job = prepare(graph, with_data=False)
    keys = {"segment", "own", "logits"}
    keys |= {"cross", "crossflow"} if any(p.is_cross for p in graph.paths.values()) else set()
    keys |= {f"adapter.{kind}" for kind in job.bound.adapters.values()}
    keys |= {"regressor"} if job.bound.regressors else set()
    keys |= {f"aggregator.{a.unit.kind}" for a in graph.aggregators.values()}
    keys |= {"feature"} if any(a.features for a in graph.aggregators.values()) else set()
    keys |= {"label"} if any(l.source.kind == "label" for l in graph.links) else set()
    keys |= {"cutoff" if l.gate.removes_link else f"link.{l.loss.kind}" for l in graph.links}
    return keys


@pytest.mark.parametrize("path", GRAPHS, ids=[p.stem for p in GRAPHS])
def test_every_legend_lists_exactly_what_its_drawing_uses(path: Path):
    graph = load_graph(path)
    source = viz.graph_dot(graph, viz.details_of(prepare(graph, with_data=False).bound)).source
    assert _legend_keys(source) == _used_keys(graph)


def test_dcl_drawing_keeps_opposite_labels_apart_and_its_matrix():
    graph = load_graph(ROOT / "graphs" / "dcl.yaml")
    source = viz.graph_dot(graph).source
    legend = _legend_keys(source)
    assert not any(k.startswith(("adapter", "aggregator", "regressor", "cross")) for k in legend)
    there = re.search(r'net2 -> net1 \[[^\]]*id="link:kl:net2->net1"[^\]]*\]', source).group(0)
    back = re.search(r'net1 -> net2 \[[^\]]*id="link:kl:net1->net2"[^\]]*\]', source).group(0)
    assert 'xlabel="kl\\ncutoff"' in back  # a cut-off link says only that
    sides = {re.search(r"tailport=(\w)", e).group(1) for e in (there, back)}
    assert sides == {"e", "w"}  # the two directions bend out on opposite sides
    matrix = viz.matrix_dot(graph).source
    rows = re.findall(r"<TR>(.*?)</TR>", matrix)
    assert [re.search(r"<B>([^<]+)</B>", r).group(1) for r in rows[1:]] == ["net1", "net2", "net3"]
    net1 = re.findall(r"<TD[^>]*>(.*?)</TD>", rows[1])
    assert [re.sub(r"<[^>]+>", "", c) for c in net1] == ["net1", "through", "", "correct", "linear"]
    assert "cutoff (ce:net3)" in rows[3] and "through (pretrain:net3)" in rows[3]


def test_cli_renders_the_matrix(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["render", str(ROOT / "graphs" / "dcl.yaml"), "--matrix", "--format", "dot"]) == 0
    assert "receiver" in (tmp_path / "dcl.matrix.dot").read_text()
    assert main(["render", str(ROOT / "graphs" / "dcl.yaml"), "--matrix"]) == 0
    assert not misplaced_text(tmp_path / "dcl.matrix.svg")
    assert main(["render", str(ROOT / "graphs" / "dcl.yaml"), "--matrix", "--plan"]) == 2


@pytest.mark.parametrize(("name", "expected"), [
    ("fitnet", {"call", "adapter", "shared", "term"}),  # a regressor call, no cross path, no aggregate
    ("xml", {"call", "cross", "shared", "term"}),
])
def test_a_plan_legend_lists_only_the_styles_its_plans_use(name: str, expected: set[str]) -> None:
    graph = load_graph(ROOT / "graphs" / f"{name}.yaml")
    source = viz.plans_dot(titled_plans(prepare(graph, with_data=False), name), name).source
    assert {key for key in _legend_keys(source) if not re.fullmatch(r"g\d+", key)} == expected
