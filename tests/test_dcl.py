"""graphs/dcl.yaml, as shipped, against METHODS.md's DCL written here in plain PyTorch.

The hand-made batch's labels are chosen so that each sender is right on some samples and wrong on
others: the correct gate must keep exactly those samples' KL terms and divide by the full batch.
The linear gate is checked at iteration k = 3 of k_end = 10.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor

from conftest import ROOT
from ktgraph.graph import load_graph
from ktgraph.kinds import GateContext
from test_graphs import WHOLE, Link, Reference, load_job, make_batch, prepared, step, whole

NETS = ["net1", "net2", "net3"]


def kl_per_sample(source: Tensor, target: Tensor) -> Tensor:
    """KL(softmax(source) ‖ softmax(target)) per sample, T = 1, source detached."""
    p = F.softmax(source.detach(), dim=1)
    return (p * (torch.log(p) - F.log_softmax(target, dim=1))).sum(dim=1)


def labels_half_right(job, x: Tensor, y: Tensor) -> Tensor:
    """y with even samples set to net2's prediction and odd ones to net3's, made wrong for the other."""
    modules = job.modules
    with torch.no_grad():
        p2 = copy.deepcopy(modules.networks["net2"]).train()(x).argmax(dim=1)
        p3 = copy.deepcopy(modules.networks["net3"]).eval()(x).argmax(dim=1)
    y = y.clone()
    for n in range(len(y)):
        y[n] = p2[n] if n % 2 == 0 else p3[n]
        if n % 4 == 3 and p2[n] == y[n]:  # odd samples on which net2 would also be right: make y differ
            y[n] = (y[n] + 1) % 10
    return y


def test_the_matrix_as_written():
    graph = load_graph(ROOT / "graphs" / "dcl.yaml")
    gates = {link.name: link.gate.kind for link in graph.links}
    assert gates == {"pretrain:net3": "through", "ce:net1": "through", "ce:net2": "through", "ce:net3": "cutoff",
                     "kl:net2->net1": "correct", "kl:net3->net1": "linear", "kl:net1->net2": "cutoff",
                     "kl:net3->net2": "correct", "kl:net1->net3": "cutoff", "kl:net2->net3": "cutoff"}
    # One cell set from the command line, as a search does.
    again = load_graph(ROOT / "graphs" / "dcl.yaml", ["links.2.gates.net2.net1=linear"])
    assert {link.name: link.gate.kind for link in again.links}["kl:net1->net2"] == "linear"


def test_dcl_stage_matches_the_formula():
    job = load_job("dcl")
    assert [p.stage.name for p in job.program.stages] == ["pretrain", "dcl"]
    plan = prepared(job, 1)
    assert plan.fixed == frozenset({"net3"})  # every incoming link cut off: a fixed teacher
    x, y = make_batch()
    y = labels_half_right(job, x, y)
    k, k_end = 3, 10
    ctx = GateContext(iteration=k, total_iterations=k_end)

    ref = Reference(job.modules, WHOLE, fixed=frozenset({"net3"}))
    z = {n: ref.own(n, x) for n in NETS}
    right = {n: (z[n].argmax(dim=1) == y).to(z[n].dtype) for n in ("net2", "net3")}
    assert 0 < right["net2"].sum() < len(y) and 0 < right["net3"].sum() < len(y)
    B = len(y)
    links = {
        "ce:net1": Link(F.cross_entropy(z["net1"], y), whole(ref, "net1"), "net1"),
        "ce:net2": Link(F.cross_entropy(z["net2"], y), whole(ref, "net2"), "net2"),
        # correct: (1/B) Σ_n m_n ℓ_n with m_n where the sender is right
        "kl:net2->net1": Link((right["net2"] * kl_per_sample(z["net2"], z["net1"])).sum() / B,
                              whole(ref, "net1"), "net1"),
        "kl:net3->net2": Link((right["net3"] * kl_per_sample(z["net3"], z["net2"])).sum() / B,
                              whole(ref, "net2"), "net2"),
        # linear: (k / k_end) · mean ℓ_n
        "kl:net3->net1": Link(k / k_end * kl_per_sample(z["net3"], z["net1"]).mean(), whole(ref, "net1"), "net1"),
    }
    out = step(job, plan, x, y, ctx, ref, links)
    assert all(g is None for n, g in out["grads"].items() if n.startswith("networks.net3."))
