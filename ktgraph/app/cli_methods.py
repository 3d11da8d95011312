"""``ktgraph compare``, ``ktgraph bench`` and ``run --seeds``: the commands that put methods side by side.

Kept apart from :mod:`ktgraph.app.cli` so that the command line of single runs stays one small
module; :func:`add_method_commands` adds both subcommands to its parser (and returns ``bench``'s, which takes
the options every training command shares).
"""
from __future__ import annotations

import argparse
import sys

from .bench import run_suite
from .comparison import compare
from .seeds import parse_seeds


def cmd_compare(args: argparse.Namespace) -> int:
    nodes = [n.strip() for n in (args.nodes or "").split(",") if n.strip()] or None
    written = compare(args.folders, metric=args.metric, nodes=nodes, baseline=args.baseline, out=args.out,
                      allow_mismatch=args.allow_mismatch)
    print("wrote " + ", ".join(map(str, written.values())), file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    run_suite(args.suite, out=args.out, jobs=args.jobs, seeds=parse_seeds(args.seeds) if args.seeds else None,
              progress_bar=not args.no_progress, allow_imports=args.allow_imports)
    return 0


def add_seed_options(run: argparse.ArgumentParser) -> None:
    """``run --seeds`` and ``--jobs``: a seed group, the seeds side by side."""
    run.add_argument("--seeds", metavar="S,S,...",
                     help="a seed group: one run per seed under --out, then mean ± std over seeds "
                          "(same as train.seeds=[...])")
    run.add_argument("--jobs", type=int, metavar="K",
                     help="run K seeds of the group side by side, each in its own process with cores/K threads "
                          "unless train.threads is set (default 1: one after another, in this process)")


def add_method_commands(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    comparing = sub.add_parser("compare", help="compare methods: seed groups or runs side by side, mean ± std, "
                                               "paired gain over a baseline")
    comparing.add_argument("folders", nargs="+", metavar="RUN_OR_GROUP")
    comparing.add_argument("--metric", choices=["top1_last", "top1_best"], default="top1_last",
                           help="test top-1 at the last epoch (default) or at each node's best epoch")
    comparing.add_argument("--nodes", metavar="N,N,...",
                           help="the columns (default: every network, avg(networks), every ensemble)")
    comparing.add_argument("--baseline", metavar="METHOD", help="the method whose paired gain the others report "
                                                                "(its graph name, e.g. independent)")
    comparing.add_argument("--out", help="folder for comparison.md, .csv and .svg (default: runs/compare-TIMESTAMP)")
    comparing.add_argument("--allow-mismatch", action="store_true",
                           help="compare runs whose data, networks or training recipe differ (a warning names "
                                "the field)")
    comparing.set_defaults(func=cmd_compare)

    bench = sub.add_parser("bench", help="run a benchmark suite: each method file as a seed group, then compare")
    bench.add_argument("suite", metavar="SUITE", help="a suite file, e.g. graphs/suites/low-data.yaml")
    bench.add_argument("--out", help="folder for the groups and the comparison (default: runs/bench-NAME)")
    bench.add_argument("--jobs", type=int, default=1, metavar="K", help="seeds side by side (see run --jobs)")
    bench.add_argument("--seeds", metavar="S,S,...", help="instead of the suite's seeds")
    bench.set_defaults(func=cmd_bench)
    return bench
