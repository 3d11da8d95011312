"""Shared trunks (``shares:``): one set of parameters, computed once per step, trained by every branch,
its own running statistics, no calibration, each branch a node of its own.

The references run the trunk and heads by hand (torch modules, no ktgraph) and differentiate the
total loss; since each branch's terms depend only on the trunk and that branch's head, the total's
gradient is the sum over branches of each branch's own gradient.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import Built, load_text
from ktgraph.errors import GraphError
from ktgraph.graph import SegmentId
from ktgraph.kinds import GateContext
from ktgraph.runtime.export import path_module
from ktgraph.runtime.measure import node_params, node_plan

TOL = 1e-5

BRANCHES = """
networks:
  b1: {model: tiny_test, cuts: [block1], parts: [trunk, head]}
  b2: {model: tiny_test, cuts: [block1], parts: [trunk, head], shares: {trunk: b1}}
  b3: {model: tiny_test, cuts: [block1], parts: [trunk, head], shares: {trunk: b1}}
aggregators:
  ens: {kind: mean, inputs: [b1, b2, b3]}
links:
  - {kind: ce, each: {i: [b1, b2, b3]}, target: "{i}"}
  - {kind: kl, each: {i: [b1, b2, b3]}, source: ens, target: "{i}", T: 3}
"""
BRANCH_NAMES = ["b1", "b2", "b3"]


def kl(source: torch.Tensor, target: torch.Tensor, T: float) -> torch.Tensor:
    return T * T * F.kl_div(F.log_softmax(target / T, dim=1), F.softmax(source.detach() / T, dim=1),
                            reduction="batchmean")


def test_shared_trunk_is_one_module_computed_once(batch):
    x, y = batch
    built = Built(BRANCHES)
    nets = {n: built.net(n) for n in BRANCH_NAMES}
    assert nets["b2"].stem is nets["b1"].stem and nets["b3"].block1 is nets["b1"].block1
    assert nets["b2"].head is not nets["b1"].head
    assert [s for s in built.graph.segments if s.part == "trunk"] == [SegmentId("b1", "trunk")]
    calls = []
    nets["b1"].stem.register_forward_hook(lambda *args: calls.append(1))
    bn = nets["b1"].stem[1]
    tracked = int(bn.num_batches_tracked)
    mean = bn.running_mean.clone()
    built.model.zero_grad(set_to_none=True)
    losses = built.executor.losses(built.executor.forward(x), y, GateContext())
    built.executor.backward(losses)
    assert len(calls) == 1  # the trunk runs once per step for the three branches
    assert int(bn.num_batches_tracked) == tracked + 1  # and its statistics update once
    conv = nets["b1"].stem[0](x)
    want_mean = 0.9 * mean + 0.1 * conv.mean(dim=(0, 2, 3))
    torch.testing.assert_close(bn.running_mean, want_mean, atol=TOL, rtol=0)
    assert all(step.stats == "update" for step in built.plan.steps if hasattr(step, "stats"))
    assert all(getattr(step, "stats", "update") != "calibrated" for step in built.program.eval.steps)
    grads = {n: (p.grad.clone() if p.grad is not None else None) for n, p in built.model.named_parameters()}

    # The reference: the trunk by hand, each head on it, the total loss differentiated.
    built.model.zero_grad(set_to_none=True)
    with torch.no_grad():
        bn.running_mean.copy_(mean)  # (only the statistics differ from the step above)
    feature = nets["b1"].block1(nets["b1"].stem(x))
    z = {n: nets[n].head(nets[n].block2(feature)) for n in BRANCH_NAMES}
    ens = sum(z.values()) / 3
    per_branch = {n: F.cross_entropy(z[n], y) + kl(ens, z[n], 3.0) for n in BRANCH_NAMES}
    torch.testing.assert_close(sum(losses.values()), sum(per_branch.values()), atol=TOL, rtol=0)
    trunk = [p for m in (nets["b1"].stem, nets["b1"].block1) for p in m.parameters()]
    by_hand = [torch.zeros_like(p) for p in trunk]
    for n in BRANCH_NAMES:  # the trunk's gradient: the sum over branches of each one's own
        for acc, g in zip(by_hand, torch.autograd.grad(per_branch[n], trunk, retain_graph=True)):
            acc += g
    named = dict(built.model.named_parameters())
    got = {id(p): grads[name] for name, p in named.items()}
    for p, g in zip(trunk, by_hand):
        torch.testing.assert_close(got[id(p)], g, atol=TOL, rtol=1e-4)
    for n in BRANCH_NAMES:  # each head: its own branch's loss only
        head = [p for m in (nets[n].block2, nets[n].head) for p in m.parameters()]
        for p, g in zip(head, torch.autograd.grad(per_branch[n], head, retain_graph=True)):
            torch.testing.assert_close(got[id(p)], g, atol=TOL, rtol=1e-4)


def test_branches_are_nodes_with_exact_params(batch):
    x, _ = batch
    built = Built(BRANCHES)
    plan, graph, modules = built.program.eval, built.graph, built.model
    assert not any(graph.paths[n].is_cross for n in BRANCH_NAMES)
    assert {"b1", "b2", "b3", "ens", "mean(networks)"} <= set(plan.outputs)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    trunk = count(built.net("b1").stem) + count(built.net("b1").block1)
    head = count(built.net("b1").block2) + count(built.net("b1").head)
    assert node_params(modules, node_plan(plan, graph, "b2")) == trunk + head
    assert node_params(modules, node_plan(plan, graph, "mean(networks)")) == trunk + 3 * head  # the trunk once
    modules.eval()
    branch = path_module(built.bound, "b3")  # trunk + head, plain torch modules
    with torch.no_grad():
        want = built.net("b3").head(built.net("b3").block2(built.net("b1").block1(built.net("b1").stem(x))))
        torch.testing.assert_close(branch(x), want)


def test_freezing_a_branch_keeps_the_shared_trunk_training():
    built = Built(BRANCHES)
    built.model.set_fixed(["b2"])
    assert all(p.requires_grad for p in built.net("b1").stem.parameters())
    assert not any(p.requires_grad for p in built.net("b2").head.parameters())
    assert built.net("b1").stem.training and not built.net("b2").head.training


@pytest.mark.parametrize("shares, field, message", [
    ("{head: b1}", "shares", "not the parts before it"),
    ("{trunk: nobody}", "shares", "nobody"),
    ("{body: b1}", "shares", "body"),
])
def test_bad_shares_are_located(shares, field, message):
    text = BRANCHES.replace("shares: {trunk: b1}}\n  b3", f"shares: {shares}}}\n  b3", 1)
    with pytest.raises(GraphError) as err:
        load_text(text)
    assert message in str(err.value) and field in str(err.value.where)


def test_shares_needs_the_same_model():
    text = BRANCHES.replace("b3: {model: tiny_test,", "b3: {model: tiny_test, kwargs: {width: 6},")
    with pytest.raises(GraphError, match="kwargs"):
        load_text(text)


def test_scaled_trains_multiply_only_that_terms_gradient(batch):
    """CE scales the trunk by 0.5, the KL links leave it whole: two groups, each exact."""
    x, y = batch
    text = BRANCHES.replace('target: "{i}"}\n', 'target: "{i}", trains: ["{i}", {b1.trunk: 0.5}]}\n', 1)
    built = Built(text)
    assert len(built.plan.groups) == 2 and {dict(g.scales).get(SegmentId("b1", "trunk")) for g in built.plan.groups} \
        == {0.5, None}
    losses = built.executor.losses(built.executor.forward(x), y, GateContext())
    built.model.zero_grad(set_to_none=True)
    built.executor.backward(losses)
    trunk = list(built.net("b1").stem.parameters()) + list(built.net("b1").block1.parameters())
    got = [p.grad.clone() for p in trunk]
    losses = built.executor.losses(built.executor.forward(x), y, GateContext())  # the same values again
    ce = sum(v for k, v in losses.items() if k.startswith("ce:"))
    kls = sum(v for k, v in losses.items() if k.startswith("kl:"))
    want = [0.5 * a + b for a, b in zip(torch.autograd.grad(ce, trunk, retain_graph=True), torch.autograd.grad(kls, trunk))]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=TOL, rtol=1e-4)


def test_the_drawing_has_one_trunk_and_an_edge_to_each_branch():
    from ktgraph.app.render.graph import graph_dot

    source = graph_dot(load_text(BRANCHES)).source
    assert source.count('"b1.trunk" [label') == 1 and '"b2.trunk"' not in source
    assert all(f'"b1.trunk" -> "{b}.head"' in source for b in BRANCH_NAMES)


def test_a_fixed_owner_fixes_the_shared_trunk_whatever_the_order():
    built = Built(BRANCHES)
    built.model.set_fixed(["b1"])
    built.model.train()
    assert not any(p.requires_grad for p in built.net("b2").stem.parameters())  # b2's model holds b1's trunk
    assert all(p.requires_grad for p in built.net("b2").head.parameters())
    assert not built.net("b3").block1.training and built.net("b3").block2.training


def test_the_untrained_warning_follows_the_declared_structure():
    from ktgraph.compile import untrained

    built = Built(BRANCHES.replace('each: {i: [b1, b2, b3]}, target: "{i}"}', 'target: b1}')
                  .replace("source: ens, target: \"{i}\"", "source: ens, target: \"{i}\", trains: [b1]"))
    assert [str(m) for m in untrained(built.program, built.bound)] == ["b2.head", "b3.head"]  # the trunk is b1's
