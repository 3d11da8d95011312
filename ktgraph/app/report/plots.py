"""The run's figures as SVG: training curves, the Xross heatmap and accuracy versus cost.

Figures are built as :class:`matplotlib.figure.Figure` objects on an Agg canvas, never
through pyplot, so making a report changes no global matplotlib state (backend, open
figures) of the program that calls it. Text stays text in the SVG (``svg.fonttype:
none``, set only while saving), so node names can be searched in the files.

Each function takes a run directory (or data already read) and returns the path it
wrote, or ``None`` when its input is not there (no ``xross.csv`` yet): never an error
for a missing file.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib import colors as mcolors
from matplotlib import patches as mpatches

from ...runtime.measure import Row
from ...runtime.rundir import CURVES, HEATMAP, PARETO, RunDir
from ..tables import human_count
from .figure import new_figure, percent_limits, resolve_source, save_svg
from .pareto import plot_pareto

def _colors(names: Sequence[str]) -> dict[str, Any]:
    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    if len(names) <= 20:
        return {n: cmap(i % cmap.N) for i, n in enumerate(names)}
    wheel = matplotlib.colormaps["hsv"]
    return {n: wheel(i / len(names)) for i, n in enumerate(names)}


# --- training curves -----------------------------------------------------------------
def plot_curves(source: str | Path | Sequence[dict[str, Any]], out: str | Path | None = None) -> Path | None:
    """``curves.svg``: each node's training loss (top) and test top-1 (bottom) per epoch.

    ``source`` is a run directory or the parsed lines of ``metrics.jsonl``. The x axis
    counts epochs across stages (1, 2, ...); dotted lines mark where a stage begins.
    Validation top-1, when the run has a validation split, is drawn dashed.
    """
    run_dir, out = resolve_source(source, out, CURVES)
    lines = RunDir(run_dir).read_metrics() if run_dir is not None else sorted(
        source, key=lambda d: (d.get("stage_index", 0), d.get("epoch", 0)))
    if not lines:
        return None
    xs = list(range(1, len(lines) + 1))
    nodes: list[str] = []
    for line in lines:
        for key in ("test", "node_loss", "val"):
            for node in line.get(key) or {}:
                if node not in nodes:
                    nodes.append(node)
    colors = _colors(nodes)
    calibrated = {node for line in lines for node in line.get("calibrated") or ()}
    has_val = any(line.get("val") for line in lines)
    markers = len(lines) <= 30

    fig = new_figure(11, 7.5)
    loss_ax, acc_ax = fig.subplots(2, 1, sharex=True)
    for node in nodes:
        loss = [_get(line, "node_loss", node) for line in lines]
        if any(v is not None for v in loss):
            loss_ax.plot(xs, _nan(loss), color=colors[node], marker="o" if markers else None, markersize=3,
                         label=node)
        test = [_get(line, "test", node, "top1") for line in lines]
        acc_ax.plot(xs, _nan(test), color=colors[node], marker="o" if markers else None, markersize=3,
                    label=node + _CALIBRATED if node in calibrated else node)
        if has_val:
            val = [_get(line, "val", node, "top1") for line in lines]
            if any(v is not None for v in val):
                acc_ax.plot(xs, _nan(val), color=colors[node], linestyle="--", marker="s" if markers else None,
                            markersize=3, alpha=0.8)

    # Stage boundaries and names.
    starts = [0] + [i for i in range(1, len(lines)) if lines[i].get("stage_index") != lines[i - 1].get("stage_index")]
    for ax in (loss_ax, acc_ax):
        for i in starts[1:]:
            ax.axvline(xs[i] - 0.5, color="0.4", linestyle=":", linewidth=1)
        ax.grid(True, alpha=0.3)
    bounds = starts + [len(lines)]
    for begin, end in zip(bounds, bounds[1:]):
        loss_ax.annotate(f"stage {lines[begin].get('stage', '?')}", xy=((xs[begin] + xs[end - 1]) / 2, 1.0),
                         xycoords=("data", "axes fraction"), xytext=(0, 3), textcoords="offset points",
                         ha="center", va="bottom", fontsize=9, color="0.3")
    losses = [v for node in nodes for line in lines if (v := _get(line, "node_loss", node)) is not None]
    if losses and min(losses) >= 0:  # no margin below a loss that cannot be negative
        loss_ax.set_ylim(bottom=0)
    accs = [v for node in nodes for line in lines for key in ("test", "val")
            if (v := _get(line, key, node, "top1")) is not None]
    if accs:
        acc_ax.set_ylim(*percent_limits(accs, below=0.05, above=0.05))
    loss_ax.set_ylabel("training loss (sum of its links)")
    acc_ax.set_ylabel("test top-1 (%)" + (";  val dashed" if has_val else ""))
    acc_ax.set_xlabel("epoch (counted across stages)")
    acc_ax.set_xticks(xs if len(xs) <= 25 else acc_ax.get_xticks())
    acc_ax.set_xlim(0.5, len(xs) + 0.5)
    handles, labels = acc_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8, ncol=1 if len(nodes) <= 20 else 2,
               title="node")
    fig.suptitle("Training curves per node: loss (top), test top-1 (bottom)")
    if calibrated:  # calibrated paths and uncalibrated networks are not the same measurement
        fig.supxlabel(f"{_CALIBRATED.strip()} evaluated with BatchNorm statistics calibrated on training batches "
                      "(train.calibrate); the other nodes with their own running statistics", x=0.01, ha="left",
                      fontsize=8, color="0.3")
    return save_svg(fig, out)


_CALIBRATED = " (calibrated)"


def _get(line: dict[str, Any], key: str, node: str, field: str | None = None) -> float | None:
    value = (line.get(key) or {}).get(node)
    if field is not None:
        value = value.get(field) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def _nan(values: list[float | None]) -> list[float]:
    return [math.nan if v is None else v for v in values]


# --- Xross heatmap ---------------------------------------------------------------------
@dataclass
class _Cut:
    """The K x K table of paths whose parts up to ``cut`` are one network and after it another."""

    cut: int
    cells: dict[tuple[str, str], Row]


def network_order(paths: Sequence[Row]) -> list[str]:
    """Networks as they first appear in the rows' parts (the csv lists networks first)."""
    order: list[str] = []
    for row in paths:
        for net in row.parts:
            if net not in order:
                order.append(net)
    return order


