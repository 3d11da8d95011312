"""Batching: segment calls fused into one batched call, and the backward that keeps routing exact.

Two ways to fuse, both run with ``torch.func.vmap`` over a new leading chunk dimension, so each
chunk is computed exactly as its own call would be (BatchNorm normalises each chunk with its own
batch statistics):

* ``inputs``: one segment called on K inputs (XML's and multi-Xross' down-halves): the chunks
  share the segment's parameters;
* ``peers``: K segments of one architecture (a cohort of identical networks): the chunks'
  parameters are stacked inside the step, so every network keeps its own parameter leaves
  (optimizer state, freezing and checkpoints are untouched).

A fused call keeps the calls it stands for (``unfused``), each chunk's BatchNorm policy, and the
signature that makes the chunks fusable. Routing stays exact in one of two ways, decided by
:func:`choose_backward`: per-group backward when one gradient group reaches a fused call (a
backward through a batched op pays for all its chunks, so several groups would pay several
times), or one routed backward: the fused call hands its outputs to terms as views that pass
gradients only to its parameters, only to its inputs, or both, and every loss term is
back-propagated at once. When neither is exact, the call is not fused.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

import networkx as nx
from torch import Tensor

from ..bind import BoundGraph
from ..graph import ModuleId, SegmentId
from .ir import INPUT, Call, Plan, Step, StepEnv, Term

Kind = Literal["inputs", "peers"]


@dataclass(frozen=True)
class View:
    """An extra output of a fused call for the routed backward: chunk ``chunk``'s value, whose gradient
    reaches the call's parameters only if ``weights`` and its input only if ``input``."""

    name: str
    chunk: int
    weights: bool
    input: bool


@dataclass(frozen=True)
class FusedCall(Step):
    """K segment calls run as one batched call; chunk k is ``unfused[k]``."""

    unfused: tuple[Call, ...]
    kind: Kind
    signature: str
    views: tuple[View, ...] = ()

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(c.input for c in self.unfused)

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(c.out for c in self.unfused) + tuple(v.name for v in self.views)

    def chunk_of(self, value: str) -> int:
        outs = [c.out for c in self.unfused]
        return outs.index(value) if value in outs else next(v.chunk for v in self.views if v.name == value)

    def owner_of(self, value: str) -> ModuleId:
        return self.unfused[self.chunk_of(value)].module

    def calls(self) -> tuple[ModuleId, ...]:
        return tuple(c.module for c in self.unfused)

    def edges(self) -> list[tuple[str, str]]:
        return [(self.unfused[self.chunk_of(out)].input, out) for out in self.outputs]

    def run(self, env: StepEnv, inputs: list[Tensor]) -> list[Tensor]:
        return env.fused(self, inputs)  # type: ignore[attr-defined]

    def text(self, names: Mapping[str, str]) -> str:
        outs = ", ".join(names[c.out] for c in self.unfused)
        calls = " | ".join(f"{c.module}({names[c.input]})" for c in self.unfused)
        return f"{outs} = fused {self.kind}[{calls}]"


def unfuse(plan: Plan) -> Plan:
    """The same plan with every fused call back to the calls it stands for (and terms reading views
    reading their chunk again): what measuring one node, or a device that does not batch, runs."""
    steps: list[Step] = []
    renamed: dict[str, str] = {}
    for step in plan.steps:
        if isinstance(step, FusedCall):
            steps.extend(step.unfused)
            renamed.update((v.name, step.unfused[v.chunk].out) for v in step.views)
        else:
            steps.append(step)
    terms = tuple(replace(t, target=renamed.get(t.target, t.target),
                          source=renamed.get(t.source, t.source) if t.source else None) for t in plan.terms)
    return replace(plan, steps=tuple(steps), terms=terms, backward="groups",
                   values={k: v for k, v in plan.values.items() if k not in renamed})


# --- the passes -------------------------------------------------------------------------------------
# What ``train.batching: auto`` fuses on each device type: what benchmarks/batching.py measured faster
# there. Nothing yet: on the CPU and on an H200 every fusion ran slower than separate calls
# (benchmarks/README.md), so auto keeps the plan unbatched; the other settings still fuse on request.
AUTO_BATCHING: dict[str, tuple[str, ...]] = {"cpu": (), "cuda": ()}


