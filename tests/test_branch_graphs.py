"""The branch-based graph files, as shipped, against plain PyTorch computations of METHODS.md.

Each test runs one ktgraph step of ``graphs/<name>.yaml`` and recomputes it on a deep copy of the
same modules: the trunk and each branch written from the CIFAR ResNet's attributes (no ktgraph
segment), the losses with ``torch.nn.functional``, the gradients by ``torch.autograd`` of the whole
loss (every term of these files trains all it depends on, but CL-ILR's trunk, which gets 1/m).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conftest import ROOT
from ktgraph.graph import load_graph
from ktgraph.kinds import AGGREGATORS, AggregatorInput, GateContext
from ktgraph.runtime import Executor, prepare

TOL = 1e-5
T, E, EPOCH = 3.0, 4, 2
RAMP = math.exp(-5 * (1 - EPOCH / E) ** 2)
CTX = GateContext(iteration=1, total_iterations=1, epoch=EPOCH)


def batch() -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 16, 16, generator=generator), torch.randint(0, 10, (8,), generator=generator)


def kl(source: Tensor, target: Tensor, detach: bool) -> Tensor:
    """T² · batchmean KL(softmax(source/T) ‖ softmax(target/T))."""
    p = F.softmax((source.detach() if detach else source) / T, dim=1)
    return T * T * (p * (F.log_softmax(source / T, dim=1) - F.log_softmax(target / T, dim=1))).sum(dim=1).mean()


def ktgraph_step(name: str) -> tuple[dict[str, Tensor], dict[str, Tensor | None], nn.Module, dict[str, Tensor]]:
    """(link losses, gradients by parameter name, a copy of the modules before the step, the step's values)."""
    torch.manual_seed(0)
    job = prepare(load_graph(ROOT / "graphs" / f"{name}.yaml", ["data.image_size=16"]), with_data=False, device="cpu")
    plan = job.program.stages[0]
    job.modules.set_fixed(plan.fixed)
    job.modules.train()
    reference = copy.deepcopy(job.modules)
    x, y = batch()
    executor = Executor(plan, job.modules)
    values = executor.forward(x, y, CTX)
    losses = executor.losses(values, y, CTX)
    executor.backward(losses)
    grads = {n: p.grad for n, p in job.modules.named_parameters()}
    return losses, grads, reference, values


def trunk(net: nn.Module, x: Tensor) -> Tensor:
    """The CIFAR ResNet up to its second stage."""
    return net.layer2(net.layer1(net.relu(net.bn1(net.conv1(x)))))


def branch(net: nn.Module, feature: Tensor) -> Tensor:
    return net.fc(torch.flatten(net.avgpool(net.layer3(feature)), 1))


def full_grads(modules: nn.Module, total: Tensor) -> dict[str, Tensor | None]:
    named = dict(modules.named_parameters())
    return dict(zip(named, torch.autograd.grad(total, list(named.values()), allow_unused=True)))


def assert_grads(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for name, g in want.items():
        if g is None or not g.any():
            assert got[name] is None or not got[name].any(), name
        else:
            torch.testing.assert_close(got[name], g, atol=TOL, rtol=1e-4, msg=name)


def test_one_gate_on_hand_made_inputs():
    gate = AGGREGATORS["one_gate"]()
    module = gate.build([(2,)] * 3, [(4, 1, 2)]).train()
    with torch.no_grad():
        module.linear.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -1]]))
        module.linear.bias.zero_()
    feature = torch.tensor([[[[1.0, 3.0]], [[0.0, 0.0]], [[2.0, 2.0]], [[0.0, 0.0]]],
                            [[[0.0, 0.0]], [[4.0, 2.0]], [[0.0, 0.0]], [[1.0, 1.0]]]])  # pooled: [2,0,2,0], [0,3,0,1]
    logits = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[2.0, 2.0], [1.0, 0.0]]),
              torch.tensor([[0.0, 4.0], [3.0, 3.0]])]
    linear = torch.tensor([[2.0, 0.0, 2.0], [0.0, 3.0, -1.0]])
    mean, var = torch.tensor([1.0, 1.5, 0.5]), torch.tensor([1.0, 2.25, 2.25])  # over the batch, biased
    weights = torch.softmax(torch.relu((linear - mean) / torch.sqrt(var + 1e-5)), dim=1)  # BN: weight 1, bias 0
    torch.testing.assert_close(module(feature), weights)
    ensemble = sum(weights[:, i:i + 1] * z for i, z in enumerate(logits))
    (out,) = gate.aggregate(module, AggregatorInput(logits, [feature]))
    torch.testing.assert_close(out, ensemble)
    assert torch.allclose(weights.sum(dim=1), torch.ones(2))


