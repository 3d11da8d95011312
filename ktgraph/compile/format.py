"""Plans as text: the steps in order, what is shared, each node's loss as a formula, the gradient groups;
and how a stage optimizes (its effective optimizer and schedule, each network's own parameter group).

Display names are derived here, when printing: a call's value is ``v1``, ``v2``, ... in step
order, an aggregate's under its own name; the plan itself keeps the full expressions.
"""
from __future__ import annotations

from ..graph import ModuleId, Stage, by_name
from ..settings import OptimizerSettings
from .fusion import FusedCall, View
from .ir import INPUT, Call, Plan, Step, Term


def display_names(plan: Plan) -> dict[str, str]:
    """value -> short name for printing (``v3``), following the steps' order."""
    names = {INPUT: INPUT}
    for step in plan.steps:
        for out in step.outputs:
            names[out] = f"v{len(names)}" if step.short_names else out
    return names


STATS_NOTES = {"keep": "batch statistics, running ones kept", "calibrated": "BatchNorm statistics calibrated"}


def _notes(plan: Plan, step: Step, use: dict[str, int], readers: dict[str, list[str]]) -> list[str]:
    """What the printout says after a call: readers, which node it is, its BatchNorm policy, its shape."""
    out = step.outputs[0]
    note = [f"shared by {use[out]} readers"] if use[out] > 1 else []
    note += ["= " + ", ".join(readers[out])] if out in readers else []
    note += [STATS_NOTES[step.stats]] if isinstance(step, Call) and step.stats in STATS_NOTES else []
    return note + [_shape(plan.values[out].shape)]


def _view(view: View) -> str:
    return {(True, False): "the weights only", (False, True): "the input only"}.get((view.weights, view.input),
                                                                                    "neither")


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape)) or "scalar"


def _trains(term: Term) -> str:
    if not term.deps:  # not routed yet: what the link asks for
        asked = "all it depends on" if term.wanted is None else ", ".join(map(str, by_name(term.wanted)))
        return f"asks to train {asked or 'nothing'}"
    return "trains " + (_owners(term.trains, term.scales) or "nothing")


def _owners(owners: frozenset[ModuleId], scales: tuple[tuple[ModuleId, float], ...]) -> str:
    """Owners by name, a scaled one with its gradient factor (``b1.trunk (grad ×0.333)``)."""
    factors = dict(scales)
    return ", ".join(f"{o} (grad ×{factors[o]:.4g})" if o in factors else str(o) for o in by_name(owners))


def format_plan(plan: Plan, title: str = "") -> str:
    names = display_names(plan)
    lines = [f"plan{(' for ' + title) if title else ''} ({plan.mode}): {len(plan.steps)} steps, "
             f"{len(plan.terms)} loss terms, {len(plan.groups)} gradient group(s)", "",
             f"steps (input x: {_shape(plan.values[INPUT].shape)}; each value's shape per sample after `#`):"]
    use = plan.consumers()
    readers: dict[str, list[str]] = {}
    for node, value in {**plan.features, **plan.outputs}.items():
        readers.setdefault(value, []).append(node)
    for index, step in enumerate(plan.steps, 1):
        if isinstance(step, FusedCall):
            lines.append(f"  {index:>3}. {step.text(names)}    # one batched call: {step.signature}")
            for k, call in enumerate(step.unfused):
                views = [f"{names[v.name]} (to {_view(v)})" for v in step.views if v.chunk == k]
                lines.append(f"         {call.text(names)}    # "
                             + "; ".join(_notes(plan, call, use, readers) + (["views " + ", ".join(views)] if views else [])))
            continue
        note = _notes(plan, step, use, readers) if step.short_names else [_shape(plan.values[step.outputs[0]].shape)]
        lines.append(f"  {index:>3}. {step.text(names)}" + (f"    # {'; '.join(note)}" if note else ""))
    if plan.fixed and plan.mode == "train":
        lines += ["", f"fixed networks (no gradient, eval mode): {', '.join(sorted(plan.fixed))}"]
    if plan.backward == "routed":
        lines += ["", "backward: one routed backward of every term (views of fused calls route their gradients)"]
    if plan.terms:
        lines += ["", "losses (node = Σ weight · gate · term; * marks a source that is not detached):"]
        by_node: dict[str, list[Term]] = {}
        for term in plan.terms:
            by_node.setdefault(term.node, []).append(term)
        for node, terms in by_node.items():
            lines.append(f"  L[{node}] =")
            for i, term in enumerate(terms):
                lines.append(f"      {'+' if i else ' '} {term.formula(names)}")
                lines.append(f"          link {term.link}; {_trains(term)}")
    if plan.groups:
        lines += ["", "gradient groups (one backward each, restricted to these parameters):"]
        for i, group in enumerate(plan.groups, 1):
            lines.append(f"  g{i}: trains {_owners(group.trains, group.scales)}")
            lines.append(f"      from {', '.join(group.terms)}")
    if plan.notes:
        lines += ["", "passes:"] + [f"  {note}" for note in plan.notes]
    return "\n".join(lines)


def _hyper(settings: OptimizerSettings) -> str:
    """``lr 0.1, momentum 0.9, nesterov, weight_decay 0.0005``: the fields the optimizer reads."""
    return ", ".join(key if value is True else f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}"
                     for key, value in settings.torch_args().items() if value is not False)


def format_training(stage: Stage) -> str:
    """The stage's optimizer and schedule after its overrides, and the parameter group of each network that
    has an optimizer of its own (the default group holds every other parameter)."""
    schedule = stage.schedule.model_dump(exclude_defaults=True, exclude={"name"})
    lines = [f"optimizer: {stage.optimizer.name}, {_hyper(stage.optimizer)}; schedule: {stage.schedule.name} over "
             f"{stage.epochs} epoch(s)" + "".join(f", {key} {value}" for key, value in schedule.items())]
    lines += [f"  network {name}, a parameter group of its own: {_hyper(settings)}"
              for name, settings in stage.groups]
    return "\n".join(lines)
