"""The legend of a graph drawing: one example of each node and edge style the drawing uses, no other.

The drawing records what it draws (:meth:`Legend.use`); the legend then lists exactly those styles,
nodes in two columns and edges in a third, so a three-node DCL graph is not explained by adapters,
regressors and attention it does not have.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...kinds import AGGREGATORS, LINKS, adapter_label
from .dot import CROSS_COLORS, NETWORK_FILLS, lines

Attrs = dict[str, str]
CUT_OFF: Attrs = {"color": "#cccccc", "fontcolor": "#aaaaaa", "style": "dashed"}
FIXED_NODES: dict[str, tuple[str, Attrs]] = {
    "segment": (lines("segment: part", "its model stages"), {"shape": "box", "style": "rounded,filled",
                                                          "fillcolor": NETWORK_FILLS[0]}),
    "logits": ("path logits", {"shape": "ellipse", "style": "filled", "fillcolor": NETWORK_FILLS[0]}),
    "cross": ("cross-path logits", {"shape": "ellipse", "color": CROSS_COLORS[0], "fontcolor": CROSS_COLORS[0],
                                    "penwidth": "1.6"}),
    "label": ("label y", {"shape": "note", "style": "filled", "fillcolor": "#eeeeee", "color": "#8c8c8c"}),
    "regressor": ("mimic regressor", {"shape": "box", "style": "filled", "fillcolor": "#e3f4e1",
                                      "color": LINKS["mimic"].style["color"]}),
}
FIXED_EDGES: dict[str, tuple[str, Attrs]] = {
    "own": ("own-path data flow", {}),
    "crossflow": ("cross-path data flow", {"color": CROSS_COLORS[0], "style": "dashed", "penwidth": "1.6"}),
    "feature": ("feature into an aggregator", {"color": "#999999", "style": "dashed", "arrowhead": "odot"}),
    "cutoff": ("cut-off link (not computed)", CUT_OFF),
}


def _node(key: str) -> tuple[str, Attrs]:
    kind, _, name = key.partition(":")
    if kind == "adapter":
        return f"adapter ({adapter_label(name)})", {"shape": "box", "style": "filled", "fillcolor": "#fff7cc",
                                                     "color": "#b8860b"}
    if kind == "aggregator":
        unit = AGGREGATORS[name]
        return f"{name} aggregator", {"shape": unit.shape, "style": "filled", "fillcolor": "#fbe8c8"}
    return FIXED_NODES[key]


def _edge(key: str) -> tuple[str, Attrs]:
    kind, _, name = key.partition(":")
    if kind == "link":
        return f"{name} link" + (" (from the label)" if LINKS[name].source_must == "label" else ""), \
            dict(LINKS[name].style)
    return FIXED_EDGES[key]


@dataclass
class Legend:
    """What a drawing used, in the order first used: node styles and edge styles."""

    nodes: dict[str, None] = field(default_factory=dict)
    edges: dict[str, None] = field(default_factory=dict)

    def use(self, node: str = "", edge: str = "") -> None:
        if node:
            self.nodes.setdefault(node, None)
        if edge:
            self.edges.setdefault(edge, None)

    def draw(self, dot: Any) -> None:
        """The legend cluster into ``dot``: used node styles in two columns, used edge styles in a third."""

        def at(key: str) -> str:  # a node id without `:`, which DOT would read as a port
            return f"legend#{key.replace(':', '.')}"

        with dot.subgraph(name="cluster_legend") as c:
            c.attr(label="legend", style="rounded,dashed", color="#aaaaaa", fontsize="11")
            c.attr("node", fontsize="9", height="0.3")
            nodes = list(self.nodes)
            for key in nodes:
                label, attrs = _node(key)
                c.node(at(key), label, **attrs)
            for key in self.edges:
                label, attrs = _edge(key)
                c.node(at(key), "", shape="point", width="0.05")
                c.node(f"{at(key)}_text", label, shape="plaintext")
                c.edge(at(key), f"{at(key)}_text", **attrs)
            # Invisible edges keep the order (a flat edge a -> b puts b above a when the graph runs left
            # to right) and the columns side by side.
            half = (len(nodes) + 1) // 2
            columns = [col for col in (nodes[:half], nodes[half:], list(self.edges)) if col]
            for column in columns:
                with c.subgraph() as same:
                    same.attr(rank="same")
                    for key in column:
                        same.node(at(key))
                for a, b in zip(column, column[1:]):
                    c.edge(at(b), at(a), style="invis")
            for left, right in zip(columns, columns[1:]):
                c.edge(at(left[0]), at(right[0]), style="invis")
