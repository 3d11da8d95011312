"""The ``ktgraph`` command: run, search, validate, plan, render, map, eval, pick, report, compare and bench.

User mistakes end with a located message and exit status 2, a failed run with status 3,
never with a traceback. SIGTERM (how job schedulers stop a job) is handled like Ctrl-C: the
command stops where it is, leaves no temporary file, and ``run`` says how to resume (exit 143).
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import warnings
from pathlib import Path

from ..compile import Plan
from ..compile.format import format_plan
from ..compile.pipeline import Trace
from ..data import DATASETS, find_data
from ..errors import GraphError, TrainingError
from ..graph import KTGraph, load_graph
from ..kinds import ADAPTERS, AGGREGATORS, GATES, LINKS
from ..registry import Registry
from ..runtime import Job, RunDir, prepare
from ..runtime.checkpoint import write_error
from ..runtime.measure import call_costs, node_costs, row_nodes
from ..runtime.rundir import XROSS_CSV
from ..zoo import MODELS
from .cli_base import EXIT_INTERRUPTED, EXIT_RUN_FAILED, EXIT_TERMINATED, EXIT_USER_ERROR, Terminated, sigterm_raises
from .cli_methods import add_method_commands, add_seed_options
from .cli_run import cmd_run
from .mapping import add_map_command
from .progress import show_warning
from .pick import parse_amount, pick
from .render import FORMATS, details_of, graph_dot, matrix_dot, plans_dot, render
from .report import write_report
from .search import load_search, search_arguments, search_command
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
    """The plans ``plan`` and ``render --plan`` show: one per stage (named when the file has stages), or the eval plan."""
    if eval_plan:
        return [(title, job.program.eval)]
    graph = job.graph
    return [(title + (f", stage {stage.name}" if graph.staged else ""), plan)
            for stage, plan in zip(graph.stages, job.program.stages)]


def cmd_plan(args: argparse.Namespace) -> int:
    graph, file = one_graph(args.targets, "plan", "ktgraph plan FILE [key=value ...]", allow_imports=args.allow_imports)
    traced: list[tuple[str, Plan]] = []
    job = _build(graph, trace=(lambda name, plan: traced.append((name, plan))) if args.passes else None)
    for title, plan in titled_plans(job, file, eval_plan=args.eval):
        if args.passes:
            for name, step in traced:
                if (step.mode == "eval") == args.eval and step.stage == plan.stage:
                    print(format_plan(step, f"{title}, after {name}") + "\n")
        else:
            print(format_plan(plan, title))
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
    add_seed_options(run)
    run.set_defaults(func=cmd_run)

    search = sub.add_parser("search", help="search a graph file's `search:` space with Optuna (ASHA pruning)")
    search_arguments(search)
    search.set_defaults(func=cmd_search)

    validate = sub.add_parser("validate", help="check graph files without training")
    validate.add_argument("targets", nargs="+", metavar="FILE | key=value")
    validate.add_argument("--no-build", action="store_true", help="skip building models (no shape check)")
    validate.set_defaults(func=cmd_validate)

    plan = sub.add_parser("plan", help="print the compiled execution plan")
    plan.add_argument("targets", nargs="+", metavar="FILE | key=value")
    plan.add_argument("--eval", action="store_true", help="the evaluation plan instead of the training plan")
    plan.add_argument("--passes", action="store_true", help="the plan after lowering and after each pass")
    plan.add_argument("--costs", action="store_true",
                      help="then exact #params and MACs per image of every segment, adapter, path, aggregate "
                           "and ensemble (no data, no latency)")
    plan.set_defaults(func=cmd_plan)

    models = sub.add_parser("models", help="list registered model names")
    models.add_argument("pattern", nargs="?", default="*")
    models.set_defaults(func=cmd_models)

    listing = sub.add_parser("list", help="list what a graph file can name: models, datasets, links, gates, "
                                          "aggregators, adapters")
    listing.add_argument("registry", nargs="?", metavar="REGISTRY",
                         help=f"one of {', '.join(REGISTRIES)} (default: all)")
    listing.add_argument("pattern", nargs="?", default="*", help="a shell-style pattern, e.g. 'res*'")
    listing.set_defaults(func=cmd_list)

    bench = add_method_commands(sub)

    report = sub.add_parser("report", help="(re)write a run directory's figures and report.md")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    report.add_argument("--no-plots", action="store_true", help="write report.md only, keep existing figures")
    report.set_defaults(func=cmd_report)

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
    evaluate.set_defaults(func=cmd_eval)

    pick = sub.add_parser("pick", help="export the most accurate path of a run under a budget")
    pick.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (its xross.csv is made when missing)")
    budget = pick.add_mutually_exclusive_group(required=True)
    budget.add_argument("--max-params", metavar="N", help="parameter budget (e.g. 150k, 1.5M)")
    budget.add_argument("--max-macs", metavar="N", help="MACs per image budget (e.g. 5M)")
    budget.add_argument("--max-latency", metavar="MS",
                        help="latency budget, ms per batch (as measured by `ktgraph eval`, at its batch size)")
    pick.add_argument("-o", "--output", metavar="OUT", help="output file (default: RUN_DIR/picked-NODE.pt2)")
    pick.set_defaults(func=cmd_pick)

    map_ = add_map_command(sub)

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
    render_.set_defaults(func=cmd_render)

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
            return args.func(args)
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