def fuse_calls(plan: Plan, bound: BoundGraph) -> Plan:
    """Fuse what ``train.batching`` asks (``auto``: what measured faster on the device, see
    :data:`AUTO_BATCHING`), as far as the chunks are fusable."""
    setting = bound.graph.train.batching
    kinds = {"off": (), "inputs": ("inputs",), "peers": ("peers",), "all": ("inputs", "peers"),
             "auto": AUTO_BATCHING.get(bound.device, ())}[setting]
    steps = list(plan.steps)
    notes = []
    for kind in kinds:
        for chunk in _candidates(plan, steps, bound, kind):
            signature = _signature(bound, chunk)
            fused = FusedCall(tuple(chunk), kind, signature)
            first = steps.index(chunk[0])
            steps = [s for s in steps if s not in chunk]
            steps.insert(first, fused)
            notes.append(f"fuse_calls: {len(chunk)} calls of {_who(chunk, kind)} fused ({signature})")
    if not notes:
        return plan
    return replace(plan, steps=_in_order(steps), notes=plan.notes + tuple(notes))


def choose_backward(plan: Plan, bound: BoundGraph) -> Plan:
    """Per-group backward, or one routed backward, or no fusion: whichever keeps routing exact.

    A fused call that one gradient group reaches is fine with per-group backward. Otherwise the
    plan takes one routed backward if every term, passing gradients through the fused calls' views,
    reaches exactly what it trains (XML qualifies); else the fused calls several groups reach are
    undone.
    """
    fused = [s for s in plan.steps if isinstance(s, FusedCall)]
    if plan.mode == "eval" or not fused:
        return plan
    crowded = [f for f in fused if len(_groups_reaching(plan, f)) > 1]
    if not crowded:
        return replace(plan, notes=plan.notes + ("choose_backward: per-group backward (one group reaches each "
                                                 "fused call)",))
    if bound.graph.train.update == "simultaneous" and not any(t.scales for t in plan.terms):  # scales need groups
        routed = _routed(plan)
        if routed is not None:
            return replace(routed, notes=routed.notes + ("choose_backward: one routed backward (fused calls hand "
                                                         "their outputs to terms as views)",))
    undone = {id(f) for f in crowded}
    steps = [c for s in plan.steps for c in (s.unfused if id(s) in undone else (s,))]  # type: ignore[attr-defined]
    lowered = {value: i for i, value in enumerate(plan.values)}  # values keep the order lowering made them in
    steps.sort(key=lambda s: min(lowered[o] for o in s.outputs))
    return replace(plan, steps=tuple(steps), notes=plan.notes + (f"choose_backward: {len(crowded)} fused call(s) undone: "
                                                          "several gradient groups reach them and no routed "
                                                          "backward is exact",))


# --- finding fusable chunks ----------------------------------------------------------------------------
def _candidates(plan: Plan, steps: list[Step], bound: BoundGraph, kind: Kind) -> list[list[Call]]:
    calls = [s for s in steps if isinstance(s, Call) and isinstance(s.module, SegmentId)
             and bound.fusable.get(s.module) is not None and s.stats != "calibrated"]
    groups: dict[object, list[Call]] = {}
    for call in calls:
        fixed = call.module.network in plan.fixed
        key = (call.module, fixed) if kind == "inputs" else (bound.fusable[call.module], fixed)
        groups.setdefault(key, []).append(call)
    found = []
    for group in groups.values():
        while len(group) > 1:
            chunk = _independent(plan, group if kind == "inputs" else _one_per_segment(group))
            if len(chunk) < 2:
                break
            found.append(chunk)
            group = [c for c in group if c not in chunk]
    return found


def _one_per_segment(calls: list[Call]) -> list[Call]:
    """The first call of each segment, in order: peers are different segments (a segment's other
    calls go to a later fused call)."""
    first: dict[ModuleId, Call] = {}
    for call in calls:
        first.setdefault(call.module, call)
    return list(first.values())


