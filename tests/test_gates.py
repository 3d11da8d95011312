"""Gates on hand-computed inputs, and the losses' reduction conventions."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import Built
from ktgraph.kinds import GATES, GateContext, correct_mask, ramp_weight
from ktgraph.kinds.losses import cross_entropy, feature_mimic, kl_divergence

LOSSES = torch.tensor([1.0, 2.0, 3.0, 6.0])


def test_through_is_the_mean():
    assert GATES["through"]().reduce(LOSSES, GateContext()).item() == pytest.approx(3.0)


def test_linear_scales_by_iteration_over_total():
    ctx = GateContext(iteration=25, total_iterations=100)
    assert GATES["linear"]().reduce(LOSSES, ctx).item() == pytest.approx(0.25 * 3.0)
    assert GATES["linear"]().reduce(LOSSES, GateContext(100, 100)).item() == pytest.approx(3.0)


def test_correct_masks_and_divides_by_the_full_batch():
    source = torch.tensor([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0], [0.0, 5.0]])
    labels = torch.tensor([0, 0, 0, 1])  # the source is right on samples 0, 2 and 3
    mask = correct_mask(source, labels)
    assert mask.tolist() == [1.0, 0.0, 1.0, 1.0]
    assert GATES["correct"]().reduce(LOSSES, GateContext(), mask).item() == pytest.approx((1 + 3 + 6) / 4)


def test_ramp_is_the_okddip_schedule():
    assert ramp_weight(0, 80) == pytest.approx(math.exp(-5))
    assert ramp_weight(40, 80) == pytest.approx(math.exp(-5 * 0.25))
    assert ramp_weight(80, 80) == 1.0 and ramp_weight(200, 80) == 1.0
    ctx = GateContext(epoch=40)
    assert GATES["ramp"](length=80).reduce(LOSSES, ctx).item() == pytest.approx(3.0 * math.exp(-1.25))


def test_kl_is_t_squared_batchmean_in_the_documented_direction():
    source = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    target = torch.tensor([[0.0, 1.0, 0.0], [1.0, -1.0, 2.0]])
    T = 2.0
    p = torch.softmax(source / T, 1)
    q = torch.softmax(target / T, 1)
    by_hand = [T * T * sum(p[n, c] * math.log(p[n, c] / q[n, c]) for c in range(3)) for n in range(2)]
    torch.testing.assert_close(kl_divergence(source, target, T), torch.tensor(by_hand))


def test_ce_and_mimic_per_sample():
    logits = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    labels = torch.tensor([1, 1])
    expected = [-math.log(math.exp(2) / (math.exp(1) + math.exp(2))), -math.log(1 / (math.exp(3) + 1))]
    torch.testing.assert_close(cross_entropy(logits, labels), torch.tensor(expected))
    a = torch.tensor([[[[1.0, 3.0]]]])
    b = torch.tensor([[[[0.0, 0.0]]]])
    assert feature_mimic(a, b, "mse").item() == pytest.approx(5.0)
    assert feature_mimic(a, b, "l1").item() == pytest.approx(2.0)
    assert feature_mimic(a, a * 2, "cosine").item() == pytest.approx(0.0, abs=1e-6)


GATED = """
networks:
  a: {model: tiny_test}
  b: {model: tiny_test, kwargs: {width: 6}}
links:
  - {kind: ce, target: a, gate: correct}
  - {kind: kl, source: b, target: a, gate: correct, T: 2}
  - {kind: kl, source: a, target: b, gate: linear}
  - {kind: ce, target: b, gate: cutoff}
"""


def test_gates_inside_a_plan(batch):
    x, y = batch
    built = Built(GATED)
    assert "ce:b" not in {t.link for t in built.plan.terms}  # cutoff: not compiled at all
    ctx = GateContext(iteration=3, total_iterations=12)
    losses = built.executor.losses(built.executor.forward(x), y, ctx)
    za, zb = built.net("a")(x), built.net("b")(x)
    # correct on a CE link equals through (the label is always right)
    torch.testing.assert_close(losses["ce:a"], cross_entropy(za, y).mean())
    mask = (zb.argmax(1) == y).float()
    torch.testing.assert_close(losses["kl:b->a"], (kl_divergence(zb, za, 2) * mask).sum() / len(y))
    torch.testing.assert_close(losses["kl:a->b"], 0.25 * kl_divergence(za, zb).mean())
