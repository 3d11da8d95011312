"""The ``search:`` section of a graph file: what a search may change, how it measures and what it spends.

A search is written in the graph's own terms: ``space`` maps override keys (those ``ktgraph run``
takes, ``networks.net2.model``) to a list of choices or a numeric range, and ``gates`` gives one
gate choice to every expanded link a pattern names (``kl:*``), so a DCL matrix gets one parameter
per cell. The section is strict like the rest of the language, and every choice (each end of a
range) is built into a graph before any trial runs: a model that does not exist, a gate that is
not registered or that cannot sit on a link is an error located at the choice.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
from typing import Any, Literal

import optuna
from pydantic import Field, model_validator

from ...config import Strict
from ...errors import GraphError, unknown_name
from ...graph import Document, KTGraph
from ...graph.records import Where
from ...kinds import GATES
from ...zoo import check_model


Scalar = str | int | float | bool


class Objective(Strict):
    """A node's top-1 on the validation split: a search never chooses on the test split."""

    node: str
    split: Literal["val"] = "val"
    at: Literal["best", "last"] = "best"  # the node's best epoch, or its last one


class Sampler(Strict):
    name: Literal["random", "tpe"] = "random"
    seed: int | None = Field(None, ge=0)


class Pruner(Strict):
    """ASHA (successive halving, asynchronous), Hyperband, or none; resources counted in epochs."""

    name: Literal["asha", "hyperband", "none"] = "asha"
    min_epochs: int = Field(1, gt=0)
    max_epochs: int | None = Field(None, gt=0)  # hyperband only: default the graph's epochs
    reduction_factor: int = Field(2, ge=2)

    @model_validator(mode="after")
    def _max_for_hyperband(self) -> Pruner:
        if self.max_epochs is not None and self.name != "hyperband":
            raise ValueError("`max_epochs` applies to the hyperband pruner; asha stops at the graph's epochs")
        return self


class GateSpace(Strict):
    """One gate choice per expanded link whose name matches a pattern."""

    links: list[str] = Field(["*"], min_length=1)
    choices: list[str] = Field(min_length=2)


class FloatRange(Strict):
    bounds: tuple[float, float] = Field(alias="float")
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        _check_range(self.bounds, self.log, self.step is not None)
        return self

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.FloatDistribution(*self.bounds, log=self.log, step=self.step)