def _independent(plan: Plan, calls: list[Call]) -> list[Call]:
    """The calls, in order, that read nothing another of them computes (so one batched call can run them)."""
    kept: list[Call] = []
    for call in calls:
        upstream = plan.ancestors([call.input])
        if not any(other.out in upstream or call.out in plan.ancestors([other.input]) for other in kept):
            kept.append(call)
    return kept


def _signature(bound: BoundGraph, chunk: list[Call]) -> str:
    shapes = {bound.shapes[c.module][0] for c in chunk}  # type: ignore[index]
    return f"{bound.fusable[chunk[0].module]}; input {'×'.join(map(str, shapes.pop()))} float32"  # type: ignore[index]


def _who(chunk: list[Call], kind: Kind) -> str:
    return f"`{chunk[0].module}`" if kind == "inputs" else ", ".join(f"`{c.module}`" for c in chunk)


def _in_order(steps: list[Step]) -> tuple[Step, ...]:
    """The steps in an order where every input is computed first, keeping the given order otherwise."""
    made = {out: i for i, s in enumerate(steps) for out in s.outputs}
    order = nx.DiGraph()
    order.add_nodes_from(range(len(steps)))
    order.add_edges_from((made[i], n) for n, s in enumerate(steps) for i in s.inputs if i in made)
    return tuple(steps[i] for i in nx.lexicographical_topological_sort(order))


# --- routing with fused calls ----------------------------------------------------------------------------
def _groups_reaching(plan: Plan, fused: FusedCall) -> set[int]:
    outs = set(fused.outputs)
    reached = set()
    for index, group in enumerate(plan.groups):
        for term in (t for t in plan.terms if t.link in group.terms):
            if outs & plan.ancestors(_read(term)):
                reached.add(index)
    return reached


def _read(term: Term) -> list[str]:
    """The values a term back-propagates into: its target, and its source when not detached."""
    return [term.target] + ([term.source] if term.source is not None and not term.loss.detached else [])


def _routed(plan: Plan) -> Plan | None:
    """The plan with views for one routed backward, or None when some term would train what it must not."""
    fixed = plan.fixed
    needs: dict[tuple[str, str], tuple[bool, bool]] = {}  # (term, fused output) -> (weights, input)
    for term in (t for t in plan.terms if t.trains):
        reached: set[ModuleId] = set()
        stack = [(v, True) for v in _read(term)]  # (value, read directly by the term)
        seen = set()
        while stack:
            value, direct = stack.pop()
            if value == INPUT or (value, direct) in seen:
                continue
            seen.add((value, direct))
            step = plan.producers[value]
            owner = step.owner_of(value)
            inputs = [i for i, o in step.edges() if o == value]
            if isinstance(step, FusedCall) and direct:
                upstream = plan.depends_on(inputs[0])
                weights, passes = owner in term.trains, bool(upstream & term.trains)
                needs[(term.link, value)] = (weights, passes)
                reached |= {owner} if weights else set()
                stack += [(i, False) for i in inputs] if passes else []
            else:
                reached |= {owner} if owner is not None else set()
                stack += [(i, False) for i in inputs]
        if {o for o in reached if o.network not in fixed} != term.trains:
            return None
    return _with_views(plan, needs)


def _with_views(plan: Plan, needs: dict[tuple[str, str], tuple[bool, bool]]) -> Plan:
    names = {}
    for (link, value), (weights, passes) in needs.items():
        if (weights, passes) != (True, True):
            names[(link, value)] = f"{value}#{'w' if weights else ''}{'x' if passes else ''}"
    steps = []
    for step in plan.steps:
        if isinstance(step, FusedCall):
            wanted = {(value, view) for (_, value), view in names.items() if value in step.outputs}
            views = tuple(View(view, step.chunk_of(value), "#w" in view, view.endswith("x"))
                          for value, view in sorted(wanted))
            step = replace(step, views=views)
        steps.append(step)
    terms = tuple(replace(t, target=names.get((t.link, t.target), t.target),
                          source=names.get((t.link, t.source), t.source) if t.source else None) for t in plan.terms)
    values = dict(plan.values)
    for (_, value), view in names.items():
        values[view] = replace(plan.values[value], name=view)
    return replace(plan, steps=tuple(steps), terms=terms, values=values, backward="routed")
