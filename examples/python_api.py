"""ktgraph from Python: load a graph, compile it, train it, evaluate every path.

Everything the CLI does is a few calls. This trains graphs/xml.yaml briefly on the
bundled digits data, prints the compiled plan, then evaluates the trained model
again from Python.

Run: python examples/python_api.py [RUN_DIR]
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from ktgraph.compile import compile_plan
from ktgraph.compile.format import format_plan
from ktgraph.runtime import Executor, Trainer, evaluate, load_graph, make_loader

GRAPH = Path(__file__).resolve().parents[1] / "graphs" / "xml.yaml"
QUICK = ["train.epochs=2", "data.image_size=16", "data.limit_train=512", "train.batch_size=32"]


def main(run_dir: Path) -> None:
    # 1. The language: read, override and validate; every reference resolved.
    graph = load_graph(GRAPH, QUICK)
    print(f"{graph.spec.name}: networks {list(graph.networks)}, paths {list(graph.paths)}")

    # 2. Training: the trainer builds data and modules (shapes are checked by a dry run).
    trainer = Trainer(graph, run_dir, progress_bar=False)
    model = trainer.model

    # 3. The compiler: the explicit plan a training step executes.
    plan = compile_plan(graph, adapters=model.adapter_keys, regressors=model.regressor_keys)
    print(format_plan(plan, GRAPH.name))

    state = trainer.fit()
    print("best epoch per node:", {node: entry["epoch"] for node, entry in state.best.items()})

    # 4. Evaluation of every network, cross path and aggregate, from one shared forward.
    eval_plan = compile_plan(graph, mode="eval", adapters=model.adapter_keys)
    loader = make_loader(trainer.data.test, batch_size=256)
    results = evaluate(Executor(eval_plan, model), loader, trainer.device, trainer.data.num_classes)
    for node, accuracy in results.items():
        print(f"{node:>10}: top-1 {accuracy['top1']:.2f}%")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