def test_one_matches_methods():
    losses, grads, ref, values = ktgraph_step("one")
    x, y = batch()
    nets = ref.networks
    feature = trunk(nets["b1"], x)
    z = [branch(nets[b], feature) for b in ("b1", "b2", "b3")]
    gate = ref.aggregators["ensemble"]
    a = gate.linear(feature.mean(dim=(2, 3)))
    normed = (a - a.mean(dim=0)) / torch.sqrt(a.var(dim=0, unbiased=False) + 1e-5) * gate.norm.weight + gate.norm.bias
    g = torch.softmax(torch.relu(normed), dim=1)
    z_e = sum(g[:, i:i + 1] * z[i] for i in range(3))
    torch.testing.assert_close(values["ensemble"], z_e, atol=TOL, rtol=0)
    total = sum(F.cross_entropy(zi, y) for zi in z) + F.cross_entropy(z_e, y) + RAMP * sum(kl(z_e, zi, True) for zi in z)
    torch.testing.assert_close(sum(losses.values()), total, atol=TOL, rtol=0)
    assert_grads(grads, full_grads(ref, total))
    assert grads["aggregators.ensemble.linear.weight"].any()  # the gate learns from CE(z_e)


def test_cl_ilr_matches_methods():
    losses, grads, ref, _ = ktgraph_step("cl_ilr")
    x, y = batch()
    feature = trunk(ref.networks["b1"], x)
    z = [branch(ref.networks[b], feature) for b in ("b1", "b2", "b3")]
    others = [(sum(z) - zi) / 2 for zi in z]  # not detached
    total = sum(F.cross_entropy(zi, y) for zi in z) + RAMP * sum(kl(t, zi, False) for t, zi in zip(others, z))
    torch.testing.assert_close(sum(losses.values()), total, atol=TOL, rtol=0)
    want = full_grads(ref, total)
    trunk_names = [n for n in want if n.startswith("networks.b1.") and not n.startswith(("networks.b1.layer3",
                                                                                          "networks.b1.fc"))]
    assert trunk_names and all(want[n] is not None for n in trunk_names)
    for n in trunk_names:  # the trunk gets 1/m of the unscaled gradient, the heads the whole of theirs
        want[n] = want[n] / 3
    assert_grads(grads, want)


def test_okddip_branch_matches_the_network_formula():
    losses, grads, ref, _ = ktgraph_step("okddip_branch")
    x, y = batch()
    peers = ["peer1", "peer2", "peer3"]
    feature = trunk(ref.networks["peer1"], x)
    body = {b: ref.networks[b].layer3(feature) for b in peers + ["leader"]}
    z = {b: ref.networks[b].fc(torch.flatten(ref.networks[b].avgpool(body[b]), 1)) for b in body}
    attention = ref.aggregators["attention"]
    h = {b: body[b].mean(dim=(2, 3)) for b in peers}
    distill = 0
    for a in peers:
        energy = torch.stack([(attention.query(h[a]) * attention.key(h[b])).sum(dim=1) for b in peers], dim=1)
        alpha = F.softmax(energy, dim=1)
        distill = distill + kl(sum(alpha[:, i:i + 1] * z[b] for i, b in enumerate(peers)), z[a], False)
    distill = distill + kl(sum(z[b] for b in peers) / 3, z["leader"], False)
    total = sum(F.cross_entropy(z[b], y) for b in z) + RAMP * distill
    torch.testing.assert_close(sum(losses.values()), total, atol=TOL, rtol=0)
    assert_grads(grads, full_grads(ref, total))
