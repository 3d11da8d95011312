"""Batched (fused) plans compute what the unfused plan computes: losses, gradients, statistics, steps.

Each case compiles a graph twice, ``train.batching: off`` and ``all``, from the same weights, and
compares one step of each plan (every link's loss, every parameter's gradient, every BatchNorm's
running statistics), the parameters after three SGD steps with momentum, weight decay and a frozen
network, and the eval plan's outputs. Float32, 1e-5 relative. The routing decision (per-group
backward, one routed backward, or no fusion) is checked where it is made.
"""
from __future__ import annotations

import json
import textwrap

import pytest
import torch

from conftest import DEVICE, ROOT
from ktgraph.app.cli import main
from ktgraph.bind import bind
from ktgraph.compile import compile_program
from ktgraph.compile.fusion import FusedCall, unfuse
from ktgraph.graph import load_graph
from ktgraph.kinds import GateContext
from ktgraph.runtime import Executor, prepare

SMALL = ["data.image_size=16"]
PEERS = """
name: cohort
networks: {n1: {model: resnet8}, n2: {model: resnet8}, n3: {model: resnet8}, n4: {model: resnet8}}
links:
  - {kind: ce, each: {i: [n1, n2, n3, n4]}, target: "{i}"}
  - {kind: kl, each: {i: [n1, n2, n3, n4], j: [n1, n2, n3, n4]}, source: "{j}", target: "{i}", weight: 0.333}
stages:
  - {name: all, epochs: 1}
  - {name: three, epochs: 1, freeze: [n4]}
"""
NETS = ["n1", "n2", "n3", "n4"]
XML4 = """
name: xml4
networks:
{networks}
crosses:
  - {{kind: xml, networks: [{nets}], cut: up}}
links:
  - {{kind: ce, each: {{i: [{nets}]}}, target: "{{i}}", weight: 0.167}}
  - {{kind: kl, each: {{i: [{nets}], j: [{nets}]}}, source: "{{j}}", target: "{{i}}", weight: 0.056}}
  - {{kind: kl, each: {{i: [{nets}], j: [{nets}]}}, name: "up_kl:{{i}}-{{j}}", source: "{{j}}", target: "{{i}}-{{j}}", trains: ["{{i}}.up"], weight: 0.167}}
  - {{kind: ce, each: {{i: [{nets}], j: [{nets}]}}, name: "up_ce:{{i}}-{{j}}", target: "{{i}}-{{j}}", trains: ["{{i}}.up"], weight: 0.167}}
  - {{kind: kl, each: {{i: [{nets}], j: [{nets}]}}, name: "down_kl:{{j}}-{{i}}", source: "{{j}}", target: "{{j}}-{{i}}", trains: ["{{i}}.down"], weight: 0.167}}
  - {{kind: ce, each: {{i: [{nets}], j: [{nets}]}}, name: "down_ce:{{j}}-{{i}}", target: "{{j}}-{{i}}", trains: ["{{i}}.down"], weight: 0.167}}
stages:
  - {{name: all, epochs: 1}}
  - {{name: three, epochs: 1, freeze: [n4]}}
""".format(networks="\n".join(f"  {n}: {{model: resnet8, cuts: [layer2], parts: [up, down]}}" for n in NETS),
           nets=", ".join(NETS))
BUNDLED = sorted(p.stem for p in (ROOT / "graphs").glob("*.yaml"))


def write(tmp_path, name: str, text: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def jobs(file, *overrides: str):
    """The same graph and weights, unbatched and batched."""
    out = []
    for batching in ("off", "all"):
        torch.manual_seed(0)
        out.append(prepare(load_graph(file, [*SMALL, f"train.batching={batching}", *overrides]), with_data=False,
                           device=DEVICE))
    out[1].modules.load_state_dict(out[0].modules.state_dict())
    return out


def batch(seed: int):
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 3, 16, 16, generator=generator), torch.randint(0, 10, (8,), generator=generator)
    return x.to(DEVICE), y.to(DEVICE)


def one_step(job, stage: int, x, y):
    plan = job.program.stages[stage]
    job.modules.set_fixed(plan.fixed)
    job.modules.train()
    executor = Executor(plan, job.modules)
    ctx = GateContext(iteration=3, total_iterations=10, epoch=2)
    losses = executor.losses(executor.forward(x, y, ctx), y, ctx)
    job.modules.zero_grad(set_to_none=True)
    executor.backward(losses)
    return {k: v.detach() for k, v in losses.items()}, executor


def assert_same_state(a, b, what: str):
    for (name, p), q in zip(a.modules.named_parameters(), b.modules.parameters()):
        ga, gb = p.grad, q.grad
        if what == "grad":
            if ga is None or gb is None:
                assert (ga is None or not ga.any()) and (gb is None or not gb.any()), name
            else:
                torch.testing.assert_close(gb, ga, rtol=1e-5, atol=1e-6, msg=name)
        else:
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)
    if what != "grad":
        for (name, p), q in zip(a.modules.named_buffers(), b.modules.buffers()):
            torch.testing.assert_close(q.float(), p.float(), rtol=1e-5, atol=1e-6, msg=name)


