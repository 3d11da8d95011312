"""The end-of-run table: every network's, path's and aggregate's accuracy, last and best."""
from __future__ import annotations

from typing import Any

from tabulate import tabulate

from ..compile.compiler import ENSEMBLE_NETWORKS, ENSEMBLE_PATHS
from ..graph import KTGraph


def node_kind(graph: KTGraph, node: str) -> str:
    if node in graph.networks:
        return "network"
    if node in graph.paths:
        return "cross path"
    if node in (ENSEMBLE_NETWORKS, ENSEMBLE_PATHS):
        return "ensemble"
    return "aggregate"


def node_route(graph: KTGraph, node: str) -> str:
    if node in graph.paths:
        return " > ".join(graph.paths[node].segments)
    if node == ENSEMBLE_NETWORKS:
        return f"mean logits of {len(graph.networks)} networks"
    if node == ENSEMBLE_PATHS:
        return f"mean logits of all {len(graph.paths)} paths"
    agg = next((a for a in graph.aggregators.values() if node in a.outputs()), None)
    return f"{agg.kind}({', '.join(r.name for r in agg.inputs)})" if agg else ""


def accuracy_rows(graph: KTGraph, last: dict[str, Any], best: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for node, entry in last.items():
        top = best[node]
        select = "val" if "val" in top else "test"
        row = {"node": node, "kind": node_kind(graph, node), "route": node_route(graph, node),
               "last_stage": entry["stage"], "last_epoch": entry["epoch"], "top1_last": entry["test"]["top1"],
               "best_stage": top["stage"], "best_epoch": top["epoch"], "top1_at_best": top["test"]["top1"],
               "best_chosen_on": select}
        if "top5" in entry["test"]:
            row["top5_last"] = entry["test"]["top5"]
        rows.append(row)
    order = {"network": 0, "cross path": 1, "aggregate": 2, "ensemble": 3}
    return sorted(rows, key=lambda r: (order[r["kind"]], r["node"]))


def accuracy_table(graph: KTGraph, last: dict[str, Any], best: dict[str, Any]) -> str:
    rows = accuracy_rows(graph, last, best)

    def when(stage: str, epoch: int) -> str:
        """Epochs count from 1 within their stage; the stage is named when there are several."""
        return f"{stage} ep {epoch}" if len(graph.stages) > 1 else f"ep {epoch}"

    headers = ["node", "kind", "route", "top-1 at last epoch", "top-1 at best epoch"]
    body = [[r["node"], r["kind"], r["route"], f"{r['top1_last']:.2f} ({when(r['last_stage'], r['last_epoch'])})",
             f"{r['top1_at_best']:.2f} ({when(r['best_stage'], r['best_epoch'])}, best on {r['best_chosen_on']})"]
            for r in rows]
    if any("top5_last" in r for r in rows):
        headers.append("top-5 last")
        for line, r in zip(body, rows):
            line.append(f"{r.get('top5_last', float('nan')):.2f}")
    return tabulate(body, headers=headers, tablefmt="github")
