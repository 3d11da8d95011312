"""Each method's compiled plan against a hand-written PyTorch computation of METHODS.md.

The references recompute every path from scratch (no sharing), write the losses with
torch.nn.functional, and route gradients by hand (each student's loss differentiated
with respect to its own parameters only). Losses and parameter gradients must agree.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import Built
from ktgraph.graph import SegmentId
from ktgraph.kinds import GateContext

TOL = 1e-5


def kl(source: torch.Tensor, target: torch.Tensor, T: float = 1.0, detach: bool = True) -> torch.Tensor:
    """T^2 KL(softmax(source/T) || softmax(target/T)), batchmean, via F.kl_div."""
    s = F.log_softmax(source / T, dim=1)
    if detach:
        s = s.detach()
    return T * T * F.kl_div(F.log_softmax(target / T, dim=1), s, log_target=True, reduction="batchmean")


def run(built: Built, x: torch.Tensor, y: torch.Tensor, ctx: GateContext = GateContext()):
    built.model.zero_grad(set_to_none=True)
    losses = built.executor.losses(built.executor.forward(x), y, ctx)
    built.executor.backward(losses)
    return losses, built.grads()


def reference_grads(built: Built, losses_by_network: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each network's loss differentiated w.r.t. that network's parameters only."""
    out = {}
    for name, loss in losses_by_network.items():
        params = dict(built.net(name).named_parameters())
        grads = torch.autograd.grad(loss, list(params.values()), retain_graph=True, allow_unused=True)
        for pname, g in zip(params, grads):
            out[f"networks.{name}.{pname}"] = g
    return out


def assert_grads_equal(got: dict, want: dict) -> None:
    assert set(want) <= set(got)
    for name, g in want.items():
        if g is None or torch.count_nonzero(g) == 0:
            assert got[name] is None or torch.count_nonzero(got[name]) == 0, name
        else:
            assert got[name] is not None, f"{name} got no gradient"
            torch.testing.assert_close(got[name], g, atol=TOL, rtol=1e-4, msg=name)


def parts(built: Built, name: str, cut: str) -> tuple:
    """The network's stages as two callables split after ``cut`` (written independently of ktgraph)."""
    net = built.net(name)
    stages = [net.stem, net.block1, net.block2, net.head]
    index = ["stem", "block1", "block2", "head"].index(cut) + 1

    def run_stages(chunk):
        def f(v):
            for stage in chunk:
                v = stage(v)
            return v
        return f

    return run_stages(stages[:index]), run_stages(stages[index:])


DML = """
networks:
  a: {model: tiny_test}
  b: {model: tiny_test, kwargs: {width: 6}}
  c: {model: tiny_test, kwargs: {width: 3}}
links:
  - {kind: ce, each: {i: [a, b, c]}, target: "{i}"}
  - {kind: kl, each: {i: [a, b, c], j: [a, b, c]}, source: "{j}", target: "{i}", weight: 0.5}
"""


def test_dml_matches_reference(batch):
    x, y = batch
    built = Built(DML)
    losses, grads = run(built, x, y)
    z = {n: built.net(n)(x) for n in "abc"}
    ref = {i: F.cross_entropy(z[i], y) + sum(kl(z[j], z[i]) for j in "abc" if j != i) / 2 for i in "abc"}
    nodes = built.executor.node_losses(losses)
    for i in "abc":
        torch.testing.assert_close(nodes[i], ref[i], atol=TOL, rtol=0)
    assert_grads_equal(grads, reference_grads(built, ref))


