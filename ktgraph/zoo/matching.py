"""Which channel of one network is which channel of another: scores and assignments.

Activations at a cut are read as samples of channels: (N, C, H, W) becomes N·H·W rows of C.
:class:`Moments` streams the sums over any number of batches (in float64), from which every
score is exact: ``correlation`` (Pearson, Git Re-Basin's activation matching), ``cosine``
(uncentred) and ``l2`` (minus the mean squared distance, so that larger is better everywhere).
An assignment reads ``order[i]``: the second network's channel matched to the first's channel
``i``; ``hungarian`` maximises the summed score (an optimal assignment), ``stable`` is
Gale–Shapley's stable matching (the XML study's XML_m), ``none`` keeps the order. A width change is
mapped by least squares instead (:func:`least_squares`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

_EPS = 1e-12


@dataclass
class Moments:
    """Running sums of the joint channels ``[a, b]``: count, sum and the sum of outer products."""

    width_a: int
    width_b: int
    count: int = 0
    total: Tensor | None = None
    outer: Tensor | None = None

    def add(self, a: Tensor, b: Tensor) -> None:
        """Add a batch of features of both networks at the cut, (N, C, H, W) or (N, C)."""
        rows = torch.cat([_rows(a), _rows(b)], dim=1)
        total, outer = rows.sum(0), rows.T @ rows
        self.total = total if self.total is None else self.total + total
        self.outer = outer if self.outer is None else self.outer + outer
        self.count += rows.shape[0]

    def means(self) -> tuple[Tensor, Tensor]:
        mean = self._checked()[0] / self.count
        return mean[: self.width_a], mean[self.width_a:]

    def second(self) -> tuple[Tensor, Tensor, Tensor]:
        """E[a aᵀ], E[a bᵀ] and E[b bᵀ]."""
        second = self._checked()[1] / self.count
        a = self.width_a
        return second[:a, :a], second[:a, a:], second[a:, a:]

    def covariance(self) -> tuple[Tensor, Tensor, Tensor]:
        """Cov(a, a), Cov(a, b) and Cov(b, b)."""
        (aa, ab, bb), (mean_a, mean_b) = self.second(), self.means()
        return aa - mean_a.outer(mean_a), ab - mean_a.outer(mean_b), bb - mean_b.outer(mean_b)

    def _checked(self) -> tuple[Tensor, Tensor]:
        if self.total is None or self.outer is None or self.count == 0:
            raise ValueError("no features were added")
        return self.total, self.outer


def _rows(x: Tensor) -> Tensor:
    x = x.detach().to(torch.float64)
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def _correlation(m: Moments) -> Tensor:
    aa, ab, bb = m.covariance()
    return ab / (aa.diagonal().clamp_min(0).sqrt().outer(bb.diagonal().clamp_min(0).sqrt()) + _EPS)


def _cosine(m: Moments) -> Tensor:
    aa, ab, bb = m.second()
    return ab / (aa.diagonal().sqrt().outer(bb.diagonal().sqrt()) + _EPS)


def _l2(m: Moments) -> Tensor:
    aa, ab, bb = m.second()
    return 2 * ab - aa.diagonal()[:, None] - bb.diagonal()[None, :]


_SCORE: dict[str, Callable[[Moments], Tensor]] = {"correlation": _correlation, "cosine": _cosine, "l2": _l2}


def score_matrix(moments: Moments, score: str) -> Tensor:
    """``S[i, j]``: how alike channel ``i`` of the first network and channel ``j`` of the second are."""
    return _SCORE[score](moments)


def hungarian(scores: Tensor) -> list[int]:
    """The order that maximises the summed score (``scipy.optimize.linear_sum_assignment``)."""
    rows, cols = linear_sum_assignment(scores.cpu().numpy(), maximize=True)
    return [int(c) for _, c in sorted(zip(rows, cols))]


def stable(scores: Tensor) -> list[int]:
    """Gale–Shapley: the first network's channels propose in order of score; ties go to the lower index.

    No pair (i, j) prefers each other to their partners: the matching is stable, not optimal.
    """
    n = scores.shape[0]
    prefs = [sorted(range(n), key=lambda j, row=row: (-row[j], j)) for row in scores.tolist()]
    column = scores.T.tolist()
    partner: dict[int, int] = {}  # second network's channel -> first's
    nxt = [0] * n
    free = list(range(n))
    while free:
        i = free.pop()
        j = prefs[i][nxt[i]]
        nxt[i] += 1
        held = partner.get(j)
        if held is None:
            partner[j] = i
        elif (column[j][i], -i) > (column[j][held], -held):
            partner[j] = i
            free.append(held)
        else:
            free.append(i)
    order = [0] * n
    for j, i in partner.items():
        order[i] = j
    return order


def assign(scores: Tensor, method: str) -> list[int]:
    """The channel order for ``method``; square scores only (equal widths)."""
    if method == "hungarian":
        return hungarian(scores)
    if method == "stable":
        return stable(scores)
    return list(range(scores.shape[0]))


def matching_scores(scores: Tensor, order: list[int]) -> dict[str, float]:
    """Three matching scores, as mean scores per channel: the present order, a random order and ``order``.

    ``random`` is the exact mean over all orders (every pair is equally likely), not one draw.
    """
    index = torch.arange(scores.shape[0])
    return {"identity": float(scores.diagonal().mean()), "random": float(scores.mean()),
            "mapped": float(scores[index, torch.as_tensor(order)].mean())}


def least_squares(moments: Moments, *, reverse: bool = False) -> tuple[Tensor, Tensor]:
    """The affine map ``b ≈ W a + c`` of least squared error: ``W = Cov(b, a) Cov(a, a)⁺``, ``c = E b − W E a``
    (``reverse``: ``a`` from ``b``).

    The standard initialisation of a stitching layer between networks of different widths.
    """
    aa, ab, bb = moments.covariance()
    mean_a, mean_b = moments.means()
    if reverse:
        aa, ab, mean_a, mean_b = bb, ab.T, mean_b, mean_a
    weight = ab.T @ torch.linalg.pinv(aa, hermitian=True)
    return weight, mean_b - weight @ mean_a


def linear_cka(moments: Moments) -> float:
    """Linear CKA between the two features (the model-stitching papers' similarity), from the covariances."""
    aa, ab, bb = moments.covariance()
    return float((ab * ab).sum() / ((aa * aa).sum().sqrt() * (bb * bb).sum().sqrt() + _EPS))
