"""Gates of the knowledge transfer graph: how a link's per-sample losses become its value.

Through, cutoff, linear and correct follow Minami et al. (DCL); ramp is the
OKDDip/ONE consistency ramp. Cutoff links are removed by the compiler and never
reach a gate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class GateContext:
    """Where training is: iteration k counts from 1 to k_end; epoch counts from 0."""

    iteration: int = 1
    total_iterations: int = 1
    epoch: int = 0


def ramp_weight(epoch: int, length: int) -> float:
    """exp(-5 (1 - min(e, E)/E)^2): about 0.0067 at epoch 0, 1 from epoch E on."""
    phase = 1.0 - min(max(epoch, 0), length) / length
    return math.exp(-5.0 * phase * phase)


def gate_factor(kind: str, ctx: GateContext, length: int = 80) -> float:
    """The scalar a gate multiplies the mean loss by (correct's mask is applied separately)."""
    if kind in ("through", "correct"):
        return 1.0
    if kind == "linear":
        return ctx.iteration / ctx.total_iterations
    if kind == "ramp":
        return ramp_weight(ctx.epoch, length)
    raise ValueError(f"gate {kind!r} has no factor")


def apply_gate(kind: str, per_sample: Tensor, ctx: GateContext, mask: Tensor | None = None,
               length: int = 80) -> Tensor:
    """Reduce per-sample losses to the link's value.

    ``correct`` keeps the samples the source gets right and divides by the full batch
    size B (not by the number kept), as in the DCL paper and code.
    """
    if kind == "correct":
        if mask is None:
            return per_sample.mean()
        return (per_sample * mask).sum() / per_sample.shape[0]
    return gate_factor(kind, ctx, length) * per_sample.mean()
