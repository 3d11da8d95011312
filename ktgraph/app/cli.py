"""The ``ktgraph`` command line: run, search, validate, plan, render, map, eval, pick, report, compare and bench.

User mistakes end with a located message and exit status 2, a failed run with status 3,
never with a traceback. SIGTERM (how job schedulers stop a job) is handled like Ctrl-C: the
command stops where it is, leaves no temporary file, and ``run`` says how to resume (exit 143).

This module parses and dispatches only. Each subcommand names the function that runs it as
``module:function`` under :mod:`ktgraph.app`; that module, and torch with it, is imported once the
command runs, so ``--help`` and usage errors answer at once instead of after seconds of imports.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import warnings
from pathlib import Path

from ..errors import GraphError, TrainingError, write_error
from .cli_base import (EXIT_INTERRUPTED, EXIT_RUN_FAILED, EXIT_TERMINATED, EXIT_USER_ERROR, Terminated, show_warning,
                       sigterm_raises)

REGISTRY_NAMES = ("models", "datasets", "links", "gates", "aggregators", "adapters")  # ktgraph list's (commands.py)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="ktgraph", description="Knowledge-transfer graphs for online distillation.")
    sub = top.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train a graph file (or resume a run)")
    run.add_argument("targets", nargs="*", metavar="FILE | key=value",
                     help="the graph file, then overrides such as train.epochs=200 data.name=cifar100")
    run.add_argument("--out", help="run directory (default: runs/NAME-TIMESTAMP)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    run.add_argument("--overwrite", action="store_true",
                     help="train into a --out folder that holds other files, replacing the run files there")
    run.add_argument("--seeds", metavar="S,S,...",
                     help="a seed group: one run per seed under --out, then mean ± std over seeds "
                          "(same as train.seeds=[...])")
    run.add_argument("--jobs", type=int, metavar="K",
                     help="run K seeds of the group side by side, each in its own process with cores/K threads "
                          "unless train.threads is set (default 1: one after another, in this process)")
    run.set_defaults(func="cli_run:cmd_run")

    search = sub.add_parser("search", help="search a graph file's `search:` space with Optuna (ASHA pruning)")
    search.add_argument("targets", nargs="*", metavar="FILE | key=value",
                        help="the graph file with a `search:` section, then overrides (search.trials=8 too)")
    search.add_argument("--out", help="search folder (default: searches/STUDY)")
    search.add_argument("--storage", help="the study's storage: a journal file (default: OUT/study.journal) or a "
                                          "postgresql:// / mysql:// URL for workers on several machines")
    search.add_argument("--study", help="the study's name (default: the graph's name)")
    search.add_argument("--trials", type=int, help="trials in the whole study (default: search.trials)")
    search.add_argument("--timeout", type=float, metavar="S", help="start no trial after S seconds")
    search.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    search.add_argument("--report", metavar="DIR", help="rewrite a search folder's table, best.yaml and plots")
    search.set_defaults(func="commands:cmd_search")

    validate = sub.add_parser("validate", help="check graph files without training")
    validate.add_argument("targets", nargs="+", metavar="FILE | key=value")
    validate.add_argument("--no-build", action="store_true", help="skip building models (no shape check)")
    validate.set_defaults(func="commands:cmd_validate")

    plan = sub.add_parser("plan", help="print the compiled execution plan")
    plan.add_argument("targets", nargs="+", metavar="FILE | key=value")
    plan.add_argument("--eval", action="store_true", help="the evaluation plan instead of the training plan")
    plan.add_argument("--passes", action="store_true", help="the plan after lowering and after each pass")
    plan.add_argument("--costs", action="store_true",
                      help="then exact #params and MACs per image of every segment, adapter, path, aggregate "
                           "and ensemble (no data, no latency)")
    plan.set_defaults(func="commands:cmd_plan")

    models = sub.add_parser("models", help="list registered model names")
    models.add_argument("pattern", nargs="?", default="*")
    models.set_defaults(func="commands:cmd_models")

    listing = sub.add_parser("list", help="list what a graph file can name: models, datasets, links, gates, "
                                          "aggregators, adapters")
    listing.add_argument("registry", nargs="?", metavar="REGISTRY",
                         help=f"one of {', '.join(REGISTRY_NAMES)} (default: all)")
    listing.add_argument("pattern", nargs="?", default="*", help="a shell-style pattern, e.g. 'res*'")
    listing.set_defaults(func="commands:cmd_list")

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
    comparing.set_defaults(func="commands:cmd_compare")

    bench = sub.add_parser("bench", help="run a benchmark suite: each method file as a seed group, then compare")
    bench.add_argument("suite", metavar="SUITE", help="a suite file, e.g. graphs/suites/low-data.yaml")
    bench.add_argument("--out", help="folder for the groups and the comparison (default: runs/bench-NAME)")
    bench.add_argument("--jobs", type=int, default=1, metavar="K", help="seeds side by side (see run --jobs)")
    bench.add_argument("--seeds", metavar="S,S,...", help="instead of the suite's seeds")
    bench.set_defaults(func="commands:cmd_bench")

    report = sub.add_parser("report", help="(re)write a run directory's figures and report.md")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    report.add_argument("--no-plots", action="store_true", help="write report.md only, keep existing figures")
    report.set_defaults(func="commands:cmd_report")

    evaluate = sub.add_parser("eval", help="evaluate every path of a run: the Xross table with #params, MACs, "
                                           "latency")
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a run directory `ktgraph run` wrote")
    evaluate.add_argument("--split", choices=["test", "val"], default="test", help="the split to evaluate on")
    evaluate.add_argument("--batch-size", type=int, help="batch size for evaluation and latency "
                                                         "(default: the run's train.eval_batch_size)")
    evaluate.add_argument("--repeats", type=int, default=10,
                          help="timed batches per row for latency (median); 0 skips latency")
    evaluate.add_argument("--no-calibrate", action="store_true",
                          help="evaluate every path with its segments' own BatchNorm statistics (the raw numbers, "
                               "for comparison; the run's tables are not rewritten)")
    evaluate.set_defaults(func="commands:cmd_eval")

    pick = sub.add_parser("pick", help="export the most accurate path of a run under a budget")
    pick.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (its xross.csv is made when missing)")
    budget = pick.add_mutually_exclusive_group(required=True)
    budget.add_argument("--max-params", metavar="N", help="parameter budget (e.g. 150k, 1.5M)")
    budget.add_argument("--max-macs", metavar="N", help="MACs per image budget (e.g. 5M)")
    budget.add_argument("--max-latency", metavar="MS",
                        help="latency budget, ms per batch (as measured by `ktgraph eval`, at its batch size)")
    pick.add_argument("-o", "--output", metavar="OUT", help="output file (default: RUN_DIR/picked-NODE.pt2)")
    pick.set_defaults(func="commands:cmd_pick")

    map_ = sub.add_parser("map", help="match the channels of a cross's networks (its `mapping:`) without "
                                      "training: matching scores, assignment, heatmaps")
    map_.add_argument("targets", nargs="+", metavar="FILE | key=value")
    map_.add_argument("--cut", metavar="PART", help="only this cut (a part name)")
    map_.add_argument("--out", metavar="DIR", help="write mapping.json and the score heatmaps (SVG) here")
    map_.set_defaults(func="mapping:cmd_map")

    render_ = sub.add_parser("render", help="draw a graph file (or its plan) as SVG or DOT")
    render_.add_argument("targets", nargs="+", metavar="FILE | key=value")
    render_.add_argument("-o", "--out", metavar="OUT",
                         help="output file (default: NAME.svg, or NAME.plan.svg with --plan, in this directory)")
    render_.add_argument("--plan", action="store_true", help="draw the compiled plan instead of the graph")
    render_.add_argument("--eval", action="store_true", help="with --plan: the evaluation plan")
    render_.add_argument("--matrix", action="store_true",
                         help="draw the link matrix instead (rows receive, columns send, each cell its gate)")
    render_.add_argument("--format", choices=["svg", "dot", "png"],
                         help="picture format (default: from the suffix of -o, else svg)")
    render_.set_defaults(func="commands:cmd_render")

    for command in (run, bench, evaluate, pick):
        command.add_argument("--no-progress", action="store_true", help="no progress bar")
    for command in (run, bench, validate, plan, evaluate, pick, map_, render_):
        command.add_argument("--allow-imports", action="store_true",
                             help="allow the graph's `imports:` to run Python modules")
    return top


def main(argv: list[str] | None = None) -> int:
    if hasattr(signal, "SIGPIPE"):  # `ktgraph plan FILE | head` ends quietly, like other Unix tools
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    top = parser()
    args, extra = top.parse_known_args(argv)
    unknown = [e for e in extra if "=" not in e or e.startswith("-") or not hasattr(args, "targets")]
    if unknown:
        top.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.targets = list(getattr(args, "targets", [])) + extra
    try:
        with sigterm_raises(), warnings.catch_warnings():
            warnings.showwarning = show_warning
            module, name = args.func.split(":")
            return getattr(importlib.import_module(f".{module}", __package__), name)(args)
    except GraphError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TrainingError as err:
        print(f"run stopped: {err}", file=sys.stderr)
        return EXIT_RUN_FAILED
    except OSError as err:  # outside the run directory's own writers (a picture, an export): said plainly
        print(f"run stopped: {write_error(err, Path(err.filename or '.'))}", file=sys.stderr)
        return EXIT_RUN_FAILED
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("\nstopped by SIGTERM", file=sys.stderr)
        return EXIT_TERMINATED


if __name__ == "__main__":
    sys.exit(main())
