"""``ktgraph pick``: dynamic computation, the best path under a budget exported as a standalone module.

It reads a run's Xross table (``xross.csv``, made first when missing), shows the Pareto front of
accuracy against one cost (parameters, MACs per image or latency per batch), chooses the most
accurate *path* (a network or a cross path: one chain of segments) within the budget and saves
it with ``torch.export`` (:mod:`ktgraph.runtime.export`): plain PyTorch loads and runs it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

from ..errors import GraphError
from ..runtime import RunDir
from ..runtime.calibrate import calibrate_job
from ..runtime.export import export_module, path_module
from ..runtime.job import dtype_of
from ..runtime.measure import Row
from ..runtime.rundir import XROSS_CSV, safe_name
from .load import load_run
from .tables import human_count as human
from .tables import pareto_indices
from .xross import write_tables, xross_table

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
    keep = pareto_indices([(cost_of(r, cost), r.top1_last) for r in measured])
    return sorted((measured[i] for i in keep), key=lambda r: (cost_of(r, cost), -r.top1_last, r.node))


def pick_path(rows: list[Row], cost: str, budget: float) -> Row:
    """The most accurate path (network or cross path) whose cost is within ``budget``.

    Ties go to the cheaper path, then to the first in the table. No path within the
    budget is a GraphError naming the cheapest one.
    """
    paths = [r for r in rows if r.is_path and cost_of(r, cost) is not None]
    if not paths:
        raise GraphError(f"the Xross table has no path with a measured {COSTS[cost]}", file=XROSS_CSV)
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


def front_table(rows: list[Row], cost: str, budget: float | None = None, chosen: Row | None = None) -> str:
    """The Pareto front as a terminal table; ``*`` marks the chosen path, ``x`` rows over the budget."""
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
    path = Path(run_dir) / XROSS_CSV
    if path.is_file():
        try:
            return RunDir(run_dir).read_xross()
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
    # The statistics its row was evaluated with: recomputed, the same seeded batches give the same estimates.
    calibrated = (run.job.program.eval, calibrate_job(run.job)) if chosen.calibrated else None
    module = path_module(run.job.bound, chosen.node, calibrated)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, *run.job.input_shape, generator=generator).to(dtype_of(run.job.graph))
    out = Path(out) if out else run_dir / f"picked-{safe_name(chosen.node, fallback='path')}.pt2"
    saved, how = export_module(module, example, out)
    echo(f"picked `{chosen.node}` ({chosen.kind}: {chosen.route}) under {COSTS[cost]} <= {human(budget)}\n"
         f"  top-1 {chosen.top1_last:.2f}% at the last epoch"
         + (" (calibrated BatchNorm statistics, saved with it)" if chosen.calibrated else "")
         + (f", {chosen.top1_best:.2f}% at its best epoch {chosen.best_epoch}" if chosen.top1_best is not None
            else "") + "\n"
         f"  #params {chosen.params:,}, MACs/image {_exact(chosen.macs)}, "
         f"latency {_exact(chosen.latency_ms)} ms per batch of {chosen.batch_size}\n"
         f"  saved with {how} to {saved}\n"
         + (f"  load it with: torch.export.load('{saved}').module()(images)" if how.startswith("torch.export")
            else f"  load it with: torch.jit.load('{saved}')(images)"))
    return {"row": chosen, "file": saved, "format": how, "input_shape": tuple(run.job.input_shape)}


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