def xross_cuts(paths: Sequence[Row]) -> list[_Cut]:
    """For each cut position c of P-part paths: cells (up network, down network) -> row.

    Only cuts with at least one true cross path (up != down) are kept.
    """
    counts = Counter(len(r.parts) for r in paths)
    if len(counts) != 1:
        return []  # paths of different lengths: no common cut positions
    parts = next(iter(counts))
    cuts = []
    for c in range(1, parts):
        cells = {}
        for row in paths:
            up, down = set(row.parts[:c]), set(row.parts[c:])
            if len(up) == 1 and len(down) == 1:
                cells[(row.parts[0], row.parts[-1])] = row
        if any(u != d for u, d in cells):
            cuts.append(_Cut(c, cells))
    return cuts


def plot_xross_heatmap(source: str | Path | Sequence[Row], out: str | Path | None = None, *,
                       test_images: int | None = None) -> Path | None:
    """``xross_heatmap.svg``: which up part with which down part gives what accuracy.

    Two-part paths: one K x K heatmap, up-half network (rows) x down-half network
    (columns), each cell the path's last-epoch test top-1 and its #params. P parts: one
    heatmap per cut position c, over the paths whose parts 1..c are one network and
    c+1..P another, plus a sorted bar chart of every path (the heatmaps miss paths
    that switch network more than once). Where no heatmap applies: the bar chart alone.

    So that one or two test images do not look dramatic, the colour scale spans at least
    ``MIN_COLOUR_IMAGES`` test images (``test_images``, by default the run's, as its metrics
    record them; else at least one point), and the caption states what one image is worth.
    """
    run_dir, out = resolve_source(source, out, HEATMAP)
    if test_images is None and run_dir is not None:
        test_images = next((line["images"].get("test") for line in reversed(RunDir(run_dir).read_metrics())
                            if isinstance(line.get("images"), dict)), None)
    rows = RunDir(run_dir).read_xross() if run_dir is not None else list(source)
    paths = [r for r in rows if r.is_path and r.parts and r.top1_last is not None]
    if not paths:
        return None
    cuts = xross_cuts(paths)
    covered = {row.node for cut in cuts for row in cut.cells.values()}
    show_bars = not cuts or any(r.node not in covered for r in paths)
    nets = network_order(paths)
    parts = len(paths[0].parts)

    heat_h = 0.9 * len(nets) + 2.6 if cuts else 0.0
    bar_h = 0.32 * len(paths) + 1.6 if show_bars else 0.0
    width = max(7.5, 5.2 * len(cuts), 9.0 if show_bars else 0.0)
    fig = new_figure(width, heat_h + bar_h)
    if cuts and show_bars:
        top, bottom = fig.subfigures(2, 1, height_ratios=[heat_h, bar_h])
    else:
        top = bottom = fig
    if cuts:
        accs = [r.top1_last for cut in cuts for r in cut.cells.values()]
        _heatmaps(top, cuts, nets, parts, *colour_range(accs, test_images))
    if show_bars:
        _bars(bottom, paths)
    if not cuts:
        fig.suptitle("Xross: no up x down heatmap applies (no path switches network once at a common cut); "
                     "every path's test top-1 instead", fontsize=10)
    if cuts and show_bars:
        fig.suptitle(f"Xross: test top-1 (%) of the {parts}-part paths, last epoch", fontweight="bold")
    notes = [f"one test image = {100 / test_images:.2g} points of top-1 ({test_images} test images);\n"
             f"the colour scale spans at least {MIN_COLOUR_IMAGES} images" if test_images else
             "the colour scale spans at least 1 point of top-1"]
    if any(r.calibrated for r in paths):
        notes.append("* BatchNorm statistics calibrated for this path on training batches (train.calibrate)")
    fig.supxlabel("\n".join(notes), x=0.01, ha="left", fontsize=8, color="0.3")  # laid out below the axes' labels
    return save_svg(fig, out)


