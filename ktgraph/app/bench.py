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
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator

from ..config import Strict
from ..errors import GraphError
from ..graph import load_graph
from ..runtime.groupdir import GROUP_CONFIG, GroupDir
from ..settings import MAX_SEED, MAX_SEEDS
from ..spec.base import read_text
from ..spec.safe_yaml import YamlLimits
from ..spec.source import parse_yaml
from ..spec.validate import GraphErrors, convert_errors
from .comparison import compare
from .seeds import available_cores, group_difference, run_group, threads_per_run

BENCH_JSON = "bench.json"


class SuiteSpec(Strict):
    """A benchmark suite: which graph files, in which regime, with which seeds, against which baseline."""

    name: str
    description: str = ""
    methods: list[str] = Field(min_length=1)  # graph files, relative to the suite file
    overrides: list[str] = []  # key=value, applied to every method
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(min_length=1, max_length=MAX_SEEDS)
    baseline: str | None = None
    metric: Literal["top1_last", "top1_best"] = "top1_last"
    nodes: list[str] | None = None

    @field_validator("seeds", "methods")
    @classmethod
    def _distinct(cls, value: list[Any]) -> list[Any]:
        if len(set(value)) != len(value):
            raise ValueError("an entry appears twice")
        return value


def load_suite(path: str | Path) -> tuple[SuiteSpec, list[Path]]:
    """The suite and its method files, every problem located in the suite file."""
    path = Path(path)
    if not path.is_file():
        raise GraphError(f"no such suite file: {path}", file=str(path),
                         suggestion="the bundled suite is graphs/suites/low-data.yaml")
    limits = YamlLimits.from_environment()
    raw, source = parse_yaml(read_text(path, limits), str(path), limits)
    if not isinstance(raw, dict):
        raise GraphError("a suite file is a mapping", file=str(path), expected="name:, methods:, seeds: (see "
                                                                                "graphs/suites/low-data.yaml)")
    try:
        suite = SuiteSpec.model_validate(raw)
    except ValidationError as exc:
        errors = [source.locate(e) for e in convert_errors(exc, raw)]
        raise (errors[0] if len(errors) == 1 else GraphErrors(errors)) from None
    files = [path.parent / name for name in suite.methods]
    for index, file in enumerate(files):
        if not file.is_file():
            raise source.locate(GraphError(f"method file `{suite.methods[index]}` does not exist (looked for {file})",
                                           where=("methods", index), expected="a graph file relative to the suite"))
    return suite, files


def run_suite(path: str | Path, *, out: str | Path | None = None, jobs: int = 1, seeds: list[int] | None = None,
              progress_bar: bool = True, allow_imports: bool = False,
              echo: Callable[[str], object] = print) -> dict[str, Any]:
    """Run (or continue) every method of the suite as a seed group under ``out``, then compare them."""
    suite, files = load_suite(path)
    seeds = seeds or suite.seeds
    folder = Path(out) if out is not None else Path("runs") / f"bench-{suite.name}"
    wanted = [f"train.seeds=[{','.join(map(str, seeds))}]"]
    graphs = [load_graph(file, [*suite.overrides, *wanted], allow_imports=allow_imports) for file in files]
    groups = [GroupDir(folder / file.stem) for file in files]
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
        run_group(graph, group.path, resume=resume, jobs=jobs, progress_bar=progress_bar,
                  allow_imports=allow_imports, echo=echo)
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
