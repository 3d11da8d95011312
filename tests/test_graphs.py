"""Every bundled graph file, as shipped, against a hand-written PyTorch computation of METHODS.md.

Each test loads ``graphs/<name>.yaml`` with only size overrides (``data.image_size=16``), runs
one training step of ktgraph (forward, per-link losses, routed backward) and checks it against
an independent reference built from deep copies of the same networks:

* the reference halves/parts are written here from the models' attributes (no ktgraph segment),
  every path is recomputed from the input (no prefix sharing), losses are written with
  ``torch.nn.functional``, and gradients are routed by hand: each link's loss is differentiated
  with respect to the parameters METHODS.md (and the file's header) says it trains;
* per-link losses, per-node losses and the method's whole loss (one expression, as METHODS.md
  writes it) must agree, and so must every parameter's gradient, after the full routed backward
  and after a backward of each link alone (everything a link must not train gets no gradient);
* BatchNorm running statistics after the step must equal the reference's, where a segment fed
  another network's features (a cross path) normalises with batch statistics but does not update
  its running ones (``train.bn_stats: own``), and fixed networks stay in eval mode.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conftest import ROOT
from ktgraph.graph import AggregatorId, SegmentId, load_graph
from ktgraph.kinds import GateContext
from ktgraph.runtime import Executor, prepare

LOSS_TOL = 1e-5
GRAD_ATOL, GRAD_RTOL = 1e-5, 1e-4
SMALL = ["data.image_size=16"]
NUM_CLASSES = 10
BATCH = 8




def make_batch(seed: int = 1) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, 3, 16, 16, generator=generator)
    y = torch.randint(0, NUM_CLASSES, (BATCH,), generator=generator)
    return x, y


def load_job(name: str):
    graph = load_graph(ROOT / "graphs" / f"{name}.yaml", SMALL)
    torch.manual_seed(0)
    return prepare(graph, with_data=False, device="cpu")


# --- the reference: losses ------------------------------------------------------------------------
def kl(source: Tensor, target: Tensor, T: float = 1.0, detach: bool = True) -> Tensor:
    """T^2 · batchmean KL(softmax(source/T) ‖ softmax(target/T))."""
    log_p_source = F.log_softmax(source / T, dim=1)
    if detach:
        log_p_source = log_p_source.detach()
    return T * T * F.kl_div(F.log_softmax(target / T, dim=1), log_p_source, reduction="batchmean",
                            log_target=True)


def ce(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y)


# --- the reference: the networks' parts, written from the CIFAR ResNets' attributes ----------------
def _stem(net: nn.Module, v: Tensor) -> Tensor:
    return net.relu(net.bn1(net.conv1(v)))


def _head(net: nn.Module, v: Tensor) -> Tensor:
    return net.fc(torch.flatten(net.avgpool(v), 1))


Part = tuple[str, tuple[str, ...], Callable[[nn.Module, Tensor], Tensor]]  # name, attributes it owns, forward

WHOLE: tuple[Part, ...] = (
    ("p1", ("conv1", "bn1", "layer1", "layer2", "layer3", "fc"),
     lambda n, v: _head(n, n.layer3(n.layer2(n.layer1(_stem(n, v)))))),
)
UP_DOWN: tuple[Part, ...] = (  # cut at layer2
    ("up", ("conv1", "bn1", "layer1", "layer2"), lambda n, v: n.layer2(n.layer1(_stem(n, v)))),
    ("down", ("layer3", "fc"), lambda n, v: _head(n, n.layer3(v))),
)
THREE: tuple[Part, ...] = (  # cuts at layer1 and layer2
    ("p1", ("conv1", "bn1", "layer1"), lambda n, v: n.layer1(_stem(n, v))),
    ("p2", ("layer2",), lambda n, v: n.layer2(v)),
    ("p3", ("layer3", "fc"), lambda n, v: _head(n, n.layer3(v))),
)
TRUNK_HEAD: tuple[Part, ...] = (  # cut at layer3
    ("trunk", ("conv1", "bn1", "layer1", "layer2", "layer3"),
     lambda n, v: n.layer3(n.layer2(n.layer1(_stem(n, v))))),
    ("head", ("fc",), _head),
)


@contextmanager
def batch_stats_only(net: nn.Module) -> Iterator[None]:
    """BatchNorm in training mode that normalises with the batch but leaves running statistics alone."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.track_running_stats for m in norms]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, s in zip(norms, saved):
            m.track_running_stats = s