def xml_yaml(nets: list[str]) -> str:
    k = len(nets)
    w = 1 / (2 * (k - 1))
    lst = "[" + ", ".join(nets) + "]"
    widths = {n: 3 + i for i, n in enumerate(nets)}
    networks = "\n".join(f"  {n}: {{model: tiny_test, cuts: [block1], parts: [up, down], kwargs: {{width: {widths[n]}}}}}"
                         for n in nets)
    each = f"{{i: {lst}, j: {lst}}}"
    return f"""
networks:
{networks}
crosses:
  - {{kind: xml, networks: {lst}, cut: up}}
links:
  - {{kind: ce, each: {{i: {lst}}}, target: "{{i}}", weight: {w}}}
  - {{kind: kl, each: {each}, source: "{{j}}", target: "{{i}}", weight: {w / (k - 1)}}}
  - {{kind: kl, each: {each}, name: "up_kl:{{i}}-{{j}}", source: "{{j}}", target: "{{i}}-{{j}}", trains: ["{{i}}.up"], weight: {w}}}
  - {{kind: ce, each: {each}, name: "up_ce:{{i}}-{{j}}", target: "{{i}}-{{j}}", trains: ["{{i}}.up"], weight: {w}}}
  - {{kind: kl, each: {each}, name: "down_kl:{{j}}-{{i}}", source: "{{j}}", target: "{{j}}-{{i}}", trains: ["{{i}}.down"], weight: {w}}}
  - {{kind: ce, each: {each}, name: "down_ce:{{j}}-{{i}}", target: "{{j}}-{{i}}", trains: ["{{i}}.down"], weight: {w}}}
"""


@pytest.mark.parametrize("nets", [["n1", "n2"], ["n1", "n2", "n3"]], ids=["K2", "K3"])
def test_xml_matches_reference(batch, nets):
    x, y = batch
    k = len(nets)
    built = Built(xml_yaml(nets))
    losses, grads = run(built, x, y)
    halves = {n: parts(built, n, "block1") for n in nets}
    # Naive: every path recomputed from the input, nothing shared.
    z = {(i, j): halves[j][1](halves[i][0](x)) for i in nets for j in nets}
    ref = {}
    for i in nets:
        peers = [j for j in nets if j != i]
        total = F.cross_entropy(z[i, i], y) + sum(kl(z[j, j], z[i, i]) for j in peers) / len(peers)
        for j in peers:
            total = total + kl(z[j, j], z[i, j]) + F.cross_entropy(z[i, j], y)  # up-mimic
            total = total + kl(z[j, j], z[j, i]) + F.cross_entropy(z[j, i], y)  # down-mimic
        ref[i] = total / (2 * (k - 1))
    by_student = {i: sum(v for name, v in losses.items()
                         if name in (f"ce:{i}",) or name.startswith("kl:") and name.endswith(f"->{i}")
                         or name.startswith(("up_kl:", "up_ce:")) and name.split(":")[1].split("-")[0] == i
                         or name.startswith(("down_kl:", "down_ce:")) and name.split(":")[1].split("-")[1] == i)
                  for i in nets}
    for i in nets:
        torch.testing.assert_close(by_student[i], ref[i], atol=TOL, rtol=0)
    assert_grads_equal(grads, reference_grads(built, ref))


def test_xml_shares_up_halves():
    nets = ["n1", "n2", "n3"]
    plan = Built(xml_yaml(nets)).plan
    assert [plan.calls_of(SegmentId(n, "up")) for n in nets] == [1, 1, 1]  # K up-half forwards, not K^2
    assert [plan.calls_of(SegmentId(n, "down")) for n in nets] == [3, 3, 3]


MULTI = """
networks:
  a: {model: tiny_test, cuts: [stem, block1], parts: [p1, p2, p3]}
  b: {model: tiny_test, cuts: [stem, block1], parts: [p1, p2, p3], kwargs: {width: 4}}
crosses:
  - {kind: all, networks: [a, b]}
links:
  - {kind: ce, each: {i: [a, b]}, target: "{i}", weight: 0.5}
  - {kind: kl, each: {i: [a, b], j: [a, b]}, source: "{j}", target: "{i}", weight: 0.5}
  - {kind: kl, each: {i: [a, b], j: [a, b]}, name: "c1u:{i}{j}", source: "{j}", target: "{i}-{j}-{j}", trains: ["{i}.p1"], weight: 0.5}
  - {kind: ce, each: {i: [a, b], j: [a, b]}, name: "c1uc:{i}{j}", target: "{i}-{j}-{j}", trains: ["{i}.p1"], weight: 0.5}
  - {kind: kl, each: {i: [a, b], j: [a, b]}, name: "c1d:{i}{j}", source: "{j}", target: "{j}-{i}-{i}", trains: ["{i}.p2", "{i}.p3"], weight: 0.5}
  - {kind: ce, each: {i: [a, b], j: [a, b]}, name: "c1dc:{i}{j}", target: "{j}-{i}-{i}", trains: ["{i}.p2", "{i}.p3"], weight: 0.5}
  - {kind: kl, each: {i: [a, b], j: [a, b]}, name: "c2u:{i}{j}", source: "{j}", target: "{i}-{i}-{j}", trains: ["{i}.p1", "{i}.p2"], weight: 0.5}
  - {kind: ce, each: {i: [a, b], j: [a, b]}, name: "c2uc:{i}{j}", target: "{i}-{i}-{j}", trains: ["{i}.p1", "{i}.p2"], weight: 0.5}
  - {kind: kl, each: {i: [a, b], j: [a, b]}, name: "c2d:{i}{j}", source: "{j}", target: "{j}-{j}-{i}", trains: ["{i}.p3"], weight: 0.5}
  - {kind: ce, each: {i: [a, b], j: [a, b]}, name: "c2dc:{i}{j}", target: "{j}-{j}-{i}", trains: ["{i}.p3"], weight: 0.5}
"""


