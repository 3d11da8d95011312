"""The graph language: a strict pydantic schema of a graph file, built from the registries.

Every section rejects unknown fields (with a did-you-mean hint), so a typo can never silently
fall back to a default. The kinds a file may name (links, gates, aggregators) are unions of
what is registered, so the schema stays strict and becomes open: :func:`graph_schema` rebuilds
it when a registry changes (a module under ``imports:`` registered a gate, say). Cross-references
(a link naming a network, a path naming a segment) are checked later, when the graph is built.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, Field, create_model, field_validator, model_validator

from ..config import Name, Strict, unknown_field
from ..kinds import AGGREGATORS, AUTO, GATES, LINKS, AdapterChoice, Unit
from ..registry import Registry
from ..settings import NETWORK_FIELDS, DataSettings, TrainSettings

RESERVED_NAMES = frozenset({"label", "all", "x"})


class RunWeightsSpec(Strict):
    """``weights: {run: DIR, network: NAME}``: network NAME of the ktgraph run in DIR."""

    run: str  # the run directory, relative to the working directory (config.yaml stores it resolved)
    network: str
    checkpoint: Literal["last", "best"] = "last"  # best: the kept checkpoint of that network's best epoch


class NetworkSpec(Strict):
    """A model from the registry, cut into named parts at module names."""

    model: str
    cuts: list[str] = []
    parts: list[Name] | None = None
    cifar_stem: bool = False
    weights: str | RunWeightsSpec | None = None
    frozen: bool = False
    kwargs: dict[str, Any] = {}
    shares: dict[Name, Name] = {}  # part -> the network whose segment this network runs as that part
    optimizer: dict[str, Any] = {}  # its own parameter group: NETWORK_FIELDS over each stage's optimizer

    @field_validator("optimizer")
    @classmethod
    def _group_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Only what torch keeps per parameter group; the values are checked with each stage's optimizer."""
        for key in value:
            if key not in NETWORK_FIELDS:
                raise unknown_field(str(key), set(NETWORK_FIELDS))
        return value

    @model_validator(mode="after")
    def _parts_match_cuts(self) -> NetworkSpec:
        if self.parts is not None and len(self.parts) != len(self.cuts) + 1:
            raise ValueError(f"`parts` names {len(self.parts)} parts but {len(self.cuts)} cut(s) make "
                             f"{len(self.cuts) + 1}; give one name per part")
        if self.parts is not None and len(set(self.parts)) != len(self.parts):
            raise ValueError("`parts` has a repeated name")
        return self

    def part_names(self) -> list[str]:
        return list(self.parts) if self.parts else [f"p{i + 1}" for i in range(len(self.cuts) + 1)]


class PathSpec(Strict):
    """A sequence of segments, possibly from different networks (a cross path)."""

    segments: list[str] = Field(min_length=1)
    adapter: AdapterChoice = AUTO

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, data: Any) -> Any:
        return {"segments": data} if isinstance(data, list) else data


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class MappingSpec(Strict):
    """Match the crossed networks' channels at the cuts before their paths train (``ktgraph.zoo.matching``)."""

    method: Literal["hungarian", "stable", "none"] = "hungarian"
    score: Literal["correlation", "cosine", "l2"] = "correlation"
    batches: int = Field(8, gt=0)
    split: Literal["train", "val"] = "train"
    cut: Annotated[list[str] | None, BeforeValidator(_one_or_many)] = None  # default: every cut of the cross


class CrossSpec(Strict):
    """Generates cross paths: ``xml`` swaps network at a cut, ``all`` makes all K^P paths."""

    kind: Literal["xml", "all"]
    networks: list[Name] = Field(min_length=2)
    cut: Annotated[list[str] | None, BeforeValidator(_one_or_many)] = None
    adapter: AdapterChoice = AUTO
    mapping: MappingSpec | None = None


class StageSpec(Strict):
    """A training stage: which links are active, which networks stay fixed, and how it optimizes.

    ``optimizer`` and ``schedule`` are partial: merged over ``train``'s when the graph is built
    (``settings.overridden``) and checked as a whole there, located at the stage's field.
    """

    name: Name
    epochs: int | None = Field(None, gt=0)  # default: train.epochs
    links: list[str] | None = None
    freeze: list[Name] = []
    optimizer: dict[str, Any] = {}
    schedule: dict[str, Any] = {}


