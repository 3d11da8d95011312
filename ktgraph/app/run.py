"""``ktgraph run``: train a graph into a run directory, then its tables, pictures and report.

Around the training itself: the resolved config, the environment and the rendered graph
first; the Xross table (every path with its cost, printed once) and ``report.md`` with its
plots at the end. The job is prepared once, so the program the trainer runs is the one the
tables and pictures read.

The run directory is protected: a run never writes into a folder that holds anything but an
unfinished run of the same graph, unless it is told to overwrite it, and it holds the folder's
lock from the first file it writes to the last.
"""
from __future__ import annotations

import contextlib
import platform
import sys
import time
import warnings
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from ..errors import GraphError
from ..graph import KTGraph
from ..runtime import RunDir, Trainer, prepare
from ..runtime.checkpoint import config_difference, trained_config
from ..runtime.rundir import CONFIG, ENV, GRAPH_SVG, SUMMARY, safe_name
from .render import details_of, graph_dot, render
from .report import TensorBoardLogger, write_report
from .tables import accuracy_rows
from .xross import tables_after_training


def default_run_dir(graph: KTGraph, graph_file: str | Path) -> Path:
    """``runs/NAME-TIMESTAMP`` (``-2``, ``-3``... when taken), NAME made a plain file name whatever it holds."""
    name = safe_name(graph.name or "", fallback=safe_name(Path(graph_file).stem))
    base = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, version = Path("runs") / base, 2
    while candidate.exists():
        candidate, version = Path("runs") / f"{base}-{version}", version + 1
    return candidate


def check_run_dir(graph: KTGraph, run: RunDir, *, overwrite: bool = False) -> None:
    """Refuse a folder a new run must not write into: a file, or a folder holding anything but an
    unfinished run of this graph that no epoch of was saved (``overwrite`` lifts the second)."""
    path = run.path
    if path.exists() and not path.is_dir():
        raise GraphError("the run directory is a file, not a folder", file=str(path),
                         suggestion="give --out a folder")
    contents = run.contents()
    if overwrite or not contents:
        return
    saved = run.read_config()
    difference = (config_difference(trained_config(saved), trained_config(graph.document), here="in this graph",
                                    there=f"in {run / CONFIG}") if saved else "no config")
    if difference is None and not (run / SUMMARY).exists() and not run.checkpoint.exists():
        return  # this graph's run, stopped before its first checkpoint: nothing to lose
    if difference is None and not (run / SUMMARY).exists():
        raise GraphError("the folder holds an interrupted run of this graph", file=str(path),
                         suggestion=f"continue it with `ktgraph run --resume {path}`, or start it again with "
                                    "--overwrite")
    if difference is None:
        what = "a finished run of this graph"
    elif saved:
        what = f"a run of another graph or other settings ({difference})"
    else:
        what = (f"{len(contents)} {'entry' if len(contents) == 1 else 'entries'} "
                f"({', '.join(contents[:3])}{', ...' if len(contents) > 3 else ''})")
    raise GraphError(f"the folder is not empty: it holds {what}; nothing in it was touched", file=str(path),
                     suggestion="give another --out (or leave it out for a new folder under runs/), or pass "
                                "--overwrite to replace the run files there")


def environment(graph: KTGraph, argv: list[str], device: str) -> dict[str, Any]:
    return {"seed": graph.train.seed, "threads": torch.get_num_threads(), "device": device, "command": argv, "python": sys.version.split()[0],
            "platform": platform.platform(), "ktgraph": version("ktgraph"), "torch": torch.__version__,
            "torchvision": version("torchvision"), "timm": version("timm"),
            "cuda": torch.version.cuda, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def train(graph: KTGraph, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          progress_bar: bool = True, argv: list[str] | None = None,
          echo: Callable[[str], object] = print) -> dict[str, Any]:
    """Train a graph into ``run_dir`` (or continue it) and return the summary.

    A new run refuses a folder that holds anything but this graph's unsaved run (:func:`check_run_dir`)
    unless ``overwrite``; the folder is locked while the run writes in it.
    """
    run = RunDir(run_dir)
    if graph.train.threads is not None:  # before anything runs: the data and the modules use them too
        torch.set_num_threads(graph.train.threads)
    if not resume:
        check_run_dir(graph, run, overwrite=overwrite)
    with contextlib.ExitStack() as held:
        payload = None
        if resume:  # refused at once when another process uses the folder, or its checkpoint is unusable
            held.enter_context(run.lock("run --resume"))
            payload = run.load_checkpoint(map_location="cpu", resume=True)
        trainer = Trainer(prepare(graph), run, progress_bar=progress_bar)  # fails on bad input before any file
        if not resume:
            _make_folder(run.path)
            held.enter_context(run.lock("run"))
            check_run_dir(graph, run, overwrite=overwrite)  # again: another process may have written meanwhile
            run.remove_run_files()
        run.remove_temporary()
        logger = TensorBoardLogger(run.path) if graph.train.tensorboard else None
        if resume:
            trainer.resume(payload)
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
        return _finish(graph, trainer, run, state, progress_bar, echo)


def _make_folder(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GraphError(f"cannot create the run directory: {err.strerror or err}", file=str(path),
                         suggestion="give --out a folder you can write in, on a file system that is not "
                                    "read-only") from None


def _finish(graph: KTGraph, trainer: Trainer, run: RunDir, state: Any, progress_bar: bool,
            echo: Callable[[str], object]) -> dict[str, Any]:
    calibration = trainer.eval_executor.calibration
    calibrated = calibration.nodes(trainer.program.eval) if calibration is not None else set()
    summary = {"graph": graph.name, "run_dir": str(run),
               "rows": accuracy_rows(graph, state.last, state.best, calibrated)}
    run.write_json(SUMMARY, summary)
    tables_after_training(trainer, progress=progress_bar, echo=echo, repeats=3)
    _optional("write the report", lambda: echo(f"report: {write_report(run.path)}"))
    return summary


def _optional(what: str, action: Callable[[], object]) -> None:
    """Pictures and reports must never fail a run whose training succeeded."""
    try:
        action()
    except Exception as err:  # noqa: BLE001 -- reported, and the run's results are already saved
        warnings.warn(f"could not {what}: {err}", stacklevel=2)
