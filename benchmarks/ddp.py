"""What several processes cost: ktgraph's distributed strategy against one plain process, side by side.

``ratio`` (the default): the same graph trained by the ordinary single-process trainer (``Local``)
and by the distributed strategy joined as a one-process group (``Distributed``, gloo or NCCL), so
that every step pays the gradient bucket, its all-reduce and the reductions of evaluation counts
and losses, with nothing to gain from them. Epochs alternate between the two, the order flipped
every round; the table gives each one's median training time per epoch (evaluation excluded) and
the median paired ratio. Target: at most 1.05.

``scaling``: the graph trained under torchrun with 1, 2, ... N processes on the same global batch;
the efficiency at N processes is (time per epoch at 1) / (N x time per epoch at N). Meaningful where
each process has a device of its own (``--device cuda`` on a machine with N GPUs).

    python benchmarks/ddp.py --graph graphs/xml.yaml --epochs 4
    python benchmarks/ddp.py --mode scaling --processes 2 --device cuda --graph graphs/multi_xross.yaml
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ktgraph.app.run import fit
from ktgraph.graph import load_graph
from ktgraph.runtime.events import Callback, EpochEnd, EpochStart
from ktgraph.runtime.strategy import Distributed, Local, local_device

ROOT = Path(__file__).resolve().parent.parent


class EpochTimer(Callback):
    """Wall-clock seconds of each epoch's training (from epoch start to epoch end: no evaluation)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._started = 0.0

    def on_epoch_start(self, event: EpochStart) -> None:
        self._sync()
        self._started = time.perf_counter()

    def on_epoch_end(self, event: EpochEnd) -> None:
        self._sync()
        self.seconds.append(time.perf_counter() - self._started)

    @staticmethod
    def _sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()


def overrides(args: argparse.Namespace, epochs: int) -> list[str]:
    threads = [f"train.threads={args.threads}"] if args.threads else []  # the same for both strategies
    return [f"train.epochs={epochs}", f"train.device={args.device}", f"train.batch_size={args.batch_size}",
            f"data.limit_train={args.limit_train}", "train.calibrate=false", "data.limit_test=64",
            *threads, *args.override]


def timed_epochs(args: argparse.Namespace, strategy: Local, out: Path) -> list[float]:
    timer = EpochTimer()
    graph = load_graph(args.graph, overrides(args, args.epochs))
    fit(graph, out, overwrite=True, progress_bar=False, callbacks=[timer], strategy=strategy)
    return timer.seconds[1:]  # the first epoch warms up


def ratio(args: argparse.Namespace) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = local_device(args.device)
    group = Distributed(device)
    times: dict[str, list[float]] = {"local": [], "distributed": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            order = [("local", Local(device)), ("distributed", group)]
            for name, strategy in order if round_ % 2 == 0 else reversed(order):
                times[name] += timed_epochs(args, strategy, Path(tmp) / name)
    group.close()
    local, distributed = statistics.median(times["local"]), statistics.median(times["distributed"])
    paired = statistics.median(d / lo for d, lo in zip(times["distributed"], times["local"]))
    print(f"{args.graph}, device {device}, batch {args.batch_size}, {len(times['local'])} timed epochs each, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| strategy | median s / epoch (training) |\n|---|---:|")
    print(f"| one process (Local) | {local:.3f} |\n| one-process group (Distributed) | {distributed:.3f} |")
    print(f"paired ratio distributed / local: {paired:.3f} (target <= 1.05)")


def worker(args: argparse.Namespace) -> None:
    """One rank of the scaling mode: train, then rank 0 prints its epoch times as JSON."""
    from ktgraph.runtime.strategy import from_environment

    strategy = from_environment(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        seconds = timed_epochs(args, strategy, Path(tmp) / "run")
    if strategy.is_main:
        print("EPOCHS " + json.dumps(seconds))
    strategy.close()


def scaling(args: argparse.Namespace) -> None:
    base = None
    print("| processes | median s / epoch | efficiency |\n|---:|---:|---:|")
    for n in range(1, args.processes + 1):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                   __file__, "--mode", "worker", "--graph", args.graph, "--device", args.device, "--epochs",
                   str(args.epochs), "--batch-size", str(args.batch_size), "--limit-train", str(args.limit_train),
                   *[f"--override={o}" for o in args.override]]
        done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
        seconds = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("EPOCHS "))[7:])
        median = statistics.median(seconds)
        base = base or median
        print(f"| {n} | {median:.3f} | {base / (n * median):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["ratio", "scaling", "worker"], default="ratio")
    parser.add_argument("--graph", default=str(ROOT / "graphs" / "xml.yaml"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit-train", type=int, default=640)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--override", action="append", default=[], help="a graph override, key=value")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    {"ratio": ratio, "scaling": scaling, "worker": worker}[args.mode](args)


if __name__ == "__main__":
    main()
