"""Junction adapters train with the links next to them, and a module that no link trains is named at start-up.

The rule: a link whose explicit ``trains`` names a segment next to a junction adapter on its
target's path (the adapter's up or its down segment) trains that adapter too, unless the link
says ``train_adapters: false``. Checked on XML with a heterogeneous pair (resnet8 + wrn16_2, cut at
layer2: 32 channels into 64, a 1x1 conv of 2,112 parameters on each cross path).
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conftest import ROOT
from ktgraph.app.cli import main
from ktgraph.compile import untrained
from ktgraph.errors import UntrainedModuleWarning
from ktgraph.graph import AdapterId, SegmentId, load_graph
from ktgraph.kinds import GateContext
from ktgraph.runtime import Executor, Trainer, prepare

XML = ROOT / "graphs" / "xml.yaml"
HETERO = ["networks.net2.model=wrn16_2"]
QUICK = ["data.limit_train=64", "data.limit_test=32", "data.image_size=16", "train.batch_size=32",
         "train.eval_batch_size=64", "train.epochs=1"]
A12 = AdapterId(SegmentId("net1", "up"), SegmentId("net2", "down"))
A21 = AdapterId(SegmentId("net2", "up"), SegmentId("net1", "down"))
CROSS_LINKS = [2, 3, 4, 5]  # the up- and down-mimic entries of xml.yaml's `links:`
NO_ADAPTERS = [f"links.{i}.train_adapters=false" for i in CROSS_LINKS]




def job_of(path, overrides=(), *, with_data: bool = False):
    torch.manual_seed(0)
    return prepare(load_graph(path, ["data.image_size=16", *overrides]), with_data=with_data, device="cpu")


def quiet_job(path, overrides=(), **kwargs):
    """A job whose start-up must not warn about untrained modules (the warning is an error here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedModuleWarning)
        return job_of(path, overrides, **kwargs)


# --- 1. the rule, in the plan and in a real epoch -----------------------------------------------------
def test_cross_path_links_train_the_adapter_next_to_what_they_name(no_loading):
    job = quiet_job(XML, HETERO)
    assert set(job.bound.adapters) == {A12, A21}
    adapter = job.modules.adapters[A12.key]
    assert sum(p.numel() for p in adapter.parameters()) == 32 * 64 + 64  # 2,112
    terms = {t.link: t for t in job.program.stages[0].terms}
    for i, j in (("net1", "net2"), ("net2", "net1")):
        junction = AdapterId(SegmentId(i, "up"), SegmentId(j, "down"))
        up, down = SegmentId(i, "up"), SegmentId(j, "down")
        for kind in ("kl", "ce"):  # up-mimic: i.up and the adapter after it; down-mimic: j.down and the one before
            assert terms[f"up_{kind}:{i}-{j}"].trains == {up, junction}
            assert terms[f"down_{kind}:{i}-{j}"].trains == {down, junction}
    for link in ("ce:net1", "kl:net2->net1"):  # own paths cross no junction
        assert not any(isinstance(o, AdapterId) for o in terms[link].trains)
    assert any(A12 in g.trains for g in job.program.stages[0].groups)
    assert untrained(job.program, job.bound) == []


def test_cross_path_links_print_the_adapter_in_the_plan(capsys, no_loading):
    assert main(["plan", str(XML), *HETERO]) == 0
    out = capsys.readouterr().out
    assert "link up_kl:net1-net2; trains net1.up, net1.up>net2.down" in out
    assert "link down_ce:net2-net1; trains net1.down, net2.up>net1.down" in out


def test_an_epoch_changes_the_adapters(tmp_path):
    job = quiet_job(XML, HETERO + QUICK, with_data=True)
    before = {k: v.clone() for k, v in job.modules.adapters.state_dict().items()}
    Trainer(job, tmp_path / "run", progress_bar=False).fit()
    after = job.modules.adapters.state_dict()
    assert set(before) == {f"{A12.key}.0.weight", f"{A12.key}.0.bias", f"{A21.key}.0.weight", f"{A21.key}.0.bias"}
    for key, value in before.items():
        assert not torch.equal(value, after[key]), key


# --- 2. the adapter's gradient, against autograd on a path written by hand -------------------------------
def _resnet_up(net: nn.Module, v: Tensor) -> Tensor:
    """resnet8's stem, layer1 and layer2 (what `cuts: [layer2]` puts in its up-half)."""
    return net.layer2(net.layer1(net.relu(net.bn1(net.conv1(v)))))


def _wrn_down(net: nn.Module, v: Tensor) -> Tensor:
    """wrn16_2's layer3 and head."""
    return net.fc(torch.flatten(net.avgpool(net.relu(net.bn(net.layer3(v)))), 1))


def _kl(source: Tensor, target: Tensor) -> Tensor:
    """KL(softmax(source) ‖ softmax(target)), source detached, T = 1, batch mean."""
    return F.kl_div(F.log_softmax(target, 1), F.log_softmax(source, 1).detach(), reduction="batchmean",
                    log_target=True)


