"""The compiler's passes: small functions ``(plan, bound) -> plan``, run in the order of :data:`TRAIN_PASSES`.

1. ``prune_links``: cut-off links and links outside the stage are not compiled;
2. ``eliminate_dead_steps``: steps no loss or output reads are dropped;
3. ``route_gradients``: each term trains (what its link asks) ∩ (what its loss depends on),
   minus the networks the file or the stage freezes;
4. ``fix_untrained``: a network no term trains is a fixed teacher for the stage;
5. ``assign_batchnorm``: each segment call updates BatchNorm running statistics only when it
   reads its own network's features (``train.bn_stats: own``), or always (``all``);
6. ``group_gradients``: terms with the same set form a gradient group, and groups merge while
   routing stays exact, so a step runs few backward passes;
7. ``fuse_calls``: segment calls batched into one call, as ``train.batching`` asks (``fusion.py``);
8. ``choose_backward``: per-group backward, one routed backward, or no fusion, whichever is exact.

The eval plan runs ``eliminate_dead_steps``, ``calibrate_batchnorm`` (which segment calls are
evaluated with statistics of their own, ``train.calibrate``) and ``fuse_calls``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from ..bind import BoundGraph
from ..graph import SegmentId
from .fusion import choose_backward, fuse_calls
from .ir import INPUT, Call, Group, Plan, Term

Pass = Callable[[Plan, BoundGraph], Plan]


def prune_links(plan: Plan, bound: BoundGraph) -> Plan:
    """Drop the terms of cut-off links and of links the plan's stage does not run."""
    active = plan.stage.links if plan.stage is not None else None
    terms = tuple(t for t in plan.terms if not t.gate.removes_link and (active is None or t.link in active))
    dropped = len(plan.terms) - len(terms)
    return replace(plan, terms=terms, notes=plan.notes + ((f"prune_links: {dropped} term(s) not compiled",)
                                                          if dropped else ()))


def eliminate_dead_steps(plan: Plan, bound: BoundGraph) -> Plan:
    """Keep only the steps whose values some loss term (train) or output (eval) reads."""
    roots = ({v for t in plan.terms for v in (t.source, t.target) if v is not None} if plan.mode == "train"
             else set(plan.outputs.values()) | set(plan.features.values()))
    live = plan.ancestors(roots)
    steps = tuple(s for s in plan.steps if set(s.outputs) & live)
    kept = {v for s in steps for v in s.outputs} | {INPUT}
    return replace(plan, steps=steps, values={k: v for k, v in plan.values.items() if k in kept},
                   outputs={n: v for n, v in plan.outputs.items() if v in kept},
                   features={n: v for n, v in plan.features.items() if v in kept})


def route_gradients(plan: Plan, bound: BoundGraph) -> Plan:
    """Fill each term's dependencies and what it trains; the networks fixed by the file or stage train nothing."""
    frozen = bound.graph.frozen_in(plan.stage) if plan.stage is not None else frozenset()

    def routed(term: Term) -> Term:
        deps = plan.depends_on(term.target)
        if term.source is not None and not term.loss.detached:
            deps |= plan.depends_on(term.source)
        wanted = deps if term.wanted is None else term.wanted & deps
        trains = frozenset(o for o in wanted if o.network not in frozen)
        return replace(term, deps=deps, trains=trains, scales=tuple((o, f) for o, f in term.scales if o in trains))

    return replace(plan, terms=tuple(routed(t) for t in plan.terms))


def fix_untrained(plan: Plan, bound: BoundGraph) -> Plan:
    """The stage's fixed networks: frozen by the file or the stage, or trained by no term (a fixed teacher)."""
    graph = bound.graph
    trained = {o.network for t in plan.terms for o in t.trains}
    frozen = graph.frozen_in(plan.stage) if plan.stage is not None else frozenset()
    fixed = frozen | (set(graph.networks) - trained)
    teachers = sorted(fixed - frozen)
    return replace(plan, fixed=frozenset(fixed),
                   notes=plan.notes + ((f"fix_untrained: {', '.join(teachers)} trained by no link: fixed",)
                                       if teachers else ()))