class LinkCommon(Strict):
    """The fields every link has, whatever its kind; the kind adds its own (``T``, ``loss``, ...)."""

    name: str | None = None
    target: str
    source: str = "label"
    weight: float = 1.0
    allow_negative: bool = False  # a negative weight maximises the loss: only when the file says so
    trains: list[str | dict[str, float]] | None = None  # an entry {module: factor} scales the gradient it gets
    train_adapters: bool = True  # an explicit `trains` also trains the junction adapters next to what it names
    each: dict[Name, list[str]] | None = None
    distinct: bool = True
    gates: dict[str, Any] | None = None  # one gate per expanded link, nested once per `each` variable

    @field_validator("trains")
    @classmethod
    def _one_scale_each(cls, value: list[str | dict[str, float]] | None) -> list[str | dict[str, float]] | None:
        for entry in value or ():
            if isinstance(entry, dict) and (len(entry) != 1 or not all(0 < f < float("inf") for f in entry.values())):
                raise ValueError("a scaled `trains` entry is one module and a positive factor, e.g. "
                                 "`{b1.trunk: 0.3333333333333333}`")
        return value

    @model_validator(mode="after")
    def _negative_weight_meant(self) -> LinkCommon:
        if self.weight < 0 and not self.allow_negative:
            raise ValueError(f"`weight` {self.weight} is negative: the link would maximise its loss; "
                             "add `allow_negative: true` to the link if that is what you mean")
        return self


class AggregatorCommon(Strict):
    """The fields every aggregator has: the logits it reads and, for some kinds, features."""

    inputs: list[str] = Field(min_length=1)
    features: list[str] = []


class GraphSpec(Strict):
    """A whole graph file; :func:`graph_schema` adds ``links`` and ``aggregators`` from the registries."""

    name: str | None = None
    description: str = ""
    imports: list[str] = []
    data: DataSettings = DataSettings()
    networks: dict[Name, NetworkSpec] = Field(min_length=1)
    paths: dict[Name, PathSpec] = {}
    crosses: list[CrossSpec] = []
    aggregators: dict[Name, Any] = {}  # made a union of the registered aggregators by graph_schema
    links: list[Any] = Field(min_length=1)  # made a union of the registered link kinds by graph_schema
    train: TrainSettings = TrainSettings()
    stages: list[StageSpec] = []
    search: dict[str, Any] | None = None  # what `ktgraph search` may change: checked there (app/search)

    @field_validator("networks", "paths", "aggregators")
    @classmethod
    def _not_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key in RESERVED_NAMES:
                raise ValueError(f"`{key}` is reserved; choose another name")
        return value


def _gate_by_name(value: Any) -> Any:
    """``gate: linear`` is short for ``gate: {kind: linear}``."""
    return {"kind": value} if isinstance(value, str) else value


def _union(members: list[type[BaseModel]]) -> Any:
    if len(members) == 1:
        return members[0]
    return Annotated[Union[tuple(members)], Field(discriminator="kind")]


def _with_common(common: type[Strict], registry: Registry[type[Unit]], suffix: str, **fields: Any) -> list[type]:
    """Each registered unit, with the common fields of its section, as one model of the file's entries."""
    return [create_model(f"{unit.__name__}{suffix}", __base__=(common, unit), __module__=__name__, **fields)
            for unit in registry.entries()]


_built: dict[tuple[int, ...], type[GraphSpec]] = {}


def graph_schema() -> type[GraphSpec]:
    """The schema of a graph file for what is registered now (cached until a registry changes)."""
    key = (GATES.version, LINKS.version, AGGREGATORS.version)
    if key not in _built:
        gate = Annotated[_union(GATES.entries()), BeforeValidator(_gate_by_name)]
        default_gate = GATES["through"]
        links = _with_common(LinkCommon, LINKS, "Link", gate=(gate, Field(default_factory=default_gate)))
        aggregators = _with_common(AggregatorCommon, AGGREGATORS, "Aggregator")
        _built[key] = create_model(
            "GraphSpec", __base__=GraphSpec, __module__=__name__,
            aggregators=(dict[Name, _union(aggregators)], {}),  # type: ignore[valid-type]
            links=(list[_union(links)], Field(min_length=1)))  # type: ignore[valid-type]
    return _built[key]
