"""KDCL-Linear's weights: the convex combination of the students' logits with the least cross-entropy.

    α* = argmin_{α ≥ 0, Σα = 1}  (1/B) Σ_n CE(Σ_k α_k z_nk, y_n)

The objective is convex and smooth in α (a log-sum-exp of linear functions minus a linear term), so
the minimiser is characterised by the KKT conditions: on the support S the gradients g_k are equal
(to λ), off it g_k ≥ λ. SLSQP (scipy) finds the support from the uniform start; a few Newton steps
on that face (the exact Hessian, the constraint Σα = 1 in the KKT system) then bring the gradient
conditions to rounding error, where SLSQP alone stops near 1e-7. Everything is float64 on the CPU:
the problem is K-dimensional (K students), whatever the batch and the number of classes.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

SUPPORT = 1e-8  # weights below this after SLSQP are taken to be on the simplex's boundary (zero)


def _value_grad(z: np.ndarray, zy: np.ndarray, a: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Mean CE of the weighted logits and its gradient in α; then the softmax and E_p[z_k] the Hessian reuses."""
    s = np.einsum("bkc,k->bc", z, a)
    top = s.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(s - top).sum(axis=1))
    p = np.exp(s - lse[:, None])
    expected = np.einsum("bc,bkc->bk", p, z)  # E_p[z_k] per sample
    return float((lse - zy @ a).mean()), (expected - zy).mean(axis=0), p, expected


def _hessian(z: np.ndarray, p: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """The Hessian in α: the mean over samples of the covariance of the z_k under p (only Newton needs it)."""
    b = z.shape[0]
    return np.einsum("bc,bkc,bjc->kj", p, z, z) / b - expected.T @ expected / b


def _newton_on_face(z: np.ndarray, zy: np.ndarray, a: np.ndarray, steps: int = 20) -> np.ndarray:
    """Equality-constrained Newton steps on the support of ``a``, never leaving the simplex."""
    face = a > 0
    n = int(face.sum())
    value, grad, p, expected = _value_grad(z, zy, a)
    for _ in range(steps):
        hess = _hessian(z, p, expected)
        kkt = np.zeros((n + 1, n + 1))
        kkt[:n, :n], kkt[:n, n], kkt[n, :n] = hess[np.ix_(face, face)], 1.0, 1.0
        direction = np.linalg.lstsq(kkt, np.concatenate([-grad[face], [0.0]]), rcond=None)[0][:n]
        shrinking = direction < 0
        step = min(1.0, float((a[face][shrinking] / -direction[shrinking]).min())) if shrinking.any() else 1.0
        moved = a.copy()
        moved[face] = np.clip(a[face] + step * direction, 0.0, None)
        moved /= moved.sum()
        at_moved = _value_grad(z, zy, moved)  # evaluated once: the next step starts from it
        if at_moved[0] > value + 1e-12:  # no more progress than rounding
            break
        a, (value, grad, p, expected) = moved, at_moved
        if np.abs(direction).max() < 1e-15:
            break
    return a


def simplex_ce_weights(logits: Tensor, labels: Tensor) -> Tensor:
    """α* for logits of shape (B, K, C) and labels (B,): K weights, α ≥ 0, Σα = 1 (float64, CPU)."""
    z = logits.detach().to("cpu", torch.float64).numpy()
    y = labels.detach().cpu().numpy()
    k = z.shape[1]
    if k == 1:
        return torch.ones(1, dtype=torch.float64)
    zy = z[np.arange(z.shape[0]), :, y]
    found = minimize(lambda a: _value_grad(z, zy, a)[:2], np.full(k, 1.0 / k), jac=True, method="SLSQP",
                     bounds=[(0.0, 1.0)] * k, options={"ftol": 1e-15, "maxiter": 500},
                     constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1.0, "jac": lambda a: np.ones(k)}])
    a = np.where(found.x > SUPPORT, found.x, 0.0)
    a = _newton_on_face(z, zy, a / a.sum())
    return torch.from_numpy(a)