def test_multi_xross_matches_reference(batch):
    x, y = batch
    built = Built(MULTI)
    losses, grads = run(built, x, y)
    stages = {n: [built.net(n).stem, built.net(n).block1,
                  lambda v, n=n: built.net(n).head(built.net(n).block2(v))] for n in "ab"}

    def path(owners: str) -> torch.Tensor:
        v = x
        for position, owner in enumerate(owners):
            v = stages[owner][position](v)
        return v

    ref = {}
    for i in "ab":
        j = "b" if i == "a" else "a"
        zi, zj = path(i * 3), path(j * 3)
        total = F.cross_entropy(zi, y) + kl(zj, zi)
        for route in (i + j + j, j + i + i, i + i + j, j + j + i):  # up/down mimic at both cuts
            total = total + kl(zj, path(route)) + F.cross_entropy(path(route), y)
        ref[i] = total / 2
    for i in "ab":
        j = "b" if i == "a" else "a"
        mine = [f"ce:{i}", f"kl:{j}->{i}"] + [f"{p}:{i}{j}" for p in
                                               ("c1u", "c1uc", "c1d", "c1dc", "c2u", "c2uc", "c2d", "c2dc")]
        torch.testing.assert_close(sum(losses[n] for n in mine), ref[i], atol=TOL, rtol=0)
    # Routing check, finer than per network: each mimic term trains only its parts.
    assert_grads_equal(grads, reference_grads(built, ref))
    assert len(built.plan.steps) == 12  # 2 + 4 + 6 calls: every prefix computed once


OKDDIP = """
networks:
  p1: {model: tiny_test, cuts: [block2], parts: [trunk, head]}
  p2: {model: tiny_test, cuts: [block2], parts: [trunk, head]}
  p3: {model: tiny_test, cuts: [block2], parts: [trunk, head]}
  leader: {model: tiny_test, cuts: [block2], parts: [trunk, head]}
aggregators:
  att: {kind: attention, inputs: [p1, p2, p3], features: [p1.trunk, p2.trunk, p3.trunk], reduction: 2}
  avg: {kind: mean, inputs: [p1, p2, p3]}
links:
  - {kind: ce, each: {i: [p1, p2, p3, leader]}, target: "{i}"}
  - {kind: kl, each: {i: [p1, p2, p3]}, source: "att.{i}", target: "{i}", T: 3, detach: false, trains: [all],
     gate: {kind: ramp, length: 4}}
  - {kind: kl, source: avg, target: leader, T: 3, detach: false, trains: [all], gate: {kind: ramp, length: 4}}
"""


def test_okddip_matches_reference(batch):
    x, y = batch
    built = Built(OKDDIP)
    ctx = GateContext(iteration=1, total_iterations=10, epoch=3)
    losses, grads = run(built, x, y, ctx)
    peers = ["p1", "p2", "p3"]
    feats, logits = {}, {}
    for n in peers + ["leader"]:
        trunk, head = parts(built, n, "block2")
        feats[n] = trunk(x)
        logits[n] = head(feats[n])
    att = built.model.aggregators["att"]
    h = torch.stack([feats[n].mean(dim=(2, 3)) for n in peers], dim=1)  # (B, m, d)
    q = h @ att.query.weight.T  # W_L h
    k = h @ att.key.weight.T  # W_E h
    alpha = torch.softmax(torch.einsum("bad,bcd->bac", q, k), dim=2)
    z = torch.stack([logits[n] for n in peers], dim=1)
    targets = torch.einsum("bac,bcl->bal", alpha, z)
    w = math.exp(-5 * (1 - 3 / 4) ** 2)
    total = sum(F.cross_entropy(logits[n], y) for n in peers + ["leader"])
    distill = sum(kl(targets[:, a], logits[n], T=3, detach=False) for a, n in enumerate(peers))
    distill = distill + kl(z.mean(dim=1), logits["leader"], T=3, detach=False)
    total = total + w * distill
    torch.testing.assert_close(sum(losses.values()), total, atol=TOL, rtol=0)
    params = dict(built.model.named_parameters())
    want = dict(zip(params, torch.autograd.grad(total, list(params.values()), allow_unused=True)))
    assert_grads_equal(grads, want)
    assert grads["aggregators.att.query.weight"] is not None  # W_L learns through the targets


