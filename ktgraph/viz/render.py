"""Draw a knowledge-transfer graph or a compiled plan as DOT, and render it to SVG.

:func:`graph_dot` draws what a graph file declares: each network as a row of its
segments, cross paths as coloured dashed data flow (through an adapter node where
one exists), one logits node per path, aggregators, and the links between them.
:func:`plan_dot` draws what one training step computes: the plan's steps, the loss
terms that read them, and the gradient groups. :func:`render` writes DOT text or runs
a dot binary: the system ``dot`` when there is one, else the ``graphviz-pure``
program that the ``graphviz-pure`` package installs (see :func:`find_renderer`).

Node ids and the order of statements depend only on the graph or plan, so the DOT
text of a graph is stable and can be compared with a checked-in file.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Collection, Mapping, Sequence
from importlib import metadata
from pathlib import Path

import graphviz

from ..compile.compiler import regressor_key
from ..compile.format import term_formula
from ..compile.plan import INPUT, Aggregate, Call, Plan, Term
from ..errors import GraphError
from ..graph import ALL, KTGraph, Link, Ref, junction_key

FORMATS = ("svg", "dot", "png")
FONT = "Helvetica"

# Link kinds: colour, line style, label colour.
LINK_STYLE = {
    "ce": {"color": "#8c8c8c", "style": "solid", "fontcolor": "#5a5a5a"},
    "kl": {"color": "#1f5fbf", "style": "solid", "fontcolor": "#1f5fbf"},
    "mimic": {"color": "#2e8b3a", "style": "dotted", "fontcolor": "#2e8b3a", "penwidth": "1.8"},
}
# One strong colour per cross path (cycled); none is grey, blue or green, which links use.
CROSS_COLORS = ("#d95f02", "#7b3294", "#c51b7d", "#a6611a", "#e7298a", "#8c510a", "#b2182b", "#542788")
# Pale fills: one per network (segments and own logits), one per gradient group.
NETWORK_FILLS = ("#dbe9f6", "#fde0c5", "#e0f0d8", "#eadcf0", "#fbe3e8", "#e8e4d0", "#d9f0ef", "#f2f2c6")
GROUP_FILLS = ("#cfe3f7", "#fcd7b6", "#d3ecc9", "#e4d2ef", "#f9d3dc", "#e9e3c3", "#c9ecea", "#f1f0b5")
ADAPTER_LABELS = {"auto": "1x1 conv+ReLU", "conv1x1_relu": "1x1 conv+ReLU", "conv_bn_relu": "1x1 conv+BN+ReLU"}
REGRESSOR_LABELS = {"auto": "1x1 conv+BN+ReLU", "conv1x1_relu": "1x1 conv+ReLU",
                    "conv_bn_relu": "1x1 conv+BN+ReLU"}

INPUT_NODE = "x"  # a reserved name: no network, path or aggregator can take it


def _esc(text: str) -> str:
    """Free text (a description, a link's own name) with its backslashes kept literal in DOT."""
    return text.replace("\\", "\\\\")


def _num(x: float) -> str:
    return f"{x:g}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _lines(*parts: str) -> str:
    """A multi-line DOT label (``\\n`` centres each line)."""
    return "\\n".join(p for p in parts if p)


def _wrap(items: Sequence[str], per_line: int = 3, sep: str = ", ") -> str:
    rows = [sep.join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    return "\\n".join(rows)


def _new_digraph(name: str, label: str) -> graphviz.Digraph:
    dot = graphviz.Digraph(name=name)
    dot.attr(rankdir="LR", newrank="true", nodesep="0.25", ranksep="0.45", fontname=FONT, fontsize="14",
             labelloc="t", labeljust="l", label=_esc(label))
    dot.attr("node", fontname=FONT, fontsize="11")
    dot.attr("edge", fontname=FONT, fontsize="9", arrowsize="0.7")
    return dot


# --- the graph ------------------------------------------------------------------------

def _trains_text(graph: KTGraph, trains: frozenset[str]) -> str:
    """``trains`` in the words of the graph file: whole networks by name, the rest as parts."""
    if ALL in trains:
        return "all"
    names: list[str] = []
    left = set(trains)
    for net in graph.networks.values():
        if set(net.segments) <= left:
            names.append(net.name)
            left -= set(net.segments)
    names += sorted(left)
    return ", ".join(names)


def _link_label(graph: KTGraph, link: Link) -> str:
    head = [link.kind]
    if link.kind == "kl":
        head.append(f"T={_num(link.T)}")
    if link.kind == "mimic" and link.loss != "mse":
        head.append(link.loss)
    head.append(f"w={_num(link.weight)}")
    gate = ""
    if link.gate == "ramp":
        gate = f"ramp(E={link.gate_length})"
    elif link.gate == "linear":
        gate = "linear(k/k_end)"
    elif link.gate != "through":
        gate = link.gate
    notes = []
    if link.kind != "ce" and not link.detach:
        notes.append("undetached")
    trains = f"trains {_trains_text(graph, link.trains)}" if link.trains is not None else ""
    active = [s.name for s in graph.stages if s.links is None or link.name in s.links]
    when = ""
    if graph.stages and len(active) < len(graph.stages):
        when = f"stage {', '.join(active)}" if active else "in no stage"
    return _lines(" ".join(head), ", ".join([gate] + notes if gate else notes), trains, when)


def _stage_text(stages: Sequence[str] | None) -> str:
    return _wrap(list(stages), 3) if stages else ""


class _GraphDrawing:
    """Lays the graph out left to right: input, segments, own logits, cross-path logits, aggregators.

    ``level`` is the column each node is meant for. A link that runs to a later column is
    an ordinary edge; one that runs back is drawn reversed (``dir=back``) so it still
    ranks nodes the right way; one within a column does not rank nodes at all.
    """

    def __init__(self, graph: KTGraph, adapters: Collection[str], regressors: Collection[str],
                 segment_stages: Mapping[str, Sequence[str]] | None) -> None:
        self.graph = graph
        self.adapters = set(adapters)
        self.regressors = set(regressors)
        self.stages = segment_stages or {}
        name = graph.spec.name or "ktgraph"
        title = name + (f": {graph.spec.description}" if graph.spec.description else "")
        self.dot = _new_digraph(name, title)
        self.fill = {net: NETWORK_FILLS[i % len(NETWORK_FILLS)] for i, net in enumerate(graph.networks)}
        self.level: dict[str, int] = {INPUT_NODE: 0}
        self.last_own = max(len(net.segments) for net in graph.networks.values()) + 1
        self.flat: set[tuple[str, str]] = set()

    def node_of(self, ref: Ref) -> str:
        if ref.kind == "logits" or ref.kind == "feature":
            return ref.name  # a path's logits node is named like the path; a feature is its segment
        return f"agg#{ref.name}"

    def draw(self, legend: bool) -> graphviz.Digraph:
        if legend:  # first in the source puts it below the graph
            self.legend()
        self.dot.node(INPUT_NODE, "input x", shape="cds", style="filled", fillcolor="#eeeeee")
        self.networks()
        self.cross_paths()
        self.aggregators()
        self.links()
        return self.dot

    def networks(self) -> None:
        for net in self.graph.networks.values():
            spec = net.spec
            with self.dot.subgraph(name=f"cluster_{net.name}") as c:
                frozen = [s.name for s in self.graph.stages if net.name in s.freeze]
                c.attr(label=f"{net.name} ({spec.model})" + (", frozen" if spec.frozen else "")
                       + (f", frozen in stage {', '.join(frozen)}" if frozen and not spec.frozen else ""),
                       style="rounded", color="#7f7f7f", fontsize="12")
                for i, segment in enumerate(net.segments, 1):
                    part = segment.split(".", 1)[1]
                    stages = tuple(self.stages.get(segment, ()))
                    c.node(segment, _lines(part, _stage_text(stages) if stages != (part,) else ""), shape="box",
                           style="rounded,filled", fillcolor=self.fill[net.name], tooltip=segment)
                    self.level[segment] = i
                c.node(net.name, _lines(net.name, "logits"), shape="ellipse", style="filled",
                       fillcolor=self.fill[net.name], tooltip=f"path {net.name}: logits")
                self.level[net.name] = len(net.segments) + 1
            self.dot.edge(INPUT_NODE, net.segments[0], weight="10")
            for a, b in zip(net.segments, net.segments[1:]):
                self.dot.edge(a, b, weight="10")
            self.dot.edge(net.segments[-1], net.name, weight="10")

    def cross_paths(self) -> None:
        """Junction edges per cross path, in its colour; its logits one column after the networks'."""
        drawn: set[str] = set()
        index = 0
        column = self.last_own + 1
        for path in self.graph.paths.values():
            if path.name in self.graph.networks:
                continue
            minlen = str(column - self.level[path.segments[-1]])
            self.level[path.name] = column
            if not path.is_cross:  # a declared path along one network: the same values as the network
                self.dot.node(path.name, _lines(path.name, "logits"), shape="ellipse", style="filled",
                              fillcolor=self.fill[path.owners[0]], tooltip=f"path {path.name}")
                self.dot.edge(path.segments[-1], path.name, minlen=minlen)
                continue
            color = CROSS_COLORS[index % len(CROSS_COLORS)]
            index += 1
            style = {"color": color, "style": "dashed", "penwidth": "1.6", "tooltip": f"cross path {path.name}"}
            for up, down in path.junctions():
                key = junction_key(up, down)
                if key in self.adapters:
                    node = f"adapter#{key}"
                    if node not in drawn:
                        drawn.add(node)
                        self.dot.node(node, ADAPTER_LABELS.get(path.adapter, path.adapter), shape="box",
                                      style="filled", fillcolor="#fff7cc", color="#b8860b", fontsize="8",
                                      height="0.25", margin="0.04,0.02", tooltip=f"adapter {key}")
                    self.dot.edge(up, node, **style)
                    self.dot.edge(node, down, **style)
                else:
                    self.dot.edge(up, down, **style)
            self.dot.node(path.name, _lines(path.name, "logits"), shape="ellipse", style="filled",
                          fillcolor="#ffffff", color=color, fontcolor=color, penwidth="1.6",
                          tooltip=f"cross path {path.name}: " + " > ".join(path.segments))
            self.dot.edge(path.segments[-1], path.name, minlen=minlen, **style)

    def aggregators(self) -> None:
        for agg in self.graph.aggregators.values():
            node = f"agg#{agg.name}"
            inputs = [self.node_of(ref) for ref in agg.inputs]
            self.level[node] = max(self.level[n] for n in inputs) + 1
            if agg.kind == "attention":
                self.dot.node(node, _lines(agg.name, f"attention: W_L, W_E (d/{agg.reduction})"),
                              shape="doubleoctagon", style="filled", fillcolor="#fbe8c8", tooltip=agg.name)
            else:
                self.dot.node(node, _lines(agg.name, agg.kind), shape="hexagon", style="filled",
                              fillcolor="#fbe8c8", tooltip=agg.name)
            for tail in inputs:
                self.dot.edge(tail, node, color="#444444", minlen=str(self.level[node] - self.level[tail]))
            for ref in agg.features:
                tail = self.node_of(ref)
                self.dot.edge(tail, node, color="#999999", style="dashed", arrowhead="odot", weight="0",
                              minlen=str(max(1, self.level[node] - self.level[tail])), tooltip=f"feature {ref.name}")
            if agg.kind == "attention":
                for out in agg.outputs():
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
            if (head, tail) in self.flat:  # the way back bends out to the right, apart from the way there
                attrs = {**attrs, "tailport": "e", "headport": "e"}
            self.flat.add((tail, head))
            self.dot.edge(tail, head, xlabel=label, constraint="false", **attrs)

    def links(self) -> None:
        regressors = labels = 0
        for link in self.graph.links:
            style = dict(LINK_STYLE[link.kind])
            if link.gate == "cutoff":
                style.update(color="#cccccc", fontcolor="#aaaaaa", style="dashed")
            label = _link_label(self.graph, link)
            head = self.node_of(link.target)
            if link.source.kind == "label":  # a label node per ce link, right before its target
                labels += 1
                tail = f"label#{labels}"
                self.dot.node(tail, "label y", shape="note", style="filled", fillcolor="#eeeeee",
                              color="#8c8c8c", fontsize="9", height="0.3", tooltip=_esc(f"label of {link.name}"))
                self.level[tail] = self.level[head] - 1
            else:
                tail = self.node_of(link.source)
            key = regressor_key(link.name)
            if link.kind == "mimic" and key in self.regressors:
                regressors += 1
                node = f"regressor#{regressors}"
                self.dot.node(node, _lines("regressor", REGRESSOR_LABELS.get(link.adapter, link.adapter)),
                              shape="box", style="filled", fillcolor="#e3f4e1", color=style["color"],
                              fontsize="8", height="0.25", margin="0.04,0.02", tooltip=_esc(key))
                self.level[node] = self.level[head]
                with self.dot.subgraph() as same:  # the regressor sits in the column of the feature it maps
                    same.attr(rank="same")
                    same.node(head)
                    same.node(node)
                self._link_edge(tail, node, label, id=_esc(f"link:{link.name}"), tooltip=_esc(link.name), **style)
                self.dot.edge(node, head, tooltip=_esc(link.name), constraint="false", **style)
            else:
                self._link_edge(tail, head, label, id=_esc(f"link:{link.name}"), tooltip=_esc(link.name), **style)

    def legend(self) -> None:
        """One example of every node and edge style, in three columns."""
        with self.dot.subgraph(name="cluster_legend") as c:
            c.attr(label="legend", style="rounded,dashed", color="#aaaaaa", fontsize="11")
            c.attr("node", fontsize="9", height="0.3")
            nodes = [
                ("segment", _lines("segment: part", "its model stages"), {"shape": "box", "style": "rounded,filled",
                                                                  "fillcolor": NETWORK_FILLS[0]}),
                ("logits", "path logits", {"shape": "ellipse", "style": "filled", "fillcolor": NETWORK_FILLS[0]}),
                ("cross", "cross-path logits", {"shape": "ellipse", "color": CROSS_COLORS[0],
                                                "fontcolor": CROSS_COLORS[0], "penwidth": "1.6"}),
                ("label", "label y", {"shape": "note", "style": "filled", "fillcolor": "#eeeeee",
                                      "color": "#8c8c8c"}),
                ("adapter", "adapter (1x1 conv+ReLU)", {"shape": "box", "style": "filled", "fillcolor": "#fff7cc",
                                                        "color": "#b8860b"}),
                ("regressor", "mimic regressor", {"shape": "box", "style": "filled", "fillcolor": "#e3f4e1",
                                                  "color": LINK_STYLE["mimic"]["color"]}),
                ("mean", "mean aggregator", {"shape": "hexagon", "style": "filled", "fillcolor": "#fbe8c8"}),
                ("attention", _lines("attention aggregator", "W_L, W_E"),
                 {"shape": "doubleoctagon", "style": "filled", "fillcolor": "#fbe8c8"}),
            ]
            edges = [
                ("own", "own-path data flow", {}),
                ("crossflow", "cross-path data flow", {"color": CROSS_COLORS[0], "style": "dashed",
                                                       "penwidth": "1.6"}),
                ("feature", "feature into attention", {"color": "#999999", "style": "dashed", "arrowhead": "odot"}),
                ("ce", "ce link (from the label)", LINK_STYLE["ce"]),
                ("kl", "kl link", LINK_STYLE["kl"]),
                ("mimic", "mimic link", LINK_STYLE["mimic"]),
            ]
            for key, label, attrs in nodes:
                c.node(f"legend#{key}", label, **attrs)
            for key, label, attrs in edges:
                c.node(f"legend#{key}", "", shape="point", width="0.05")
                c.node(f"legend#{key}_text", label, shape="plaintext")
                c.edge(f"legend#{key}", f"legend#{key}_text", **attrs)
            # Node examples in two columns, edge examples in a third; invisible edges keep the
            # order (a flat edge a -> b puts b above a when the graph runs left to right).
            half = (len(nodes) + 1) // 2
            columns = [[k for k, _, _ in nodes[:half]], [k for k, _, _ in nodes[half:]], [k for k, _, _ in edges]]
            for column in columns:
                with c.subgraph() as same:
                    same.attr(rank="same")
                    for key in column:
                        same.node(f"legend#{key}")
                for a, b in zip(column, column[1:]):
                    c.edge(f"legend#{b}", f"legend#{a}", style="invis")
            for left, right in zip(columns, columns[1:]):
                c.edge(f"legend#{left[0]}", f"legend#{right[0]}", style="invis")


def graph_dot(graph: KTGraph, adapters: Collection[str] = (), regressors: Collection[str] = (), *,
              segment_stages: Mapping[str, Sequence[str]] | None = None,
              legend: bool = True) -> graphviz.Digraph:
    """The graph as declared: networks, cross paths, logits, aggregators and links.

    ``adapters`` (junction keys ``a.up>b.down``) and ``regressors`` (``regressor:LINK``)
    are the modules that exist once shapes are known (``GraphModel.adapter_keys`` and
    ``regressor_keys``); ``segment_stages`` maps a segment to the model stages it runs
    (``GraphModel.segments[s].stages``, e.g. ``("stem", "layer1")``) to label its box.
    :func:`model_details` gives all three from a built model.
    """
    return _GraphDrawing(graph, adapters, regressors, segment_stages).draw(legend)


def model_details(model) -> dict:
    """``graph_dot`` keyword arguments from a built ``GraphModel``."""
    return {"adapters": sorted(model.adapter_keys), "regressors": sorted(model.regressor_keys),
            "segment_stages": {name: tuple(getattr(seg, "stages", ())) for name, seg in model.segments.items()}}


# --- the plan -------------------------------------------------------------------------

TERM_STYLE = {"ce": LINK_STYLE["ce"]["color"], "kl": LINK_STYLE["kl"]["color"],
              "mimic": LINK_STYLE["mimic"]["color"]}


class _PlanDrawing:
    def __init__(self, target: graphviz.Digraph, plan: Plan, prefix: str) -> None:
        self.g = target
        self.plan = plan
        self.prefix = prefix
        self.names = plan.names
        self.ids: dict[str, str] = {INPUT: prefix + INPUT}

    def name(self, value: str) -> str:
        return self.names.get(value, value)

    def draw(self, styles: bool = True) -> None:
        g, plan, p = self.g, self.plan, self.prefix
        use = plan.consumers()
        readers: dict[str, list[str]] = {}
        for node, value in plan.outputs.items():
            readers.setdefault(value, []).append(node)
        g.node(self.ids[INPUT], "input x", shape="cds", style="filled", fillcolor="#eeeeee")
        for index, step in enumerate(plan.steps, 1):
            if isinstance(step, Call):
                self.call(step, use[step.out], readers.get(step.out, []))
            else:
                self.aggregate(index, step, use, readers)
        groups = {link: i for i, group in enumerate(plan.groups) for link in group.terms}
        clusters: dict[int | None, list[tuple[int, Term]]] = {}
        for i, term in enumerate(plan.terms):
            clusters.setdefault(groups.get(term.link), []).append((i, term))
        for group, terms in clusters.items():
            if group is None:
                for i, term in terms:
                    self.term(g, i, term, "#ffffff")
                continue
            with g.subgraph(name=f"cluster_{p}g{group + 1}") as c:
                fill = GROUP_FILLS[group % len(GROUP_FILLS)]
                c.attr(label=f"g{group + 1}", style="rounded,filled", fillcolor=fill, color="#999999",
                       fontsize="11")
                for i, term in terms:
                    self.term(c, i, term, "#ffffff")
        self.legend(styles)

    def call(self, step: Call, readers: int, nodes: list[str]) -> None:
        node = self.prefix + self.name(step.out)
        self.ids[step.out] = node
        adapter = ">" in step.module
        label = _lines(self.name(step.out), ("adapter " if adapter else "") + step.module,
                       ("= " + ", ".join(nodes)) if nodes else "",
                       f"{readers} readers" if readers > 1 else "")
        attrs = {"shape": "box", "style": "rounded,filled", "fillcolor": "#f4f4f4",
                 "tooltip": f"{self.name(step.out)} = {step.out}"}
        if adapter:
            attrs.update(fillcolor="#fff7cc", color="#b8860b", fontsize="9")
        elif not step.own:
            attrs.update(style="rounded,filled,dashed", color=CROSS_COLORS[0], penwidth="1.6")
        if readers > 1:
            attrs.update(fillcolor="#ffe680", penwidth="2.2")
        self.g.node(node, label, **attrs)
        self.g.edge(self.ids[step.input], node, weight="5")

    def aggregate(self, index: int, step: Aggregate, use, readers: dict[str, list[str]]) -> None:
        p = self.prefix
        shape = "doubleoctagon" if step.kind == "attention" else "hexagon"
        if len(step.outs) == 1:
            (out,) = step.outs
            node = self.ids[out] = f"{p}agg#{out}"
            label = _lines(out, f"{step.kind}[{step.module}]", f"{use[out]} readers" if use[out] > 1 else "")
        else:
            node = f"{p}step#{index}"
            label = _lines(step.module, step.kind)
        self.g.node(node, label, shape=shape, style="filled", fillcolor="#fbe8c8",
                    penwidth="2.2" if len(step.outs) == 1 and use[step.outs[0]] > 1 else "1",
                    tooltip=f"{', '.join(step.outs)} = {step.kind}[{step.module}]")
        for value in step.logits:
            self.g.edge(self.ids[value], node, color="#444444")
        for value in step.features:
            self.g.edge(self.ids[value], node, color="#999999", style="dashed", arrowhead="odot")
        if len(step.outs) > 1:
            for out in step.outs:
                self.ids[out] = f"{p}agg#{out}"
                named = [n for n in readers.get(out, []) if n != out]
                self.g.node(self.ids[out], _lines(out, ("= " + ", ".join(named)) if named else ""),
                            shape="ellipse", style="filled", fillcolor="#fbe8c8", fontsize="9",
                            penwidth="2.2" if use[out] > 1 else "1")
                self.g.edge(node, self.ids[out], color="#444444")

    def term(self, g: graphviz.Digraph, i: int, term: Term, fill: str) -> None:
        node = f"{self.prefix}term#{i}"
        color = TERM_STYLE[term.kind]
        trains = ", ".join(sorted(term.trains)) or "nothing (frozen or detached)"
        label = _lines(_esc(f"L[{term.node}] += {term.link}"), _esc(term_formula(term, self.names)),
                       "" if term.trains else "trains nothing (frozen or detached)")
        g.node(node, label, shape="note", style="filled", fillcolor=fill, color=color, fontsize="9",
               tooltip=f"trains {trains}")
        # Edges go in the enclosing graph: an edge inside a cluster would pull its tail into it.
        self.g.edge(self.ids[term.target], node, color=color)
        if term.source is not None:
            self.g.edge(self.ids[term.source], node, color=color, style="dashed", weight="0")

    def legend(self, styles: bool = True) -> None:
        """Examples of the node styles (unless ``styles`` is false), and what each gradient group trains."""
        p = self.prefix
        with self.g.subgraph(name=f"cluster_{p}legend") as c:
            c.attr(label="legend" if styles else "gradient groups", style="rounded,dashed", color="#aaaaaa",
                   fillcolor="#ffffff", fontsize="11")
            c.attr("node", fontsize="9", height="0.3")
            column = []
            for key, label, attrs in PLAN_EXAMPLES if styles else ():
                c.node(f"{p}legend#{key}", label, **attrs)
                column.append(f"{p}legend#{key}")
            for i, group in enumerate(self.plan.groups):
                trains = _wrap(sorted(group.trains), 3)
                c.node(f"{p}legend#g{i + 1}", _lines(f"g{i + 1}: one backward, trains", trains,
                                                     f"({_count(len(group.terms), 'term')})"),
                       shape="box", style="rounded,filled", fillcolor=GROUP_FILLS[i % len(GROUP_FILLS)])
                column.append(f"{p}legend#g{i + 1}")
            if not column:
                c.node(f"{p}legend#none", "none (no loss terms)", shape="plaintext")
            with c.subgraph() as same:
                same.attr(rank="same")
                for node in column:
                    same.node(node)
            for a, b in zip(column, column[1:]):
                c.edge(b, a, style="invis")  # a flat edge b -> a puts a above b


PLAN_EXAMPLES = [
    ("call", "own-path segment call", {"shape": "box", "style": "rounded,filled", "fillcolor": "#f4f4f4"}),
    ("cross", "cross-path segment call", {"shape": "box", "style": "rounded,filled,dashed", "fillcolor": "#f4f4f4",
                                          "color": CROSS_COLORS[0], "penwidth": "1.6"}),
    ("adapter", "adapter call", {"shape": "box", "style": "rounded,filled", "fillcolor": "#fff7cc",
                                 "color": "#b8860b"}),
    ("shared", "shared value (2+ readers)", {"shape": "box", "style": "rounded,filled", "fillcolor": "#ffe680",
                                            "penwidth": "2.2"}),
    ("aggregate", "aggregate", {"shape": "hexagon", "style": "filled", "fillcolor": "#fbe8c8"}),
    ("term", "loss term (ce grey, kl blue, mimic green);\\ndashed edge: its source",
     {"shape": "note", "style": "filled", "fillcolor": "#ffffff"}),
]


def _plan_title(plan: Plan, title: str) -> str:
    head = f"plan{(' for ' + title) if title else ''} ({plan.mode})"
    return f"{head}: {_count(len(plan.steps), 'step')}, {_count(len(plan.terms), 'loss term')}, " + \
        _count(len(plan.groups), "gradient group")


def plan_dot(plan: Plan, title: str = "") -> graphviz.Digraph:
    """A compiled plan: one node per step, loss terms on the values they read, gradient groups.

    A step's node shows the value's short id (``v3``), the module it runs, the path or
    aggregate it stands for and, when it is read more than once (a shared prefix), how
    many readers it has. Loss terms sit in a cluster per gradient group; the legend
    lists what each group trains.
    """
    dot = _new_digraph("plan", _plan_title(plan, title))
    _PlanDrawing(dot, plan, "").draw()
    return dot


def plans_dot(plans: Sequence[tuple[str, Plan]], title: str = "") -> graphviz.Digraph:
    """Several plans (one per training stage) side by side, each in its own cluster."""
    if len(plans) == 1:
        name, plan = plans[0]
        return plan_dot(plan, name or title)
    dot = _new_digraph("plans", title)
    with dot.subgraph(name="cluster_legend") as c:
        c.attr(label="legend", style="rounded,dashed", color="#aaaaaa", fontsize="11")
        c.attr("node", fontsize="9", height="0.3")
        for key, label, attrs in PLAN_EXAMPLES:
            c.node(f"legend#{key}", label, **attrs)
        with c.subgraph() as same:
            same.attr(rank="same")
            for key, _, _ in PLAN_EXAMPLES:
                same.node(f"legend#{key}")
        for (a, _, _), (b, _, _) in zip(PLAN_EXAMPLES, PLAN_EXAMPLES[1:]):
            c.edge(f"legend#{b}", f"legend#{a}", style="invis")
    # Declared last first: dot stacks clusters of a left-to-right graph bottom up.
    for index, (name, plan) in reversed(list(enumerate(plans, 1))):
        with dot.subgraph(name=f"cluster_stage{index}") as c:
            c.attr(label=_plan_title(plan, name), style="rounded", color="#555555")
            _PlanDrawing(c, plan, f"s{index}/").draw(styles=False)
    return dot


# --- rendering ------------------------------------------------------------------------

def _graphviz_pure_binary() -> str | None:
    """The ``graphviz-pure`` program, a dot-compatible binary with no Python code.

    The ``graphviz-pure`` wheel installs it as a script: the distribution's RECORD
    lists it (``../../../bin/graphviz-pure``), which gives its path even when the
    environment's ``bin`` is not on PATH. PATH is the fallback.
    """
    names = {"graphviz-pure", "graphviz-pure.exe"}
    try:
        dist = metadata.distribution("graphviz-pure")
    except metadata.PackageNotFoundError:
        dist = None
    for file in (dist.files or []) if dist else []:
        if file.name in names:
            path = Path(dist.locate_file(file)).resolve()
            if path.is_file():
                return str(path)
    scripts = Path(sys.executable).parent
    for name in sorted(names):
        if (scripts / name).is_file():
            return str(scripts / name)
    return shutil.which("graphviz-pure")


def find_renderer() -> list[str]:
    """The command that turns DOT on stdin into a picture: system ``dot``, else ``graphviz-pure``."""
    system = shutil.which("dot")
    if system:
        return [system]
    pure = _graphviz_pure_binary()
    if pure:
        return [pure, "-Kdot"]
    raise GraphError("no Graphviz renderer found: neither a `dot` program on PATH nor the `graphviz-pure` "
                     "program", file="command line",
                     suggestion="pip install graphviz-pure (or install Graphviz), or write DOT with --format dot")


def render(dot: graphviz.Digraph, out: str | Path, fmt: str = "svg") -> Path:
    """Write ``dot`` to ``out``: its DOT source for ``fmt="dot"``, else the rendered picture."""
    out = Path(out)
    if fmt not in FORMATS:
        raise GraphError(f"unknown picture format `{fmt}`", file="command line", expected=", ".join(FORMATS))
    if fmt == "dot":
        out.write_text(dot.source, encoding="utf-8")
        return out
    command = find_renderer()
    try:
        done = subprocess.run([*command, f"-T{fmt}"], input=dot.source.encode("utf-8"), capture_output=True,
                              check=False, timeout=300)
    except OSError as err:
        raise GraphError(f"cannot run {command[0]}: {err}", file="command line") from None
    if done.returncode != 0 or not done.stdout:
        message = done.stderr.decode("utf-8", "replace").strip() or f"exit status {done.returncode}"
        raise GraphError(f"{Path(command[0]).name} failed to render the graph: {message}", file="command line")
    out.write_bytes(done.stdout)
    return out
