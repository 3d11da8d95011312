"""A run directory brought back: its graph, its job and the last checkpoint's weights."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import GraphError, TrainingError
from ..graph import KTGraph, load_graph
from ..runtime import Job, RunDir, prepare, resolve_device
from ..runtime.checkpoint import upgrade_state
from ..runtime.groupdir import SEED_PREFIX, GroupDir


@dataclass
class LoadedRun:
    """A run directory brought back: its job with the last checkpoint's weights, and where the run is."""

    run_dir: RunDir
    job: Job
    position: tuple[int, int] | None = None  # the checkpoint's (stage index, epochs done in that stage)


def open_run(run_dir: str | Path, *, allow_imports: bool = False) -> tuple[RunDir, KTGraph]:
    """A run directory and its graph, or a located error saying why it is not one."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise GraphError(f"run directory {run} does not exist", file=str(run),
                         suggestion="give the folder `ktgraph run --out` wrote")
    if not run.is_run():
        seeds = sorted(p.name for p in run.path.glob(f"{SEED_PREFIX}*")) if GroupDir(run.path).is_group() else []
        raise GraphError(f"{run} is not a run directory (no config.yaml)", file=str(run),
                         suggestion=f"it is a seed group: give one seed's run, e.g. {run.path / seeds[0]}"
                         if seeds else "")
    return run, load_graph(run / "config.yaml", allow_imports=allow_imports)


def load_run(run_dir: str | Path, *, device: str | torch.device | None = None,
             allow_imports: bool = False) -> LoadedRun:
    """Rebuild a run's data, modules and program from its ``config.yaml`` and last checkpoint."""
    run, graph = open_run(run_dir, allow_imports=allow_imports)
    if not run.checkpoint.is_file():
        raise TrainingError(f"no checkpoint at {run.checkpoint}; the run has not finished an epoch yet")
    payload = run.load_checkpoint(map_location="cpu")  # checked before the slower building of the job
    job = prepare(graph, device="cpu", initial_weights=False)  # the checkpoint holds every weight
    try:
        job.modules.load_state_dict(upgrade_state(payload["model"], job.bound.legacy_keys()))
    except (RuntimeError, KeyError) as err:
        raise TrainingError(f"{run.checkpoint} does not match the graph in {run / 'config.yaml'}: "
                            f"{str(err).splitlines()[0]}") from None
    target = torch.device(device) if device is not None else resolve_device(graph.train.device)
    job.modules.to(target).eval()
    job.device = target
    stage, epoch = payload.get("stage"), payload.get("epoch")
    position = (stage, epoch) if isinstance(stage, int) and isinstance(epoch, int) else None
    return LoadedRun(run, job, position)