def test_adapter_gradient_equals_autograd_by_hand(no_loading):
    job = quiet_job(XML, HETERO)
    plan = job.program.stages[0]
    job.modules.set_fixed(plan.fixed)
    job.modules.train()
    # The reference: copies of the same modules, the cross path net1-net2 written from their attributes.
    net1, net2 = (copy.deepcopy(job.modules.networks[n]).train() for n in ("net1", "net2"))
    adapter = copy.deepcopy(job.modules.adapters[A12.key]).train()
    assert isinstance(adapter[0], nn.Conv2d) and isinstance(adapter[1], nn.ReLU)

    generator = torch.Generator().manual_seed(3)
    x = torch.randn(8, 3, 16, 16, generator=generator)
    y = torch.randint(0, 10, (8,), generator=generator)

    executor = Executor(plan, job.modules)
    losses = executor.losses(executor.forward(x, y, GateContext()), y, GateContext())
    job.modules.zero_grad(set_to_none=True)
    executor.backward(losses)
    got = {n: p.grad for n, p in job.modules.adapters[A12.key].named_parameters()}

    z1, z2 = net1(x), net2(x)  # the own paths: the mimic links' (detached) sources
    cross = _wrn_down(net2, F.relu(F.conv2d(_resnet_up(net1, x), adapter[0].weight, adapter[0].bias)))
    # Links that train net1.up>net2.down: up-mimic of net1 (trains net1.up) and down-mimic of net2 (trains
    # net2.down), all on path net1-net2, each weighted 1/2.
    want_losses = {"up_kl:net1-net2": 0.5 * _kl(z2, cross), "up_ce:net1-net2": 0.5 * F.cross_entropy(cross, y),
                   "down_kl:net1-net2": 0.5 * _kl(z1, cross), "down_ce:net1-net2": 0.5 * F.cross_entropy(cross, y)}
    for name, value in want_losses.items():
        torch.testing.assert_close(losses[name], value, rtol=1e-5, atol=1e-6, msg=name)
    want = dict(zip(("0.weight", "0.bias"),
                    torch.autograd.grad(sum(want_losses.values()), [adapter[0].weight, adapter[0].bias])))
    assert set(got) == set(want)
    for name, grad in want.items():
        assert got[name] is not None and torch.count_nonzero(grad) > 0, name
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-7, msg=name)


# --- 3. excluded adapters, and other modules no link trains, are named at start-up ------------------------
def test_train_adapters_false_warns_naming_the_adapters(no_loading):
    with pytest.warns(UntrainedModuleWarning) as caught:
        job = job_of(XML, HETERO + NO_ADAPTERS)
    assert len([w for w in caught if issubclass(w.category, UntrainedModuleWarning)]) == 1  # once
    message = str(caught[0].message)
    assert "net1.up>net2.down (adapter)" in message and "net2.up>net1.down (adapter)" in message
    assert "train_adapters: false" in message
    assert "net1.up (" not in message  # the segments are trained
    assert all(not any(isinstance(o, AdapterId) for o in t.trains) for t in job.program.stages[0].terms)
    assert untrained(job.program, job.bound) == [A12, A21]


def test_excluding_one_side_still_trains_the_adapter(no_loading):
    """Only the up-mimic links exclude adapters: the down-mimic links still train them, so nothing warns."""
    job = quiet_job(XML, HETERO + NO_ADAPTERS[:2])
    terms = {t.link: t for t in job.program.stages[0].terms}
    assert terms["up_kl:net1-net2"].trains == {SegmentId("net1", "up")}
    assert terms["down_kl:net1-net2"].trains == {SegmentId("net2", "down"), A12}


def test_a_network_and_an_aggregator_no_link_trains_warn(tmp_path, no_loading):
    graph = tmp_path / "lonely.yaml"
    graph.write_text("""
networks:
  student: {model: resnet8, cuts: [layer3], parts: [trunk, head]}
  teacher: {model: resnet8, cuts: [layer3], parts: [trunk, head]}
  frozen: {model: resnet8, frozen: true}
aggregators:
  att: {kind: attention, inputs: [student, teacher], features: [student.trunk, teacher.trunk]}
links:
  - {kind: ce, target: student}
  - {kind: kl, source: teacher, target: student}
  - {kind: kl, source: frozen, target: student}
""")
    with pytest.warns(UntrainedModuleWarning) as caught:
        job_of(graph)
    message = str(caught[0].message)
    assert "teacher.trunk (segment)" in message and "teacher.head (segment)" in message
    assert "att (aggregator)" in message
    assert "frozen.p1" not in message and "student" not in message
    assert "frozen: true" in message


def test_a_teacher_frozen_in_one_stage_and_trained_in_another_is_not_untrained(tmp_path, no_loading):
    graph = tmp_path / "staged.yaml"
    graph.write_text("""
networks:
  teacher: {model: resnet8}
  student: {model: resnet8}
links:
  - {kind: ce, target: teacher}
  - {kind: kl, source: teacher, target: student}
stages:
  - {name: first, epochs: 1, links: ["ce:teacher"]}
  - {name: second, epochs: 1, links: ["kl:teacher->student"], freeze: [teacher]}
""")
    quiet_job(graph)
    with pytest.warns(UntrainedModuleWarning, match=r"teacher\.p1 \(segment\)"):
        job_of(graph, ["stages.0.links=[kl:teacher->student]"])  # then no stage trains the teacher


# --- 4. no bundled graph warns ------------------------------------------------------------------------------
BUNDLED = sorted((ROOT / "graphs").glob("*.yaml"))
VARIANTS = [(p, ()) for p in BUNDLED] + [
    (XML, tuple(HETERO)),
    (ROOT / "graphs" / "multi_xross.yaml", tuple(HETERO)),  # adapters at both cuts
    (ROOT / "graphs" / "kd.yaml", ("stages=[]", "networks.teacher.frozen=true")),  # the header's teacher-given run
]


@pytest.mark.parametrize(("path", "overrides"), VARIANTS,
                         ids=[p.stem + ("+" + "+".join(o) if o else "") for p, o in VARIANTS])
def test_bundled_graphs_train_every_module(path, overrides, no_loading):
    job = quiet_job(path, overrides)
    assert untrained(job.program, job.bound) == []
    for adapter in job.bound.adapters:
        assert any(adapter in t.trains for plan in job.program.stages for t in plan.terms), adapter
