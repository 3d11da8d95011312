"""Calibrated BatchNorm statistics: estimates kept beside the model, one set per calibrated value.

The executor evaluates a ``calibrated`` call (``compile/passes.py``: ``calibrate_batchnorm``)
under ``functional_call`` with its value's estimates standing in for the module's running
statistics, so the trained model's own buffers are never read or written by that call. While
``estimating``, the same call runs its BatchNorms in train mode with a cumulative average and
updates the estimates instead (``runtime/calibrate.py``).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..compile import Plan
from .fusion import norms, scope_of

Norm = nn.modules.batchnorm._BatchNorm


@dataclass
class Calibration:
    """Per calibrated value: the BatchNorm buffers estimated for that call, by their names in its scope."""

    buffers: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    batches: int = 0  # how many batches the estimates average
    estimating: bool = False  # while true, calibrated calls update their estimates instead of reading them

    def nodes(self, plan: Plan) -> set[str]:
        """The plan's outputs that depend on a calibrated value."""
        return {node for node, value in plan.outputs.items() if plan.ancestors([value]) & self.buffers.keys()}


def fresh_buffers(module: nn.Module) -> dict[str, Tensor]:
    """Statistics that hold nothing yet, for every BatchNorm a call of ``module`` runs (empty: none)."""
    buffers = {}
    for prefix, norm in norms(scope_of(module)[1]):
        assert norm.running_mean is not None and norm.running_var is not None
        buffers[f"{prefix}.running_mean"] = torch.zeros_like(norm.running_mean)
        buffers[f"{prefix}.running_var"] = torch.ones_like(norm.running_var)
        buffers[f"{prefix}.num_batches_tracked"] = torch.zeros((), dtype=torch.long, device=norm.running_mean.device)
    return buffers


@contextlib.contextmanager
def estimating(held: list[Norm]) -> Iterator[None]:
    """These BatchNorms in train mode with a cumulative average; the rest of the module as it is."""
    saved = [(n.training, n.momentum) for n in held]
    try:
        for n in held:
            n.train()
            n.momentum = None
        yield
    finally:
        for n, (training, momentum) in zip(held, saved):
            n.train(training)
            n.momentum = momentum
