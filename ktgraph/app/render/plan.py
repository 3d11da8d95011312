"""Draw a compiled plan as DOT: what one training step (or one evaluation) computes.

One node per step (the value's short id, the module it runs, the node it stands for, how many
read it), the loss terms on the values they read, one cluster per gradient group, and a
legend of what each group trains. Several plans (one per stage) sit side by side.
"""
from __future__ import annotations

from collections.abc import Sequence

import graphviz

from ...compile import INPUT, Aggregate, Call, Plan, Step, Term
from ...compile.format import display_names
from ...graph import AdapterId, SegmentId, by_name
from .dot import CROSS_COLORS, GROUP_FILLS, count, esc, lines, new_digraph, wrap


class _PlanDrawing:
    def __init__(self, target: graphviz.Digraph, plan: Plan, prefix: str) -> None:
        self.g = target
        self.plan = plan
        self.prefix = prefix
        self.names = display_names(plan)
        self.ids: dict[str, str] = {INPUT: prefix + INPUT}
        self.own = plan.own_path()

    def name(self, value: str) -> str:
        return self.names.get(value, value)

    def draw(self, styles: bool = True) -> None:
        g, plan, p = self.g, self.plan, self.prefix
        use = plan.consumers()
        readers: dict[str, list[str]] = {}
        for node, value in {**plan.features, **plan.outputs}.items():
            readers.setdefault(value, []).append(node)
        g.node(self.ids[INPUT], "input x", shape="cds", style="filled", fillcolor="#eeeeee")
        for index, step in enumerate(plan.steps, 1):
            if isinstance(step, Call):
                self.call(step, use[step.out], readers.get(step.out, []))
            elif isinstance(step, Aggregate):
                self.aggregate(index, step, use, readers)
            else:
                self.other(index, step)
        groups = {link: i for i, group in enumerate(plan.groups) for link in group.terms}
        clusters: dict[int | None, list[tuple[int, Term]]] = {}
        for i, term in enumerate(plan.terms):
            clusters.setdefault(groups.get(term.link), []).append((i, term))
        for group, terms in clusters.items():
            if group is None:
                for i, term in terms:
                    self.term(g, i, term, "#ffffff")
                continue
            with g.subgraph(name=f"cluster_{p}g{group + 1}") as c:
                fill = GROUP_FILLS[group % len(GROUP_FILLS)]
                c.attr(label=f"g{group + 1}", style="rounded,filled", fillcolor=fill, color="#999999",
                       fontsize="11")
                for i, term in terms:
                    self.term(c, i, term, "#ffffff")
        self.legend(styles)

    def call(self, step: Call, readers: int, nodes: list[str]) -> None:
        node = self.prefix + self.name(step.out)
        self.ids[step.out] = node
        joins = not isinstance(step.module, SegmentId)  # an adapter or a regressor
        label = lines(self.name(step.out), ("adapter " if isinstance(step.module, AdapterId) else "")
                      + str(step.module), ("= " + ", ".join(nodes)) if nodes else "",
                      f"{readers} readers" if readers > 1 else "",
                      {"keep": "batch statistics only", "calibrated": "calibrated statistics"}.get(step.stats, ""))
        attrs = {"shape": "box", "style": "rounded,filled", "fillcolor": "#f4f4f4",
                 "tooltip": f"{self.name(step.out)} = {step.out}"}
        if joins:
            attrs.update(fillcolor="#fff7cc", color="#b8860b", fontsize="9")
        elif step.out not in self.own:
            attrs.update(style="rounded,filled,dashed", color=CROSS_COLORS[0], penwidth="1.6")
        if readers > 1:
            attrs.update(fillcolor="#ffe680", penwidth="2.2")
        self.g.node(node, label, **attrs)
        self.g.edge(self.ids[step.input], node, weight="5")

    def aggregate(self, index: int, step: Aggregate, use, readers: dict[str, list[str]]) -> None:
        p = self.prefix
        kind = step.unit.kind
        if len(step.outs) == 1:
            (out,) = step.outs
            node = self.ids[out] = f"{p}agg#{out}"
            label = lines(out, f"{kind}[{step.name}]", f"{use[out]} readers" if use[out] > 1 else "")
        else:
            node = f"{p}step#{index}"
            label = lines(step.name, kind)
        self.g.node(node, label, shape=step.unit.shape, style="filled", fillcolor="#fbe8c8",
                    penwidth="2.2" if len(step.outs) == 1 and use[step.outs[0]] > 1 else "1",
                    tooltip=f"{', '.join(step.outs)} = {kind}[{step.name}]")
        for value in step.logits:
            self.g.edge(self.ids[value], node, color="#444444")
        for value in step.features:
            self.g.edge(self.ids[value], node, color="#999999", style="dashed", arrowhead="odot")
        if len(step.outs) > 1:
            for out in step.outs:
                self.ids[out] = f"{p}agg#{out}"
                named = [n for n in readers.get(out, []) if n != out]
                self.g.node(self.ids[out], lines(out, ("= " + ", ".join(named)) if named else ""),
                            shape="ellipse", style="filled", fillcolor="#fbe8c8", fontsize="9",
                            penwidth="2.2" if use[out] > 1 else "1")
                self.g.edge(node, self.ids[out], color="#444444")

    def other(self, index: int, step: Step) -> None:
        """A step of a kind this drawing does not know: a plain box with its text."""
        node = f"{self.prefix}step#{index}"
        self.g.node(node, esc(step.text(self.names)), shape="box", style="filled", fillcolor="#f4f4f4")
        for out in step.outputs:
            self.ids[out] = node
        for value in step.inputs:
            self.g.edge(self.ids[value], node)

    def term(self, g: graphviz.Digraph, i: int, term: Term, fill: str) -> None:
        node = f"{self.prefix}term#{i}"
        color = term.loss.style["color"]
        trains = ", ".join(map(str, by_name(term.trains))) or "nothing (frozen or detached)"
        label = lines(esc(f"L[{term.node}] += {term.link}"), esc(term.formula(self.names)),
                       "" if term.trains else "trains nothing (frozen or detached)")
        g.node(node, label, shape="note", style="filled", fillcolor=fill, color=color, fontsize="9",
               tooltip=f"trains {trains}")
        # Edges go in the enclosing graph: an edge inside a cluster would pull its tail into it.
        self.g.edge(self.ids[term.target], node, color=color)
        if term.source is not None:
            self.g.edge(self.ids[term.source], node, color=color, style="dashed", weight="0")

    def legend(self, styles: bool = True) -> None:
        """Examples of the node styles (unless ``styles`` is false), and what each gradient group trains."""
        p = self.prefix
        with self.g.subgraph(name=f"cluster_{p}legend") as c:
            c.attr(label="legend" if styles else "gradient groups", style="rounded,dashed", color="#aaaaaa",
                   fillcolor="#ffffff", fontsize="11")
            c.attr("node", fontsize="9", height="0.3")
            column = []
            for key, label, attrs in _examples([self.plan]) if styles else ():
                c.node(f"{p}legend#{key}", label, **attrs)
                column.append(f"{p}legend#{key}")
            for i, group in enumerate(self.plan.groups):
                trains = wrap([str(o) for o in by_name(group.trains)], 3)
                c.node(f"{p}legend#g{i + 1}", lines(f"g{i + 1}: one backward, trains", trains,
                                                     f"({count(len(group.terms), 'term')})"),
                       shape="box", style="rounded,filled", fillcolor=GROUP_FILLS[i % len(GROUP_FILLS)])
                column.append(f"{p}legend#g{i + 1}")
            if not column:
                c.node(f"{p}legend#none", "none (no loss terms)", shape="plaintext")
            with c.subgraph() as same:
                same.attr(rank="same")
                for node in column:
                    same.node(node)
            for a, b in zip(column, column[1:]):
                c.edge(b, a, style="invis")  # a flat edge b -> a puts a above b