class Reference:
    """Deep copies of a job's networks (and aggregator weights), keyed by ktgraph's parameter names."""

    def __init__(self, modules: nn.Module, parts: tuple[Part, ...], fixed: frozenset[str] = frozenset()) -> None:
        self.parts = parts
        self.nets = {name: copy.deepcopy(net) for name, net in modules.networks.items()}
        for name, net in self.nets.items():
            net.train(name not in fixed)  # a frozen teacher keeps eval mode (running statistics)
        self.params: dict[str, Tensor] = {f"networks.{n}.{pn}": p
                                          for n, net in self.nets.items() for pn, p in net.named_parameters()}
        self.owned: dict[object, list[str]] = {}
        for n, net in self.nets.items():
            for part, attributes, _ in parts:
                self.owned[SegmentId(n, part)] = [f"networks.{n}.{pn}" for pn, _ in net.named_parameters()
                                                  if pn.split(".")[0] in attributes]
            # The parts partition the network's parameters.
            assert sorted(sum((self.owned[SegmentId(n, part)] for part, _, _ in parts), [])) == \
                sorted(f"networks.{n}.{pn}" for pn, _ in net.named_parameters())

    def add_module(self, owner: AggregatorId, prefix: str, module: nn.Module) -> dict[str, Tensor]:
        """Leaf copies of a module's parameters, trained as ``owner``."""
        copies = {name: p.detach().clone().requires_grad_(True) for name, p in module.named_parameters()}
        self.params.update((f"{prefix}.{name}", p) for name, p in copies.items())
        self.owned[owner] = [f"{prefix}.{name}" for name in copies]
        return copies

    def names(self, owners: frozenset) -> list[str]:
        return [name for owner in sorted(owners, key=str) for name in self.owned[owner]]

    def segment(self, network: str, part: str, v: Tensor, *, update: bool) -> Tensor:
        net = self.nets[network]
        forward = {p: f for p, _, f in self.parts}[part]
        if update:
            return forward(net, v)
        with batch_stats_only(net):
            return forward(net, v)

    def path(self, owners: Sequence[str], x: Tensor, *, own: bool = False) -> Tensor:
        """The path through ``owners``' parts (one per position), recomputed from the input.

        ``own=True`` is a network's own path, computed once: its BatchNorm layers update their
        running statistics. Every other call (cross paths, recomputations) uses batch statistics only.
        """
        assert len(owners) == len(self.parts)
        v = x
        for (part, _, _), owner in zip(self.parts, owners):
            v = self.segment(owner, part, v, update=own)
        return v

    def own(self, network: str, x: Tensor) -> Tensor:
        return self.path([network] * len(self.parts), x, own=True)


@dataclass
class Link:
    """What METHODS.md says one link computes, and the owners whose parameters it trains."""

    loss: Tensor
    trains: frozenset
    node: str


def segs(*names: str) -> frozenset:
    """``"net1.up"`` -> SegmentId("net1", "up")."""
    return frozenset(SegmentId(*n.split(".")) for n in names)


def whole(ref: Reference, network: str) -> frozenset:
    return frozenset(SegmentId(network, part) for part, _, _ in ref.parts)


# --- comparing ktgraph with the reference ---------------------------------------------------------
def link_grads(ref: Reference, link: Link) -> dict[str, Tensor]:
    names = ref.names(link.trains)
    grads = torch.autograd.grad(link.loss, [ref.params[n] for n in names], retain_graph=True, allow_unused=True)
    return {n: g for n, g in zip(names, grads) if g is not None}


def summed(parts: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for grads in parts:
        for name, g in grads.items():
            out[name] = out[name] + g if name in out else g
    return out


def grads_of(modules: nn.Module) -> dict[str, Tensor | None]:
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in modules.named_parameters()}


