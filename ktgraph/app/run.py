"""``ktgraph run``: train a graph into a run directory (:func:`fit`), then its tables, pictures and
report (:func:`finish`); :func:`train` is both.

Around the training itself: the resolved config, the environment and the rendered graph
first; the Xross table (every path with its cost, printed once) and ``report.md`` with its
plots at the end. The job is prepared once, so the program the trainer runs is the one the
tables and pictures read. Under torchrun every rank fits and rank 0 alone writes and finishes.

The run directory is protected: a run never writes into a folder that holds anything but an
unfinished run of the same graph, unless it is told to overwrite it, and it holds the folder's
lock from the first file it writes to the last.
"""
from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from ..errors import GraphError, TrainingError
from ..graph import KTGraph
from ..runtime import RunDir, Trainer, prepare
from ..runtime.checkpoint import config_difference, trained_config
from ..runtime.events import Callback
from ..runtime.mapping import PAYLOAD_KEY, ChannelMapping
from ..runtime.rundir import CONFIG, ENV, GRAPH_SVG, STATUS, SUMMARY, make_folder, safe_name
from ..runtime.strategy import Local, from_environment
from ..runtime.trainer import Progress
from .mapping import run_reporter
from .progress import ProgressLines
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
        status = run.read_json(STATUS) or {}
        how = (f"a run of this graph that a callback stopped ({status.get('reason')})"
               if status.get("state") == "stopped" else "an interrupted run of this graph")
        raise GraphError(f"the folder holds {how}", file=str(path),
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


def check_unfinished(graph: KTGraph, run: RunDir, payload: dict[str, Any]) -> None:
    """Refuse to resume a finished run (its checkpoint after the last epoch, its tables written): resuming
    would only evaluate it again and rewrite its files. An earlier checkpoint copied over ``last.pt`` resumes."""
    last = graph.stages[-1]
    at_end = payload["stage"] >= len(graph.stages) or (payload["stage"] == len(graph.stages) - 1
                                                       and payload["epoch"] >= last.epochs)
    if at_end and (run / SUMMARY).is_file() and (run.read_json(STATUS) or {}).get("state") == "trained":
        raise GraphError("the run is finished: every epoch of every stage is trained and its tables are written; "
                         "nothing to resume", file=str(run.path),
                         suggestion=f"`ktgraph eval {run}` evaluates its paths again and rewrites the tables, "
                                    f"`ktgraph report {run}` its report; to train longer, start a new run")


def _installed(package: str) -> str | None:
    """A package's installed version; None for one imported from a source tree (``PYTHONPATH``), which has none."""
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def environment(graph: KTGraph, argv: list[str], device: str, processes: int = 1) -> dict[str, Any]:
    return {"seed": graph.train.seed, "threads": torch.get_num_threads(), "device": device, "processes": processes,
            "command": argv, "python": sys.version.split()[0],
            "platform": platform.platform(), "ktgraph": _installed("ktgraph"), "torch": torch.__version__,
            "torchvision": _installed("torchvision"), "timm": _installed("timm"),
            "cuda": torch.version.cuda, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


@dataclass
class Fitted:
    """A graph trained (or stopped) into its run directory: what :func:`finish` reads."""

    graph: KTGraph
    trainer: Trainer
    run: RunDir
    state: Progress
    stopped: str | None  # why a callback stopped the run; None when it trained to the end


def fit(graph: KTGraph, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
        progress_bar: bool = True, argv: list[str] | None = None, callbacks: Iterable[Callback] = (),
        strategy: Local | None = None) -> Fitted:
    """Train a graph into ``run_dir`` (or continue it) and return the trained state.

    A new run refuses a folder that holds anything but this graph's unsaved run (:func:`check_run_dir`)
    unless ``overwrite``; the folder is locked while the run writes in it. ``callbacks`` listen to
    the training events and may stop the run (:mod:`ktgraph.runtime.events`). Under a distributed
    ``strategy`` (by default, the one torchrun's environment describes) every rank trains and rank 0
    alone writes; a refusal on rank 0 stops every rank.
    """
    strategy = strategy if strategy is not None else from_environment(graph.train.device)
    run = RunDir(run_dir)
    strategy.resume_command = f"ktgraph run --resume {run.path}"
    threads = strategy.threads(graph.train.threads)
    if threads is not None:  # before anything runs: the data and the modules use them too
        torch.set_num_threads(threads)
    with contextlib.ExitStack() as held:
        if not resume:
            _on_main(strategy, lambda: check_run_dir(graph, run, overwrite=overwrite))
        else:  # refused at once when finished, when another process uses the folder, or its checkpoint is unusable
            _on_main(strategy, lambda: held.enter_context(run.lock("run --resume")))
        payload = run.load_checkpoint(map_location="cpu", resume=True) if resume else None
        if payload is not None:
            _on_main(strategy, lambda: check_unfinished(graph, run, payload))
        # Resumed, the checkpoint holds every weight: `weights:` files and runs are not read again.
        trainer = Trainer(prepare(graph, strategy=strategy, initial_weights=not resume), run,
                          progress_bar=progress_bar, strategy=strategy, callbacks=callbacks)  # bad input fails here
        if graph.mappings:
            report = run_reporter(run.path, lambda text: print(text, file=sys.stderr)) if strategy.is_main else None
            trainer.events.add([ChannelMapping(graph, trainer.device, (payload or {}).get(PAYLOAD_KEY), report)])

        def open_folder() -> None:
            if not resume:
                make_folder(run.path, "the run directory")
                held.enter_context(run.lock("run"))
                check_run_dir(graph, run, overwrite=overwrite)  # again: another process may have written meanwhile
                run.remove_run_files()
            run.remove_temporary()
            if not resume:
                run.write_config(graph.document)
                run.write_json(ENV, environment(graph, argv or [], str(trainer.device), strategy.world))
                optional("render the graph", lambda: render(graph_dot(graph, details_of(trainer.job.bound)),
                                                             run / GRAPH_SVG, "svg"))
            if graph.train.tensorboard:
                trainer.events.add([held.enter_context(TensorBoardLogger(run.path))])

        _on_main(strategy, open_folder)
        if resume:
            trainer.resume(payload)  # refuses a changed config before anything in the folder changes
        _on_main(strategy, lambda: run.write_json(STATUS, {"state": "running", "pid": os.getpid(),
                                                           "processes": strategy.world}))
        with strategy.guard():
            state = trainer.fit()
        if strategy.is_main:
            ended = {"state": "stopped", "reason": trainer.stopped} if trainer.stopped else {"state": "trained"}
            run.write_json(STATUS, {**ended, "stage": state.stage, "epoch": state.epoch})
        return Fitted(graph, trainer, run, state, trainer.stopped)


def finish(fitted: Fitted, *, progress_bar: bool = True, echo: Callable[[str], object] = print) -> dict[str, Any]:
    """The end of a run, on one process: ``summary.json``, the Xross table with every path's cost, and the
    report. Returns the summary."""
    graph, trainer, run, state = fitted.graph, fitted.trainer, fitted.run, fitted.state
    with run.lock("run"):
        calibration = trainer.eval_executor.calibration
        calibrated = calibration.nodes(trainer.program.eval) if calibration is not None else set()
        summary = {"graph": graph.name, "run_dir": str(run),
                   "rows": accuracy_rows(graph, state.last, state.best, calibrated)}
        run.write_json(SUMMARY, summary)
        tables_after_training(trainer, progress=progress_bar, echo=echo, repeats=3)
        optional("write the report", lambda: echo(f"report: {write_report(run.path)}"))
    return summary


def train(graph: KTGraph, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          progress_bar: bool = True, argv: list[str] | None = None, echo: Callable[[str], object] = print,
          callbacks: Iterable[Callback] = (), strategy: Local | None = None) -> dict[str, Any] | None:
    """``ktgraph run``: :func:`fit`, then (on rank 0, unless a callback stopped the run) :func:`finish`.

    Returns the summary; None on other ranks and for a stopped run (its ``status.json`` says why).
    """
    strategy = strategy if strategy is not None else from_environment(graph.train.device)
    try:
        fitted = fit(graph, run_dir, resume=resume, overwrite=overwrite, progress_bar=progress_bar, argv=argv,
                     callbacks=callbacks, strategy=strategy)
    finally:
        strategy.close()  # the tables are one process's work: synchronised BatchNorm then computes locally
    if fitted.stopped:
        echo(f"stopped: {fitted.stopped}; continue with: ktgraph run --resume {run_dir}")
        return None
    return finish(fitted, progress_bar=progress_bar, echo=echo) if strategy.is_main else None


def run_one(graph: KTGraph, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
            progress_bar: bool = True) -> dict[str, Any] | None:
    """``ktgraph run`` of one graph: on this process, or as one rank of a torchrun job (rank 0 prints)."""
    strategy = from_environment(graph.train.device)
    run_dir = strategy.broadcast_object(str(run_dir))  # rank 0's folder (the time in its name) on every rank
    lines = [ProgressLines(run_dir, graph.networks, strategy.world)] if strategy.is_main else []
    return train(graph, run_dir, resume=resume, overwrite=overwrite, progress_bar=progress_bar, argv=sys.argv,
                 strategy=strategy, echo=print if strategy.is_main else lambda text: None, callbacks=lines)


def _on_main(strategy: Local, action: Callable[[], object]) -> None:
    """Run ``action`` on rank 0; when it fails there, every rank stops (rank 0 with its error)."""
    error: BaseException | None = None
    if strategy.is_main:
        try:
            action()
        except Exception as err:  # noqa: BLE001 -- re-raised below, after every rank knows
            error = err
    if strategy.any(error is not None):
        if error is not None:
            raise error
        raise TrainingError(f"rank {strategy.rank}: rank 0 refused the run (its message says why)")


def optional(what: str, action: Callable[[], object]) -> None:
    """Pictures and reports must never fail a run (or a search) whose training succeeded."""
    try:
        action()
    except Exception as err:  # noqa: BLE001 -- reported, and the run's results are already saved
        warnings.warn(f"could not {what}: {err}", stacklevel=2)
