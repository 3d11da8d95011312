"""Dynamic computation: pick the best path under a budget and export it as a standalone module.

``ktgraph pick`` reads a run's Xross table (``xross.csv``), shows the Pareto front of
accuracy against one cost (parameters, MACs per image or latency per batch), chooses
the most accurate *path* (a network or a cross path: one chain of segments) within
the budget and saves it as an ``nn.Sequential`` of its segments and adapters, exported
with ``torch.export`` (or traced with TorchScript when export fails), which loads and
runs with plain PyTorch: no ktgraph needed.
"""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import GraphError
from ..graph import KTGraph, junction_key
from ..report.runfiles import human_count as human
from ..report.runfiles import pareto_front as front_indices
from .model import GraphModel
from .xross import CSV_NAME, Row, read_csv

COSTS = {"params": "#params", "macs": "MACs/image", "latency_ms": "latency ms/batch"}


def cost_of(row: Row, cost: str) -> float | None:
    if cost not in COSTS:
        raise ValueError(f"unknown cost {cost!r}; one of {', '.join(COSTS)}")
    return getattr(row, cost)


def pareto_front(rows: list[Row], cost: str) -> list[Row]:
    """Rows no other row dominates (no other has cost <= and top-1 >=, one of them strictly).

    Rows without a measured cost are left out. The front is sorted by cost, then node.
    """
    measured = [r for r in rows if cost_of(r, cost) is not None]
    keep = front_indices([(cost_of(r, cost), r.top1_last) for r in measured])
    return sorted((measured[i] for i in keep), key=lambda r: (cost_of(r, cost), -r.top1_last, r.node))


def pick_path(rows: list[Row], cost: str, budget: float) -> Row:
    """The most accurate path (network or cross path) whose cost is within ``budget``.

    Ties go to the cheaper path, then to the first in the table. No path within the
    budget is a GraphError naming the cheapest one.
    """
    paths = [r for r in rows if r.is_path and cost_of(r, cost) is not None]
    if not paths:
        raise GraphError(f"the Xross table has no path with a measured {COSTS[cost]}", file=CSV_NAME)
    within = [r for r in paths if cost_of(r, cost) <= budget]
    if not within:
        cheapest = min(paths, key=lambda r: (cost_of(r, cost), -r.top1_last))
        raise GraphError(f"no path fits {COSTS[cost]} <= {human(budget)}", file="command line",
                         expected=f"a budget of at least {human(cost_of(cheapest, cost))}: the cheapest path is "
                                  f"`{cheapest.node}` ({cheapest.route}) with {COSTS[cost]} "
                                  f"{_exact(cost_of(cheapest, cost))} and top-1 {cheapest.top1_last:.2f}%")
    order = {id(r): i for i, r in enumerate(rows)}
    return min(within, key=lambda r: (-r.top1_last, cost_of(r, cost), order[id(r)]))


def _exact(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:,.2f}" if isinstance(value, float) and not value.is_integer() else f"{int(value):,}"


def path_module(model: GraphModel, graph: KTGraph, node: str) -> nn.Sequential:
    """The path's segments, with the adapters at its junctions, as one ``nn.Sequential`` in eval mode.

    The modules are the model's own (not copies): use it for export or inference.
    """
    node = graph.aliases.get(node, node)
    if node not in graph.paths:
        raise GraphError(f"`{node}` is not a path (a network or a cross path)",
                         expected="one of: " + ", ".join(graph.paths))
    modules: list[nn.Module] = []
    previous = None
    for segment in graph.paths[node].segments:
        if previous is not None and junction_key(previous, segment) in model.adapter_keys:
            modules.append(model.module(junction_key(previous, segment)))
        modules.append(model.module(segment))
        previous = segment
    return nn.Sequential(*modules).eval()