def assert_grads(got: dict[str, Tensor | None], want: dict[str, Tensor], what: str) -> None:
    assert set(want) <= set(got), sorted(set(want) - set(got))
    for name, g in got.items():
        expected = want.get(name)
        if expected is None or torch.count_nonzero(expected) == 0:
            assert g is None or torch.count_nonzero(g) == 0, f"{what}: {name} must get no gradient"
        else:
            assert g is not None, f"{what}: {name} got no gradient"
            torch.testing.assert_close(g, expected, atol=GRAD_ATOL, rtol=GRAD_RTOL, msg=f"{what}: {name}")


def assert_same_buffers(modules: nn.Module, ref: Reference) -> None:
    for n, net in modules.networks.items():
        mine = dict(net.named_buffers())
        theirs = dict(ref.nets[n].named_buffers())
        assert set(mine) == set(theirs)
        for b, value in mine.items():
            torch.testing.assert_close(value, theirs[b], atol=1e-6, rtol=1e-5, msg=f"networks.{n}.{b}")


def step(job, plan, x: Tensor, y: Tensor, ctx: GateContext, ref: Reference, links: dict[str, Link]) -> dict:
    """One ktgraph step of ``plan`` checked link by link, node by node and parameter by parameter."""
    modules = job.modules
    assert {t.link: t.trains for t in plan.terms} == {name: link.trains for name, link in links.items()}
    executor = Executor(plan, modules)
    values = executor.forward(x, y, ctx)
    losses = executor.losses(values, y, ctx)
    assert set(losses) == set(links)
    for name, link in links.items():
        torch.testing.assert_close(losses[name], link.loss, atol=LOSS_TOL, rtol=0, msg=name)
    nodes = executor.node_losses(losses)
    want_nodes: dict[str, Tensor] = {}
    for link in links.values():
        want_nodes[link.node] = want_nodes[link.node] + link.loss if link.node in want_nodes else link.loss
    assert set(nodes) == set(want_nodes)
    for node, value in want_nodes.items():
        torch.testing.assert_close(nodes[node], value, atol=LOSS_TOL, rtol=0, msg=f"node {node}")

    # The routed backward of the whole step.
    modules.zero_grad(set_to_none=True)
    executor.backward(losses)
    got = grads_of(modules)
    per_link = {name: link_grads(ref, link) for name, link in links.items()}
    assert_grads(got, summed(list(per_link.values())), "step")
    # The forward updated exactly the running statistics the reference did.
    assert_same_buffers(modules, ref)

    # Each link alone (the others scaled to zero) trains exactly what it must.
    for name in links:
        losses_again = executor.losses(executor.forward(x, y, ctx), y, ctx)
        only = {k: (v if k == name else v * 0) for k, v in losses_again.items()}
        modules.zero_grad(set_to_none=True)
        executor.backward(only)
        assert_grads(grads_of(modules), per_link[name], f"link {name} alone")
    return {"losses": losses, "nodes": nodes, "grads": got}


def prepared(job, stage: int = 0):
    plan = job.program.stages[stage]
    job.modules.set_fixed(plan.fixed)
    job.modules.train()
    return plan


def each_pair(names: Sequence[str]) -> Iterator[tuple[str, str]]:
    return ((i, j) for i in names for j in names if i != j)


# --- the graphs -----------------------------------------------------------------------------------
def test_independent():
    job = load_job("independent")
    plan = prepared(job)
    assert plan.fixed == frozenset()
    x, y = make_batch()
    ref = Reference(job.modules, WHOLE)
    nets = ["net1", "net2"]
    z = {n: ref.own(n, x) for n in nets}
    links = {f"ce:{n}": Link(ce(z[n], y), whole(ref, n), n) for n in nets}
    out = step(job, plan, x, y, GateContext(), ref, links)
    for n in nets:
        torch.testing.assert_close(out["nodes"][n], F.cross_entropy(z[n], y), atol=LOSS_TOL, rtol=0)


