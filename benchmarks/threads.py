"""Two ktgraph runs at once, with and without dividing the cores among them: per-epoch seconds.

Every torch process takes as many intra-op threads as the machine has cores. Two such processes
(two seeds, two users on a lab node) ask for twice the cores; their OpenMP threads spin waiting
for each other and every epoch gets slower. The rule seed groups apply (``ktgraph run --seeds
... --jobs K``) gives each of K processes ``cores // K`` threads (``train.threads``).

This starts ``ktgraph run GRAPH`` twice at the same moment, first with torch's default thread
count (``OMP_NUM_THREADS`` removed from the environment), then with ``train.threads=cores//2``,
and prints each run's median per-epoch training seconds (from its ``metrics.jsonl``) and the wall
time of the pair. A benchmark, not a test: the numbers depend on what else the machine runs.

    python benchmarks/threads.py                      # graphs/dml.yaml, 3 epochs of 512 images
    python benchmarks/threads.py --epochs 2 --limit-train 256
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run_pair(graph: str, overrides: list[str], folder: Path, threads: int | None) -> tuple[list[float], float]:
    """Start two runs at once; their median epoch seconds, and the wall time until both end."""
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    extra = [f"train.threads={threads}"] if threads else []
    outs = [folder / f"run{i}" for i in (1, 2)]
    started = time.perf_counter()
    processes = [subprocess.Popen([sys.executable, "-m", "ktgraph", "run", graph, *overrides, *extra, "--out", str(out),
                                   "--no-progress"], env=environment, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE) for out in outs]
    for process in processes:
        _, err = process.communicate()
        if process.returncode:
            sys.exit(f"a run failed (exit {process.returncode}):\n{err.decode()[-2000:]}")
    wall = time.perf_counter() - started
    medians = []
    for out in outs:
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        medians.append(statistics.median(line["seconds"] for line in lines))
    return medians, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graph", default=str(ROOT / "graphs/dml.yaml"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit-train", type=int, default=512)
    args = parser.parse_args()
    overrides = [f"train.epochs={args.epochs}", f"data.limit_train={args.limit_train}", "train.calibrate=false"]
    divided = max(1, cores() // 2)
    print(f"{cores()} cores; two concurrent runs of {Path(args.graph).name}, {args.epochs} epochs of "
          f"{args.limit_train} images each")
    print(f"{'threads per run':<28} {'epoch s (run 1)':>16} {'epoch s (run 2)':>16} {'wall s (pair)':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, threads in (("torch default (all cores)", None), (f"divided: cores//2 = {divided}", divided)):
            (Path(tmp) / label[:7]).mkdir()
            medians, wall = run_pair(args.graph, overrides, Path(tmp) / label[:7], threads)
            print(f"{label:<28} {medians[0]:>16.2f} {medians[1]:>16.2f} {wall:>14.1f}")


if __name__ == "__main__":
    main()
