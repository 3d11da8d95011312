"""Scores, assignments and least squares against independent computations."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ktgraph.zoo.matching import (Moments, assign, hungarian, least_squares, linear_cka, matching_scores,
                                  score_matrix, stable)


def _pair(seed: int = 0, channels: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features ``a`` and ``b``: b's channel j is a's channel truth[j], scaled, shifted and noisy."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(64, channels, 3, 3, generator=gen)
    truth = torch.randperm(channels, generator=gen)
    b = 2 * a[:, truth] + 1 + 0.3 * torch.randn(a.shape, generator=gen)
    return a, b, truth


def _moments(a: torch.Tensor, b: torch.Tensor, batches: int = 4) -> Moments:
    moments = Moments(a.shape[1], b.shape[1])
    for x, y in zip(a.chunk(batches), b.chunk(batches)):
        moments.add(x, y)
    return moments


def test_streamed_scores_equal_numpy_on_all_rows() -> None:
    a, b, _ = _pair()
    m = _moments(a, b)
    x = a.permute(0, 2, 3, 1).reshape(-1, 12).double().numpy()
    y = b.permute(0, 2, 3, 1).reshape(-1, 12).double().numpy()
    corr = np.corrcoef(x.T, y.T)[:12, 12:]
    cos = (x.T @ y) / np.outer(np.linalg.norm(x, axis=0), np.linalg.norm(y, axis=0))
    l2 = -((x[:, :, None] - y[:, None, :]) ** 2).mean(0)
    np.testing.assert_allclose(score_matrix(m, "correlation").numpy(), corr, atol=1e-9)
    np.testing.assert_allclose(score_matrix(m, "cosine").numpy(), cos, atol=1e-9)
    np.testing.assert_allclose(score_matrix(m, "l2").numpy(), l2, atol=1e-9)


@pytest.mark.parametrize("method", ["hungarian", "stable"])
def test_a_known_permutation_is_recovered(method: str) -> None:
    a, b, truth = _pair()
    scores = score_matrix(_moments(a, b), "correlation")
    order = assign(scores, method)
    # a's channel i is b's channel j where truth[j] == i
    assert order == torch.argsort(truth).tolist()
    three = matching_scores(scores, order)
    assert three["mapped"] > 0.9 and three["mapped"] > three["identity"] and three["mapped"] > three["random"]


def test_hungarian_is_optimal_by_brute_force() -> None:
    scores = torch.randn(6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    best = max(itertools.permutations(range(6)), key=lambda p: sum(scores[i, j] for i, j in enumerate(p)))
    assert hungarian(scores) == list(best)


@pytest.mark.parametrize("seed", range(5))
def test_stable_has_no_blocking_pair(seed: int) -> None:
    scores = torch.randn(20, 20, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    order = stable(scores)
    assert sorted(order) == list(range(20))
    partner_of = {j: i for i, j in enumerate(order)}
    for i, j in itertools.product(range(20), repeat=2):
        blocks = scores[i, j] > scores[i, order[i]] and scores[i, j] > scores[partner_of[j], j]
        assert not blocks, (i, j)


def test_random_is_the_mean_over_every_order() -> None:
    scores = torch.randn(5, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    every = [matching_scores(scores, list(p))["mapped"] for p in itertools.permutations(range(5))]
    assert matching_scores(scores, list(range(5)))["random"] == pytest.approx(sum(every) / len(every))
    assert assign(scores, "none") == list(range(5))


def test_least_squares_equals_lstsq_for_different_widths() -> None:
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(200, 6, generator=gen, dtype=torch.float64)
    b = a @ torch.randn(6, 9, generator=gen, dtype=torch.float64) + 0.5
    weight, bias = least_squares(_moments(a, b))
    ones = torch.cat([a, torch.ones(200, 1, dtype=torch.float64)], 1)
    solution = torch.linalg.lstsq(ones, b).solution
    torch.testing.assert_close(weight, solution[:6].T)
    torch.testing.assert_close(bias, solution[6])
    back, _ = least_squares(_moments(b, a), reverse=True)
    torch.testing.assert_close(back, weight)


def test_linear_cka_equals_its_kernel_definition() -> None:
    gen = torch.Generator().manual_seed(6)
    a = torch.randn(100, 5, generator=gen, dtype=torch.float64)
    b = torch.tanh(a @ torch.randn(5, 7, generator=gen, dtype=torch.float64))
    x, y = (a - a.mean(0)).numpy(), (b - b.mean(0)).numpy()
    direct = np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))
    assert linear_cka(_moments(a, b)) == pytest.approx(direct)
    assert linear_cka(_moments(a, a @ torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=torch.float64))[0])) \
        == pytest.approx(1.0)
