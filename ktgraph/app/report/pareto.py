"""``pareto.svg``: every path's accuracy against its cost, with the Pareto front."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.ticker import FuncFormatter

from ...runtime.measure import Row
from ...runtime.rundir import PARETO, RunDir
from ..tables import pareto_indices
from .figure import new_figure, percent_limits, resolve_source, save_svg


def plot_pareto(source: str | Path | Sequence[Row], out: str | Path | None = None) -> Path | None:
    """``pareto.svg``: every path's test top-1 (last epoch) versus #params, and versus MACs.

    The Pareto front (paths no other path beats with no more cost) is highlighted and
    joined as a staircase: the best accuracy reachable within each budget, which is
    what dynamic computation picks from. Aggregates and ensembles with a cost are
    drawn as hollow diamonds, outside the front (they are not a single path).
    """
    run_dir, out = resolve_source(source, out, PARETO)
    rows = RunDir(run_dir).read_xross() if run_dir is not None else list(source)
    rows = [r for r in rows if r.top1_last is not None]
    paths = [r for r in rows if r.is_path]
    if not any(r.params is not None and r.params > 0 for r in paths):
        return None
    others = [r for r in rows if not r.is_path]
    fig = new_figure(13, 5.8)
    axes = fig.subplots(1, 2)
    for ax, field, name in ((axes[0], "params", "#params"), (axes[1], "macs", "MACs per image")):
        _pareto_panel(ax, paths, others, field, name)
    # One legend for both panels, outside them: inside, it can hide a point.
    handles = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=len(handles), fontsize=8)
    fig.suptitle("Accuracy vs cost of every path (test top-1, last epoch); "
                 "Pareto front (no other path with <= cost and >= top-1) in red")
    return save_svg(fig, out)


def _pareto_panel(ax, paths: list[Row], others: list[Row], field: str, name: str) -> None:
    points = [(r, getattr(r, field)) for r in paths if getattr(r, field) is not None and getattr(r, field) > 0]
    if not points:
        ax.text(0.5, 0.5, f"no {name} in xross.csv", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    front = set(pareto_indices([(cost, r.top1_last) for r, cost in points]))
    off = [p for i, p in enumerate(points) if i not in front]
    on = sorted((p for i, p in enumerate(points) if i in front), key=lambda p: (p[1], -p[0].top1_last))
    if off:
        ax.scatter([c for _, c in off], [r.top1_last for r, _ in off], color="0.55", s=30, zorder=2,
                   label="path")
    ax.plot([c for _, c in on], [r.top1_last for r, _ in on], color="tab:red", drawstyle="steps-post",
            linewidth=1.5, zorder=3)
    ax.scatter([c for _, c in on], [r.top1_last for r, _ in on], color="tab:red", s=45, zorder=4,
               label="Pareto front")
    extra = [(r, getattr(r, field)) for r in others if getattr(r, field) is not None and getattr(r, field) > 0]
    if extra:
        ax.scatter([c for _, c in extra], [r.top1_last for r, _ in extra], facecolors="none",
                   edgecolors="tab:blue", marker="D", s=40, zorder=2, label="aggregate / ensemble")
    # Points of one cost (paths sharing their MACs, say) stack their labels one line apart, by
    # accuracy; neighbouring costs put theirs above and below in turn.
    by_cost: dict[float, list[Row]] = {}
    for row, cost in points + extra:
        by_cost.setdefault(cost, []).append(row)
    for n, (cost, rows) in enumerate(sorted(by_cost.items())):
        rows.sort(key=lambda r: r.top1_last)
        first = 4 if n % 2 == 0 else -10 - 9 * (len(rows) - 1)
        for k, row in enumerate(rows):
            ax.annotate(row.node, (cost, row.top1_last), xytext=(4, first + 9 * k), textcoords="offset points",
                        fontsize=7)
    ax.set_ylim(*percent_limits([r.top1_last for r, _ in points + extra], below=0.1, above=0.1))  # room for labels
    ax.set_xscale("log")
    costs = [c for _, c in points + extra]
    ratio = max(costs) / min(costs)
    # Within about a decade the power-of-ten ticks alone may show no label at all: label the
    # minor ticks too, all of them over a short range, else only 2x and 5x.
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _tick(v)))
    ax.xaxis.set_minor_formatter(FuncFormatter(
        lambda v, _: _tick(v) if ratio < 20 and (ratio < 3 or _mantissa(v) in (2, 5)) else ""))
    ax.tick_params(axis="x", which="both", labelsize=7)
    ax.set_xlabel(f"{name} (log scale)")
    ax.set_ylabel("test top-1 (%), last epoch")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"top-1 vs {name}", fontsize=10)


def _mantissa(value: float) -> int:
    return round(value / 10 ** math.floor(math.log10(value))) if value > 0 else 0


def _tick(value: float) -> str:
    """Short axis labels: 3e6 -> '3M', 1.5e5 -> '150k'."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{round(value / scale, 3):g}{suffix}"
    return f"{round(value, 3):g}"
