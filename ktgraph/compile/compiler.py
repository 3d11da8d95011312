"""Compile a resolved graph into a plan: share prefixes, drop cut-off links, route gradients.

Passes, in order:
1. *lowering* -- each needed node becomes steps; a value is keyed by the expression that
   computes it, so shared prefixes are computed once (K up-halves for XML, not K^2);
2. *pruning* -- cut-off links and links outside the active stage are not compiled, so
   nothing they alone need is computed;
3. *routing* -- each term trains (what its link asks) ∩ (what its loss depends on),
   minus frozen networks; terms with the same set form a gradient group;
4. *merging* -- two groups are merged when neither's loss depends on parameters only
   the other trains, which keeps routing exact with fewer backward passes.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable

import networkx as nx

from ..graph import ALL, KTGraph, Link, Ref, junction_key
from .plan import INPUT, Aggregate, Call, Group, Plan, Step, Term

PARAMETRIC_AGGREGATORS = frozenset({"attention"})
MEAN_MODULE = "<mean>"  # the parameter-free mean every model provides (no graph name can look like this)
ENSEMBLE_NETWORKS = "mean(networks)"
ENSEMBLE_PATHS = "mean(paths)"


def regressor_key(link: str) -> str:
    return f"regressor:{link}"


class _Lowering:
    """Turns references into steps on a networkx data-flow graph of values.

    A value is named by the expression that computes it, so asking twice for the same
    segment on the same input finds the node that exists: prefixes are shared by
    construction. A node's ancestors tell which parameters a value depends on.
    """

    def __init__(self, graph: KTGraph, adapters: Collection[str]) -> None:
        self.graph = graph
        self.adapters = set(adapters)
        self.flow = nx.DiGraph()
        self.flow.add_node(INPUT, step=None, owner=None)
        self.outputs: dict[str, str] = {}

    def _add(self, out: str, step: Step, owner: str | None) -> None:
        self.flow.add_node(out, step=step, owner=owner, order=len(self.flow))
        self.flow.add_edges_from((value, out) for value in step.inputs)

    def chain(self, segments: Iterable[str]) -> str:
        value, previous = INPUT, None
        for segment in segments:
            if previous is not None and junction_key(previous, segment) in self.adapters:
                value = self.call(junction_key(previous, segment), value)
            value = self.call(segment, value)
            previous = segment
        return value

    def call(self, module: str, value: str) -> str:
        out = f"{module}({value})"
        if out not in self.flow:
            before = self.flow.nodes[value]["step"]
            # Adapters exist only on cross paths, so their own statistics always update.
            own = ">" in module or value == INPUT or (
                isinstance(before, Call) and before.own
                and self.graph.owner_network(before.module) == self.graph.owner_network(module))
            self._add(out, Call(out, module, value, own), module)
        return out

    def value(self, ref: Ref) -> str:
        if ref.kind == "label":
            raise ValueError("the label is not computed")
        if ref.kind == "logits":
            out = self.chain(self.graph.paths[ref.name].segments)
        elif ref.kind == "feature":
            out = self.chain(self.graph.path_of_feature(ref.name))
        else:
            out = self.aggregate(ref.name)
        self.outputs.setdefault(ref.name, out)
        return out

    def aggregate(self, output: str) -> str:
        agg = next(a for a in self.graph.aggregators.values() if output in a.outputs())
        if output not in self.flow:
            logits = tuple(self.value(r) for r in agg.inputs)
            features = tuple(self.value(r) for r in agg.features)
            step = Aggregate(agg.outputs(), agg.name, agg.kind, logits, features)
            owner = agg.name if agg.kind in PARAMETRIC_AGGREGATORS else None
            for out in agg.outputs():
                self._add(out, step, owner)
        return output

    def ensembles(self) -> None:
        """The two ensembles every evaluation reports: the networks' mean, and all paths' mean."""
        groups = {ENSEMBLE_NETWORKS: list(self.graph.networks), ENSEMBLE_PATHS: list(self.graph.paths)}
        for name, nodes in groups.items():
            if len(nodes) > 1 and (name == ENSEMBLE_NETWORKS or len(nodes) > len(self.graph.networks)):
                logits = tuple(self.outputs[n] for n in nodes)
                self._add(name, Aggregate((name,), MEAN_MODULE, "mean", logits), None)
                self.outputs[name] = name

    def deps(self, value: str) -> frozenset[str]:
        """The owners whose parameters ``value`` depends on."""
        nodes = nx.ancestors(self.flow, value) | {value}
        return frozenset(o for o in (self.flow.nodes[n]["owner"] for n in nodes) if o is not None)

    def steps(self) -> list[Step]:
        """Every step once, in a dependency order that keeps the order values were asked for."""
        order = nx.lexicographical_topological_sort(self.flow, key=lambda n: self.flow.nodes[n].get("order", -1))
        steps: list[Step] = []
        for node in order:
            step = self.flow.nodes[node]["step"]
            if step is not None and step not in steps:
                steps.append(step)
        return steps

    def own(self, ref: Ref) -> frozenset[str]:
        """What a link trains by default: the parameters that belong to its target."""
        if ref.kind == "logits":
            path = self.graph.paths[ref.name]
            junctions = {junction_key(a, b) for a, b in zip(path.segments, path.segments[1:])}
            return frozenset(path.segments) | (junctions & self.adapters)
        if ref.kind == "feature":
            return frozenset(self.graph.path_of_feature(ref.name))
        agg = next(a for a in self.graph.aggregators.values() if ref.name in a.outputs())
        own = {agg.name} if agg.kind in PARAMETRIC_AGGREGATORS else set()
        return frozenset(own).union(*(self.own(r) for r in agg.inputs + agg.features))

    def term(self, link: Link, frozen: Collection[str], regressors: Collection[str]) -> Term:
        target = self.value(link.target)
        source = None if link.source.kind == "label" else self.value(link.source)
        regressor = regressor_key(link.name) if regressor_key(link.name) in regressors else None
        deps = self.deps(target) | (self.deps(source) if source and not link.detach else frozenset())
        if regressor:
            deps |= {regressor}
        if link.trains is None:
            wanted = self.own(link.target)
        else:
            wanted = deps if ALL in link.trains else link.trains
        # A mimic link's regressor is its own: it trains whenever the link trains its default or `all`.
        own_regressor = {regressor} if regressor and (link.trains is None or ALL in link.trains) else set()
        trains = frozenset(o for o in (wanted & deps) | own_regressor if self.graph.owner_network(o) not in frozen)
        return Term(link=link.name, kind=link.kind, node=link.target.name, source=source, target=target,
                    weight=link.weight, gate=link.gate, gate_length=link.gate_length, trains=trains, deps=deps,
                    T=link.T, detach=link.detach, loss=link.loss, regressor=regressor)


def gradient_groups(terms: Iterable[Term]) -> tuple[Group, ...]:
    """Group terms by what they train, then merge groups while routing stays exact.

    Groups A and B may share one backward pass when neither loss depends on
    parameters that only the other trains. Merges where one group's set contains the
    other's come first: they remove a repeated backward through shared segments
    (XML's up-mimic through the student's own up-half) without widening anything.
    """
    by_trains: dict[frozenset[str], list[Term]] = {}
    for term in terms:
        if term.trains:
            by_trains.setdefault(term.trains, []).append(term)
    groups = [(trains, frozenset().union(*(t.deps for t in ts)), ts) for trains, ts in by_trains.items()]

    def mergeable(a: int, b: int) -> bool:
        (sa, da, _), (sb, db, _) = groups[a], groups[b]
        return not (da & (sb - sa)) and not (db & (sa - sb))

    while True:
        pairs = [(a, b) for a in range(len(groups)) for b in range(a + 1, len(groups)) if mergeable(a, b)]
        if not pairs:
            break
        nested = [(a, b) for a, b in pairs if groups[a][0] <= groups[b][0] or groups[b][0] <= groups[a][0]]
        a, b = (nested or pairs)[0]
        (sa, da, ta), (sb, db, tb) = groups[a], groups[b]
        groups[a] = (sa | sb, da | db, ta + tb)
        del groups[b]
    return tuple(Group(trains, tuple(t.link for t in ts)) for trains, _, ts in groups)


def compile_plan(graph: KTGraph, *, mode: str = "train", adapters: Collection[str] = (),
                 regressors: Collection[str] = (), frozen: Collection[str] = (),
                 active: Collection[str] | None = None) -> Plan:
    """Compile ``graph`` into a plan.

    ``mode="train"`` computes what the active, non-cut-off links need; ``mode="eval"``
    computes every path and aggregate (no losses). ``adapters`` and ``regressors`` are
    the module keys that exist once shapes are known; ``frozen`` networks train nothing.
    """
    lowering = _Lowering(graph, adapters)
    terms: list[Term] = []
    if mode == "train":
        for link in graph.links:
            if link.gate == "cutoff" or (active is not None and link.name not in active):
                continue
            terms.append(lowering.term(link, frozen, regressors))
    elif mode == "eval":
        for path in graph.paths.values():
            lowering.value(Ref("logits", path.name))
        for agg in graph.aggregators.values():
            for out in agg.outputs():
                lowering.value(Ref("aggregate", out))
        lowering.ensembles()
        # Evaluation reports predictions only: features read by aggregators are not outputs.
        lowering.outputs = {node: value for node, value in lowering.outputs.items()
                            if node in graph.paths or node in lowering.flow and
                            isinstance(lowering.flow.nodes[node]["step"], Aggregate)}
    else:
        raise ValueError(f"unknown plan mode {mode!r}")
    steps = lowering.steps()
    groups = gradient_groups(terms) if mode == "train" else ()
    names = {INPUT: INPUT}
    for step in steps:
        for out in (step.outs if isinstance(step, Aggregate) else (step.out,)):
            names[out] = out if isinstance(step, Aggregate) else f"v{len(names)}"
    return Plan(mode, tuple(steps), dict(lowering.outputs), tuple(terms), groups, names)


def stage_plans(graph: KTGraph, *, adapters: Collection[str] = (), regressors: Collection[str] = (),
                frozen: Collection[str] = (), mode: str = "train", title: str = "") -> list[tuple[str, Plan]]:
    """The plans ``ktgraph plan`` prints: one per training stage (one in all for ``mode="eval"``).

    ``frozen`` is what is fixed in every stage (``GraphModel.frozen_networks()``); each
    stage adds its own ``freeze`` and keeps only its ``links``.
    """
    frozen = set(frozen) | {name for name, net in graph.networks.items() if net.spec.frozen}
    plans = []
    for stage in (graph.stages or [None]) if mode == "train" else [None]:
        plan = compile_plan(graph, mode=mode, adapters=adapters, regressors=regressors,
                            frozen=frozen | set(stage.freeze if stage else ()), active=stage.links if stage else None)
        plans.append((title + (f", stage {stage.name}" if stage else ""), plan))
    return plans