def test_dml():
    job = load_job("dml")
    plan = prepared(job)
    x, y = make_batch()
    ref = Reference(job.modules, WHOLE)
    nets = ["net1", "net2"]
    k = len(nets)
    z = {n: ref.own(n, x) for n in nets}
    links = {f"ce:{n}": Link(ce(z[n], y), whole(ref, n), n) for n in nets}
    for i, j in each_pair(nets):  # peers detached, T = 1, weight 1/(K-1) = 1
        links[f"kl:{j}->{i}"] = Link(kl(z[j], z[i]) / (k - 1), whole(ref, i), i)
    out = step(job, plan, x, y, GateContext(), ref, links)
    for i in nets:
        loss_k = F.cross_entropy(z[i], y) + sum(kl(z[j], z[i]) for j in nets if j != i) / (k - 1)
        torch.testing.assert_close(out["nodes"][i], loss_k, atol=LOSS_TOL, rtol=0)


def test_kd_two_stages():
    job = load_job("kd")
    assert [p.stage.name for p in job.program.stages] == ["teacher", "distill"]

    # Stage 1: the teacher learns from the label alone; the student is trained by nothing.
    plan = prepared(job, 0)
    assert plan.fixed == frozenset({"student"})
    x, y = make_batch(1)
    ref = Reference(job.modules, WHOLE, fixed=frozenset({"student"}))
    z_teacher = ref.own("teacher", x)
    links = {"ce:teacher": Link(ce(z_teacher, y), whole(ref, "teacher"), "teacher")}
    out = step(job, plan, x, y, GateContext(), ref, links)
    assert all(g is None for n, g in out["grads"].items() if n.startswith("networks.student."))

    # Stage 2: the teacher is frozen (eval mode, no gradient); the student distils from it.
    plan = prepared(job, 1)
    assert plan.fixed == frozenset({"teacher"})
    assert not job.modules.networks["teacher"].training and job.modules.networks["student"].training
    x, y = make_batch(2)
    before = copy.deepcopy(job.modules.networks["teacher"].state_dict())
    ref = Reference(job.modules, WHOLE, fixed=frozenset({"teacher"}))
    zt, zs = ref.own("teacher", x), ref.own("student", x)
    alpha, T = 0.9, 4.0
    links = {
        "ce:student": Link((1 - alpha) * ce(zs, y), whole(ref, "student"), "student"),
        "kl:teacher->student": Link(alpha * kl(zt, zs, T=T), whole(ref, "student"), "student"),
    }
    out = step(job, plan, x, y, GateContext(), ref, links)
    kd_loss = (1 - alpha) * F.cross_entropy(zs, y) + alpha * T * T * F.kl_div(
        F.log_softmax(zs / T, dim=1), F.softmax(zt / T, dim=1).detach(), reduction="batchmean")
    torch.testing.assert_close(out["nodes"]["student"], kd_loss, atol=LOSS_TOL, rtol=0)
    assert all(g is None for n, g in out["grads"].items() if n.startswith("networks.teacher."))
    for name, value in job.modules.networks["teacher"].state_dict().items():  # frozen: nothing moved
        torch.testing.assert_close(value, before[name], atol=0, rtol=0, msg=name)


