"""``ktgraph search``: check the search, run its workers on the shared study, then write the report."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from ...errors import GraphError
from ..cli_base import Terminated
from .folder import open_folder, read_folder
from .report import write_report
from ...runtime.strategy import available_cores
from .worker import Budget, run_workers


def run_search(file: str, overrides: list[str], *, out: str | None = None, storage: str | None = None,
               study: str | None = None, trials: int | None = None, timeout: float | None = None,
               workers: int = 1, echo: Callable[[str], object] = print) -> Path | None:
    """Run (or continue) a search; the path of ``best.yaml``, or None while no trial has completed.

    ``trials`` and ``timeout`` replace the file's budget: trials count over the whole study (so
    running the command again after an interruption completes it), seconds over this invocation.
    """
    cores = available_cores()
    if not 1 <= workers <= 4 * cores:
        raise GraphError(f"--workers {workers} is out of range", file="command line",
                         expected=f"a whole number from 1 to {4 * cores} (this machine has {cores} cores)")
    search, place = open_folder(file, overrides, out=out, storage=storage, study=study)
    budget = Budget(trials or search.spec.trials, timeout if timeout is not None else search.spec.timeout)
    echo(f"search folder: {place.folder} (study `{place.name}` at {place.storage}); {len(search.parameters)} "
         f"parameters, {budget.trials} trials, {workers} worker(s)")
    ended = run_workers(place.folder, budget, workers)
    echo("this run: " + (", ".join(f"{count} {state}" for state, count in sorted(ended.items())) or "no new trial"))
    return write_report(search, place, echo)


def report_search(folder: str | Path, echo: Callable[[str], object] = print) -> Path | None:
    """``--report DIR``: the table, best graph and plots again, from the folder's study."""
    search, place = read_folder(Path(folder))
    return write_report(search, place, echo)


def search_command(args: argparse.Namespace, files: list[str], overrides: list[str]) -> int:
    """The command line's ``search``; an interruption propagates (the CLI's exit status) after a hint."""
    if args.report:
        given = [flag for flag, value in (("--out", args.out), ("--storage", args.storage), ("--study", args.study),
                                          ("--trials", args.trials), ("--timeout", args.timeout),
                                          ("--workers", args.workers != 1 or None)) if value is not None]
        if files or overrides or given:
            raise GraphError("--report rewrites a search folder's report from its own study: give no graph file, "
                             "overrides or " + (", ".join(given) or "search options"),
                             file="command line", expected="ktgraph search --report DIR")
        report_search(args.report)
        return 0
    if len(files) != 1:
        raise GraphError("ktgraph search takes one graph file with a `search:` section", file="command line",
                         expected="ktgraph search FILE [key=value ...] [--trials N] [--workers K]")
    if args.trials is not None and args.trials < 1:
        raise GraphError(f"--trials {args.trials} is out of range", file="command line", expected="1 or more")
    if args.timeout is not None and not args.timeout > 0:
        raise GraphError(f"--timeout {args.timeout} is out of range", file="command line",
                         expected="seconds above 0 (as search.timeout)")
    try:
        run_search(files[0], overrides, out=args.out, storage=args.storage, study=args.study, trials=args.trials,
                   timeout=args.timeout, workers=args.workers)
    except (KeyboardInterrupt, Terminated):  # the trials under way are marked failed
        print("\nthe trials under way are marked failed; run the same command again to continue the study",
              file=sys.stderr)
        raise
    return 0
