"""Aggregators of the branch-based methods: ONE's learned gate and CL-ILR's peer mean of the others.

ONE (Lan et al., NeurIPS 2018) weights its branches' logits by a gate computed from the shared
trunk's output; CL-ILR (Song & Chai, NeurIPS 2018) teaches each branch the mean of the other
branches' logits. Both follow the official code (DefangChen/OKDDip-AAAI2020, which carries them).
"""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import GraphError
from .aggregators import AggregatorInput, AggregatorKind, Shape, pooled, register_aggregator


class BranchGate(nn.Module):
    """ONE's gate: global average pool of the trunk feature, Linear(C -> m), BatchNorm1d(m), ReLU, softmax."""

    def __init__(self, channels: int, branches: int) -> None:
        super().__init__()
        self.linear = nn.Linear(channels, branches)
        self.norm = nn.BatchNorm1d(branches)

    def forward(self, feature: Tensor) -> Tensor:
        """The branch weights, (B, m), each row summing to 1."""
        return F.softmax(F.relu(self.norm(self.linear(pooled(feature)))), dim=1)


@register_aggregator
class OneGate(AggregatorKind):
    """ONE's gated ensemble: z_e = Σ_i g_i z_i with g = BranchGate(trunk feature).

    ``features`` names the one feature the gate reads (the trunk's output, where the branches
    split). Its BatchNorm1d normalises over the batch: under several processes, each process's
    shard.
    """

    kind: Literal["one_gate"] = "one_gate"
    min_inputs: ClassVar[int] = 2
    reads_features: ClassVar[Literal["none", "one_per_input", "one"]] = "one"
    shape: ClassVar[str] = "doubleoctagon"

    def build(self, logits: list[Shape], features: list[Shape]) -> nn.Module:
        return BranchGate(features[0][0], len(logits))

    def aggregate(self, module: nn.Module | None, x: AggregatorInput) -> list[Tensor]:
        assert module is not None
        weights = module(x.features[0])
        return [torch.einsum("bm,mbc->bc", weights, torch.stack(x.logits, dim=0))]

    def caption(self) -> str:
        return "one_gate: pool, linear, BN, ReLU, softmax"


@register_aggregator
class OthersMean(AggregatorKind):
    """For each input i, the mean of the other inputs' logits (CL-ILR's target for branch i): ``name.i``."""

    kind: Literal["others_mean"] = "others_mean"
    min_inputs: ClassVar[int] = 2
    per_input: ClassVar[bool] = True

    def build(self, logits: list[Shape], features: list[Shape]) -> None:
        if len(set(logits)) != 1:
            raise GraphError(f"others_mean inputs have different shapes {sorted(set(logits))}", where=("inputs",),
                             expected="logits of one shape")
        return None

    def aggregate(self, module: nn.Module | None, x: AggregatorInput) -> list[Tensor]:
        stacked = torch.stack(x.logits, dim=0)
        total, others = stacked.sum(dim=0), len(x.logits) - 1
        return [(total - z) / others for z in x.logits]
