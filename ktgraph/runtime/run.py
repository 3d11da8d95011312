"""A run directory: resolved config, environment, metrics, checkpoints and the final summary."""
from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ..graph import KTGraph, build_graph
from ..spec import load_spec
from ..spec.imports import import_user_modules
from .report import accuracy_rows, accuracy_table
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


def environment(graph: KTGraph, argv: list[str]) -> dict[str, Any]:
    import timm
    import torch
    import torchvision

    from .. import __version__

    return {"seed": graph.spec.train.seed, "command": argv, "python": sys.version.split()[0],
            "platform": platform.platform(), "ktgraph": __version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__,
            "cuda": torch.version.cuda, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def train(graph: KTGraph, run_dir: str | Path, *, resume: bool = False, progress_bar: bool = True,
          argv: list[str] | None = None, echo=print) -> dict[str, Any]:
    """Train a graph into ``run_dir`` (or continue it) and return the summary."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(graph, run_dir, progress_bar=progress_bar)
    if resume:
        trainer.resume()
    else:
        (run_dir / CONFIG).write_text(resolved_config(graph))
        (run_dir / "env.json").write_text(json.dumps(environment(graph, argv or []), indent=2))
    state = trainer.fit()
    summary = {"graph": graph.spec.name, "run_dir": str(run_dir),
               "rows": accuracy_rows(graph, state.last, state.best)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    echo(accuracy_table(graph, state.last, state.best))
    return summary
