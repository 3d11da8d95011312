"""KDCL's four teachers (Guo et al., CVPR 2020): logits built from the students, per batch.

No official code is public; the choices below are ktgraph's and docs/methods/kdcl.md states them.
Each teacher is an aggregator read by the students' KL links (detached there, as docs/methods/kdcl.md says).
Naive, Linear and MinLogit read the labels, so evaluation (which must not) does not report them;
General's weights come from the held-out split and are fixed during an epoch.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .aggregators import AggregatorInput, AggregatorKind, Shape, register_aggregator
from .base import EpochInfo, HeldOut
from .collective import gather_rows, sum_over_ranks
from .losses import cross_entropy
from .simplex import simplex_ce_weights


def _stacked(x: AggregatorInput) -> tuple[Tensor, Tensor]:
    """The students' logits as (B, K, C), and the labels (a teacher built from labels needs them)."""
    if x.labels is None:
        raise ValueError("this KDCL teacher reads the labels, which evaluation does not give")
    return torch.stack(x.logits, dim=1), x.labels


class _Teacher(AggregatorKind):
    """A KDCL teacher: at least two students, one output named like the aggregator."""

    min_inputs: ClassVar[int] = 2
    uses_labels: ClassVar[bool] = True


@register_aggregator
class KDCLNaive(_Teacher):
    """KDCL-Naive: the logits of the student with the lowest CE, per sample (or one student per batch)."""

    kind: Literal["kdcl_naive"] = "kdcl_naive"
    per: Literal["sample", "batch"] = "sample"

    def aggregate(self, module: nn.Module | None, x: AggregatorInput) -> list[Tensor]:
        z, y = _stacked(x)
        ce = cross_entropy(z.transpose(1, 2), y[:, None].expand(-1, z.shape[1]))  # (B, K); float64 stays float64
        if self.per == "sample":
            best = ce.argmin(dim=1)
            return [z[torch.arange(z.shape[0], device=z.device), best]]
        (every,) = gather_rows(ce)  # the whole batch's CE, across processes
        return [z[:, int(every.mean(dim=0).argmin())]]

    def caption(self) -> str:
        return f"kdcl naive: lowest CE per {self.per}"


@register_aggregator
class KDCLLinear(_Teacher):
    """KDCL-Linear: Σ_k α_k z_k with α on the simplex minimising the batch's CE of the combination."""

    kind: Literal["kdcl_linear"] = "kdcl_linear"

    def aggregate(self, module: nn.Module | None, x: AggregatorInput) -> list[Tensor]:
        z, y = _stacked(x)
        alpha = simplex_ce_weights(*gather_rows(z, y)).to(z.device, z.dtype)
        return [torch.einsum("k,bkc->bc", alpha, z)]

    def caption(self) -> str:
        return "kdcl linear: convex α, least CE"


@register_aggregator
class KDCLMinLogit(_Teacher):
    """KDCL-MinLogit: each student's logits shifted so the true class is 0, then the element-wise minimum."""

    kind: Literal["kdcl_minlogit"] = "kdcl_minlogit"

    def aggregate(self, module: nn.Module | None, x: AggregatorInput) -> list[Tensor]:
        z, y = _stacked(x)
        true = z.gather(2, y[:, None, None].expand(-1, z.shape[1], 1))
        return [(z - true).min(dim=1).values]

    def caption(self) -> str:
        return "kdcl minlogit"


class GeneralWeights(nn.Module):
    """KDCL-General's weights, a buffer (so checkpoints keep them): uniform until the first epoch ends."""

    weights: Tensor

    def __init__(self, students: int) -> None:
        super().__init__()
        self.register_buffer("weights", torch.full((students,), 1.0 / students))


@register_aggregator
class KDCLGeneral(AggregatorKind):
    """KDCL-General: w = C⁻¹1 / 1ᵀC⁻¹1, C the students' error covariance on the held-out split.

    The error of student k on sample n is e_nk = softmax(z_nk) − onehot(y_n); C_kj = (1/N) Σ_n ⟨e_nk, e_nj⟩
    (the generalised ensemble's misfit correlation). Recomputed at the end of every epoch.
    """

    kind: Literal["kdcl_general"] = "kdcl_general"
    min_inputs: ClassVar[int] = 2
    needs_heldout: ClassVar[bool] = True

    def build(self, logits: list[Shape], features: list[Shape]) -> nn.Module:
        return GeneralWeights(len(logits))

    def aggregate(self, module: nn.Module | None, x: AggregatorInput) -> list[Tensor]:
        assert isinstance(module, GeneralWeights)
        z = torch.stack(x.logits, dim=1)
        return [torch.einsum("k,bkc->bc", module.weights.to(z.dtype), z)]

    def on_epoch_end(self, module: nn.Module | None, epoch: EpochInfo, heldout: HeldOut | None) -> None:
        assert isinstance(module, GeneralWeights)
        if heldout is None:
            return
        k = len(module.weights)
        # Sums on the weights' device, where a collective backend (NCCL on CUDA) can reduce them.
        sums = torch.zeros(k * k + 1, dtype=torch.float64, device=module.weights.device)  # Σ e eᵀ, then N
        for batch in heldout.batches():
            z = torch.stack(batch.logits, dim=1).double()
            errors = z.softmax(dim=2) - F.one_hot(batch.labels, z.shape[2]).double()[:, None, :]
            sums[:-1] += torch.einsum("bkc,bjc->kj", errors, errors).flatten().to(sums.device)
            sums[-1] += z.shape[0]
        sums = sum_over_ranks(sums)  # the whole split, across processes
        covariance = (sums[:-1] / sums[-1]).reshape(k, k).cpu()
        module.weights.copy_(general_weights(covariance).to(module.weights))

    def metrics(self, module: nn.Module | None, inputs: Sequence[str]) -> dict[str, float]:
        assert isinstance(module, GeneralWeights)
        return {name: round(float(w), 6) for name, w in zip(inputs, module.weights)}

    def caption(self) -> str:
        return "kdcl general: w = C⁻¹1 / 1ᵀC⁻¹1"


def general_weights(covariance: Tensor) -> Tensor:
    """C⁻¹1 / 1ᵀC⁻¹1; a singular C (two identical students) through the pseudo-inverse."""
    inverse_ones = torch.linalg.pinv(covariance.double()) @ torch.ones(len(covariance), dtype=torch.float64)
    return inverse_ones / inverse_ones.sum()