def check_equivalence(a, b):
    assert any(isinstance(s, FusedCall) for plan in (*b.program.stages, b.program.eval) for s in plan.steps)
    for stage in range(len(a.program.stages)):
        plain, fused = a.program.stages[stage], b.program.stages[stage]
        assert [t.trains for t in plain.terms] == [t.trains for t in fused.terms]  # fusion never re-routes
        x, y = batch(stage)
        la, _ = one_step(a, stage, x, y)
        lb, _ = one_step(b, stage, x, y)
        assert la.keys() == lb.keys()
        for link in la:
            torch.testing.assert_close(lb[link], la[link], rtol=1e-5, atol=1e-6, msg=link)
        assert_same_state(a, b, "grad")
        assert_same_state(a, b, "state")  # BatchNorm running statistics after the step
    # Three optimizer steps (momentum, weight decay, Nesterov) in the last stage, which may freeze a network.
    # lr 0.02: at 0.1 a batch of 8 makes some BatchNorm channels nearly constant, and the float noise
    # of summing gradients in another order (1e-7) grows chaotically instead of staying at 1e-6.
    stage = len(a.program.stages) - 1
    optimizers = [torch.optim.SGD([p for p in j.modules.parameters() if p.requires_grad], lr=0.02, momentum=0.9,
                                  nesterov=True, weight_decay=5e-4) for j in (a, b)]
    for step in range(3):
        x, y = batch(10 + step)
        for job, optimizer in zip((a, b), optimizers):
            one_step(job, stage, x, y)
            optimizer.step()
    assert_same_state(a, b, "state")
    # Evaluation.
    x, _ = batch(99)
    outs = []
    for job in (a, b):
        job.modules.eval()
        executor = Executor(job.program.eval, job.modules)
        with torch.no_grad():
            outs.append(executor.outputs(executor.forward(x)))
    for node in outs[0]:
        torch.testing.assert_close(outs[1][node], outs[0][node], rtol=1e-5, atol=1e-5, msg=node)


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_graph_batched_equals_unbatched(name):
    # Calibrated calls are never fused (each has statistics of its own, tests/test_calibration.py):
    # without calibration the eval plans batch their cross paths' calls too, and are compared here.
    raw = "train.calibrate.paths=none"
    a, b = jobs(ROOT / "graphs" / f"{name}.yaml", raw)
    if not any(isinstance(s, FusedCall) for plan in (*b.program.stages, b.program.eval) for s in plan.steps):
        assert name in ("dml", "fitnet", "independent", "kd", "kdcl_general", "kdcl_linear", "kdcl_minlogit",
                        "kdcl_naive")  # networks of different architectures: nothing to batch
        same = [f"networks.{n}.model=resnet8" for n in a.graph.networks]
        same += ["networks.teacher.cuts=[layer1]"] if name == "fitnet" else []  # the student's cut too
        a, b = jobs(ROOT / "graphs" / f"{name}.yaml", raw, *same)
    check_equivalence(a, b)


def test_an_identical_cohort_of_four_is_one_batched_call(tmp_path):
    a, b = jobs(write(tmp_path, "cohort", PEERS))
    plan = b.program.stages[0]
    assert [type(s).__name__ for s in plan.steps] == ["FusedCall"] and plan.steps[0].kind == "peers"
    assert plan.backward == "groups" and len(plan.groups) == 1  # DML's groups merge: one group reaches it
    check_equivalence(a, b)


def test_xml_with_four_networks_takes_one_routed_backward(tmp_path):
    a, b = jobs(write(tmp_path, "xml4", XML4))
    plan = b.program.stages[0]
    kinds = sorted(s.kind for s in plan.steps if isinstance(s, FusedCall))
    assert kinds == ["inputs"] * 4 + ["peers"]  # each down-half on 4 inputs; the 4 up-halves together
    assert plan.backward == "routed" and "one routed backward" in plan.notes[-1]
    check_equivalence(a, b)


def test_each_link_alone_trains_only_what_it_trains(tmp_path):
    """The routed backward's views: a link's gradient reaches exactly its trains set."""
    _, b = jobs(write(tmp_path, "xml4", XML4))
    plan = b.program.stages[0]
    x, y = batch(3)
    for term in plan.terms[::5]:
        losses, executor = one_step(b, 0, x, y)  # fills every loss; then only this term's backward
        b.modules.zero_grad(set_to_none=True)
        values = executor.forward(x, y, GateContext())
        live = executor.losses(values, y, GateContext())
        executor.backward({k: (v if k == term.link else v * 0) for k, v in live.items()})
        for owner in b.bound.modules.segments:
            grads = [p.grad for p in b.modules.parameters_of([owner])]
            touched = any(g is not None and g.abs().sum() > 0 for g in grads)
            assert touched == (owner in term.trains), (term.link, str(owner))


