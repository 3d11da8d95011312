"""``ktgraph run``: train a graph into a run directory, then its tables, pictures and report.

Around the training itself: the resolved config, the environment and the rendered graph
first; the accuracy table, the Xross table (every path with its cost) and ``report.md`` with
its plots at the end. The job is prepared once, so the program the trainer runs is the one the
tables and pictures read.
"""
from __future__ import annotations

import platform
import sys
import time
import warnings
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from ..graph import KTGraph
from ..runtime import RunDir, Trainer, prepare
from ..runtime.rundir import ENV, GRAPH_SVG, SUMMARY
from .render import details_of, graph_dot, render
from .report import TensorBoardLogger, write_report
from .tables import accuracy_rows, accuracy_table
from .xross import tables_after_training


def default_run_dir(graph: KTGraph, graph_file: str | Path) -> Path:
    name = graph.name or Path(graph_file).stem
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def environment(graph: KTGraph, argv: list[str], device: str) -> dict[str, Any]:
    return {"seed": graph.train.seed, "device": device, "command": argv, "python": sys.version.split()[0],
            "platform": platform.platform(), "ktgraph": version("ktgraph"), "torch": torch.__version__,
            "torchvision": version("torchvision"), "timm": version("timm"),
            "cuda": torch.version.cuda, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def train(graph: KTGraph, run_dir: str | Path, *, resume: bool = False, progress_bar: bool = True,
          argv: list[str] | None = None, echo: Callable[[str], object] = print) -> dict[str, Any]:
    """Train a graph into ``run_dir`` (or continue it) and return the summary."""
    run = RunDir(run_dir)
    trainer = Trainer(prepare(graph), run, progress_bar=progress_bar)  # fails on bad input before any file
    logger = TensorBoardLogger(run.path) if graph.train.tensorboard else None
    run.path.mkdir(parents=True, exist_ok=True)
    if resume:
        trainer.resume()
    else:
        run.write_config(graph.document)
        run.write_json(ENV, environment(graph, argv or [], str(trainer.device)))
        _optional("render the graph", lambda: render(graph_dot(graph, details_of(trainer.job.bound)),
                                                     run / GRAPH_SVG, "svg"))
    if logger is not None:
        trainer.on_epoch.append(logger.log)
    try:
        state = trainer.fit()
    finally:
        if logger is not None:
            logger.close()
    summary = {"graph": graph.name, "run_dir": str(run), "rows": accuracy_rows(graph, state.last, state.best)}
    run.write_json(SUMMARY, summary)
    echo(accuracy_table(graph, state.last, state.best))
    tables_after_training(trainer, progress=progress_bar, echo=echo, repeats=3)
    _optional("write the report", lambda: echo(f"report: {write_report(run.path)}"))
    return summary


def _optional(what: str, action: Callable[[], object]) -> None:
    """Pictures and reports must never fail a run whose training succeeded."""
    try:
        action()
    except Exception as err:  # noqa: BLE001 -- reported, and the run's results are already saved
        warnings.warn(f"could not {what}: {err}", stacklevel=2)
