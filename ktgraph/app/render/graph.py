"""Draw a knowledge-transfer graph as DOT: what a graph file declares.

Each network is a row of its segments; cross paths are coloured dashed data flow (through an
adapter node where one exists); one logits node per path; aggregators; and the links between
them, styled by their link kind. Node ids and the order of statements depend only on the graph,
so the DOT text of a graph is stable and can be compared with a checked-in file.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import graphviz

from ...bind import BoundGraph
from ...graph import AdapterId, KTGraph, Link, Ref, RegressorId, SegmentId, by_name
from ...kinds import adapter_label
from .dot import CROSS_COLORS, NETWORK_FILLS, esc, lines, new_digraph, num, wrap
from .legend import CUT_OFF, Legend

INPUT_NODE = "x"  # a reserved name: no network, path or aggregator can take it


@dataclass(frozen=True)
class Details:
    """What binding found, for drawing: each junction adapter's kind, each link's regressor (and its
    kind), and the model stages each segment runs. A graph drawn without them shows none."""

    adapters: Mapping[AdapterId, str] = field(default_factory=dict)
    regressors: Mapping[str, tuple[RegressorId, str]] = field(default_factory=dict)
    segment_stages: Mapping[SegmentId, tuple[str, ...]] = field(default_factory=dict)


def details_of(bound: BoundGraph) -> Details:
    return Details(dict(bound.adapters),
                   {link: (rid, bound.regressor_kinds[rid]) for link, rid in bound.regressors.items()},
                   {sid: bound.modules.segments[sid].stages for sid in bound.modules.segments})


def graph_dot(graph: KTGraph, details: Details = Details(), *, legend: bool = True) -> graphviz.Digraph:
    """The graph as declared: networks, cross paths, logits, aggregators and links."""
    return _GraphDrawing(graph, details).draw(legend)


def _trains_text(graph: KTGraph, link: Link) -> str:
    """``trains`` in the words of the graph file: whole networks by name, the rest as parts; scaled gradients."""
    scaled = "".join(f", {owner} grad ×{factor:.4g}" for owner, factor in link.scales)
    if link.trains_all:
        return "all" + scaled
    names: list[str] = []
    left = set(link.trains or ())
    for net in graph.networks.values():
        if set(net.segments) <= left:
            names.append(net.name)
            left -= set(net.segments)
    names += map(str, by_name(left))
    return ", ".join(names) + scaled


def _link_label(graph: KTGraph, link: Link) -> str:
    if link.gate.removes_link:  # never computed: its weight, temperature and stages say nothing
        return lines(link.loss.kind, link.gate.edge_label())
    head = [*link.loss.edge_label(), f"w={num(link.weight)}"]
    gate = link.gate.edge_label()
    notes = []
    if link.source.kind != "label" and not link.loss.detached:
        notes.append("undetached")
    trains = f"trains {_trains_text(graph, link)}" if link.trains is not None or link.trains_all else ""
    active = [s.name for s in graph.stages if s.links is None or link.name in s.links]
    when = ""
    if graph.staged and len(active) < len(graph.stages):
        when = f"stage {', '.join(active)}" if active else "in no stage"
    return lines(" ".join(head), ", ".join([gate] + notes if gate else notes), trains, when)


def _stage_text(stages: Sequence[str] | None) -> str:
    return wrap(list(stages), 3) if stages else ""


class _GraphDrawing:
    """Lays the graph out left to right: input, segments, own logits, cross-path logits, aggregators.

    ``level`` is the column each node is meant for. A link that runs to a later column is
    an ordinary edge; one that runs back is drawn reversed (``dir=back``) so it still
    ranks nodes the right way; one within a column does not rank nodes at all.
    """

    def __init__(self, graph: KTGraph, details: Details) -> None:
        self.graph = graph
        self.adapters = dict(details.adapters)
        self.regressors = dict(details.regressors)
        self.stages = dict(details.segment_stages)
        name = graph.name or "ktgraph"
        title = name + (f": {graph.description}" if graph.description else "")
        self.dot = new_digraph(name, title)
        self.fill = {net: NETWORK_FILLS[i % len(NETWORK_FILLS)] for i, net in enumerate(graph.networks)}
        self.level: dict[str, int] = {INPUT_NODE: 0}
        self.last_own = max(len(net.segments) for net in graph.networks.values()) + 1
        self.pairs: set[tuple[str, str]] = set()  # (tail, head) of every link between two nodes
        self.used = Legend()

    def node_of(self, ref: Ref) -> str:
        if ref.kind == "logits" or ref.kind == "feature":
            return ref.name  # a path's logits node is named like the path; a feature is its segment
        return f"agg#{ref.name}"

    def draw(self, legend: bool) -> graphviz.Digraph:
        start = len(self.dot.body)
        self.dot.node(INPUT_NODE, "input x", shape="cds", style="filled", fillcolor="#eeeeee")
        self.networks()
        self.cross_paths()
        self.aggregators()
        self.links()
        if legend:  # drawn last, for it lists what the graph used; first in the source puts it below the graph
            end = len(self.dot.body)
            self.used.draw(self.dot)
            drawn = self.dot.body[end:]
            del self.dot.body[end:]
            self.dot.body[start:start] = drawn
        return self.dot

    def networks(self) -> None:
        for net in self.graph.networks.values():
            with self.dot.subgraph(name=f"cluster_{net.name}") as c:
                frozen = [s.name for s in self.graph.stages if net.name in s.freeze]
                c.attr(label=f"{net.name} ({net.model})" + (", frozen" if net.frozen else "")
                       + (f", frozen in stage {', '.join(frozen)}" if frozen and not net.frozen else ""),
                       style="rounded", color="#7f7f7f", fontsize="12")
                for i, segment in enumerate(net.segments, 1):
                    if segment in net.borrowed:  # a shared trunk: drawn once, in its owner's box
                        continue
                    stages = tuple(self.stages.get(segment, ()))
                    c.node(str(segment), lines(segment.part, _stage_text(stages) if stages != (segment.part,) else ""),
                           shape="box", style="rounded,filled", fillcolor=self.fill[net.name], tooltip=str(segment))
                    self.level[str(segment)] = i
                    self.used.use("segment", "own")
                c.node(net.name, lines(net.name, "logits"), shape="ellipse", style="filled",
                       fillcolor=self.fill[net.name], tooltip=f"path {net.name}: logits")
                self.level[net.name] = len(net.segments) + 1
                self.used.use("logits")
            ids = [str(s) for s in net.segments]
            if not net.borrowed:
                self.dot.edge(INPUT_NODE, ids[0], weight="10")
            for a, b in list(zip(ids, ids[1:]))[max(len(net.borrowed) - 1, 0):]:  # the owner draws the trunk's own
                self.dot.edge(a, b, weight="10")
            self.dot.edge(ids[-1], net.name, weight="10")

    def cross_paths(self) -> None:
        """Junction edges per cross path, in its colour; its logits one column after the networks'."""
        drawn: set[str] = set()
        index = 0
        column = self.last_own + 1
        for path in self.graph.paths.values():
            if path.name in self.graph.networks:
                continue
            last = str(path.segments[-1])
            minlen = str(column - self.level[last])
            self.level[path.name] = column
            if not path.is_cross:  # a declared path along one network: the same values as the network
                self.used.use("logits")
                self.dot.node(path.name, lines(path.name, "logits"), shape="ellipse", style="filled",
                              fillcolor=self.fill[path.owners[0]], tooltip=f"path {path.name}")
                self.dot.edge(last, path.name, minlen=minlen)
                continue
            color = CROSS_COLORS[index % len(CROSS_COLORS)]
            index += 1
            self.used.use("cross", "crossflow")
            style = {"color": color, "style": "dashed", "penwidth": "1.6", "tooltip": f"cross path {path.name}"}
            for junction in path.junctions():
                up, down = str(junction.up), str(junction.down)
                if junction in self.adapters:
                    node = f"adapter#{junction}"
                    self.used.use(f"adapter:{self.adapters[junction]}")
                    if node not in drawn:
                        drawn.add(node)
                        self.dot.node(node, adapter_label(self.adapters[junction]), shape="box",
                                      style="filled", fillcolor="#fff7cc", color="#b8860b", fontsize="8",
                                      height="0.25", margin="0.04,0.02", tooltip=f"adapter {junction}")
                    self.dot.edge(up, node, **style)
                    self.dot.edge(node, down, **style)
                else:
                    self.dot.edge(up, down, **style)
            self.dot.node(path.name, lines(path.name, "logits"), shape="ellipse", style="filled",
                          fillcolor="#ffffff", color=color, fontcolor=color, penwidth="1.6",
                          tooltip=f"cross path {path.name}: " + " > ".join(map(str, path.segments)))
            self.dot.edge(last, path.name, minlen=minlen, **style)

    def aggregators(self) -> None:
        for agg in self.graph.aggregators.values():
            node = f"agg#{agg.name}"
            inputs = [self.node_of(ref) for ref in agg.inputs]
            self.used.use(f"aggregator:{agg.unit.kind}", "feature" if agg.features else "")
            self.level[node] = max(self.level[n] for n in inputs) + 1
            self.dot.node(node, lines(agg.name, agg.unit.caption()), shape=agg.unit.shape, style="filled",
                          fillcolor="#fbe8c8", tooltip=agg.name)
            for tail in inputs:
                self.dot.edge(tail, node, color="#444444", minlen=str(self.level[node] - self.level[tail]))
            for ref in agg.features:
                tail = self.node_of(ref)
                self.dot.edge(tail, node, color="#999999", style="dashed", arrowhead="odot", weight="0",
                              minlen=str(max(1, self.level[node] - self.level[tail])), tooltip=f"feature {ref.name}")
            if agg.unit.per_input:
                for out in agg.outputs:
                    self.dot.node(f"agg#{out}", out, shape="ellipse", style="filled", fillcolor="#fbe8c8",
                                  fontsize="9", height="0.3", tooltip=f"output {out}")
                    self.level[f"agg#{out}"] = self.level[node] + 1
                    self.dot.edge(node, f"agg#{out}", color="#444444")

    def _link_edge(self, tail: str, head: str, label: str, **attrs: str) -> None:
        """An edge that ranks nodes only when it runs forward, or backward drawn reversed."""
        a, b = self.level.get(tail), self.level.get(head)
        if a is not None and b is not None and a < b:
            self.dot.edge(tail, head, label=label, **attrs)
        elif a is not None and b is not None and a > b:
            self.dot.edge(head, tail, label=label, dir="back", **attrs)
        else:  # same column: a flat edge; an external label, since dot cannot rank labelled ones here
            if (head, tail) in self.pairs:  # a pair of opposite links bends out on two sides, labels apart
                side = "w" if (tail, head) < (head, tail) else "e"
                attrs = {**attrs, "tailport": side, "headport": side}
            self.dot.edge(tail, head, xlabel=label, constraint="false", **attrs)

    def links(self) -> None:
        regressors = labels = 0
        self.pairs = {(self.node_of(link.source), self.node_of(link.target)) for link in self.graph.links
                      if link.source.kind != "label" and link.name not in self.regressors}
        for link in self.graph.links:
            style = dict(link.loss.style)
            if link.gate.removes_link:
                style.update(CUT_OFF)
            self.used.use(edge="cutoff" if link.gate.removes_link else f"link:{link.loss.kind}")
            label = _link_label(self.graph, link)
            head = self.node_of(link.target)
            if link.source.kind == "label":  # a label node per ce link, right before its target
                labels += 1
                tail = f"label#{labels}"
                self.used.use("label")
                self.dot.node(tail, "label y", shape="note", style="filled", fillcolor="#eeeeee",
                              color="#8c8c8c", fontsize="9", height="0.3", tooltip=esc(f"label of {link.name}"))
                self.level[tail] = self.level[head] - 1
            else:
                tail = self.node_of(link.source)
            if link.name in self.regressors:
                regressor, kind = self.regressors[link.name]
                regressors += 1
                node = f"regressor#{regressors}"
                self.used.use("regressor")
                self.dot.node(node, lines("regressor", adapter_label(kind)),
                              shape="box", style="filled", fillcolor="#e3f4e1", color=style["color"],
                              fontsize="8", height="0.25", margin="0.04,0.02", tooltip=esc(str(regressor)))
                self.level[node] = self.level[head]
                with self.dot.subgraph() as same:  # the regressor sits in the column of the feature it maps
                    same.attr(rank="same")
                    same.node(head)
                    same.node(node)
                self._link_edge(tail, node, label, id=esc(f"link:{link.name}"), tooltip=esc(link.name), **style)
                self.dot.edge(node, head, tooltip=esc(link.name), constraint="false", **style)
            else:
                self._link_edge(tail, head, label, id=esc(f"link:{link.name}"), tooltip=esc(link.name), **style)
