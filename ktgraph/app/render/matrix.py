"""The link matrix of a graph, as the knowledge-transfer-graph paper draws it (DCL, Minami et al., ACCV 2020).

Rows are the receiving nodes (a link's target), columns the sending nodes (its source), the label
first: the diagonal of a DCL graph is then each node's CE with the label. Each cell names the gate
of the link it holds (and its weight when not 1); a cut-off cell is grey, an empty one blank.
"""
from __future__ import annotations

import html

import graphviz

from ...graph import LABEL, KTGraph, Link
from .dot import new_digraph, num

GATE_COLORS = {"cutoff": "#aaaaaa", "through": "#222222", "linear": "#1f5fbf", "correct": "#2e8b3a"}


def _cell(links: list[Link], named: bool) -> str:
    """One line per link in the cell: its gate (and weight); the link's name when the cell holds several."""
    rows = []
    for link in links:
        text = link.gate.kind + ("" if link.weight == 1 else f" ·{num(link.weight)}")
        if named:
            text += f" ({link.name})"
        color = GATE_COLORS.get(link.gate.kind, "#7b3294")
        rows.append(f'<FONT COLOR="{color}">{html.escape(text)}</FONT>')
    return "<BR/>".join(rows)


def matrix_dot(graph: KTGraph) -> graphviz.Digraph:
    """One table node: receivers × (label, senders), every link of the graph in its cell."""
    nodes = list(dict.fromkeys([*(str(l.target) for l in graph.links),
                                *(str(l.source) for l in graph.links if l.source.kind != "label")]))
    order = {name: i for i, name in enumerate([*graph.networks, *graph.paths])}
    nodes.sort(key=lambda n: order.get(n, len(order)))
    senders = [LABEL, *nodes]
    cells: dict[tuple[str, str], list[Link]] = {}
    for link in graph.links:
        cells.setdefault((str(link.target), str(link.source)), []).append(link)
    head = "".join(f'<TD BGCOLOR="#eeeeee"><B>{html.escape(s)}</B></TD>' for s in senders)
    rows = [f'<TR><TD BGCOLOR="#eeeeee"><I>receiver \\ sender</I></TD>{head}</TR>']
    for receiver in nodes:
        tds = []
        for sender in senders:
            links = cells.get((receiver, sender), [])
            shade = ' BGCOLOR="#f4f4f4"' if sender == receiver else ""
            tds.append(f"<TD{shade}>{_cell(links, len(links) > 1)}</TD>")
        rows.append(f'<TR><TD BGCOLOR="#eeeeee"><B>{html.escape(receiver)}</B></TD>{"".join(tds)}</TR>')
    name = graph.name or "ktgraph"
    dot = new_digraph(f"{name}_matrix", f"{name}: links by receiver (row) and sender (column), each cell its gate")
    table = f'<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="6">{"".join(rows)}</TABLE>>'
    dot.node("matrix", table, shape="plaintext")
    return dot
