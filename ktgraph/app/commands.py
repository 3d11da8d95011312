"""What each ``ktgraph`` command does, once :mod:`ktgraph.app.cli` has parsed its arguments.

Apart from the parser so that ``--help`` and usage errors answer without importing torch: the CLI
imports this module (and torch with it) only when a command runs.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from ..compile import Plan
from ..compile.format import format_plan, format_training
from ..compile.pipeline import Trace
from ..data import DATASETS, find_data
from ..errors import GraphError
from ..graph import KTGraph, load_graph
from ..kinds import ADAPTERS, AGGREGATORS, GATES, LINKS
from ..registry import Registry
from ..runtime import Job, RunDir, prepare
from ..runtime.measure import call_costs, node_costs, row_nodes
from ..runtime.rundir import XROSS_CSV
from ..zoo import MODELS
from .bench import run_suite
from .cli_base import EXIT_USER_ERROR
from .comparison import compare
from .pick import parse_amount, pick
from .render import FORMATS, details_of, graph_dot, matrix_dot, plans_dot, render
from .report import write_report
from .search import load_search, search_command
from .seeds import parse_seeds
from .tables import format_costs, format_tables
from .targets import one_graph, split_targets
from .xross import write_tables, xross_table


def _build(graph: KTGraph, trace: Trace | None = None) -> Job:
    """Modules and program without the data: shapes, adapters and regressors fixed, every plan dry-run."""
    return prepare(graph, with_data=False, device="cpu", trace=trace)


def cmd_search(args: argparse.Namespace) -> int:
    return search_command(args, *split_targets(args.targets))


def cmd_validate(args: argparse.Namespace) -> int:
    files, overrides = split_targets(args.targets)
    if not files:
        raise GraphError("give at least one graph file", file="command line",
                         expected="ktgraph validate FILE [FILE ...]")
    failed = 0
    for file in files:
        try:
            graph = load_graph(file, overrides, allow_imports=args.allow_imports)
            try:
                find_data(graph.data)  # the files are there (none is read)
            except GraphError as err:
                raise graph.locate(err) from None
            if not args.no_build:
                _build(graph)
            searched = len(load_search(file, overrides)[0].parameters) if graph.document.get("search") else None
            print(f"{file}: ok ({len(graph.networks)} networks, {len(graph.paths)} paths, "
                  f"{len(graph.links)} links" + (f", a search of {searched} parameters" if searched else "") + ")")
        except GraphError as err:
            print(f"error: {err}", file=sys.stderr)
            failed += 1
    return EXIT_USER_ERROR if failed else 0


def titled_plans(job: Job, title: str, *, eval_plan: bool = False) -> list[tuple[str, Plan]]:
    """The plans ``plan`` and ``render --plan`` show: one per stage (named when the file has stages), or the
    eval plan."""
    if eval_plan:
        return [(title, job.program.eval)]
    graph = job.graph
    return [(title + (f", stage {stage.name}" if graph.staged else ""), plan)
            for stage, plan in zip(graph.stages, job.program.stages)]


def cmd_plan(args: argparse.Namespace) -> int:
    graph, file = one_graph(args.targets, "plan", "ktgraph plan FILE [key=value ...]", allow_imports=args.allow_imports)
    traced: list[tuple[str, Plan]] = []
    job = _build(graph, trace=(lambda name, plan: traced.append((name, plan))) if args.passes else None)
    for stage, (title, plan) in zip(job.graph.stages, titled_plans(job, file, eval_plan=args.eval)):
        if args.passes:
            for name, step in traced:
                if (step.mode == "eval") == args.eval and step.stage == plan.stage:
                    print(format_plan(step, f"{title}, after {name}") + "\n")
        else:
            print(format_plan(plan, title))
        if not args.eval:
            print("\n" + format_training(stage))
    if args.costs:
        _print_costs(job, file)
    return 0


def _print_costs(job: Job, title: str) -> None:
    """The eval plan's segments and nodes, costed on a zero image: no data, no timing."""
    plan = job.program.eval
    shape = "×".join(map(str, job.input_shape))
    nodes = node_costs(job.graph, job.modules, plan, job.input_shape, row_nodes(job.graph, plan))
    print("\n" + format_costs(call_costs(job.modules, plan), nodes,
                              title=f"costs of {title}: {job.bound.num_classes} classes, {shape} input"))


