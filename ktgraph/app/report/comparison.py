"""``comparison.svg``: each method's mean top-1 per node with its seed-to-seed standard deviation
as an error bar, so a reader sees at once which differences lie within the spread."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .figure import new_figure, percent_limits, save_svg
from .plots import _colors

Point = tuple[str, str, float, float]  # method, node, mean, standard deviation (0 for one seed)


def plot_comparison(points: Sequence[Point], methods: Sequence[str], nodes: Sequence[str], out: Path,
                    metric_label: str) -> Path | None:
    """One marker per (method, node), the methods side by side within each node; None when nothing to draw."""
    if not points:
        return None
    fig = new_figure(max(6.0, 1.1 * len(nodes) + 2.5), 4.2)
    ax = fig.subplots()
    colors = _colors(list(methods))
    at = {(method, node): (mean, std) for method, node, mean, std in points}
    placed: dict[str, list[tuple[float, float, float]]] = {method: [] for method in methods}
    for x, node in enumerate(nodes):  # the methods that have this node, side by side around its tick
        present = [method for method in methods if (method, node) in at]
        for index, method in enumerate(present):
            placed[method].append((x - 0.4 + 0.8 * (index + 0.5) / len(present), *at[method, node]))
    for method, mine in placed.items():
        if mine:
            ax.errorbar([x for x, _, _ in mine], [m for _, m, _ in mine], yerr=[s for _, _, s in mine], fmt="o",
                        capsize=3, markersize=5, color=colors[method], label=method)
    ends = [mean + sign * std for _, _, mean, std in points for sign in (-1, 1)]
    ax.set_xticks(range(len(nodes)), list(nodes), fontsize=8, rotation=30 if len(nodes) > 6 else 0)
    ax.set_ylim(*percent_limits(ends, below=0.1, above=0.1))
    ax.set_ylabel(f"test top-1 (%), {metric_label}")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title("mean ± standard deviation over seeds", fontsize=10)
    return save_svg(fig, out)
