"""``ktgraph eval``: the Xross table of a run, every path with its accuracy and its cost.

The run's job (data, modules with the last checkpoint's weights, program) is loaded once; its
eval plan gives every node's accuracy from one shared forward, and ``runtime.measure`` every
node's exact #params, MACs and latency. Paths whose segments read another network's features are
evaluated with calibrated BatchNorm statistics (``runtime/calibrate.py``) unless asked not to. The
tables follow the XML study's: up-half x down-half matrices for two-part crosses, one line per path with a
column per part for more parts, then the ensembles.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import GraphError
from ..runtime import Executor, RunDir, evaluate, make_loader
from ..runtime.calibrate import calibrate_job
from ..runtime.measure import Row, measure_rows, row_nodes
from ..runtime.statistics import Calibration
from ..runtime.rundir import XROSS_MD
from ..runtime.trainer import Trainer
from .load import LoadedRun, load_run, open_run
from .tables import format_tables


def best_epochs(run_dir: str | Path | RunDir, split: str = "test", upto: tuple[int, int] | None = None,
                calibrated: set[str] | None = None) -> dict[str, tuple[int, float]]:
    """node -> (epoch, ``split`` top-1 at that epoch), the epoch chosen on val when logged, else test.

    Epochs are the lines of ``metrics.jsonl`` in training order, counted from 1 over all stages
    (for a one-stage run: the epoch number); ties keep the earliest epoch, as the trainer does.
    ``upto`` = (stage index, epochs done in it) of the checkpoint drops lines written after it.
    With ``calibrated`` (the nodes a table shows calibrated), a node's best is chosen only among
    the epochs evaluated the same way, so a table never mixes calibrated and raw numbers.
    """
    lines = (run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)).read_metrics()
    offset = 1 if any(d.get("epoch") == 0 for d in lines) else 0  # older runs logged 0-based epochs
    if upto is not None:
        lines = [d for d in lines if (d.get("stage_index", 0), d.get("epoch", 0) + offset) <= tuple(upto)]
    best: dict[str, tuple[float, int, float]] = {}
    for epoch, line in enumerate(lines, start=1):
        select = "val" if "val" in line else "test"
        report = split if split in line else "test"
        for node, accuracy in line.get(select, {}).items():
            if calibrated is not None and (node in calibrated) != (node in line.get("calibrated", ())):
                continue
            if node not in best or accuracy["top1"] > best[node][0]:
                best[node] = (accuracy["top1"], epoch, line[report][node]["top1"])
    return {node: (epoch, top1) for node, (_, epoch, top1) in best.items()}


def xross_table(run_dir: str | Path, *, split: str = "test", progress: bool = True,
                batch_size: int | None = None, warmup: int = 2, repeats: int = 10,
                max_seconds: float | None = 2.0, device: str | torch.device | None = None,
                allow_imports: bool = False, run: LoadedRun | None = None, calibrate: bool = True,
                evaluated: tuple[dict[str, dict[str, float]], Calibration | None] | None = None) -> list[Row]:
    """Evaluate every path, aggregate and ensemble of a run's last checkpoint, with its costs.

    ``split`` is ``test`` or ``val``; ``batch_size`` (default ``train.eval_batch_size``) is
    used for evaluation and latency; ``repeats=0`` skips latency; ``run`` reuses a loaded run;
    ``calibrate=False`` evaluates every path with its segments' own statistics (the raw numbers);
    ``evaluated`` = (the split's accuracies of the last epoch, the calibration they were evaluated
    with) reuses what the caller has, when it was evaluated as asked.
    """
    if split not in ("test", "val"):
        raise GraphError(f"unknown split `{split}`", expected="test or val", file="command line")
    no_val = GraphError("the run has no validation split", where=("data", "val_split"), file=str(run_dir),
                        suggestion="evaluate on --split test, or train with data.val_split > 0")
    if run is None and split == "val" and open_run(run_dir, allow_imports=allow_imports)[1].data.val_split == 0:
        raise no_val  # said before the slower loading of data and model
    run = run or load_run(run_dir, device=device, allow_imports=allow_imports)
    job = run.job
    graph, plan = job.graph, job.program.eval
    assert job.data is not None
    dataset = job.data.test if split == "test" else job.data.val
    if dataset is None:
        raise no_val
    batch_size = batch_size or graph.train.eval_batch_size
    nodes = row_nodes(graph, plan)
    accuracy, calibration = evaluated or (None, None)
    if accuracy is None or not set(nodes) <= set(accuracy) or calibrate != (calibration is not None):
        calibration = calibrate_job(job) if calibrate else None
        batches = tqdm(make_loader(dataset, batch_size, num_workers=graph.data.num_workers),
                       desc=f"evaluating on {split}", leave=False, disable=not progress, dynamic_ncols=True)
        accuracy = evaluate(Executor(plan.restrict(nodes), job.modules, calibration), batches, job.device,
                            job.data.num_classes)
    calibrated = calibration.nodes(plan) if calibration is not None else set()
    def bar(items: list[str]) -> Any:
        return tqdm(items, desc="measuring costs", leave=False, disable=not progress, dynamic_ncols=True)

    return measure_rows(graph, job.modules, plan, job.input_shape, nodes, accuracy,
                        best_epochs(run.run_dir, split, run.position, calibrated), batch_size=batch_size,
                        repeats=repeats, warmup=warmup, max_seconds=max_seconds, progress=bar, calibrated=calibrated)


def write_tables(rows: list[Row], run_dir: str | Path | RunDir) -> dict[str, Path]:
    """Write ``xross.csv`` and ``xross.md`` into the run directory; return their paths."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    csv_path = run.write_xross(rows)
    md_path = run.write_text(XROSS_MD, format_tables(rows, markdown=True, title=f"Xross evaluation of {run.name}"))
    return {"csv": csv_path, "markdown": md_path}


def tables_after_training(trainer: Trainer, *, progress: bool = True, echo: Any = print, **options: Any) -> list[Row]:
    """The end of a run: the Xross table of the trained modules in memory (the last checkpoint's weights).

    Writes ``xross.csv`` and ``xross.md``, echoes the Xross tables and one compact table of the
    other nodes, and returns the rows; ``options`` go to :func:`xross_table`.
    """
    run = LoadedRun(trainer.run_dir, trainer.job)
    # The last epoch was just evaluated on test: its accuracies are the table's "last".
    last = {node: entry["test"] for node, entry in trainer.state.last.items()}
    rows = xross_table(trainer.run_dir.path, progress=progress, run=run,
                       evaluated=(last, trainer.eval_executor.calibration), **options)
    write_tables(rows, trainer.run_dir)
    echo(format_tables(rows, every_row=False))
    return rows
