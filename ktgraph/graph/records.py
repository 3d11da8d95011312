"""The resolved graph: plain typed records, every name checked, every shorthand expanded.

Nothing downstream (bind, compile, runtime) reads the parsed file: it reads these records,
the registered units they hold (a link's loss and gate, an aggregator's kind) and the
``data``/``train`` settings.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ..errors import GraphError
from ..kinds import AggregatorKind, Gate, LinkKind
from ..settings import DataSettings, OptimizerSettings, ScheduleSettings, TrainSettings
from .ids import AdapterId, AggregatorId, ModuleId, SegmentId

Where = tuple[str | int, ...]
Scales = tuple[tuple[ModuleId, float], ...]  # (module, factor on the gradient a term sends into it)
LABEL = "label"
ALL = "all"


@dataclass(frozen=True)
class Ref:
    """A value a link or aggregator reads.

    ``logits``: the output of path ``name``; ``feature``: the output of ``segment`` on its own
    network's path; ``aggregate``: output ``name`` of an aggregator (``agg`` or ``agg.input``)
    or an ensemble; ``label``: the ground truth.
    """

    kind: Literal["logits", "feature", "aggregate", "label"]
    name: str
    segment: SegmentId | None = None

    @property
    def predicts(self) -> bool:
        """Whether this value is class logits (so it can be gated on being correct)."""
        return self.kind in ("logits", "aggregate")

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class RunWeights:
    """A network's initial weights taken from an earlier ktgraph run (``weights: {run, network, checkpoint}``):
    network ``network`` of run directory ``run``, at its last checkpoint or at the kept checkpoint of its best
    epoch."""

    run: str
    network: str
    checkpoint: Literal["last", "best"] = "last"


@dataclass(frozen=True)
class Network:
    """A model cut into segments; a segment of another network here is shared (``shares:``): one module,
    owned by that network, run once on the image and read by every network that shares it."""

    name: str
    model: str
    cuts: tuple[str, ...]
    segments: tuple[SegmentId, ...]
    cifar_stem: bool = False
    weights: str | RunWeights | None = None
    frozen: bool = False
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(s.part for s in self.segments)

    @property
    def borrowed(self) -> tuple[SegmentId, ...]:
        """The segments this network shares with the network that owns them."""
        return tuple(s for s in self.segments if s.network != self.name)


@dataclass(frozen=True)
class Path:
    """A chain of segments; ``adapter`` says how to join segments whose shapes differ."""

    name: str
    segments: tuple[SegmentId, ...]
    adapter: str
    where: Where = ()
    declared: frozenset[tuple[SegmentId, SegmentId]] = frozenset()  # pairs some network runs in a row

    @property
    def owners(self) -> tuple[str, ...]:
        return tuple(s.network for s in self.segments)

    @property
    def is_cross(self) -> bool:
        return bool(self.junctions())

    def junctions(self) -> list[AdapterId]:
        """Consecutive segments of different networks that no network runs in a row (where adapters may
        sit): a branch reading the trunk it shares is on its own path, not at a junction."""
        return [AdapterId(a, b) for a, b in zip(self.segments, self.segments[1:])
                if a.network != b.network and (a, b) not in self.declared]


@dataclass(frozen=True)
class CrossMapping:
    """A cross's channel mapping: every network after the first is matched to the first at ``parts``
    (the cuts' part names), before the first stage whose training computes one of ``paths``."""

    networks: tuple[str, ...]
    parts: tuple[str, ...]
    paths: tuple[str, ...]
    method: str
    score: str
    batches: int
    split: str
    where: Where = ()


@dataclass(frozen=True)
class Aggregator:
    name: str
    unit: AggregatorKind
    inputs: tuple[Ref, ...]
    features: tuple[Ref, ...] = ()
    where: Where = ()

    @property
    def id(self) -> AggregatorId:
        return AggregatorId(self.name)

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.unit.outputs(self.name, [r.name for r in self.inputs])


@dataclass(frozen=True)
class Ensemble:
    """The mean of some paths' logits that every evaluation reports (``mean(networks)``, ``mean(paths)``)."""

    name: str
    members: tuple[str, ...]
    describes: str


@dataclass(frozen=True)
class Link:
    """One resolved, expanded link.

    ``trains``: the owners it names, or None for "the target's own parameters";
    ``trains_all``: it trains everything its loss depends on; ``train_adapters``: an explicit
    ``trains`` also trains the junction adapters of the target's path next to a segment it names;
    ``scales``: the factor on the gradient the loss sends into some of the modules it trains (identity forward).
    """

    name: str
    loss: LinkKind
    gate: Gate
    source: Ref
    target: Ref
    weight: float
    trains: frozenset[ModuleId] | None = None
    trains_all: bool = False
    train_adapters: bool = True
    where: Where = ()
    cell: tuple[str, ...] = ()  # the `each` values it was made from (a `gates` cell); () without `each`
    scales: Scales = ()


@dataclass(frozen=True)
class Stage:
    """A training stage: its active links (None: all), the networks it freezes, and its effective optimizer
    and schedule (``train``'s with the stage's overrides); ``groups``: the optimizer of each network that has
    its own (a parameter group of its own in this stage)."""

    name: str
    epochs: int
    optimizer: OptimizerSettings = field(hash=False)
    schedule: ScheduleSettings = field(hash=False)
    links: frozenset[str] | None = None
    freeze: frozenset[str] = frozenset()
    groups: tuple[tuple[str, OptimizerSettings], ...] = field(default=(), hash=False)


@dataclass
class KTGraph:
    """The resolved graph. ``stages`` always holds at least one (``main`` when the file declares none)."""

    name: str | None
    description: str
    networks: dict[str, Network]
    paths: dict[str, Path]
    aliases: dict[str, str]
    aggregators: dict[str, Aggregator]
    ensembles: dict[str, Ensemble]
    links: list[Link]
    stages: list[Stage]
    staged: bool
    data: DataSettings
    train: TrainSettings
    document: dict[str, Any]
    source: Any = None
    mappings: list[CrossMapping] = field(default_factory=list)

    def locate(self, err: GraphError) -> GraphError:
        """``err`` with the file and line of its field, when the graph came from a file."""
        return self.source.locate(err) if self.source is not None else err

    def without_weights(self) -> KTGraph:
        """The same graph reading no ``weights:`` file or run: for a job whose checkpoint holds every weight."""
        networks = {name: replace(net, weights=None) for name, net in self.networks.items()}
        return replace(self, networks=networks)

    @property
    def segments(self) -> list[SegmentId]:
        return [s for net in self.networks.values() for s in net.segments if s.network == net.name]

    @property
    def declared(self) -> frozenset[tuple[SegmentId, SegmentId]]:
        return declared_pairs(self.networks.values())

    def path_of_feature(self, segment: SegmentId) -> tuple[SegmentId, ...]:
        """The own-path prefix that ends in ``segment``."""
        own = self.networks[segment.network].segments
        return own[: own.index(segment) + 1]

    def aggregator_of(self, output: str) -> Aggregator:
        return next(a for a in self.aggregators.values() if output in a.outputs)

    def frozen_in(self, stage: Stage) -> frozenset[str]:
        """The networks that stay fixed in ``stage``: frozen in the file, or by the stage's ``freeze``."""
        return frozenset(n for n, net in self.networks.items() if net.frozen) | stage.freeze

    def node_kind(self, node: str) -> str:
        if node in self.networks:
            return "network"
        if node in self.paths:
            return "cross path"
        if node in self.ensembles:
            return "ensemble"
        return "aggregate"

    def node_route(self, node: str) -> str:
        """How a node is computed, in words (``net1.up > net2.down``, ``mean(net1, net2)``)."""
        if node in self.paths:
            return " > ".join(map(str, self.paths[node].segments))
        if node in self.ensembles:
            return self.ensembles[node].describes
        agg = next((a for a in self.aggregators.values() if node in a.outputs), None)
        return f"{agg.unit.kind}({', '.join(r.name for r in agg.inputs)})" if agg else ""


def declared_pairs(networks: Iterable[Network]) -> frozenset[tuple[SegmentId, SegmentId]]:
    """Every pair of segments some network runs in a row: the own-path steps, shared trunks included."""
    return frozenset(pair for net in networks for pair in zip(net.segments, net.segments[1:]))