def test_multi_xross_is_not_fused_when_no_backward_would_be_exact_and_cheap():
    _, b = jobs(ROOT / "graphs/multi_xross.yaml", "train.calibrate.paths=none")
    plan = b.program.stages[0]
    assert not any(isinstance(s, FusedCall) for s in plan.steps)
    assert any("undone" in note for note in plan.notes)
    assert any(isinstance(s, FusedCall) for s in b.program.eval.steps)  # evaluation has no backward: batched


def test_auto_fuses_nothing_on_the_cpu_or_cuda():
    """``auto`` fuses what measured faster on the device: on the CPU and on an H200 nothing did
    (benchmarks/README.md, batching.py), while ``all`` still fuses on request on either."""
    graph = load_graph(ROOT / "graphs/xml.yaml", SMALL)
    forced = load_graph(ROOT / "graphs/xml.yaml", [*SMALL, "train.batching=all"])
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        program = compile_program(bind(graph, 10, (3, 16, 16), device=device))
        assert not any(isinstance(s, FusedCall) for s in program.stages[0].steps)
        program = compile_program(bind(forced, 10, (3, 16, 16), device=device))
        assert any(isinstance(s, FusedCall) for s in program.stages[0].steps)


def test_unfuse_restores_the_unbatched_plan(tmp_path):
    a, b = jobs(write(tmp_path, "xml4", XML4))
    plain, fused = a.program.stages[0], b.program.stages[0]
    back = unfuse(fused)
    assert sorted(map(str, back.steps)) == sorted(map(str, plain.steps))
    assert [(t.target, t.source) for t in back.terms] == [(t.target, t.source) for t in plain.terms]


def test_plan_shows_the_batching_decision(capsys):
    assert main(["plan", str(ROOT / "graphs/xml.yaml"), "train.batching=all"]) == 0
    out = capsys.readouterr().out
    assert "fused inputs[net1.down(v1) | net1.down(v2)]" in out and "one batched call: CifarResNet" in out
    assert "backward: one routed backward" in out and "(to the weights only)" in out


def test_bad_batching_value_is_a_located_error(tmp_path, capsys):
    graph = write(tmp_path, "g", "networks: {a: {model: resnet8}}\nlinks: [{kind: ce, target: a}]\n"
                                 "train: {batching: everything}\n")
    assert main(["validate", str(graph), "--no-build"]) == 2
    err = capsys.readouterr().err
    assert "g.yaml:3:" in err and "train.batching" in err and "auto, off, inputs, peers, all" in err


def test_a_batched_run_trains_like_an_unbatched_one(tmp_path):
    """The trainer runs batched plans; both runs log the same losses and accuracies."""
    quick = ["--no-progress", "train.epochs=1", "data.limit_train=64", "data.limit_test=32", "data.image_size=8",
             "train.batch_size=32"]
    lines = {}
    for batching in ("off", "all"):
        out = tmp_path / batching
        assert main(["run", str(ROOT / "graphs/xml.yaml"), "--out", str(out), *quick,
                     f"train.batching={batching}"]) == 0
        lines[batching] = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert lines["all"]["links"] == pytest.approx(lines["off"]["links"], rel=1e-4)
    assert lines["all"]["test"] == lines["off"]["test"]


def test_batched_plans_under_autocast_stay_close():
    """AMP (here bfloat16 autocast on the CPU) changes the numbers both plans compute alike."""
    a, b = jobs(ROOT / "graphs/xml.yaml")
    x, y = batch(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        la, _ = one_step(a, 0, x, y)
        lb, _ = one_step(b, 0, x, y)
    for link in la:
        torch.testing.assert_close(lb[link], la[link], rtol=2e-2, atol=2e-2, msg=link)


def test_compiled_steps_equal_eager_steps(tmp_path):
    """train.compile: the forward runs through torch.compile; losses and gradients within 1e-4."""
    text = """
networks:
  a: {model: tiny_test, cuts: [stem], parts: [up, down]}
  b: {model: tiny_test, cuts: [stem], parts: [up, down]}
crosses:
  - {kind: xml, networks: [a, b]}
links:
  - {kind: ce, each: {i: [a, b, a-b, b-a]}, target: "{i}"}
  - {kind: kl, source: b, target: a-b, trains: [a.up]}
"""
    file = write(tmp_path, "tiny", text)
    results = []
    for compiled in ("false", "true"):
        torch.manual_seed(0)
        job = prepare(load_graph(file, ["data.image_size=8", f"train.compile={compiled}"]), with_data=False)
        x, y = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(6) % 5
        losses, executor = one_step(job, 0, x, y)
        results.append((losses, [p.grad.clone() for p in job.modules.parameters() if p.grad is not None],
                        executor.compile_seconds))
    (la, ga, none), (lb, gb, seconds) = results
    assert none is None and seconds is not None and seconds > 0  # compile time is measured, apart
    for link in la:
        torch.testing.assert_close(lb[link], la[link], rtol=1e-4, atol=1e-5)
    for p, q in zip(ga, gb):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
