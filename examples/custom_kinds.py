"""Your own gate and aggregator, used from YAML without editing ktgraph.

A graph file that lists this file under ``imports:`` (run with ``--allow-imports``) can write
``gate: {kind: delayed, after: 2}`` and an aggregator ``kind: accuracy_weighted``; the schema
is built from what is registered, so both are checked like the built-ins (an unknown field is
an error that names the file and line).

* ``delayed``: a link that is off for the first ``after`` epochs of its stage, then on
  (distillation from peers that have learnt something first).
* ``accuracy_weighted``: the mean of its inputs' logits weighted by each input's top-1 accuracy
  on the held-out split, re-estimated after every epoch by its ``on_epoch_end`` hook. The
  weights are a buffer of its module, so they are saved in checkpoints and a resumed run
  continues with them.

Run: ktgraph run examples/custom_kinds.yaml --allow-imports
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ktgraph.kinds import AggregatorInput, AggregatorKind, EpochInfo, Gate, GateContext, HeldOut
from ktgraph.kinds import register_aggregator, register_gate


@register_gate
class Delayed(Gate):
    """0 for the first ``after`` epochs of the stage, then the mean loss."""

    kind: Literal["delayed"] = "delayed"
    after: int = Field(1, ge=0, description="epochs the link stays off")

    def factor(self, ctx: GateContext) -> float:
        return 0.0 if ctx.epoch < self.after else 1.0

    def formula(self) -> str:
        return f"delayed(after={self.after})"


class InputWeights(nn.Module):
    """One weight per input, uniform until the first held-out estimate."""

    def __init__(self, inputs: int) -> None:
        super().__init__()
        self.register_buffer("weights", torch.full((inputs,), 1.0 / inputs))


@register_aggregator
class AccuracyWeighted(AggregatorKind):
    """Σ_i w_i z_i with w_i ∝ the held-out top-1 of input i (uniform without a validation split)."""

    kind: Literal["accuracy_weighted"] = "accuracy_weighted"
    min_inputs = 2

    def build(self, logits: list[tuple[int, ...]], features: list[tuple[int, ...]]) -> nn.Module:
        return InputWeights(len(logits))

    def aggregate(self, module: nn.Module | None, x: AggregatorInput) -> list[Tensor]:
        assert isinstance(module, InputWeights)
        stacked = torch.stack(x.logits, dim=0)
        return [(module.weights.view(-1, 1, 1).to(stacked.dtype) * stacked).sum(dim=0)]

    def on_epoch_end(self, module: nn.Module | None, epoch: EpochInfo, heldout: HeldOut | None) -> None:
        if heldout is None or not isinstance(module, InputWeights):
            return
        correct = torch.zeros_like(module.weights)
        for batch in heldout.batches():
            assert batch.labels is not None
            correct += torch.stack([(z.argmax(1) == batch.labels).sum() for z in batch.logits]).to(correct)
        if correct.sum() > 0:
            module.weights.copy_(correct / correct.sum())
