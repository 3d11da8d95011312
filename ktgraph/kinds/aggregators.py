"""Aggregators: values computed from other nodes' logits (and features), such as ensembles and targets.

An aggregator unit builds its module once the input shapes are known (``build``; None when it
has no parameters) and computes its outputs from an :class:`AggregatorInput` record: the
inputs' logits and features, the labels and the gate context. Lifecycle hooks
(:meth:`~ktgraph.kinds.base.Unit.on_epoch_end`, with the held-out split) let a unit re-estimate
its state between epochs. Register your own with ``@register_aggregator``.
"""
from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ..errors import GraphError
from ..registry import Registry
from .base import Unit
from .gates import GateContext

AGGREGATORS: Registry[type[AggregatorKind]] = Registry("aggregator")
register_aggregator = AGGREGATORS.register
Shape = tuple[int, ...]


def pooled(feature: Tensor) -> Tensor:
    """A feature map's global average pool, (B, C); a vector feature as it is."""
    return feature.flatten(2).mean(dim=2) if feature.dim() > 2 else feature


@dataclass(frozen=True)
class AggregatorInput:
    """What an aggregator reads. ``labels`` and ``ctx`` are None where the caller has none (evaluation)."""

    logits: list[Tensor]
    features: list[Tensor]
    labels: Tensor | None = None
    ctx: GateContext | None = None


class AggregatorKind(Unit):
    """An aggregator. Its graph-file entry also has ``inputs`` (logits) and ``features``.

    ``min_inputs``: how many inputs it needs; ``reads_features``: ``none``, ``one_per_input``
    (intermediate features aligned with the inputs) or ``one`` (a single feature, such as a shared trunk's); ``uses_labels``: it reads the labels,
    so evaluation (which must not see them) does not report it; ``per_input``: one output per
    input (named ``aggregator.input``) instead of one named like the aggregator; ``needs_heldout``: its
    ``on_epoch_end`` estimates its state on the validation split, so the data must have one.
    """

    family: ClassVar[str] = "aggregator"
    registry: ClassVar[Registry[type[AggregatorKind]]] = AGGREGATORS
    min_inputs: ClassVar[int] = 1
    reads_features: ClassVar[Literal["none", "one_per_input", "one"]] = "none"
    uses_labels: ClassVar[bool] = False
    per_input: ClassVar[bool] = False
    needs_heldout: ClassVar[bool] = False
    shape: ClassVar[str] = "hexagon"

    def outputs(self, name: str, inputs: Sequence[str]) -> tuple[str, ...]:
        return tuple(f"{name}.{i}" for i in inputs) if self.per_input else (name,)

    def build(self, logits: list[Shape], features: list[Shape]) -> nn.Module | None:
        """The module holding its parameters (shapes are per sample), or None."""
        return None

    @abstractmethod
    def aggregate(self, module: nn.Module | None, x: AggregatorInput) -> list[Tensor]:
        """One tensor per output."""

    def caption(self) -> str:
        """A drawing's second line under the aggregator's name."""
        return self.kind

    def metrics(self, module: nn.Module | None, inputs: Sequence[str]) -> dict[str, float]:
        """State worth a line in each epoch's metrics (KDCL-General's weights, by input); none by default."""
        return {}


@register_aggregator
class Mean(AggregatorKind):
    """The mean of its inputs' logits (an ensemble, or a peer-mean teacher)."""

    kind: Literal["mean"] = "mean"

    def aggregate(self, module: nn.Module | None, x: AggregatorInput) -> list[Tensor]:
        return [torch.stack(x.logits, dim=0).mean(dim=0)]


class PeerAttention(nn.Module):
    """OKDDip's projections W_L (``query``) and W_E (``key``): bias-free, d -> d/reduction, shared by the peers."""

    def __init__(self, feature_dim: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(1, feature_dim // reduction)
        self.query = nn.Linear(feature_dim, hidden, bias=False)
        self.key = nn.Linear(feature_dim, hidden, bias=False)

    def attention(self, features: list[Tensor]) -> Tensor:
        """alpha of shape (B, m, m): row a holds peer a's weights over the peers b."""
        h = torch.stack([pooled(f) for f in features], dim=1)
        energy = torch.bmm(self.query(h), self.key(h).transpose(1, 2))
        return F.softmax(energy, dim=2)

    def forward(self, logits: list[Tensor], features: list[Tensor]) -> list[Tensor]:
        targets = torch.bmm(self.attention(features), torch.stack(logits, dim=1))
        return list(targets.unbind(dim=1))


@register_aggregator
class Attention(AggregatorKind):
    """OKDDip's targets (Chen et al., AAAI 2020): t_a = Σ_b softmax_b(<W_L h_a, W_E h_b>) z_b.

    b runs over all peers including a; h is the globally pooled feature of each peer.
    """

    kind: Literal["attention"] = "attention"
    reduction: int = Field(8, gt=0, description="W_L and W_E map d to d/reduction")
    min_inputs: ClassVar[int] = 2
    reads_features: ClassVar[Literal["none", "one_per_input", "one"]] = "one_per_input"
    per_input: ClassVar[bool] = True
    shape: ClassVar[str] = "doubleoctagon"

    def build(self, logits: list[Shape], features: list[Shape]) -> nn.Module:
        dims = sorted({shape[0] for shape in features})
        if len(dims) != 1:
            raise GraphError(f"attention features have different channel counts {dims}", where=("features",),
                             expected="features of one width")
        return PeerAttention(dims[0], self.reduction)

    def aggregate(self, module: nn.Module | None, x: AggregatorInput) -> list[Tensor]:
        assert module is not None
        return module(x.logits, x.features)

    def caption(self) -> str:
        return f"attention: W_L, W_E (d/{self.reduction})"
