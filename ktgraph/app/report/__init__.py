"""Run reports: figures, ``report.md`` and optional TensorBoard logging, from a run directory.

Everything here reads the files a run writes (through :class:`~ktgraph.runtime.rundir.RunDir`),
so it works on any run directory, finished or not::

    from ktgraph.app.report import write_report
    write_report("runs/multi_xross-20250101-120000")   # -> .../report.md, plus the SVGs

or ``ktgraph report RUN_DIR``.
"""
from .markdown import render_report, write_report
from .channels import plot_channel_scores
from .plots import plot_curves, plot_pareto, plot_xross_heatmap, write_plots
from .tensorboard import TensorBoardLogger

__all__ = ["TensorBoardLogger", "plot_channel_scores", "plot_curves", "plot_pareto", "plot_xross_heatmap",
           "render_report", "write_plots", "write_report"]
