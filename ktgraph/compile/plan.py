"""The execution plan: an explicit, printable list of what one training step computes.

A plan is plain data. Values are named by the expression that computes them
(``net2.down(net1.up(x))``), so two paths that share a prefix share its value and the
step that computes it exists once.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

INPUT = "x"


@dataclass(frozen=True)
class Call:
    """Apply a segment or adapter module to a value.

    ``own`` is true when the value comes from the segment's own network alone (its own
    path), false on cross paths and for adapters.
    """

    out: str
    module: str
    input: str
    own: bool = True

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.input,)


@dataclass(frozen=True)
class Aggregate:
    """Compute aggregator outputs from logits (and, for attention, features)."""

    outs: tuple[str, ...]
    module: str
    kind: str
    logits: tuple[str, ...]
    features: tuple[str, ...] = ()

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.logits + self.features


Step = Call | Aggregate


@dataclass(frozen=True)
class Term:
    """One link's loss: weight * gate(per-sample loss(source, target)), and what it trains."""

    link: str
    kind: str
    node: str
    source: str | None  # a value name; None for the label
    target: str
    weight: float
    gate: str
    gate_length: int
    trains: frozenset[str]
    deps: frozenset[str]
    T: float = 1.0
    detach: bool = True
    loss: str = "mse"
    regressor: str | None = None


@dataclass(frozen=True)
class Group:
    """Terms whose summed loss is back-propagated into exactly these owners' parameters."""

    trains: frozenset[str]
    terms: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    mode: str
    steps: tuple[Step, ...]
    outputs: dict[str, str]  # node name -> value name
    terms: tuple[Term, ...] = ()
    groups: tuple[Group, ...] = ()
    names: dict[str, str] = field(default_factory=dict)  # value -> short id, for printing

    def calls_of(self, module: str) -> int:
        """How many times one module runs per step (prefix sharing makes this minimal)."""
        return sum(1 for s in self.steps if isinstance(s, Call) and s.module == module)

    def consumers(self) -> Counter[str]:
        """How many steps and loss terms read each value."""
        use: Counter[str] = Counter()
        for step in self.steps:
            use.update(step.inputs)
        for term in self.terms:
            use.update(v for v in (term.source, term.target) if v is not None)
        return use
