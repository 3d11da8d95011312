"""Plans as text: the steps in order, what is shared, and each node's loss as a formula."""
from __future__ import annotations

from .plan import Aggregate, Plan, Term


def _fmt(x: float) -> str:
    return f"{x:g}"


def term_formula(term: Term, names: dict[str, str]) -> str:
    """``weight · gate · loss`` for one link, e.g. ``0.5 · through · 1·KL(v3 ‖ v2) [T=1]``."""
    gate = f"ramp(E={term.gate_length})" if term.gate == "ramp" else term.gate
    if term.gate == "linear":
        gate = "linear(k/k_end)"
    target = names.get(term.target, term.target)
    source = "label" if term.source is None else names.get(term.source, term.source)
    if term.kind == "ce":
        loss = f"CE({target}, label)"
    elif term.kind == "kl":
        loss = f"{_fmt(term.T ** 2)}·KL({source}{'' if term.detach else '*'} ‖ {target}) [T={_fmt(term.T)}]"
    else:
        reg = f"{term.regressor}({target})" if term.regressor else target
        loss = f"{term.loss.upper()}({reg}, {source}{'' if term.detach else '*'})"
    return f"{_fmt(term.weight)} · {gate} · {loss}"


def format_plan(plan: Plan, title: str = "") -> str:
    names = plan.names
    lines = [f"plan{(' for ' + title) if title else ''} ({plan.mode}): {sum(1 for s in plan.steps)} steps, "
             f"{len(plan.terms)} loss terms, {len(plan.groups)} gradient group(s)", "", "steps:"]
    use = plan.consumers()
    readers: dict[str, list[str]] = {}
    for node, value in plan.outputs.items():
        readers.setdefault(value, []).append(node)
    seen = set()
    for index, step in enumerate(plan.steps, 1):
        if id(step) in seen:
            continue
        seen.add(id(step))
        if isinstance(step, Aggregate):
            args = ", ".join(names[v] for v in step.logits)
            if step.features:
                args += "; features " + ", ".join(names[v] for v in step.features)
            lines.append(f"  {index:>3}. {', '.join(step.outs)} = {step.kind}[{step.module}]({args})")
            continue
        note = []
        if use[step.out] > 1:
            note.append(f"shared by {use[step.out]} readers")
        if step.out in readers:
            note.append("= " + ", ".join(readers[step.out]))
        lines.append(f"  {index:>3}. {names[step.out]} = {step.module}({names[step.input]})"
                     + (f"    # {'; '.join(note)}" if note else ""))
    if plan.terms:
        lines += ["", "losses (node = Σ weight · gate · term; * marks a source that is not detached):"]
        by_node: dict[str, list[Term]] = {}
        for term in plan.terms:
            by_node.setdefault(term.node, []).append(term)
        for node, terms in by_node.items():
            lines.append(f"  L[{node}] =")
            for i, term in enumerate(terms):
                trains = ", ".join(sorted(term.trains)) or "nothing"
                lines.append(f"      {'+' if i else ' '} {term_formula(term, names)}")
                lines.append(f"          link {term.link}; trains {trains}")
    if plan.groups:
        lines += ["", "gradient groups (one backward each, restricted to these parameters):"]
        for i, group in enumerate(plan.groups, 1):
            lines.append(f"  g{i}: trains {', '.join(sorted(group.trains))}")
            lines.append(f"      from {', '.join(group.terms)}")
    return "\n".join(lines)
