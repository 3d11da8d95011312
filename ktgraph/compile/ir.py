"""The plan: an IR that passes rewrite, and the program of a run (a train plan per stage and the eval plan).

A plan is plain data. Values are named by the expression that computes them
(``net2.down(net1.up(x))``), so two paths that share a prefix share its value and the step
that computes it exists once; every value carries its per-sample shape and dtype. Steps refer
to modules by typed identity and bring their own execution (:meth:`Step.run`), so a new step
kind (a fused call, say) is a new class, not a new branch in the executor. The value graph
(``Plan.flow``) is derived from the steps, so a pass that rewrites steps cannot leave it stale.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import ClassVar, Literal, Protocol

import networkx as nx
from torch import Tensor

from ..graph import AggregatorId, ModuleId, SegmentId, Stage, by_name
from ..kinds import AggregatorInput, AggregatorKind, Gate, GateContext, LinkInput, LinkKind, correct_mask

INPUT = "x"
Shape = tuple[int, ...]
Stats = Literal["update", "keep", "calibrated"]


@dataclass(frozen=True)
class Value:
    name: str
    shape: Shape  # per sample, without the batch dimension
    dtype: str = "float32"


class StepEnv(Protocol):
    """What a step runs with: the modules, and the labels and gate context of the batch (None in evaluation)."""

    labels: Tensor | None
    ctx: GateContext | None

    def module(self, owner: ModuleId) -> object: ...

    def call(self, owner: ModuleId, x: Tensor, stats: Stats, value: str) -> Tensor:
        """``owner`` applied to ``x`` under BatchNorm policy ``stats``; ``value`` names the output (the
        key of a calibrated call's own statistics)."""
        ...


class Step(ABC):
    """One operation of a plan. Subclasses are frozen dataclasses."""

    short_names: ClassVar[bool] = True  # printed as v1, v2, ... (else under their own names)

    @property
    @abstractmethod
    def inputs(self) -> tuple[str, ...]: ...

    @property
    @abstractmethod
    def outputs(self) -> tuple[str, ...]: ...

    def owner_of(self, value: str) -> ModuleId | None:
        """Whose parameters one of its outputs depends on directly (None: nobody's)."""
        return None

    def calls(self) -> tuple[ModuleId, ...]:
        """The modules it runs, once per call."""
        return ()

    def edges(self) -> list[tuple[str, str]]:
        """Which input each output is computed from (all of them, unless a kind says otherwise)."""
        return [(i, o) for i in self.inputs for o in self.outputs]

    @abstractmethod
    def run(self, env: StepEnv, inputs: list[Tensor]) -> list[Tensor]:
        """The outputs, from the inputs' tensors."""

    @abstractmethod
    def text(self, names: Mapping[str, str]) -> str:
        """The step as ``ktgraph plan`` prints it."""


@dataclass(frozen=True)
class Call(Step):
    """Apply a segment, adapter or regressor to a value.

    ``stats="keep"``: BatchNorm layers normalise with the batch's statistics but leave their
    running statistics as they are (a segment fed another network's features, with
    ``train.bn_stats: own``); ``update``: the usual training-mode call. In an eval plan,
    ``calibrated``: the call normalises with statistics estimated for this value alone (a
    cross path's down-half, ``train.calibrate``), when the executor holds them.
    """

    out: str
    module: ModuleId
    input: str
    stats: Stats = "update"

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.input,)

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.out,)

    def owner_of(self, value: str) -> ModuleId:
        return self.module

    def calls(self) -> tuple[ModuleId, ...]:
        return (self.module,)

    def run(self, env: StepEnv, inputs: list[Tensor]) -> list[Tensor]:
        return [env.call(self.module, inputs[0], self.stats, self.out)]

    def text(self, names: Mapping[str, str]) -> str:
        return f"{names[self.out]} = {self.module}({names[self.input]})"


@dataclass(frozen=True)
class Aggregate(Step):
    """Compute an aggregator's (or an ensemble's) outputs from logits and features."""

    outs: tuple[str, ...]
    name: str
    unit: AggregatorKind
    logits: tuple[str, ...]
    features: tuple[str, ...] = ()
    aggregator: AggregatorId | None = None  # its module, when it has parameters
    short_names: ClassVar[bool] = False

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.logits + self.features

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.outs

    def owner_of(self, value: str) -> AggregatorId | None:
        return self.aggregator

    def calls(self) -> tuple[ModuleId, ...]:
        return (self.aggregator,) if self.aggregator is not None else ()

    def run(self, env: StepEnv, inputs: list[Tensor]) -> list[Tensor]:
        module = env.module(self.aggregator) if self.aggregator is not None else None
        n = len(self.logits)
        return self.unit.aggregate(module, AggregatorInput(inputs[:n], inputs[n:], env.labels, env.ctx))

    def text(self, names: Mapping[str, str]) -> str:
        args = ", ".join(names[v] for v in self.logits)
        if self.features:
            args += "; features " + ", ".join(names[v] for v in self.features)
        return f"{', '.join(self.outs)} = {self.unit.kind}[{self.name}]({args})"


