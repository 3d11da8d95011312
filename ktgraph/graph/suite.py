"""Benchmark suites: which graph files run in one regime, with which seeds, against which baseline.

A suite file lists method files and the overrides that set the regime, so that the methods differ
only in their graph (``ktgraph bench``, docs/cli.md). It is read and validated like a graph file:
safe YAML, a strict schema, every problem located on its line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from ..config import Strict
from ..errors import GraphError
from ..settings import MAX_SEED, MAX_SEEDS
from ..spec.loader import load_model_file


class SuiteSpec(Strict):
    """A benchmark suite."""

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
    suite, source = load_model_file(path, SuiteSpec, what="a suite file",
                                    expected="name:, methods:, seeds: (see graphs/suites/low-data.yaml)")
    files = [path.parent / name for name in suite.methods]
    for index, file in enumerate(files):
        if not file.is_file():
            raise source.locate(GraphError(f"method file `{suite.methods[index]}` does not exist (looked for {file})",
                                           where=("methods", index), expected="a graph file relative to the suite"))
    for index, file in enumerate(files):  # each method's seed group is the folder named after its file
        first = next(i for i, other in enumerate(files) if other.stem == file.stem)
        if first != index:
            raise source.locate(GraphError(f"`{suite.methods[index]}` and `{suite.methods[first]}` would share the "
                                           f"group folder `{file.stem}`", where=("methods", index),
                                           suggestion="give the method files different names"))
    return suite, files