def test_frozen_teacher_gets_no_gradient(batch):
    x, y = batch
    built = Built("""
networks:
  teacher: {model: tiny_test, frozen: true}
  student: {model: tiny_test}
links:
  - {kind: ce, target: student, weight: 0.1}
  - {kind: kl, source: teacher, target: student, T: 4, weight: 0.9}
""")
    losses, grads = run(built, x, y)
    zs, zt = built.net("student")(x), built.net("teacher")(x)
    ref = 0.1 * F.cross_entropy(zs, y) + 0.9 * kl(zt, zs, T=4)
    torch.testing.assert_close(sum(losses.values()), ref, atol=TOL, rtol=0)
    assert all(g is None for n, g in grads.items() if n.startswith("networks.teacher"))
    assert_grads_equal(grads, reference_grads(built, {"student": ref}))


def test_mimic_link_with_regressor(batch):
    x, y = batch
    built = Built("""
networks:
  teacher: {model: tiny_test, cuts: [block2], parts: [body, head], kwargs: {width: 6}}
  student: {model: tiny_test, cuts: [block2], parts: [body, head]}
links:
  - {kind: ce, target: student}
  - {kind: mimic, source: teacher.body, target: student.body, loss: mse, weight: 100}
""")
    losses, grads = run(built, x, y)
    reg = built.model.module(built.bound.regressors["mimic:teacher.body->student.body"])
    s_body, _ = parts(built, "student", "block2")
    t_body, _ = parts(built, "teacher", "block2")
    mimic = 100 * F.mse_loss(reg(s_body(x)), t_body(x).detach())
    torch.testing.assert_close(losses["mimic:teacher.body->student.body"], mimic, atol=TOL, rtol=0)
    assert all(g is None for n, g in grads.items() if n.startswith("networks.teacher"))
    assert grads["regressors.student:body>teacher:body.0.weight"] is not None


def test_alternating_updates_follow_the_dml_schedule(batch):
    """update: alternating -- net a steps first, then net b's loss is recomputed with the new a."""
    import copy

    from ktgraph.runtime.trainer import update_passes

    x, y = batch
    built = Built("""
networks:
  a: {model: tiny_test}
  b: {model: tiny_test, kwargs: {width: 6}}
links:
  - {kind: ce, each: {i: [a, b]}, target: "{i}"}
  - {kind: kl, each: {i: [a, b], j: [a, b]}, source: "{j}", target: "{i}"}
""")
    ref_a, ref_b = copy.deepcopy(built.net("a")), copy.deepcopy(built.net("b"))
    passes = update_passes(built.graph, built.plan)
    assert passes == [frozenset({SegmentId("a", "p1")}), frozenset({SegmentId("b", "p1")})]
    optimizer = torch.optim.SGD(built.model.parameters(), lr=0.5)
    for only in passes:
        losses = built.executor.losses(built.executor.forward(x), y, GateContext())
        optimizer.zero_grad(set_to_none=True)
        built.executor.backward(losses, only=only)
        optimizer.step()
    for student, peer in ((ref_a, ref_b), (ref_b, ref_a)):
        loss = F.cross_entropy(student(x), y) + kl(peer(x), student(x))
        grads = torch.autograd.grad(loss, list(student.parameters()))
        with torch.no_grad():
            for p, g in zip(student.parameters(), grads):
                p -= 0.5 * g
    for mine, ref in ((built.net("a"), ref_a), (built.net("b"), ref_b)):
        for p, q in zip(mine.parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, atol=TOL, rtol=1e-4)
