"""XML with and without channel mapping, from two networks trained apart (issue 18's measurement).

Per seed: one run trains net1 and net2 apart (`graphs/xml_mapped.yaml`'s stage `apart` only); two
runs then start from its checkpoint (`weights: {run: DIR, network: NAME}`) and train XML's stage for
the same epochs, one with `mapping: {method: hungarian}` and one with `method: none` (scores still
computed, nothing permuted). Printed per seed and as means: the three matching scores, linear CKA,
and the calibrated test top-1 of the networks and the cross paths, with the stitching penalty
(receiving network's accuracy minus the cross path's): right after mapping (before any XML step),
after the first XML epoch and after the last.

    PYTHONPATH=. python benchmarks/xml_mapped.py --seeds 0 1 2 --out runs/xml_mapped_bench
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from ktgraph.app.run import train
from ktgraph.graph import load_graph
from ktgraph.runtime import Executor, evaluate, make_loader, prepare
from ktgraph.runtime.calibrate import calibrate_job
from ktgraph.runtime.mapping import map_channels

GRAPH = Path(__file__).resolve().parents[1] / "graphs" / "xml_mapped.yaml"
XML_LINKS = ["ce:net1", "ce:net2", "kl:net2->net1", "kl:net1->net2", "up_kl:net1-net2", "up_kl:net2-net1",
             "up_ce:net1-net2", "up_ce:net2-net1", "down_kl:net1-net2", "down_kl:net2-net1", "down_ce:net1-net2",
             "down_ce:net2-net1"]
NODES = ("net1", "net2", "net1-net2", "net2-net1")
RECEIVER = {"net1-net2": "net2", "net2-net1": "net1"}


def run(overrides: list[str], out: Path) -> None:
    train(load_graph(GRAPH, overrides), out, progress_bar=False, overwrite=True, echo=lambda text: None)


def accuracies(line: dict) -> dict[str, float]:
    top1 = {node: line["test"][node]["top1"] for node in NODES}
    return {**top1, **{f"penalty {p}": top1[r] - top1[p] for p, r in RECEIVER.items()}}


def at_start(overrides: list[str]) -> dict[str, float]:
    """Test top-1 right after mapping, before any XML step (calibrated statistics, as the runs report)."""
    graph = load_graph(GRAPH, overrides)
    job = prepare(graph)
    map_channels(graph, job.modules, graph.mappings[0], job.data, job.device)
    executor = Executor(job.program.eval, job.modules)
    executor.calibration = calibrate_job(job)
    results = evaluate(executor, make_loader(job.data.test, graph.train.eval_batch_size), job.device,
                       job.data.num_classes)
    return accuracies({"test": results})


def one_seed(seed: int, epochs: tuple[int, int], common: list[str], out: Path) -> dict[str, dict]:
    apart = out / f"apart-{seed}"
    run([*common, f"train.seed={seed}",
         f"stages=[{{name: apart, epochs: {epochs[0]}, links: [alone:net1, alone:net2]}}]"], apart)
    results = {}
    for method in ("hungarian", "none"):
        folder = out / f"xml-{method}-{seed}"
        overrides = [*common, f"train.seed={seed}", f"crosses.0.mapping.method={method}",
                     f"stages=[{{name: xml, epochs: {epochs[1]}, links: {json.dumps(XML_LINKS)}}}]",
                     *(f"networks.{n}.weights={{run: {apart}, network: {n}}}" for n in ("net1", "net2"))]
        start = at_start(overrides)
        run(overrides, folder)
        lines = [json.loads(t) for t in (folder / "metrics.jsonl").read_text().splitlines()]
        mapped = json.loads((folder / "mapping.json").read_text())[0]
        results[method] = {"scores": mapped["scores"], "cka": mapped["cka"], "start": start,
                           "first": accuracies(lines[0]), "last": accuracies(lines[-1])}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, nargs=2, default=(4, 4), metavar=("APART", "XML"))
    parser.add_argument("--out", type=Path, default=Path("runs/xml_mapped_bench"))
    parser.add_argument("overrides", nargs="*", help="graph overrides for every run, e.g. data.limit_train=600")
    args = parser.parse_args()
    started = time.perf_counter()
    every = {seed: one_seed(seed, tuple(args.epochs), args.overrides, args.out) for seed in args.seeds}
    for seed, result in every.items():
        print(f"seed {seed}: " + json.dumps(result))
    for method in ("hungarian", "none"):
        for when in ("start", "first", "last"):
            means = {k: statistics.mean(every[s][method][when][k] for s in every) for k in every[args.seeds[0]][method][when]}
            print(f"mean {method} {when}: " + ", ".join(f"{k} {v:.2f}" for k, v in means.items()))
        scores = {k: statistics.mean(every[s][method]["scores"][k] for s in every) for k in ("identity", "random", "mapped")}
        print(f"mean {method} scores: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    print(f"wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