MIN_COLOUR_IMAGES = 10


def colour_range(accs: Sequence[float], test_images: int | None) -> tuple[float, float]:
    """The heatmap's colour limits: the accuracies' range, widened about its middle to at least
    ``MIN_COLOUR_IMAGES`` test images (or 1 point when their number is unknown), within 0-100."""
    low, high = min(accs), max(accs)
    span = max(high - low, MIN_COLOUR_IMAGES * 100 / test_images if test_images else 1.0)
    middle = (low + high) / 2
    low, high = middle - span / 2, middle + span / 2
    shift = max(0.0, -low) - max(0.0, high - 100)  # keep it within 0-100
    return low + shift, high + shift


def _mark(row: Row) -> str:
    return "*" if row.calibrated else ""


def _heatmaps(fig, cuts: list[_Cut], nets: list[str], parts: int, vmin: float, vmax: float) -> None:
    cmap = matplotlib.colormaps["viridis"]
    norm = mcolors.Normalize(vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1e-9)
    axes = fig.subplots(1, len(cuts), squeeze=False)[0]
    image = None
    for ax, cut in zip(axes, cuts):
        grid = [[math.nan] * len(nets) for _ in nets]
        for (up, down), row in cut.cells.items():
            grid[nets.index(up)][nets.index(down)] = row.top1_last
        image = ax.imshow(grid, cmap=cmap, norm=norm)
        for (up, down), row in cut.cells.items():
            r, c = nets.index(up), nets.index(down)
            text = f"{row.top1_last:.2f}%{_mark(row)}"
            if row.params is not None:
                text += f"\n{human_count(row.params)} params"
            luminance = sum(w * v for w, v in zip((0.299, 0.587, 0.114), cmap(norm(row.top1_last))[:3]))
            ax.text(c, r, text, ha="center", va="center", fontsize=9,
                    color="black" if luminance > 0.5 else "white")
        for r, up in enumerate(nets):
            for c, down in enumerate(nets):
                if (up, down) not in cut.cells:
                    ax.text(c, r, "not run", ha="center", va="center", fontsize=8, color="0.5")
        ax.set_xticks(range(len(nets)), nets)
        ax.set_yticks(range(len(nets)), nets)
        if parts == 2:
            ax.set_ylabel("up-half network")
            ax.set_xlabel("down-half network")
            ax.set_title("up-half (rows) x down-half (columns)", fontsize=10)
        else:
            up_parts = "part 1" if cut.cut == 1 else f"parts 1-{cut.cut}"
            down_parts = f"part {parts}" if cut.cut == parts - 1 else f"parts {cut.cut + 1}-{parts}"
            ax.set_ylabel(f"network of {up_parts}")
            ax.set_xlabel(f"network of {down_parts}")
            ax.set_title(f"cut {cut.cut}: {up_parts} (rows) x {down_parts} (columns)", fontsize=10)
    fig.colorbar(image, ax=list(axes), label="test top-1 (%)", shrink=0.85)
    if parts == 2:
        fig.suptitle("Xross: test top-1 (%) at the last epoch and #params of each path;\n"
                     "rows: up-half network, columns: down-half network, diagonal: the networks", fontsize=11)
    else:
        fig.suptitle(f"Heatmaps: {parts}-part paths that switch network once, at the cut shown; "
                     "diagonal = the networks themselves")