PLAN_EXAMPLES = [
    ("call", "own-path segment call", {"shape": "box", "style": "rounded,filled", "fillcolor": "#f4f4f4"}),
    ("cross", "cross-path segment call", {"shape": "box", "style": "rounded,filled,dashed", "fillcolor": "#f4f4f4",
                                          "color": CROSS_COLORS[0], "penwidth": "1.6"}),
    ("adapter", "adapter call", {"shape": "box", "style": "rounded,filled", "fillcolor": "#fff7cc",
                                 "color": "#b8860b"}),
    ("shared", "shared value (2+ readers)", {"shape": "box", "style": "rounded,filled", "fillcolor": "#ffe680",
                                            "penwidth": "2.2"}),
    ("aggregate", "aggregate", {"shape": "hexagon", "style": "filled", "fillcolor": "#fbe8c8"}),
    ("term", "loss term (ce grey, kl blue, mimic green);\\ndashed edge: its source",
     {"shape": "note", "style": "filled", "fillcolor": "#ffffff"}),
]


def _examples(plans: Sequence[Plan]) -> list[tuple[str, str, dict[str, str]]]:
    """The node styles that drawings of ``plans`` use, so the legend explains those and no other."""
    used = set()
    for plan in plans:
        consumers, own = plan.consumers(), plan.own_path()
        used |= {"term"} if plan.terms else set()
        for step in plan.steps:
            if isinstance(step, Call):
                used.add("adapter" if not isinstance(step.module, SegmentId) else "call" if step.out in own
                         else "cross")
                used |= {"shared"} if consumers[step.out] > 1 else set()
            elif isinstance(step, Aggregate):
                used.add("aggregate")
    return [example for example in PLAN_EXAMPLES if example[0] in used]


