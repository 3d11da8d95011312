"""Stage and network optimizers: the merge rule, the parameter groups, and one step of each group against
SGD written out by hand (fresh momentum buffer), the schedule's factor against its formula."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import ROOT, Built, load_text
from ktgraph.app.cli import main
from ktgraph.graph import SegmentId, load_graph
from ktgraph.kinds import GateContext
from ktgraph.runtime.schedule import make_optimizer, make_scheduler, parameter_groups
from ktgraph.settings import OptimizerSettings, ScheduleSettings

GRAPH = """
train:
  optimizer: {name: sgd, lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 5.0e-4}
  schedule: {name: cosine}
networks:
  b1: {model: tiny_test, cuts: [block1], parts: [trunk, head]}
  b2: {model: tiny_test, cuts: [block1], parts: [trunk, head], shares: {trunk: b1},
       optimizer: {lr: 0.01, weight_decay: 0}}
  teacher: {model: tiny_test, optimizer: {lr: 0.05, momentum: 0.5}}
links:
  - {kind: ce, each: {i: [b1, b2, teacher]}, target: "{i}"}
  - {kind: kl, source: teacher, target: b2, T: 2}
stages:
  - {name: fine, epochs: 1, optimizer: {lr: 0.01}}
"""
# (lr, momentum, weight decay) by the network whose name a parameter has: the stage's lr is a tenth of
# train's, so each network's lr is a tenth of its own; b2's parameters are its head only (the trunk is b1's).
EXPECTED = {"b1": (0.01, 0.9, 5e-4), "b2": (0.001, 0.9, 0.0), "teacher": (0.005, 0.5, 5e-4)}


def same(got: OptimizerSettings, want: OptimizerSettings) -> bool:
    """Equal settings, the lr to rounding (a scaled lr is a product of decimal fractions)."""
    return got.model_copy(update={"lr": want.lr}) == want and got.lr == pytest.approx(want.lr, rel=1e-12)


def test_a_stage_override_replaces_the_fields_it_gives():
    stage = load_text(GRAPH).stages[0]
    assert stage.optimizer == OptimizerSettings(name="sgd", lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    assert stage.schedule == ScheduleSettings(name="cosine")


def test_another_name_starts_from_its_defaults():
    graph = load_text(GRAPH.replace("optimizer: {lr: 0.01}}", "optimizer: {name: adamw, lr: 0.001}, "
                                    "schedule: {name: multistep, milestones: [1]}}")
                      .replace("weight_decay: 5.0e-4}", "weight_decay: 0.01}")
                      .replace("{lr: 0.05, momentum: 0.5}", "{lr: 0.05}"))
    stage = graph.stages[0]
    assert stage.optimizer == OptimizerSettings(name="adamw", lr=0.001)  # weight decay 5e-4: adamw's default
    assert stage.schedule == ScheduleSettings(name="multistep", milestones=[1])
    groups = dict(stage.groups)
    # The networks' lrs scaled by the stage's over train's (0.001 / 0.1); their other fields over the stage's.
    assert same(groups["b2"], OptimizerSettings(name="adamw", lr=1e-4, weight_decay=0.0))
    assert same(groups["teacher"], OptimizerSettings(name="adamw", lr=5e-4))


def test_no_stages_is_one_stage_with_train_s_optimizer():
    graph = load_text(GRAPH.split("stages:")[0])
    stage = graph.stages[0]
    assert stage.optimizer == graph.train.optimizer and stage.schedule == graph.train.schedule
    assert dict(stage.groups)["b2"].lr == 0.01


def test_one_step_of_each_group_is_sgd_by_hand(batch):
    x, y = batch
    built = Built(GRAPH)
    stage = built.graph.stages[0]
    groups = parameter_groups(built.model, stage)
    assert [g.network for g in groups] == [None, "b2", "teacher"]
    names = {id(p): n for n, p in built.model.named_parameters()}  # a shared parameter under its owner's name
    owner = {id(p): names[id(p)].split(".")[1] for g in groups for p in g.params}
    assert sum(len(g.params) for g in groups) == len(owner) == len(list(built.model.parameters()))
    assert {owner[id(p)] for p in groups[0].params} == {"b1"}
    assert set(map(id, groups[1].params)) == set(map(id, built.model.segments[SegmentId("b2", "head")].parameters()))
    optimizer = make_optimizer(groups)
    before = {n: p.detach().clone() for n, p in built.model.named_parameters()}
    built.model.zero_grad(set_to_none=True)
    built.executor.backward(built.executor.losses(built.executor.forward(x), y, GateContext()))
    grads = built.grads()
    optimizer.step()
    for name, param in built.model.named_parameters():
        lr, momentum, decay = EXPECTED[name.split(".")[1]]
        step = grads[name] + decay * before[name]  # the first step: the momentum buffer is this step
        want = before[name] - lr * (step + momentum * step)  # nesterov: d + momentum * buffer
        torch.testing.assert_close(param.detach(), want, rtol=0, atol=1e-7, msg=name)


def test_the_schedule_scales_every_group_by_one_factor():
    built = Built(GRAPH.replace("epochs: 1", "epochs: 2"))
    optimizer = make_optimizer(parameter_groups(built.model, built.graph.stages[0]))
    scheduler = make_scheduler(optimizer, built.graph.stages[0].schedule, 2, 4, 0.01)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    factor = 0.5 * (1 + math.cos(math.pi * 3 / 8))  # cosine over 2 epochs of 4 steps, after 3 steps
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(
        [lr * factor for lr in (0.01, 0.001, 0.005)], rel=1e-12)


def test_plan_shows_each_stage_s_optimizer(capsys):
    assert main(["plan", str(ROOT / "graphs/kd.yaml"), "networks.student.optimizer={lr: 0.02}",
                 "stages.1.optimizer={name: adamw, lr: 0.001}", "stages.1.schedule={name: constant}"]) == 0
    printed = capsys.readouterr().out
    assert ("optimizer: sgd, lr 0.1, momentum 0.9, nesterov, weight_decay 0.0005; schedule: cosine over 10 epoch(s)\n"
            "  network student, a parameter group of its own: lr 0.02, momentum 0.9, nesterov, weight_decay 0.0005"
            ) in printed
    assert ("optimizer: adamw, lr 0.001, betas (0.9, 0.999), weight_decay 0.0005; schedule: constant over 10 epoch(s)\n"
            "  network student, a parameter group of its own: lr 0.0002, betas (0.9, 0.999), weight_decay 0.0005"
            ) in printed


def test_a_graph_without_overrides_records_none():
    """Its config (config.yaml, a checkpoint's) is what it was before these fields: older runs still resume."""
    document = load_graph(ROOT / "graphs/kd.yaml").document
    assert all("optimizer" not in network for network in document["networks"].values())
    assert all({"optimizer", "schedule"}.isdisjoint(stage) for stage in document["stages"])
    fitnet = load_graph(ROOT / "graphs/fitnet.yaml").document["stages"]
    assert [stage.get("optimizer") for stage in fitnet] == [None, {"lr": 0.2}, None]