def assign_batchnorm(plan: Plan, bound: BoundGraph) -> Plan:
    """Whether each call updates BatchNorm running statistics, as plan data the executor applies.

    With ``own``, a segment call updates them only on its own network's path (its input is the
    image, or the output of the same network's previous own-path call), so running statistics
    describe the network's own features; cross calls normalise with batch statistics and keep
    the running ones. Adapters and regressors always update theirs. A fixed network is in eval
    mode and updates nothing either way.
    """
    if bound.graph.train.bn_stats == "all":
        return plan
    own = plan.own_path()
    steps = tuple(replace(s, stats="keep") if isinstance(s, Call) and isinstance(s.module, SegmentId)
                  and s.out not in own and s.module.network not in plan.fixed else s for s in plan.steps)
    return replace(plan, steps=steps)


def calibrate_batchnorm(plan: Plan, bound: BoundGraph) -> Plan:
    """Mark the eval plan's segment calls whose BatchNorm statistics are re-estimated before evaluating.

    ``cross`` (the default): the calls off their own network's path, whose running statistics
    describe features they are not fed; ``all``: every segment call; ``none``: no call. Calls
    are values, so a shared prefix is one call and is calibrated once.
    """
    paths = bound.graph.train.calibrate.paths
    if paths == "none":
        return plan
    own = plan.own_path() if paths == "cross" else set()
    marked = [s for s in plan.steps if isinstance(s, Call) and isinstance(s.module, SegmentId) and s.out not in own]
    if not marked:
        return plan
    steps = tuple(replace(s, stats="calibrated") if s in marked else s for s in plan.steps)
    note = f"calibrate_batchnorm: {len(marked)} segment call(s) get statistics of their own ({paths})"
    return replace(plan, steps=steps, notes=plan.notes + (note,))


def group_gradients(plan: Plan, bound: BoundGraph) -> Plan:
    """Group terms by what they train, then merge groups while routing stays exact.

    Groups A and B may share one backward pass when neither loss depends on parameters that
    only the other trains. Merges where one group's set contains the other's come first: they
    remove a repeated backward through shared segments (XML's up-mimic through the student's
    own up-half) without widening anything.
    """
    return replace(plan, groups=gradient_groups(plan.terms))


def gradient_groups(terms: tuple[Term, ...]) -> tuple[Group, ...]:
    """Terms by what they train (and the gradient factors they give), merged while routing stays exact: a
    merged group scales a module by one factor, so groups merge only where they agree on the modules both train."""
    by_trains: dict[tuple[frozenset, tuple], list[Term]] = {}
    for term in terms:
        if term.trains:
            by_trains.setdefault((term.trains, term.scales), []).append(term)
    groups = [(trains, frozenset().union(*(t.deps for t in ts)), dict(scales), ts)
              for (trains, scales), ts in by_trains.items()]

    def mergeable(a: int, b: int) -> bool:
        (sa, da, fa, _), (sb, db, fb, _) = groups[a], groups[b]
        agree = all(fa.get(o, 1.0) == fb.get(o, 1.0) for o in sa & sb)
        return agree and not (da & (sb - sa)) and not (db & (sa - sb))

    while True:
        pairs = [(a, b) for a in range(len(groups)) for b in range(a + 1, len(groups)) if mergeable(a, b)]
        if not pairs:
            break
        nested = [(a, b) for a, b in pairs if groups[a][0] <= groups[b][0] or groups[b][0] <= groups[a][0]]
        a, b = (nested or pairs)[0]
        (sa, da, fa, ta), (sb, db, fb, tb) = groups[a], groups[b]
        groups[a] = (sa | sb, da | db, {**fa, **fb}, ta + tb)
        del groups[b]
    return tuple(Group(trains, tuple(t.link for t in ts), tuple(sorted(scales.items(), key=lambda i: str(i[0]))))
                 for trains, _, scales, ts in groups)


TRAIN_PASSES: tuple[Pass, ...] = (prune_links, eliminate_dead_steps, route_gradients, fix_untrained,
                                  assign_batchnorm, group_gradients, fuse_calls, choose_backward)
EVAL_PASSES: tuple[Pass, ...] = (eliminate_dead_steps, calibrate_batchnorm, fuse_calls)
