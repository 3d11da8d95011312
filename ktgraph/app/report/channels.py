"""The channel mapping's figure: a cut's score matrix before and after mapping (``ktgraph map``, runs)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
from matplotlib import colors as mcolors
from torch import Tensor

from .figure import new_figure, save_svg

def plot_channel_scores(before: Tensor, order: Sequence[int], title: str, out: str | Path) -> Path:
    """Two heatmaps of a cut's channel scores: the networks' own order, and after mapping (columns reordered,
    so a good mapping shows a bright diagonal)."""
    matrix = [list(map(float, row)) for row in before.tolist()]
    after = [[row[j] for j in order] for row in matrix]
    fig = new_figure(11, 5)
    axes = fig.subplots(1, 2)
    values = [v for row in matrix for v in row]
    norm = mcolors.Normalize(vmin=min(values), vmax=max(values) if max(values) > min(values) else min(values) + 1e-9)
    image = None
    for ax, grid, name in zip(axes, (matrix, after), ("before (own order)", "after mapping")):
        image = ax.imshow(grid, cmap=matplotlib.colormaps["viridis"], norm=norm, interpolation="nearest")
        diagonal = sum(grid[i][i] for i in range(len(grid))) / len(grid)
        ax.set_title(f"{name}: mean diagonal {diagonal:.3f}", fontsize=10)
        ax.set_ylabel("reference network's channel")
        ax.set_xlabel("mapped network's channel")
    fig.colorbar(image, ax=list(axes), label="score", shrink=0.85)
    fig.suptitle(title)
    return save_svg(fig, Path(out))