@dataclass(frozen=True)
class Term:
    """One link's loss: weight · gate(per-sample loss(source, target)), and what it trains.

    ``wanted`` is what the link asks to train (None: all it depends on); the routing pass
    fills ``deps`` (the owners the loss depends on) and ``trains`` (wanted ∩ deps, minus
    fixed networks).
    """

    link: str
    node: str
    loss: LinkKind
    gate: Gate
    weight: float
    target: str
    source: str | None  # a value name; None for the label
    wanted: frozenset[ModuleId] | None = None
    trains: frozenset[ModuleId] = frozenset()
    deps: frozenset[ModuleId] = frozenset()
    scales: tuple[tuple[ModuleId, float], ...] = ()  # factors on the gradient it sends into some of ``trains``

    def value(self, values: Mapping[str, Tensor], labels: Tensor, ctx: GateContext) -> Tensor:
        target = values[self.target]
        source = None if self.source is None else values[self.source]
        if source is not None and self.loss.detached:
            source = source.detach()
        # The correct gate keeps samples the source predicts right; the label always is.
        mask = correct_mask(source, labels) if self.gate.masks and source is not None else None
        per_sample = self.loss.per_sample(LinkInput(target, source, labels, ctx))
        return self.weight * self.gate.reduce(per_sample, ctx, mask)

    def formula(self, names: Mapping[str, str]) -> str:
        """``weight · gate · loss``, e.g. ``0.5 · through · 1·KL(v3 ‖ v2) [T=1]``."""
        source = "label" if self.source is None else names.get(self.source, self.source)
        return f"{self.weight:g} · {self.gate.formula()} · {self.loss.formula(names.get(self.target, self.target), source)}"


@dataclass(frozen=True)
class Group:
    """Terms whose summed loss is back-propagated into exactly these owners' parameters."""

    trains: frozenset[ModuleId]
    terms: tuple[str, ...]
    scales: tuple[tuple[ModuleId, float], ...] = ()  # every term of the group scales these alike


@dataclass(frozen=True)
class Plan:
    """What one training step (``mode="train"``, for ``stage``) or one evaluation computes.

    ``outputs`` maps the nodes that predict (paths, aggregates) to values, ``features`` the
    intermediate features the plan computes; ``backward``: one backward per gradient group, or
    one routed backward of every term (with fused calls, see ``compile/fusion.py``); ``fixed`` are the networks that train nothing in
    this stage (frozen by the file or the stage, or trained by no active link).
    """

    mode: Literal["train", "eval"]
    values: Mapping[str, Value]
    steps: tuple[Step, ...]
    outputs: Mapping[str, str]
    features: Mapping[str, str] = field(default_factory=dict)  # intermediate-feature nodes -> values
    terms: tuple[Term, ...] = ()
    groups: tuple[Group, ...] = ()
    stage: Stage | None = None
    fixed: frozenset[str] = frozenset()
    backward: Literal["groups", "routed"] = "groups"
    compile: bool = False  # run the forward through torch.compile (train.compile)
    declared: frozenset[tuple[SegmentId, SegmentId]] = frozenset()  # segment pairs some network runs in a row
    notes: tuple[str, ...] = field(default=(), compare=False)  # what passes decided, for `ktgraph plan`

    @cached_property
    def producers(self) -> dict[str, Step]:
        return {out: step for step in self.steps for out in step.outputs}

    @cached_property
    def flow(self) -> nx.DiGraph:
        """The value graph: an edge from each step input to each of its outputs."""
        graph = nx.DiGraph()
        graph.add_nodes_from(self.values)
        graph.add_edges_from(edge for step in self.steps for edge in step.edges())
        return graph

    def ancestors(self, values: Iterable[str]) -> set[str]:
        """The values, and every value they are computed from."""
        found = set(values)
        for value in list(found):
            found |= nx.ancestors(self.flow, value)
        return found

    def depends_on(self, value: str) -> frozenset[ModuleId]:
        """The owners whose parameters ``value`` depends on."""
        owners = (self.producers[v].owner_of(v) for v in self.ancestors([value]) if v in self.producers)
        return frozenset(o for o in owners if o is not None)

    def calls_of(self, module: ModuleId) -> int:
        """How many times one module runs per step (prefix sharing makes this minimal)."""
        return sum(step.calls().count(module) for step in self.steps)

    def consumers(self) -> Counter[str]:
        """How many steps and loss terms read each value."""
        use: Counter[str] = Counter()
        for step in self.steps:
            use.update(step.inputs)
        for term in self.terms:
            use.update(v for v in (term.source, term.target) if v is not None)
        return use

    def restrict(self, nodes: Iterable[str]) -> Plan:
        """Only what ``nodes`` (outputs or features) need: their steps in plan order, no losses."""
        nodes = list(nodes)
        named = {**self.features, **self.outputs}
        needed = self.ancestors(named[n] for n in nodes)
        steps = tuple(s for s in self.steps if set(s.outputs) & needed)
        kept = {v for s in steps for v in s.outputs} | {INPUT}
        return replace(self, steps=steps, values={k: v for k, v in self.values.items() if k in kept},
                       outputs={n: named[n] for n in nodes if n in self.outputs},
                       features={n: named[n] for n in nodes if n in self.features}, terms=(), groups=(), notes=())

    def own_path(self) -> set[str]:
        """The values a segment computes on its own network's path: from the image, through the segment
        calls its network runs before it (its own, or a trunk it shares); a cross path's down-half reads
        another network's features."""
        own = {INPUT}
        for step in self.steps:
            if isinstance(step, Call) and isinstance(step.module, SegmentId) and step.input in own:
                before = self.producers.get(step.input)
                if before is None or (isinstance(before, Call) and isinstance(before.module, SegmentId)
                                      and (before.module.network == step.module.network
                                           or (before.module, step.module) in self.declared)):
                    own.add(step.out)
        return own

    def owners(self) -> list[ModuleId]:
        """Every owner some step of the plan runs, in a stable order."""
        return by_name({m for s in self.steps for m in s.calls()})


@dataclass(frozen=True)
class Program:
    """Everything a run executes, compiled once: a train plan per stage and the eval plan."""

    stages: tuple[Plan, ...]
    eval: Plan

