"""KDCL's four teachers on hand-made logits, and graphs/kdcl_*.yaml as shipped, against METHODS.md.

References are written here in float64 with torch/NumPy/SciPy, independently of ktgraph's code:
Naive and MinLogit from their definitions, Linear's optimum by a one-dimensional bounded search
(two students) or a dense grid over the simplex (three) plus the KKT conditions from autograd,
General's weights with ``numpy.linalg.inv``.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from torch import Tensor

from conftest import ROOT
from ktgraph.app.cli import main
from ktgraph.kinds import AGGREGATORS, AggregatorInput, GateContext
from ktgraph.kinds.collective import gather_rows, sum_over_ranks
from test_graphs import WHOLE, Link, Reference, load_job, make_batch, prepared, step, whole

NETS = ["net1", "net2"]
T = 2.0


def mean_ce(alpha: Tensor, z: Tensor, y: Tensor) -> Tensor:
    """(1/B) Σ_n CE(Σ_k α_k z_nk, y_n), z of shape (B, K, C)."""
    return F.cross_entropy((alpha[None, :, None] * z).sum(dim=1), y)


def kkt_residual(alpha: Tensor, z: Tensor, y: Tensor) -> float:
    """How far α is from the simplex-constrained optimum: gradients equal on the support, not lower off it."""
    a = alpha.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(mean_ce(a, z, y), a)
    support = alpha > 0
    lam = g[support].mean()
    off = (lam - g[~support]).clamp(min=0).max().item() if (~support).any() else 0.0
    return max((g[support] - lam).abs().max().item(), off)


def teacher(kind: str, logits: list[Tensor], labels: Tensor, **fields) -> Tensor:
    unit = AGGREGATORS[kind](**fields)
    module = unit.build([tuple(z.shape[1:]) for z in logits], [])
    return unit.aggregate(module, AggregatorInput(logits, [], labels))[0]


# --- the teachers on hand-made logits -----------------------------------------------------------
Z = [torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 3.0], [1.0, 1.0, 0.0]], dtype=torch.float64),
     torch.tensor([[0.5, 0.4, 0.0], [2.0, 0.0, 0.0], [0.0, 3.0, 0.0]], dtype=torch.float64),
     torch.tensor([[0.0, 0.0, 4.0], [0.0, 2.5, 0.0], [0.2, 0.1, 0.0]], dtype=torch.float64)]
Y = torch.tensor([0, 1, 1])


def test_naive_per_sample_and_per_batch():
    ce = torch.stack([F.cross_entropy(z, Y, reduction="none") for z in Z], dim=1)  # (B, K)
    best = [int(ce[n].argmin()) for n in range(3)]
    assert len(set(best)) > 1  # the per-sample choice mixes students
    want = torch.stack([Z[best[n]][n] for n in range(3)])
    torch.testing.assert_close(teacher("kdcl_naive", Z, Y), want)
    batch_best = int(ce.mean(dim=0).argmin())
    torch.testing.assert_close(teacher("kdcl_naive", Z, Y, per="batch"), Z[batch_best])


def test_minlogit_shifts_the_true_class_to_zero_then_takes_the_minimum():
    want = torch.empty(3, 3, dtype=torch.float64)
    for n in range(3):
        for c in range(3):
            want[n, c] = min(float(z[n, c] - z[n, Y[n]]) for z in Z)
    got = teacher("kdcl_minlogit", Z, Y)
    torch.testing.assert_close(got, want)
    assert torch.all(got[torch.arange(3), Y] == 0)


def test_linear_two_students_against_a_bounded_search():
    generator = torch.Generator().manual_seed(3)
    z = [torch.randn(16, 5, generator=generator, dtype=torch.float64) * s for s in (1.0, 3.0)]
    y = torch.randint(0, 5, (16,), generator=generator)
    for n in range(16):
        z[0][n, y[n]] += 1.0
        z[1][n, y[n]] += 2.5
    stacked = torch.stack(z, dim=1)
    found = minimize_scalar(lambda a: float(mean_ce(torch.tensor([a, 1 - a], dtype=torch.float64), stacked, y)),
                            bounds=(0.0, 1.0), method="bounded", options={"xatol": 1e-10})
    alpha = torch.tensor([found.x, 1 - found.x], dtype=torch.float64)
    assert 0.01 < found.x < 0.99  # an interior optimum
    torch.testing.assert_close(teacher("kdcl_linear", z, y), torch.einsum("k,bkc->bc", alpha, stacked),
                               atol=1e-6, rtol=0)


def test_linear_optimum_on_the_simplex_edge():
    """Two useful students and one that is confidently wrong: the optimum gives the third weight 0."""
    generator = torch.Generator().manual_seed(5)
    y = torch.randint(0, 4, (12,), generator=generator)
    good = [torch.randn(12, 4, generator=generator, dtype=torch.float64) for _ in range(2)]
    for n in range(12):
        good[n % 2][n, y[n]] += 3.0  # each good student is right on half the samples
    bad = 4.0 * F.one_hot((y + 1) % 4, 4).double()
    z = [good[0], good[1], bad]
    stacked = torch.stack(z, dim=1)
    # The grid: every α with steps of 1/400 on the simplex.
    steps = 400
    grid = torch.tensor([(i / steps, j / steps, (steps - i - j) / steps) for i in range(steps + 1)
                         for j in range(steps + 1 - i)], dtype=torch.float64)
    values = torch.stack([mean_ce(a, stacked, y) for a in grid])
    best = grid[values.argmin()]
    assert best[2] == 0 and best[0] > 0 and best[1] > 0  # on the edge α_3 = 0, inside it
    got = teacher("kdcl_linear", z, y)
    alpha = torch.linalg.lstsq(stacked.permute(0, 2, 1).reshape(-1, 3), got.reshape(-1, 1)).solution[:, 0]
    assert abs(float(alpha[2])) < 1e-9 and abs(float(alpha.sum()) - 1) < 1e-9
    assert (alpha - best).abs().max() <= 1.0 / steps
    assert float(mean_ce(alpha, stacked, y)) <= float(values.min()) + 1e-12
    assert kkt_residual(alpha.clamp(min=0), stacked, y) < 1e-9


def test_linear_optimum_at_a_vertex_and_the_kkt_conditions_on_random_cohorts():
    generator = torch.Generator().manual_seed(11)
    for trial in range(5):
        k = 2 + trial % 3
        y = torch.randint(0, 6, (20,), generator=generator)
        z = [torch.randn(20, 6, generator=generator, dtype=torch.float64) * (1 + s) for s in range(k)]
        for n in range(20):
            z[n % k][n, y[n]] += 2.0
        got = teacher("kdcl_linear", z, y)
        stacked = torch.stack(z, dim=1)
        alpha = torch.linalg.lstsq(stacked.permute(0, 2, 1).reshape(-1, k), got.reshape(-1, 1)).solution[:, 0]
        alpha = torch.where(alpha.abs() < 1e-12, torch.zeros_like(alpha), alpha)
        assert alpha.min() >= 0 and abs(float(alpha.sum()) - 1) < 1e-9
        assert kkt_residual(alpha, stacked, y) < 1e-9
    # One perfect student: the optimum is its vertex.
    y = torch.tensor([0, 1, 2])
    z = [10 * F.one_hot(y, 3).double(), 10 * F.one_hot((y + 1) % 3, 3).double()]
    torch.testing.assert_close(teacher("kdcl_linear", z, y), z[0])


class FakeHeldOut:
    """A held-out split of given logits and labels, in batches of 5."""

    def __init__(self, logits: list[Tensor], labels: Tensor) -> None:
        self.logits, self.labels = logits, labels

    def batches(self):
        for start in range(0, len(self.labels), 5):
            yield AggregatorInput([z[start:start + 5] for z in self.logits], [], self.labels[start:start + 5])


def general_by_numpy(logits: list[Tensor], labels: Tensor) -> np.ndarray:
    errors = [F.softmax(z, dim=1).numpy() - np.eye(z.shape[1])[labels.numpy()] for z in logits]
    k = len(errors)
    c = np.array([[np.mean(np.sum(errors[i] * errors[j], axis=1)) for j in range(k)] for i in range(k)])
    inverse = np.linalg.inv(c)
    return inverse.sum(axis=1) / inverse.sum()


def test_general_weights_against_numpy_inv():
    generator = torch.Generator().manual_seed(2)
    y = torch.randint(0, 4, (23,), generator=generator)
    z = [torch.randn(23, 4, generator=generator, dtype=torch.float64) * s for s in (1.0, 2.0, 0.5)]
    unit = AGGREGATORS["kdcl_general"]()
    module = unit.build([(4,)] * 3, [])
    torch.testing.assert_close(module.weights, torch.full((3,), 1 / 3))  # uniform before the first epoch end
    unit.on_epoch_end(module, None, FakeHeldOut(z, y))
    want = general_by_numpy(z, y)
    torch.testing.assert_close(module.weights.double(), torch.from_numpy(want), atol=1e-6, rtol=1e-5)
    assert "weights" in dict(module.named_buffers())  # saved in every checkpoint
    got = unit.aggregate(module, AggregatorInput([v.float() for v in z], []))[0]
    torch.testing.assert_close(got.double(), sum(float(w) * v for w, v in zip(want, z)), atol=1e-5, rtol=1e-5)
    assert unit.metrics(module, ["a", "b", "c"]) == pytest.approx(dict(zip("abc", want)), abs=1e-5)


def test_one_process_gathers_nothing():
    rows = torch.arange(6.0).reshape(3, 2)
    (same,) = gather_rows(rows)
    assert torch.equal(same, rows) and not same.requires_grad
    torch.testing.assert_close(sum_over_ranks(rows), rows)


# --- the graph files as shipped --------------------------------------------------------------------
def linear_alpha_by_search(z1: Tensor, z2: Tensor, y: Tensor) -> Tensor:
    stacked = torch.stack([z1, z2], dim=1).detach().double()
    found = minimize_scalar(lambda a: float(mean_ce(torch.tensor([a, 1 - a], dtype=torch.float64), stacked, y)),
                            bounds=(0.0, 1.0), method="bounded", options={"xatol": 1e-12})
    return torch.tensor([found.x, 1 - found.x])


def reference_teacher(variant: str, z: dict[str, Tensor], y: Tensor, weights: Tensor) -> Tensor:
    z1, z2 = z["net1"], z["net2"]
    if variant == "naive":
        pick = F.cross_entropy(z1, y, reduction="none") <= F.cross_entropy(z2, y, reduction="none")
        return torch.where(pick[:, None], z1, z2)
    if variant == "minlogit":
        idx = torch.arange(len(y))
        return torch.minimum(z1 - z1[idx, y][:, None], z2 - z2[idx, y][:, None])
    alpha = linear_alpha_by_search(z1, z2, y) if variant == "linear" else weights
    return alpha[0] * z1 + alpha[1] * z2


@pytest.mark.parametrize("variant", ["naive", "linear", "minlogit", "general"])
def test_kdcl_graph_files(variant):
    job = load_job(f"kdcl_{variant}")
    plan = prepared(job)
    x, y = make_batch()
    weights = torch.tensor([0.3, 0.7])
    if variant == "general":  # weights as an epoch end would leave them
        job.modules.aggregators["teacher"].weights.copy_(weights)
        assert "aggregators.teacher.weights" in job.modules.state_dict()
    ref = Reference(job.modules, WHOLE)
    z = {n: ref.own(n, x) for n in NETS}
    z_t = reference_teacher(variant, z, y, weights).detach()
    links = {f"ce:{n}": Link(F.cross_entropy(z[n], y), whole(ref, n), n) for n in NETS}
    for n in NETS:  # λ T² KL(softmax(z_t/T) ‖ softmax(z_i/T)), λ = 1, teacher detached
        links[f"kl:teacher->{n}"] = Link(T * T * F.kl_div(F.log_softmax(z[n] / T, dim=1), F.softmax(z_t / T, dim=1),
                                                          reduction="batchmean"), whole(ref, n), n)
    step(job, plan, x, y, GateContext(), ref, links)


def test_general_weights_in_metrics_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    quick = ["train.epochs=2", "data.limit_train=120", "data.limit_test=40", "data.image_size=16",
             "train.batch_size=32"]
    assert main(["run", str(ROOT / "graphs/kdcl_general.yaml"), "--out", str(out), "--no-progress", *quick]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    shown = [line["aggregators"]["teacher"] for line in lines]
    assert all(set(w) == set(NETS) and abs(sum(w.values()) - 1) < 1e-5 for w in shown)
    saved = torch.load(out / "checkpoints/last.pt", weights_only=True)["model"]["aggregators.teacher.weights"]
    torch.testing.assert_close(saved, torch.tensor([shown[-1][n] for n in NETS]), atol=1e-6, rtol=0)
    assert not torch.allclose(saved, torch.full((2,), 0.5))  # recomputed, not left uniform


def _rank_teachers(rank: int, world: int, port: int, z: list[Tensor], y: Tensor, out: dict) -> None:
    """One process of a two-process run: its shard of the batch (uneven: 5 and 4 rows)."""
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        rows = slice(0, 5) if rank == 0 else slice(5, None)
        out[rank] = {kind: teacher(kind, [v[rows] for v in z], y[rows], **fields)
                     for kind, fields in (("kdcl_linear", {}), ("kdcl_naive", {"per": "batch"}))}
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one():
    """KDCL-Linear (and Naive per batch) gather the whole batch: two shards give the one-process teacher."""
    import socket

    import torch.multiprocessing as mp
    generator = torch.Generator().manual_seed(4)
    y = torch.randint(0, 4, (9,), generator=generator)
    z = [torch.randn(9, 4, generator=generator, dtype=torch.float64) * s for s in (1.0, 2.0)]
    for n in range(9):
        z[n % 2][n, y[n]] += 2.0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.get_context("spawn").Manager()
    out = manager.dict()
    mp.start_processes(_rank_teachers, args=(2, port, z, y, out), nprocs=2, start_method="spawn")
    for kind, fields in (("kdcl_linear", {}), ("kdcl_naive", {"per": "batch"})):
        whole_batch = teacher(kind, z, y, **fields)
        torch.testing.assert_close(torch.cat([out[0][kind], out[1][kind]]), whole_batch, atol=1e-9, rtol=0)
