"""What every figure of a run shares: an Agg figure outside pyplot, SVG saving with text kept as text,
where a figure reads its data and writes, and an accuracy axis that fits its data."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_SVG_RC = {"svg.fonttype": "none", "svg.hashsalt": "ktgraph"}


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_svg(fig: Figure, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context(_SVG_RC):
        fig.savefig(out, format="svg", metadata={"Date": None})
    return out


def resolve_source(source: Any, out: str | Path | None, default_name: str) -> tuple[Path | None, Path | None]:
    """(run dir or None, output path): a path-like source is a run directory."""
    if isinstance(source, (str, Path)):
        run_dir = Path(source)
        return run_dir, Path(out) if out is not None else run_dir / default_name
    if out is None:
        raise ValueError(f"give `out` when passing data instead of a run directory (e.g. run_dir/{default_name})")
    return None, Path(out)


def percent_limits(values: Sequence[float], *, below: float, above: float) -> tuple[float, float]:
    """An accuracy axis that fits its data: ``below`` and ``above`` times the values' span (at
    least half a point) past the extremes, cut at 0 % and 100 % unless a value lies beyond."""
    low, high = min(values), max(values)
    span = max(high - low, 0.5)
    return max(min(0.0, low), low - below * span), min(max(100.0, high), high + above * span)
