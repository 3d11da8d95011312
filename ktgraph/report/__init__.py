"""Run reports: figures, ``report.md`` and optional TensorBoard logging, from a run directory.

Everything here reads the files a run writes (``metrics.jsonl``, ``summary.json``,
``env.json``, ``config.yaml``, ``xross.csv``, ``xross.md``, ``graph.svg``), so it works
on any run directory, finished or not::

    from ktgraph.report import write_report
    write_report("runs/multi_xross-20250101-120000")   # -> .../report.md, plus the SVGs

or ``python -m ktgraph.report RUN_DIR``.
"""
from .markdown import REPORT, render_report, write_report
from .plots import CURVES, HEATMAP, PARETO, plot_curves, plot_pareto, plot_xross_heatmap, write_plots
from .runfiles import pareto_front, read_metrics, read_xross
from .tensorboard import TensorBoardLogger

__all__ = ["CURVES", "HEATMAP", "PARETO", "REPORT", "TensorBoardLogger", "pareto_front",
           "plot_curves", "plot_pareto", "plot_xross_heatmap", "read_metrics", "read_xross", "render_report",
           "write_plots", "write_report"]
