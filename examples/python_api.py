"""ktgraph from Python: load a graph, compile it, train it, evaluate every path.

Everything the CLI does is a few calls. This trains graphs/xml.yaml briefly on the bundled
digits data, prints the compiled plan, then evaluates the trained modules again from Python.

Run: python examples/python_api.py [RUN_DIR]
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from ktgraph.graph import load_graph
from ktgraph.compile.format import format_plan
from ktgraph.runtime import Executor, Trainer, evaluate, make_loader, prepare
from ktgraph.runtime.calibrate import calibrate_job

GRAPH = Path(__file__).resolve().parents[1] / "graphs" / "xml.yaml"
QUICK = ["train.epochs=2", "data.image_size=16", "data.limit_train=512", "train.batch_size=32"]


def main(run_dir: Path) -> None:
    # 1. The language: read, override and validate; every reference resolved.
    graph = load_graph(GRAPH, QUICK)
    print(f"{graph.name}: networks {list(graph.networks)}, paths {list(graph.paths)}")

    # 2. The job: data loaded, modules built and cut (shapes checked by a dry run), the program compiled once.
    job = prepare(graph)
    print(format_plan(job.program.stages[0], GRAPH.name))

    # 3. Training runs the program's train plan of each stage.
    state = Trainer(job, run_dir, progress_bar=False).fit()
    print("best epoch per node:", {node: entry["epoch"] for node, entry in state.best.items()})

    # 4. Evaluation of every network, cross path and aggregate, from one shared forward. A cross path's
    #    down part is fed features its own BatchNorm statistics do not describe: its numbers are those of
    #    the run's tables only with the statistics calibrated (train.calibrate), as here; they are marked.
    assert job.data is not None
    loader = make_loader(job.data.test, batch_size=256)
    calibration = calibrate_job(job)
    calibrated = calibration.nodes(job.program.eval)
    results = evaluate(Executor(job.program.eval, job.modules, calibration), loader, job.device,
                       job.data.num_classes)
    for node, accuracy in results.items():
        print(f"{node:>10}: top-1 {accuracy['top1']:.2f}%{' (BatchNorm calibrated)' if node in calibrated else ''}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