def export_module(module: nn.Module, example: torch.Tensor, out: str | Path) -> tuple[Path, str]:
    """Save ``module`` so that plain PyTorch can load and run it.

    First ``torch.export`` (batch dimension dynamic, then static) saved with
    ``torch.export.save`` to ``out``; if both fail, ``torch.jit.trace`` saved with
    ``torch.jit.save`` next to it with a ``.pt`` suffix. Returns (file, format).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    attempts: list[dict[str, Any]] = [{"dynamic_shapes": ({0: torch.export.Dim("batch", min=1, max=65536)},)}, {}]
    errors = []
    for options in attempts:
        try:
            program = torch.export.export(module, (example,), **options)
        except Exception as err:  # any tracing failure: try the next way
            errors.append(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            continue
        torch.export.save(program, str(out))
        return out, "torch.export" + ("" if options else " (static batch size)")
    traced_path = out.with_suffix(".pt")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, and here on purpose
        traced = torch.jit.trace(module, example)
        torch.jit.save(traced, str(traced_path))
    return traced_path, f"torchscript (torch.export failed: {errors[-1]})"


def front_table(rows: list[Row], cost: str, budget: float | None = None, chosen: Row | None = None) -> str:
    """The Pareto front as a terminal table; ``*`` marks the chosen path, ``x`` rows over the budget."""
    from tabulate import tabulate

    body = []
    front = pareto_front(rows, cost)
    if chosen is not None and all(row is not chosen for row in front):  # dominated by an ensemble, say
        front = sorted(front + [chosen], key=lambda r: (cost_of(r, cost), -r.top1_last, r.node))
    for row in front:
        value = cost_of(row, cost)
        mark = "*" if row is chosen else ("x" if budget is not None and value > budget else "")
        body.append([mark, row.node, row.kind, _exact(value), f"{row.top1_last:.2f}"])
    return tabulate(body, headers=["", "node", "kind", COSTS[cost], "top-1 last"], tablefmt="github",
                    disable_numparse=True)


def load_or_evaluate(run_dir: str | Path, *, progress: bool = True, allow_imports: bool = False,
                     echo=print) -> list[Row]:
    """The run's Xross table: ``xross.csv`` when it exists, else evaluated (and written) now."""
    from .xross import write_tables, xross_table

    path = Path(run_dir) / CSV_NAME
    if path.is_file():
        try:
            return read_csv(path)
        except (KeyError, ValueError) as err:
            raise GraphError(f"{path} is not a table `ktgraph eval` wrote ({type(err).__name__}: {err})",
                             file=str(path), suggestion="delete it and run `ktgraph eval RUN_DIR` again") from None
    echo(f"{path} is missing: evaluating the run first")
    rows = xross_table(run_dir, progress=progress, allow_imports=allow_imports)
    write_tables(rows, run_dir)
    return rows


def pick(run_dir: str | Path, cost: str, budget: float, *, out: str | Path | None = None, progress: bool = True,
         allow_imports: bool = False, echo=print) -> dict[str, Any]:
    """Show the Pareto front, pick the best path within ``budget`` and export it; return what was done."""
    from .xross import load_run

    run_dir = Path(run_dir)
    rows = load_or_evaluate(run_dir, progress=progress, allow_imports=allow_imports, echo=echo)
    try:
        chosen = pick_path(rows, cost, budget)
    except GraphError:
        echo(f"Pareto front, top-1 % against {COSTS[cost]}:\n{front_table(rows, cost, budget)}")
        raise
    echo(f"Pareto front, top-1 % against {COSTS[cost]} (* picked, x over the budget):\n"
         f"{front_table(rows, cost, budget, chosen)}")
    run = load_run(run_dir, device="cpu", allow_imports=allow_imports)
    module = path_module(run.model, run.graph, chosen.node)
    example = torch.randn(2, *run.model.input_shape, generator=torch.Generator().manual_seed(0))
    out = Path(out) if out else run_dir / f"picked-{re.sub(r'[^A-Za-z0-9._-]', '_', chosen.node)}.pt2"
    saved, how = export_module(module, example, out)
    echo(f"picked `{chosen.node}` ({chosen.kind}: {chosen.route}) under {COSTS[cost]} <= {human(budget)}\n"
         f"  top-1 {chosen.top1_last:.2f}% at the last epoch"
         + (f", {chosen.top1_best:.2f}% at its best epoch {chosen.best_epoch}" if chosen.top1_best is not None
            else "") + "\n"
         f"  #params {chosen.params:,}, MACs/image {_exact(chosen.macs)}, "
         f"latency {_exact(chosen.latency_ms)} ms per batch of {chosen.batch_size}\n"
         f"  saved with {how} to {saved}\n"
         + (f"  load it with: torch.export.load('{saved}').module()(images)" if how.startswith("torch.export")
            else f"  load it with: torch.jit.load('{saved}')(images)"))
    return {"row": chosen, "file": saved, "format": how, "input_shape": tuple(run.model.input_shape)}


def parse_amount(text: str, flag: str = "budget") -> float:
    """A budget from the command line: ``250000``, ``250k``, ``1.5M``, ``2G``, ``1e6`` or ``12.5``."""
    raw = str(text).strip().replace(",", "").replace("_", "")
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(raw[-1:].lower(), 1.0)
    try:
        value = float(raw[:-1] if scale != 1.0 else raw) * scale
    except ValueError:
        value = math.nan
    if not value > 0:  # also rejects nan
        raise GraphError(f"{flag} `{text}` is not a positive amount", file="command line",
                         expected="a number, optionally with k, M or G: 250000, 250k, 1.5M")
    return value
