"""A run directory: resolved config, environment, metrics, checkpoints and the final summary."""
from __future__ import annotations

import json
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ..graph import KTGraph, build_graph
from ..spec import load_spec
from ..spec.imports import import_user_modules
from .summary import accuracy_rows, accuracy_table
from .trainer import Trainer

CONFIG = "config.yaml"


def load_graph(path: str | Path, overrides: list[str] | tuple[str, ...] = (), *,
               allow_imports: bool = False) -> KTGraph:
    """Read, validate and resolve a graph file (the first step of everything)."""
    loaded = load_spec(path, overrides)
    import_user_modules(loaded, allow_imports)
    return build_graph(loaded)


def resolved_config(graph: KTGraph) -> str:
    """Every field with its value, so the run can be repeated or resumed from this file alone.

    Relative ``imports:`` files are made absolute: the config lives in the run directory.
    """
    spec = graph.spec
    if graph.source is not None and spec.imports:
        base = Path(graph.source.file).resolve().parent
        spec = spec.model_copy(update={"imports": [str((base / name).resolve()) if name.endswith(".py") else name
                                                   for name in spec.imports]})
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def default_run_dir(graph: KTGraph, graph_file: str | Path) -> Path:
    name = graph.spec.name or Path(graph_file).stem
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def environment(graph: KTGraph, argv: list[str], device: str) -> dict[str, Any]:
    import timm
    import torch
    import torchvision

    from .. import __version__

    return {"seed": graph.spec.train.seed, "device": device, "command": argv, "python": sys.version.split()[0],
            "platform": platform.platform(), "ktgraph": __version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__,
            "cuda": torch.version.cuda, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def train(graph: KTGraph, run_dir: str | Path, *, resume: bool = False, progress_bar: bool = True,
          argv: list[str] | None = None, echo=print) -> dict[str, Any]:
    """Train a graph into ``run_dir`` (or continue it) and return the summary.

    Around the training itself: the resolved config, environment and rendered graph
    first; the accuracy table, the Xross table (every path with its cost) and
    ``report.md`` with its plots at the end.
    """
    from ..report import write_report
    from ..report.tensorboard import TensorBoardLogger
    from ..viz import graph_dot, model_details, render
    from .xross import tables_after_training

    run_dir = Path(run_dir)
    trainer = Trainer(graph, run_dir, progress_bar=progress_bar)  # fails on bad input before any file
    logger = TensorBoardLogger(run_dir) if graph.spec.train.tensorboard else None
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        trainer.resume()
    else:
        (run_dir / CONFIG).write_text(resolved_config(graph))
        env = environment(graph, argv or [], str(trainer.device))
        (run_dir / "env.json").write_text(json.dumps(env, indent=2))
        _optional("render the graph", lambda: render(graph_dot(graph, **model_details(trainer.model)),
                                                     run_dir / "graph.svg", "svg"))
    if logger is not None:
        trainer.on_epoch.append(logger.log)
    try:
        state = trainer.fit()
    finally:
        if logger is not None:
            logger.close()
    summary = {"graph": graph.spec.name, "run_dir": str(run_dir),
               "rows": accuracy_rows(graph, state.last, state.best)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    echo(accuracy_table(graph, state.last, state.best))
    tables_after_training(trainer, progress=progress_bar, echo=echo, repeats=3)
    _optional("write the report", lambda: echo(f"report: {write_report(run_dir)}"))
    return summary


def _optional(what: str, action: Callable[[], object]) -> None:
    """Pictures and reports must never fail a run whose training succeeded."""
    try:
        action()
    except Exception as err:  # noqa: BLE001 -- reported, and the run's results are already saved
        warnings.warn(f"could not {what}: {err}", stacklevel=2)
