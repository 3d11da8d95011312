"""``ktgraph bench SUITE``: several method files, each run as a seed group with the same overrides,
then compared.

A suite file (``graphs/suites/low-data.yaml``) lists graph files and the overrides that set the
regime, so that the methods differ only in their graph: the files share one recipe
(``graphs/recipes/``) and the suite changes it the same way for all. A method joins a suite with
one line. Running the same command again continues where it stopped: finished seeds are kept,
interrupted ones resume from their checkpoints.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import GraphError, did_you_mean
from ..graph import load_graph
from ..graph.suite import load_suite
from ..runtime.groupdir import GROUP_CONFIG, GroupDir
from .cli_base import Terminated
from .compare import Method, mismatch
from .comparison import compare
from .seeds import available_cores, group_difference, run_group, seeds_override, threads_per_run

BENCH_JSON = "bench.json"


def run_suite(path: str | Path, *, out: str | Path | None = None, jobs: int = 1, seeds: list[int] | None = None,
              progress_bar: bool = True, allow_imports: bool = False,
              echo: Callable[[str], object] = print) -> dict[str, Any]:
    """Run (or continue) every method of the suite as a seed group under ``out``, then compare them."""
    suite, files = load_suite(path)
    seeds = seeds or suite.seeds
    folder = Path(out) if out is not None else Path("runs") / f"bench-{suite.name}"
    graphs = [load_graph(file, [*suite.overrides, seeds_override(seeds)], allow_imports=allow_imports)
              for file in files]
    groups = [GroupDir(folder / file.stem) for file in files]
    _comparable(path, suite.baseline, [Method(g.name or f.stem, f, g.document, {}, []) for g, f in zip(graphs, files)])
    for graph, group in zip(graphs, groups):  # every refusal before the first epoch
        difference = group_difference(graph, group) if group.is_group() else None
        if difference is not None:
            raise GraphError(f"the folder holds a group of other settings ({difference})", file=str(group),
                             suggestion="give bench another --out, or delete this folder")
    started, seconds = time.monotonic(), {}
    for file, graph, group in zip(files, graphs, groups):
        echo(f"\n== {file.stem} ({len(seeds)} seeds) ==")
        began = time.monotonic()
        resume = group.is_group()
        if resume:
            graph = load_graph(group / GROUP_CONFIG, allow_imports=allow_imports)
        try:
            run_group(graph, group.path, resume=resume, jobs=jobs, progress_bar=progress_bar,
                      allow_imports=allow_imports, echo=echo)
        except (KeyboardInterrupt, Terminated):  # the finished seeds stay
            print("\nthe same command continues the suite: finished seeds are kept, interrupted ones resume",
                  file=sys.stderr)
            raise
        seconds[file.stem] = round(time.monotonic() - began, 1)
    written = compare([str(g) for g in groups], metric=suite.metric, nodes=suite.nodes, baseline=suite.baseline,
                      out=folder, echo=echo)
    record = {"suite": str(path), "seeds": seeds, "overrides": suite.overrides, "jobs": jobs,
              "threads_per_run": threads_per_run(graphs[0], min(jobs, len(seeds))), "cores": available_cores(),
              "seconds": seconds, "wall_seconds": round(time.monotonic() - started, 1),
              "written": {k: str(v) for k, v in written.items()}}
    GroupDir(folder).write_json(BENCH_JSON, record)
    echo(f"wall time {record['wall_seconds'] / 60:.1f} min ({', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())})"
         "; a continued suite counts only what it ran")
    return record


def _comparable(path: str | Path, baseline: str | None, methods: list[Method]) -> None:
    """What would stop the comparison after hours of training, said before the first epoch: methods whose
    data, recipe or shared networks differ, a baseline that is none of them."""
    problem = mismatch(methods)
    if problem is not None:
        raise problem
    names = [m.label for m in methods] + [m.source.stem for m in methods]
    if baseline is not None and baseline not in names:
        raise GraphError(f"`baseline: {baseline}` is none of the suite's methods", file=str(path),
                         suggestion=did_you_mean(baseline, names) or f"methods: {', '.join(names)}")