REGISTRIES: dict[str, Registry] = {"models": MODELS, "datasets": DATASETS, "links": LINKS, "gates": GATES,
                                   "aggregators": AGGREGATORS, "adapters": ADAPTERS}


def cmd_models(args: argparse.Namespace) -> int:
    for name in MODELS.list(args.pattern):
        print(name)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Every registered name of one registry (or of all), with its one-line description."""
    if args.registry is not None and args.registry not in REGISTRIES:  # `ktgraph list 'res*'`: a pattern
        args.registry, args.pattern = None, args.registry
    for what in [args.registry] if args.registry else list(REGISTRIES):
        registry = REGISTRIES[what]
        if not args.registry and registry.list(args.pattern):
            print(f"{what}:")
        for name in registry.list(args.pattern):
            print(f"  {name:<20} {registry.describe(name)}".rstrip())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    for run_dir in args.run_dirs:
        print(write_report(run_dir, plots=not args.no_plots))
    return 0


def _count(value: int | None, flag: str, low: int, high: int = 65536) -> None:
    if value is not None and not low <= value <= high:
        raise GraphError(f"{flag} {value} is out of range", file="command line",
                         expected=f"a whole number from {low} to {high}")


def cmd_eval(args: argparse.Namespace) -> int:
    _count(args.batch_size, "--batch-size", 1)
    _count(args.repeats, "--repeats", 0, 10_000)
    with RunDir(args.run_dir).lock("eval"):
        rows = xross_table(args.run_dir, split=args.split, progress=not args.no_progress,
                           batch_size=args.batch_size, repeats=args.repeats, allow_imports=args.allow_imports,
                           calibrate=not args.no_calibrate)
        written = None if args.no_calibrate else write_tables(rows, args.run_dir)
    raw = ", BatchNorm statistics not calibrated" if args.no_calibrate else ""
    print(format_tables(rows, title=f"Xross evaluation of {args.run_dir} ({args.split} split{raw})"))
    print(f"wrote {written['csv']} and {written['markdown']}" if written else
          "--no-calibrate: the run's xross.csv and xross.md are left as they were", file=sys.stderr)
    return 0


def cmd_pick(args: argparse.Namespace) -> int:
    cost, flag, text = next((c, f, t) for c, f, t in (("params", "--max-params", args.max_params),
                                                      ("macs", "--max-macs", args.max_macs),
                                                      ("latency_ms", "--max-latency", args.max_latency))
                            if t is not None)
    run = RunDir(args.run_dir)
    outside = args.output is not None and run.path.resolve() not in Path(args.output).resolve().parents
    # Reading a finished table and writing elsewhere needs no lock (a read-only copy of a run works too).
    lock = contextlib.nullcontext() if outside and (run / XROSS_CSV).is_file() else run.lock("pick")
    with lock:
        pick(args.run_dir, cost, parse_amount(text, flag), out=args.output, progress=not args.no_progress,
             allow_imports=args.allow_imports)
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    files, overrides = split_targets(args.targets)
    if len(files) != 1:
        raise GraphError("ktgraph render takes one graph file", file="command line",
                         expected="ktgraph render FILE [key=value ...] [-o OUT] [--plan] [--format svg|dot]")
    fmt = args.format
    if fmt is None and args.out:
        suffix = Path(args.out).suffix.lower().lstrip(".")
        fmt = "dot" if suffix == "gv" else suffix
        if fmt not in FORMATS:
            raise GraphError(f"cannot tell the picture format from `{args.out}`", file="command line",
                             expected="an output name ending in " + ", ".join(f".{f}" for f in FORMATS),
                             suggestion="add --format svg or --format dot")
    fmt = fmt or "svg"
    if args.plan and args.matrix:
        raise GraphError("--plan and --matrix draw different pictures; choose one", file="command line")
    kind = ".plan" if args.plan else ".matrix" if args.matrix else ""
    out = Path(args.out) if args.out else Path(f"{Path(files[0]).stem}{kind}.{fmt}")
    graph = load_graph(files[0], overrides, allow_imports=args.allow_imports)
    job = _build(graph)
    if args.matrix:
        dot = matrix_dot(graph)
    elif args.plan:
        dot = plans_dot(titled_plans(job, files[0], eval_plan=args.eval), f"plans for {files[0]}")
    else:
        dot = graph_dot(graph, details_of(job.bound))
    render(dot, out, fmt)
    print(f"wrote {out}", file=sys.stderr)
    return 0


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
