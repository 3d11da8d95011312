"""Tables for people: the summary rows of a run, the Xross tables in the XML study's layout, costs, and counts.

Everything here formats numbers already measured (``ktgraph.runtime.measure``) or logged; it
computes nothing about the model.
"""
from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any

from tabulate import tabulate

from ..graph import KTGraph
from ..runtime.measure import Cost, Row


# --- the summary of a run ----------------------------------------------------------
def accuracy_rows(graph: KTGraph, last: dict[str, Any], best: dict[str, Any],
                  calibrated: Collection[str] = ()) -> list[dict[str, Any]]:
    """``summary.json``'s rows: each node's last and best test top-1, and whether its numbers were
    evaluated with calibrated BatchNorm statistics."""
    rows = []
    for node, entry in last.items():
        top = best[node]
        select = "val" if "val" in top else "test"
        row = {"node": node, "kind": graph.node_kind(node), "route": graph.node_route(node),
               "last_stage": entry["stage"], "last_epoch": entry["epoch"], "top1_last": entry["test"]["top1"],
               "best_stage": top["stage"], "best_epoch": top["epoch"], "top1_at_best": top["test"]["top1"],
               "best_chosen_on": select, "calibrated": node in calibrated}
        if "top5" in entry["test"]:
            row["top5_last"] = entry["test"]["top5"]
        rows.append(row)
    order = {"network": 0, "cross path": 1, "aggregate": 2, "ensemble": 3}
    return sorted(rows, key=lambda r: (order[r["kind"]], r["node"]))


# --- the Xross tables ------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _count(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def _best(row: Row) -> str:
    return "" if row.top1_best is None else f"{row.top1_best:.2f} ({row.best_epoch})"


def _groups(rows: list[Row]) -> dict[tuple[str, ...], list[Row]]:
    """Path rows grouped by their part positions: one Xross table per group that has a cross path."""
    groups: dict[tuple[str, ...], list[Row]] = {}
    for row in rows:
        if row.is_path and row.parts and len(row.part_names) >= 2:
            groups.setdefault(row.part_names, []).append(row)
    return {names: group for names, group in groups.items() if any(r.kind == "cross path" for r in group)}


def _network_order(rows: list[Row]) -> list[str]:
    nets = [r.node for r in rows if r.kind == "network"]
    for row in rows:
        nets.extend(o for o in row.parts if o not in nets)
    return nets


CALIBRATED = "*"  # marks a number evaluated with calibrated BatchNorm statistics


def _acc(row: Row) -> str:
    return _pct(row.top1_last) + (CALIBRATED if row.calibrated else "")


def footnote(rows: list[Row]) -> str:
    """What the marks say: which paths were evaluated with calibrated statistics, or that none was."""
    if any(r.calibrated for r in rows):
        return (f"{CALIBRATED} BatchNorm statistics calibrated for this node's paths on training batches (train.calibrate): "
                "a cross path's down-half is fed features its own statistics do not describe. "
                "`ktgraph eval --no-calibrate` gives the raw numbers.")
    if any(r.kind == "cross path" for r in rows):
        return ("Cross paths evaluated with their segments' own BatchNorm statistics (not calibrated): they "
                "understate what the halves can do together; see train.calibrate.")
    return ""