def _bars(fig, paths: list[Row]) -> None:
    ax = fig.subplots()
    ranked = sorted(paths, key=lambda r: (-r.top1_last, r.node))
    ys = list(range(len(ranked)))
    accs = [r.top1_last for r in ranked]
    # Paths often differ by tenths of a point: the axis starts near the lowest, not at 0, and ends
    # just past the highest; long bars carry their label inside, short ones just after their end.
    left, right = percent_limits(accs, below=0.5, above=0.05)
    colors = ["tab:blue" if r.kind == "network" else "tab:orange" for r in ranked]
    ax.barh(ys, [a - left for a in accs], left=left, color=colors)
    ax.set_yticks(ys, [r.node for r in ranked], fontsize=8)
    ax.invert_yaxis()
    for y, row in zip(ys, ranked):
        label = f"{row.top1_last:.2f}%{_mark(row)}"
        if row.params is not None:
            label += f"  ({human_count(row.params)} params)"
        inside = row.top1_last - left > 0.5 * (right - left)
        ax.text(row.top1_last, y, f"{label} " if inside else f" {label}", va="center", fontsize=8,
                ha="right" if inside else "left", color="white" if inside else "black")
    ax.set_xlim(left, right)
    ax.set_xlabel("test top-1 (%), last epoch" + (f" (axis starts at {left:.2f})" if left > 0 else ""))
    ax.grid(True, axis="x", alpha=0.3)
    handles = [mpatches.Patch(color="tab:blue", label="network"),
               mpatches.Patch(color="tab:orange", label="cross path")]
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    ax.set_title("Every path, sorted by test top-1 (last epoch); #params in brackets", fontsize=10)


def write_plots(run_dir: str | Path) -> dict[str, Path | None]:
    """All figures of a run directory: {file name: written path or None when skipped}."""
    return {CURVES: plot_curves(run_dir), HEATMAP: plot_xross_heatmap(run_dir), PARETO: plot_pareto(run_dir)}