def _plan_title(plan: Plan, title: str) -> str:
    head = f"plan{(' for ' + title) if title else ''} ({plan.mode})"
    return f"{head}: {count(len(plan.steps), 'step')}, {count(len(plan.terms), 'loss term')}, " + \
        count(len(plan.groups), "gradient group")


def plan_dot(plan: Plan, title: str = "") -> graphviz.Digraph:
    """A compiled plan: one node per step, loss terms on the values they read, gradient groups.

    A step's node shows the value's short id (``v3``), the module it runs, the path or
    aggregate it stands for and, when it is read more than once (a shared prefix), how
    many readers it has. Loss terms sit in a cluster per gradient group; the legend
    lists what each group trains.
    """
    dot = new_digraph("plan", _plan_title(plan, title))
    _PlanDrawing(dot, plan, "").draw()
    return dot


def plans_dot(plans: Sequence[tuple[str, Plan]], title: str = "") -> graphviz.Digraph:
    """Several plans (one per training stage) side by side, each in its own cluster."""
    if len(plans) == 1:
        name, plan = plans[0]
        return plan_dot(plan, name or title)
    dot = new_digraph("plans", title)
    with dot.subgraph(name="cluster_legend") as c:
        c.attr(label="legend", style="rounded,dashed", color="#aaaaaa", fontsize="11")
        c.attr("node", fontsize="9", height="0.3")
        examples = _examples([plan for _, plan in plans])
        for key, label, attrs in examples:
            c.node(f"legend#{key}", label, **attrs)
        with c.subgraph() as same:
            same.attr(rank="same")
            for key, _, _ in examples:
                same.node(f"legend#{key}")
        for (a, _, _), (b, _, _) in zip(examples, examples[1:]):
            c.edge(f"legend#{b}", f"legend#{a}", style="invis")
    # Declared last first: dot stacks clusters of a left-to-right graph bottom up.
    for index, (name, plan) in reversed(list(enumerate(plans, 1))):
        with dot.subgraph(name=f"cluster_stage{index}") as c:
            c.attr(label=_plan_title(plan, name), style="rounded", color="#555555")
            _PlanDrawing(c, plan, f"s{index}/").draw(styles=False)
    return dot