def test_xml():
    job = load_job("xml")
    plan = prepared(job)
    x, y = make_batch()
    nets = ["net1", "net2"]
    k = len(nets)
    w = 1 / (2 * (k - 1))
    ref = Reference(job.modules, UP_DOWN)
    z = {(n, n): ref.own(n, x) for n in nets}
    for i, j in each_pair(nets):  # path i-j = j.down(i.up(x)), from scratch, running statistics kept
        z[i, j] = ref.path([i, j], x)
    links = {}
    for i in nets:
        links[f"ce:{i}"] = Link(w * ce(z[i, i], y), segs(f"{i}.up", f"{i}.down"), i)
    for i, j in each_pair(nets):
        links[f"kl:{j}->{i}"] = Link(w * kl(z[j, j], z[i, i]) / (k - 1), segs(f"{i}.up", f"{i}.down"), i)
        links[f"up_kl:{i}-{j}"] = Link(w * kl(z[j, j], z[i, j]), segs(f"{i}.up"), f"{i}-{j}")
        links[f"up_ce:{i}-{j}"] = Link(w * ce(z[i, j], y), segs(f"{i}.up"), f"{i}-{j}")
        links[f"down_kl:{j}-{i}"] = Link(w * kl(z[j, j], z[j, i]), segs(f"{i}.down"), f"{j}-{i}")
        links[f"down_ce:{j}-{i}"] = Link(w * ce(z[j, i], y), segs(f"{i}.down"), f"{j}-{i}")
    out = step(job, plan, x, y, GateContext(), ref, links)

    # The loss of student i, as METHODS.md writes it, against the sum of the links it owns.
    for i in nets:
        peers = [j for j in nets if j != i]
        total = F.cross_entropy(z[i, i], y) + sum(kl(z[j, j], z[i, i]) for j in peers) / len(peers)
        for j in peers:
            total = total + kl(z[j, j], z[i, j]) + F.cross_entropy(z[i, j], y)
            total = total + kl(z[j, j], z[j, i]) + F.cross_entropy(z[j, i], y)
        total = total / (2 * (k - 1))
        owned = [f"ce:{i}"] + [f"{kind}:{name}" for j in peers for kind, name in
                               (("kl", f"{j}->{i}"), ("up_kl", f"{i}-{j}"), ("up_ce", f"{i}-{j}"),
                                ("down_kl", f"{j}-{i}"), ("down_ce", f"{j}-{i}"))]
        torch.testing.assert_close(sum(out["losses"][n] for n in owned), total, atol=LOSS_TOL, rtol=0)
    # Cross paths keep running statistics: in the reference (whose buffers ktgraph's matched after the
    # step) every BatchNorm counted exactly one batch, its own network's.
    for net in ref.nets.values():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert int(m.num_batches_tracked) == 1


def test_multi_xross():
    job = load_job("multi_xross")
    plan = prepared(job)
    x, y = make_batch()
    nets = ["net1", "net2"]
    w = 0.5
    ref = Reference(job.modules, THREE)
    z = {(n, n, n): ref.own(n, x) for n in nets}
    for i, j in each_pair(nets):
        for route in ((i, j, j), (i, i, j)):  # all 2^3 - 2 cross paths, each from scratch
            z[route] = ref.path(route, x)
        for route in ((i, j, i), (j, i, j)):
            z[route] = ref.path(route, x)
    assert len(z) == 8

    def name(route: tuple[str, ...]) -> str:
        return "-".join(route)

    links = {}
    for i in nets:
        links[f"ce:{i}"] = Link(w * ce(z[i, i, i], y), whole(ref, i), i)
    for i, j in each_pair(nets):
        zj = z[j, j, j]
        links[f"kl:{j}->{i}"] = Link(w * kl(zj, z[i, i, i]), whole(ref, i), i)
        mimics = {  # prefix, route, what it trains
            "c1_up": ((i, j, j), segs(f"{i}.p1")),
            "c1_down": ((j, i, i), segs(f"{i}.p2", f"{i}.p3")),
            "c2_up": ((i, i, j), segs(f"{i}.p1", f"{i}.p2")),
            "c2_down": ((j, j, i), segs(f"{i}.p3")),
        }
        for prefix, (route, trains) in mimics.items():
            links[f"{prefix}_kl:{name(route)}"] = Link(w * kl(zj, z[route]), trains, name(route))
            links[f"{prefix}_ce:{name(route)}"] = Link(w * ce(z[route], y), trains, name(route))
    assert len(links) == 20
    out = step(job, plan, x, y, GateContext(), ref, links)

    # The loss of student i (the file's header formula), K = 2.
    for i, j in each_pair(nets):
        zi, zj = z[i, i, i], z[j, j, j]
        total = F.cross_entropy(zi, y) + kl(zj, zi)
        for route in ((i, j, j), (j, i, i), (i, i, j), (j, j, i)):
            total = total + kl(zj, z[route]) + F.cross_entropy(z[route], y)
        total = total / 2
        owned = [f"ce:{i}", f"kl:{j}->{i}", f"c1_up_kl:{i}-{j}-{j}", f"c1_up_ce:{i}-{j}-{j}",
                 f"c1_down_kl:{j}-{i}-{i}", f"c1_down_ce:{j}-{i}-{i}", f"c2_up_kl:{i}-{i}-{j}",
                 f"c2_up_ce:{i}-{i}-{j}", f"c2_down_kl:{j}-{j}-{i}", f"c2_down_ce:{j}-{j}-{i}"]
        torch.testing.assert_close(sum(out["losses"][n] for n in owned), total, atol=LOSS_TOL, rtol=0)
    # Every part of every network learns something.
    for n in nets:
        for part in ("p1", "p2", "p3"):
            assert any(out["grads"][p] is not None and torch.count_nonzero(out["grads"][p]) > 0
                       for p in ref.owned[SegmentId(n, part)]), f"{n}.{part}"


