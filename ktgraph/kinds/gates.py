"""Gates of the knowledge transfer graph: how a link's per-sample losses become its value.

Through, cutoff, linear and correct follow Minami et al. (DCL, ACCV 2020); ramp is the
OKDDip/ONE consistency ramp. A cutoff link is removed by the compiler and never reaches a
gate. Register your own with ``@register_gate`` on a :class:`Gate` subclass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import Field
from torch import Tensor

from ..registry import Registry
from .base import Unit

GATES: Registry[type[Gate]] = Registry("gate")
register_gate = GATES.register


@dataclass(frozen=True)
class GateContext:
    """Where training is: iteration k counts from 1 to k_end; epoch counts from 0."""

    iteration: int = 1
    total_iterations: int = 1
    epoch: int = 0


class Gate(Unit):
    """Reduces per-sample losses (B,) to a scalar: by default ``factor(ctx) * mean``.

    ``removes_link``: the compiler drops the link (nothing it alone needs is computed).
    ``masks``: ``reduce`` receives a mask of the samples the link's source predicts right,
    so the source must predict classes (or be the label).
    """

    family: ClassVar[str] = "gate"
    registry: ClassVar[Registry[type[Gate]]] = GATES
    removes_link: ClassVar[bool] = False
    masks: ClassVar[bool] = False

    def factor(self, ctx: GateContext) -> float:
        return 1.0

    def reduce(self, per_sample: Tensor, ctx: GateContext, mask: Tensor | None = None) -> Tensor:
        return self.factor(ctx) * per_sample.mean()

    def formula(self) -> str:
        """How ``ktgraph plan`` writes the gate in ``weight · gate · loss``."""
        return self.kind

    def edge_label(self) -> str:
        """What a graph drawing writes on the link (nothing for the default gate)."""
        return self.formula()


@register_gate
class Through(Gate):
    """The mean per-sample loss."""

    kind: Literal["through"] = "through"

    def edge_label(self) -> str:
        return ""


@register_gate
class Cutoff(Gate):
    """The link is off: it is not computed at all."""

    kind: Literal["cutoff"] = "cutoff"
    removes_link: ClassVar[bool] = True

    def factor(self, ctx: GateContext) -> float:
        return 0.0


@register_gate
class Linear(Gate):
    """(k / k_end) · mean: grows linearly over the iterations of the stage."""

    kind: Literal["linear"] = "linear"

    def factor(self, ctx: GateContext) -> float:
        return ctx.iteration / ctx.total_iterations

    def formula(self) -> str:
        return "linear(k/k_end)"


@register_gate
class Correct(Gate):
    """(1/B) · Σ_n m_n ℓ_n, m_n = 1 where the source predicts sample n right.

    Divided by the full batch size B, not by the number kept, as in the DCL paper and
    code. On a CE link (the label is always right) it equals through.
    """

    kind: Literal["correct"] = "correct"
    masks: ClassVar[bool] = True

    def reduce(self, per_sample: Tensor, ctx: GateContext, mask: Tensor | None = None) -> Tensor:
        if mask is None:
            return per_sample.mean()
        return (per_sample * mask).sum() / per_sample.shape[0]


def ramp_weight(epoch: int, length: int) -> float:
    """exp(-5 (1 - min(e, E)/E)^2): about 0.0067 at epoch 0, 1 from epoch E on."""
    phase = 1.0 - min(max(epoch, 0), length) / length
    return math.exp(-5.0 * phase * phase)


@register_gate
class Ramp(Gate):
    """exp(-5 (1 - min(e, E)/E)^2) · mean, per epoch e (OKDDip and ONE; E = 80 in their papers)."""

    kind: Literal["ramp"] = "ramp"
    length: int = Field(80, gt=0, description="E: the epochs until the weight reaches 1")

    def factor(self, ctx: GateContext) -> float:
        return ramp_weight(ctx.epoch, self.length)

    def formula(self) -> str:
        return f"ramp(E={self.length})"