class IntRange(Strict):
    bounds: tuple[int, int] = Field(alias="int")
    log: bool = False
    step: int = Field(1, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        _check_range(self.bounds, self.log, self.step != 1)
        return self

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.IntDistribution(*self.bounds, log=self.log, step=self.step)


def _check_range(bounds: tuple[float, float], log: bool, stepped: bool) -> None:
    low, high = bounds
    if low >= high:
        raise ValueError(f"the range [{low}, {high}] is empty or one value: write [low, high] with low < high")
    if log and (low <= 0 or stepped):
        raise ValueError("a `log` range needs low > 0 and no `step`")


class SearchSpec(Strict):
    """The ``search:`` section as the file writes it (docs/search.md lists every field)."""

    objective: Objective
    trials: int = Field(20, gt=0, le=100_000)  # in the whole study, every worker counted
    timeout: float | None = Field(None, gt=0)  # seconds after which a worker starts no trial
    sampler: Sampler = Sampler()
    pruner: Pruner = Pruner()
    space: dict[str, Any] = {}
    gates: GateSpace | None = None


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One dimension of the space: Optuna's name for it and the override key it sets."""

    name: str
    key: str
    distribution: optuna.distributions.BaseDistribution
    where: Where  # where the search section declares it


@dataclasses.dataclass(frozen=True)
class Search:
    """A validated search: the base graph's document (``search:`` taken out) and its parameters."""

    spec: SearchSpec
    base: Document
    parameters: tuple[Parameter, ...]
    graph: KTGraph  # the base graph, as the file writes it

    @property
    def epochs(self) -> int:
        """The epochs of one trial trained to the end (every stage of the base graph)."""
        return sum(stage.epochs for stage in self.graph.stages)

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        return {p.name: p.distribution for p in self.parameters}

    def overrides(self, values: dict[str, Any]) -> list[str]:
        """The ``key=value`` overrides a trial's values mean (JSON scalars are YAML)."""
        return [f"{p.key}={json.dumps(values[p.name])}" for p in self.parameters]

    def graph_with(self, overrides: list[str]) -> KTGraph:
        return self.base.overridden(overrides).build()


def read_search(document: Document) -> Search:
    """Split a graph document into its graph and its ``search:`` section, and check both."""
    if "search" not in document.raw:
        raise document.locate(GraphError("the file has no `search:` section", where=(),
                                         expected="a `search:` section with `objective` and `space` or `gates` "
                                                  "(see docs/search.md)"))
    spec = document.check(SearchSpec, ("search",))
    base = document.without("search")
    graph = base.build()
    try:  # the base graph's own models first: a choice's check below must not be blamed for one of them
        _check_models(graph)
    except GraphError as err:
        raise document.locate(err) from None
    _check_objective(spec, graph, document)
    parameters = [*_space(spec, document), *_gates(spec, graph, document)]
    if not parameters:
        raise document.locate(GraphError("the search space is empty", where=("search",),
                                         expected="entries under `space:` or a `gates:` choice"))
    keys = [p.key for p in parameters]
    for parameter in parameters:
        if keys.count(parameter.key) > 1:
            raise document.locate(GraphError(f"`{parameter.key}` is searched twice", where=parameter.where,
                                             suggestion="leave it out of `space:` or of `gates.links`"))
    search = Search(spec, base, tuple(parameters), graph)
    for parameter in parameters:
        _check_choices(search, parameter)
    return search


def _check_objective(spec: SearchSpec, graph: KTGraph, document: Document) -> None:
    where = ("search", "objective", "node")
    nodes = [*graph.networks, *graph.paths, *graph.aggregators, *graph.ensembles]
    if spec.objective.node not in nodes:
        raise document.locate(GraphError(f"`{spec.objective.node}` is not a node of the graph", where=where,
                                       expected="one of " + ", ".join(nodes)))
    if graph.data.val_split == 0:
        raise document.locate(GraphError("the objective is measured on the validation split, and the data has none",
                                       where=("search", "objective"),
                                       suggestion="set data.val_split (e.g. 0.1): a search never chooses on "
                                                  "the test split"))


def _space(spec: SearchSpec, document: Document) -> list[Parameter]:
    parameters = []
    for key, value in spec.space.items():
        where = ("search", "space", key)
        if isinstance(value, list):
            plain = all(isinstance(v, Scalar) for v in value)
            if len(value) < 2 or not plain or len(set(map(repr, value))) < len(value):
                raise document.locate(GraphError("a list of choices needs two or more different plain values",
                                               where=where, expected="e.g. [resnet8, resnet14] or [1, 2, 4]"))
            distribution: Any = optuna.distributions.CategoricalDistribution(value)
        elif isinstance(value, dict) and ("float" in value) != ("int" in value):
            kind = FloatRange if "float" in value else IntRange
            distribution = document.check(kind, where).distribution()
        else:
            raise document.locate(GraphError("a searched value is a list of choices or a range", where=where,
                                           expected="[a, b, ...], {float: [low, high], log: true} or "
                                                    "{int: [low, high], step: 2}"))
        parameters.append(Parameter(key, key, distribution, where))
    return parameters


def _gates(spec: SearchSpec, graph: KTGraph, document: Document) -> list[Parameter]:
    """One parameter per link a pattern matches, named ``gate LINK``, setting that link's own gate."""
    if spec.gates is None:
        return []
    for index, choice in enumerate(spec.gates.choices):
        if choice not in GATES:
            raise document.locate(unknown_name("gate", choice, GATES.list(), ("search", "gates", "choices", index)))
    distribution = optuna.distributions.CategoricalDistribution(spec.gates.choices)
    parameters: dict[str, Parameter] = {}
    for index, pattern in enumerate(spec.gates.links):
        matched = [link for link in graph.links if fnmatch.fnmatchcase(link.name, pattern)]
        if not matched:
            raise document.locate(GraphError(f"`{pattern}` matches no link", where=("search", "gates", "links", index),
                                           expected="link names such as " + ", ".join(
                                               link.name for link in graph.links[:4])))
        for link in matched:
            template = ".".join(map(str, link.where))
            key = f"{template}.gates.{'.'.join(link.cell)}" if link.cell else f"{template}.gate"
            parameters.setdefault(link.name, Parameter(f"gate {link.name}", key, distribution,
                                                       ("search", "gates", "links", index)))
    return list(parameters.values())


def _check_choices(search: Search, parameter: Parameter) -> None:
    """Every choice (each end of a range) makes a valid graph, or the search does not start."""
    distribution = parameter.distribution
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        candidates = list(distribution.choices)
    else:
        candidates = [distribution.low, distribution.high]  # type: ignore[attr-defined]
    for value in candidates:
        try:
            _check_models(search.graph_with([f"{parameter.key}={json.dumps(value)}"]))
        except GraphError as err:
            raise search.base.locate(GraphError(
                f"`{parameter.key}={json.dumps(value)}` makes no valid graph: {err.message}",
                where=parameter.where, suggestion=err.suggestion)) from None


def _check_models(graph: KTGraph) -> None:
    """Models are looked up when a trial builds its modules: too late for a choice that names none."""
    for name, network in graph.document["networks"].items():
        try:
            check_model(network["model"])
        except GraphError as err:
            err.where = ("networks", name, "model")
            raise