def table_sections(rows: list[Row], *, every_row: bool = True) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, headers, body) of each table: Xross tables, the nodes they do not show (ensembles,
    aggregates; networks without crosses), then, with ``every_row``, every row with its costs."""
    sections = []
    nets = _network_order(rows)
    shown: set[str] = set()
    for part_names, group in _groups(rows).items():
        shown.update(r.node for r in group)
        if len(part_names) == 2:
            up, down = part_names
            cell = {r.parts: f"{_acc(r)} ({_count(r.params)})" for r in group}
            downs = [n for n in nets if any(r.parts[1] == n for r in group)]
            ups = [n for n in nets if any(r.parts[0] == n for r in group)]
            body = [[u] + [cell.get((u, d), "-") for d in downs] for u in ups]
            sections.append((f"Xross table: up-half `{up}` (rows) x down-half `{down}` (columns), "
                             "top-1 % at the last epoch (#params)", [f"{up} \\ {down}", *downs], body))
        else:
            rank = {n: i for i, n in enumerate(nets)}
            ordered = sorted(group, key=lambda r: [rank[o] for o in r.parts])
            headers = [f"Part{i + 1} ({name})" for i, name in enumerate(part_names)]
            headers += ["top-1 last", "top-1 at best (ep)", "#params"]
            body = [[*r.parts, _acc(r), _best(r), _count(r.params)] for r in ordered]
            sections.append((f"Xross table: {len(part_names)} parts ({', '.join(part_names)}), one line per path",
                             headers, body))
    others = [r for r in rows if r.node not in shown]
    if others:
        body = [[r.node, r.kind, r.route, _acc(r), _best(r), _count(r.params), _count(r.macs)] for r in others]
        title = "Ensembles and aggregates" if all(not r.is_path for r in others) else "Nodes"
        sections.append((title, ["node", "kind", "inputs", "top-1 last", "top-1 at best (ep)", "#params",
                                 "MACs/image"], body))
    if every_row:
        sections.append(_every_row(rows))
    return sections


def _every_row(rows: list[Row]) -> tuple[str, list[str], list[list[str]]]:
    top5 = any(r.top5_last is not None for r in rows)
    sizes = {r.batch_size for r in rows if r.batch_size}
    devices = {r.device for r in rows if r.device}
    latency = "latency ms" + (f" (batch {sizes.pop()})" if len(sizes) == 1 else " (per batch)")
    headers = ["node", "kind", "parts", "segments / inputs", "#params", "MACs/image", latency, "top-1 last"]
    headers += ["top-5 last"] if top5 else []
    headers += ["top-1 at best (ep)"]
    body = []
    for r in rows:
        line = [r.node, r.kind, " ".join(r.parts), r.route, _count(r.params), _count(r.macs),
                "" if r.latency_ms is None else f"{r.latency_ms:.2f}", _acc(r)]
        line += [_pct(r.top5_last)] if top5 else []
        line += [_best(r)]
        body.append(line)
    where = f" on {devices.pop()}" if len(devices) == 1 else ""
    return f"All rows: exact parameters, MACs per image, median latency per batch{where}", headers, body


def format_tables(rows: list[Row], *, markdown: bool = False, title: str = "", every_row: bool = True) -> str:
    """The tables as text: Markdown (with headings) or for the terminal; ``every_row=False`` leaves
    out the table of every row (the end of a run prints each row once)."""
    parts = [f"# {title}\n" if markdown else f"{title}\n"] if title else []
    for heading, headers, body in table_sections(rows, every_row=every_row):
        table = tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)
        parts.append(f"## {heading}\n\n{table}\n" if markdown else f"{heading}\n{table}\n")
    note = footnote(rows)
    if note:
        parts.append(f"{note}\n")
    return "\n".join(parts)


# --- costs before training (`ktgraph plan --costs`) ----------------------------------------------
def _dims(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape))


def format_costs(calls: list[Cost], nodes: list[Cost], *, title: str = "") -> str:
    """Each segment and adapter call, then each node, with exact #params and MACs per image: the
    Xross table's cost columns, known from the file alone."""
    sections = [
        ("Segments and adapters: one call each, on its own path's input",
         ["segment / adapter", "kind", "input", "#params", "MACs/image"],
         [[c.name, c.kind, _dims(c.input_shape), _count(c.params), _count(c.macs)] for c in calls]),
        ("Paths, aggregates and ensembles: distinct parameters, each distinct call once",
         ["node", "kind", "segments / inputs", "#params", "MACs/image"],
         [[c.name, c.kind, c.route, _count(c.params), _count(c.macs)] for c in nodes]),
    ]
    parts = [f"{title}\n"] if title else []
    right = ("left", "left", "left", "right", "right")  # counts line up on their last digit
    parts += [f"{heading}\n{tabulate(body, headers=headers, tablefmt='github', colalign=right)}\n"
              for heading, headers, body in sections if body]
    return "\n".join(parts)


# --- fronts and counts ---------------------------------------------------------------------------------
def pareto_indices(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, cheapest first.

    A point (cost, accuracy) is dominated when another has cost <= and accuracy >=,
    one of them strictly. Identical points do not dominate each other: both stay.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best_cheaper = -math.inf  # the best accuracy among strictly cheaper points
    group_best = -math.inf
    group_cost = None
    for i in order:
        cost, acc = points[i]
        if cost != group_cost:
            best_cheaper = max(best_cheaper, group_best)
            group_cost, group_best = cost, acc  # sorted: the first of a cost group is its best
        if acc == group_best and acc > best_cheaper:
            front.append(i)
    return front


def human_count(value: float | None) -> str:
    """21320000 -> '21.32M' (the XML tables' style), 675392 -> '675.4k'."""
    if value is None:
        return "n/a"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}" if suffix in "MGT" else f"{value / scale:.1f}{suffix}"
    return f"{value:g}"