def test_okddip():
    job = load_job("okddip")
    plan = prepared(job)
    x, y = make_batch()
    peers = ["peer1", "peer2", "peer3"]
    everyone = peers + ["leader"]
    T, E, epoch = 3.0, 4, 2
    ctx = GateContext(iteration=1, total_iterations=1, epoch=epoch)  # iterations say 1: the ramp must read epochs
    ramp = math.exp(-5 * (1 - min(epoch, E) / E) ** 2)
    assert 0 < ramp < 0.5

    ref = Reference(job.modules, TRUNK_HEAD)
    attention = AggregatorId("attention")
    wl_we = ref.add_module(attention, "aggregators.attention", job.modules.aggregators["attention"])
    assert set(wl_we) == {"query.weight", "key.weight"}
    W_L, W_E = wl_we["query.weight"], wl_we["key.weight"]
    assert W_L.shape == (64 // 8, 64)

    z = {n: ref.own(n, x) for n in everyone}
    # h_b: the globally pooled trunk feature of each peer, recomputed from the input.
    h = {b: ref.segment(b, "trunk", x, update=False).mean(dim=(2, 3)) for b in peers}
    targets = {}
    for a in peers:
        energy = torch.stack([(F.linear(h[a], W_L) * F.linear(h[b], W_E)).sum(dim=1) for b in peers], dim=1)
        alpha = F.softmax(energy, dim=1)  # over b, including b = a
        targets[a] = sum(alpha[:, index:index + 1] * z[b] for index, b in enumerate(peers))
    peer_mean = sum(z[b] for b in peers) / len(peers)

    every_owner = frozenset(ref.owned) - whole(ref, "leader")  # all the peer KL touches (attention included)
    links = {f"ce:{n}": Link(ce(z[n], y), whole(ref, n), n) for n in everyone}
    for a in peers:  # targets NOT detached; trains: [all]
        links[f"kl:attention.{a}->{a}"] = Link(ramp * kl(targets[a], z[a], T=T, detach=False), every_owner, a)
    links["kl:peer_mean->leader"] = Link(ramp * kl(peer_mean, z["leader"], T=T, detach=False),
                                         frozenset(ref.owned) - {attention}, "leader")
    out = step(job, plan, x, y, ctx, ref, links)

    # The whole OKDDip loss, as METHODS.md writes it.
    total = sum(F.cross_entropy(z[n], y) for n in everyone) + ramp * (
        sum(T * T * F.kl_div(F.log_softmax(z[a] / T, dim=1), F.softmax(targets[a] / T, dim=1),
                             reduction="batchmean") for a in peers)
        + T * T * F.kl_div(F.log_softmax(z["leader"] / T, dim=1), F.softmax(peer_mean / T, dim=1),
                           reduction="batchmean"))
    torch.testing.assert_close(sum(out["losses"].values()), total, atol=LOSS_TOL, rtol=0)
    # W_L and W_E learn through the (not detached) targets.
    for p in ("aggregators.attention.query.weight", "aggregators.attention.key.weight"):
        assert out["grads"][p] is not None and torch.count_nonzero(out["grads"][p]) > 0, p
    # The ramp factor: the same forward at the end of the ramp (e >= E) gives the unscaled KL terms.
    executor = Executor(plan, job.modules)
    with torch.no_grad():
        values = executor.forward(x, y, ctx)
        early = executor.losses(values, y, ctx)
        late = executor.losses(values, y, GateContext(iteration=1, total_iterations=1, epoch=E))
    for name in links:
        factor = ramp if name.startswith("kl:") else 1.0
        torch.testing.assert_close(early[name], factor * late[name], atol=LOSS_TOL, rtol=1e-5, msg=name)
