"""Lowering: a bound graph becomes a plan, the first form the passes rewrite.

A value is named by the expression that computes it, so asking twice for the same segment on
the same input finds the value that exists: prefixes are shared by construction (K up-halves
for XML, not K²). Steps are appended as their values are first asked for, after the steps they
read, which is an execution order that keeps the order of the graph file. A train plan lowers
every link (the passes drop cut-off and inactive ones); an eval plan every path, aggregator
output and ensemble.
"""
from __future__ import annotations

from ..bind import BoundGraph
from ..graph import AdapterId, Aggregator, KTGraph, Link, ModuleId, Ref, SegmentId, Stage
from ..kinds import AGGREGATORS
from .ir import INPUT, Aggregate, Call, Plan, Shape, Step, Term, Value


class Lowering:
    def __init__(self, bound: BoundGraph) -> None:
        self.bound = bound
        self.graph = bound.graph
        self.values: dict[str, Value] = {INPUT: Value(INPUT, bound.input_shape)}
        self.steps: list[Step] = []
        self.outputs: dict[str, str] = {}
        self.features: dict[str, str] = {}

    def add(self, step: Step, shapes: list[Shape]) -> None:
        self.steps.append(step)
        self.values.update((out, Value(out, shape)) for out, shape in zip(step.outputs, shapes))

    def call(self, module: ModuleId, value: str, shape: Shape) -> str:
        out = f"{module}({value})"
        if out not in self.values:
            self.add(Call(out, module, value), [shape])
        return out

    def chain(self, segments: tuple[SegmentId, ...]) -> str:
        value, previous = INPUT, None
        for segment in segments:
            inputs, outputs = self.bound.shapes[segment]
            if previous is not None and AdapterId(previous, segment) in self.bound.adapters:
                value = self.call(AdapterId(previous, segment), value, inputs)
            value = self.call(segment, value, outputs)
            previous = segment
        return value

    def value(self, ref: Ref) -> str:
        if ref.kind == "logits":
            out = self.chain(self.graph.paths[ref.name].segments)
        elif ref.kind == "feature":
            assert ref.segment is not None
            out = self.chain(self.graph.path_of_feature(ref.segment))
        elif ref.name in self.graph.ensembles:
            out = self.ensemble(ref.name)
        else:
            out = self.aggregate(ref.name)
        (self.features if ref.kind == "feature" else self.outputs).setdefault(ref.name, out)
        return out

    def aggregate(self, output: str) -> str:
        agg = self.graph.aggregator_of(output)
        if output not in self.values:
            logits = tuple(self.value(r) for r in agg.inputs)
            features = tuple(self.value(r) for r in agg.features)
            module = agg.id if agg.name in self.bound.modules.aggregators else None
            self.add(Aggregate(agg.outputs, agg.name, agg.unit, logits, features, module),
                     [self.bound.aggregate_shapes[o] for o in agg.outputs])
        return output

    def ensemble(self, name: str) -> str:
        if name not in self.values:
            logits = tuple(self.value(Ref("logits", member)) for member in self.graph.ensembles[name].members)
            self.add(Aggregate((name,), name, AGGREGATORS["mean"](), logits), [(self.bound.num_classes,)])
        return name

    def own(self, ref: Ref) -> frozenset[ModuleId]:
        """What a link trains by default: the parameters that belong to its target."""
        if ref.kind == "logits":
            path = self.graph.paths[ref.name]
            adapters = {j for j in path.junctions() if j in self.bound.adapters}
            return frozenset(path.segments) | adapters
        if ref.kind == "feature":
            assert ref.segment is not None
            return frozenset(self.graph.path_of_feature(ref.segment))
        agg = self.graph.aggregator_of(ref.name)
        own: set[ModuleId] = {agg.id} if agg.name in self.bound.modules.aggregators else set()
        return frozenset(own).union(*(self.own(r) for r in agg.inputs + agg.features))

    def junctions(self, ref: Ref) -> frozenset[AdapterId]:
        """The adapters on the way to a value: its path's junctions that have one (an aggregator's: its inputs')."""
        if ref.kind == "logits":
            found = self.graph.paths[ref.name].junctions()
        elif ref.kind == "feature":  # an own-network prefix: no junction today, but a path's rule all the same
            assert ref.segment is not None
            segments = self.graph.path_of_feature(ref.segment)
            found = [AdapterId(a, b) for a, b in zip(segments, segments[1:])
                     if a.network != b.network and (a, b) not in self.graph.declared]
        elif ref.kind == "label" or ref.name in self.graph.ensembles:
            return frozenset()
        else:
            agg = self.graph.aggregator_of(ref.name)
            return frozenset().union(*(self.junctions(r) for r in agg.inputs + agg.features))
        return frozenset(j for j in found if j in self.bound.adapters)

    def adjacent_adapters(self, link: Link) -> frozenset[AdapterId]:
        """The adapters an explicit ``trains`` brings along: those on the target's path next to a segment it names."""
        if link.trains is None or not link.train_adapters:
            return frozenset()
        return frozenset(j for j in self.junctions(link.target) if j.up in link.trains or j.down in link.trains)

    def term(self, link: Link) -> Term:
        target = self.value(link.target)
        source = None if link.source.kind == "label" else self.value(link.source)
        regressor = self.bound.regressors.get(link.name)
        if regressor is not None:
            target = self.call(regressor, target, self.bound.value_shape(link.source))
        if link.trains_all:
            wanted = None
        elif link.trains is None:  # the target's own parameters, and the link's own regressor
            wanted = self.own(link.target) | ({regressor} if regressor is not None else set())
        else:  # what it names, and the adapters next to the segments it names (unless train_adapters: false)
            wanted = link.trains | self.adjacent_adapters(link)
        return Term(link=link.name, node=link.target.name, loss=link.loss, gate=link.gate, weight=link.weight,
                    target=target, source=source, wanted=wanted, scales=link.scales)

    def plan(self, mode: str, stage: Stage | None, terms: tuple[Term, ...] = ()) -> Plan:
        return Plan(mode, dict(self.values), tuple(self.steps), dict(self.outputs), dict(self.features),  # type: ignore[arg-type]
                    terms, stage=stage, declared=self.graph.declared)


def lower_train(bound: BoundGraph, stage: Stage) -> Plan:
    """Every link of the graph as a loss term, with the steps its values need."""
    lowering = Lowering(bound)
    terms = tuple(lowering.term(link) for link in bound.graph.links)
    return lowering.plan("train", stage, terms)


def lower_eval(bound: BoundGraph) -> Plan:
    """Every path, aggregator output (but those that need the labels) and ensemble, as outputs."""
    graph = bound.graph
    lowering = Lowering(bound)
    for path in graph.paths.values():
        lowering.value(Ref("logits", path.name))
    for agg in graph.aggregators.values():
        if not _needs_labels(graph, agg):
            for out in agg.outputs:
                lowering.value(Ref("aggregate", out))
        elif all(r.kind != "aggregate" or not _needs_labels(graph, graph.aggregator_of(r.name))
                 for r in agg.inputs):
            for ref in agg.inputs + agg.features:  # what its held-out hook reads, though it is not reported
                lowering.value(ref)
    for name in graph.ensembles:
        lowering.value(Ref("aggregate", name))
    return lowering.plan("eval", None)


def _needs_labels(graph: KTGraph, agg: Aggregator) -> bool:
    """Whether an aggregator reads the labels, itself or through the aggregators it reads."""
    return agg.unit.uses_labels or any(_needs_labels(graph, graph.aggregator_of(r.name))
                                       for r in agg.inputs if r.kind == "aggregate")

