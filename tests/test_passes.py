"""The compiler as passes over a plan IR, and the program a run compiles once.

Each pass is a function (plan, bound) -> plan with a test of its own here; the pipeline runs
them in the order of ``TRAIN_PASSES``. Also: shapes are known from binding, before any data;
BatchNorm policy is plan data applied without touching a module; segments see module
conversions; state-dict keys are structural, and old checkpoints still load.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import NUM_CLASSES, ROOT, SHAPE, Built, load_text
from ktgraph.app.cli import main
from ktgraph.bind import bind
from ktgraph.compile import INPUT, TRAIN_PASSES, Call, compile_plan
from ktgraph.compile import passes as P
from ktgraph.compile.lower import lower_eval, lower_train
from ktgraph.graph import SegmentId, load_graph
from ktgraph.runtime import Executor, prepare
from ktgraph.runtime.checkpoint import upgrade_state

EXPECTED = Path(__file__).parent / "expected" / "state_keys"
CROSSED = """
networks:
  a: {model: tiny_test, cuts: [block1], parts: [up, down]}
  b: {model: tiny_test, cuts: [block1], parts: [up, down], kwargs: {width: 6}}
  c: {model: tiny_test}
crosses:
  - {kind: xml, networks: [a, b]}
links:
  - {kind: ce, each: {i: [a, b]}, target: "{i}"}
  - {kind: kl, source: b, target: a-b, trains: [a.up]}
  - {kind: kl, source: a, target: b-a, detach: false, trains: [all]}
  - {kind: ce, target: c, gate: cutoff}
  - {kind: kl, source: c, target: b, name: late}
stages:
  - {name: first, links: ["ce:a", "ce:b", "kl:b->a-b", "kl:a->b-a"]}
  - {name: second, freeze: [a]}
"""




def seg(name: str) -> SegmentId:
    return SegmentId(*name.split("."))


@pytest.fixture(scope="module")
def crossed():
    graph = load_text(CROSSED)
    torch.manual_seed(0)
    return bind(graph, NUM_CLASSES, SHAPE)


def passes_until(bound, stage_index: int, last: str):
    """The first stage's lowered plan run through the passes up to ``last``."""
    plan = lower_train(bound, bound.graph.stages[stage_index])
    for rewrite in TRAIN_PASSES:
        plan = rewrite(plan, bound)
        if rewrite.__name__ == last:
            return plan
    raise AssertionError(last)


# --- one test per pass ----------------------------------------------------------------------------
def test_lowering_shares_prefixes_and_knows_every_shape(crossed):
    plan = lower_train(crossed, crossed.graph.stages[0])
    assert len(plan.terms) == 6  # every link, before pruning
    assert plan.calls_of(seg("a.up")) == 1 and plan.calls_of(seg("b.down")) == 2
    assert plan.values[INPUT].shape == SHAPE
    assert plan.values["a.up(x)"].shape == (8, 4, 4)
    assert plan.values["b.down(a.up(x))"].shape == (NUM_CLASSES,)
    assert all(v.dtype == "float32" for v in plan.values.values())
    assert set(plan.flow.predecessors("b.down(a.up(x))")) == {"a.up(x)"}  # the value graph stays on the plan


def test_prune_links_drops_cut_off_links_and_those_outside_the_stage(crossed):
    plan = P.prune_links(lower_train(crossed, crossed.graph.stages[0]), crossed)
    assert [t.link for t in plan.terms] == ["ce:a", "ce:b", "kl:b->a-b", "kl:a->b-a"]
    second = P.prune_links(lower_train(crossed, crossed.graph.stages[1]), crossed)
    assert "ce:c" not in {t.link for t in second.terms} and "late" in {t.link for t in second.terms}
    assert any("not compiled" in note for note in plan.notes)


def test_eliminate_dead_steps_keeps_only_what_terms_read(crossed):
    plan = P.prune_links(lower_train(crossed, crossed.graph.stages[0]), crossed)
    assert plan.calls_of(seg("c.p1")) == 1  # lowered for the cut-off and the inactive link
    live = P.eliminate_dead_steps(plan, crossed)
    assert live.calls_of(seg("c.p1")) == 0 and "c.p1(x)" not in live.values and "c" not in live.outputs
    assert len(live.steps) == 6
    evaluation = P.eliminate_dead_steps(lower_eval(crossed), crossed)
    assert set(evaluation.outputs) == {"a", "b", "c", "a-b", "b-a", "mean(networks)", "mean(paths)"}


def test_route_gradients_is_wanted_and_depended_on_minus_frozen(crossed):
    plan = passes_until(crossed, 0, "route_gradients")
    terms = {t.link: t for t in plan.terms}
    assert terms["kl:b->a-b"].trains == {seg("a.up")}  # asked for a.up; b.down is only passed through
    assert terms["kl:b->a-b"].deps == {seg("a.up"), seg("b.down")}
    assert terms["kl:a->b-a"].deps == {seg("b.up"), seg("a.down"), seg("a.up")}  # undetached source
    assert terms["kl:a->b-a"].trains == terms["kl:a->b-a"].deps  # trains: [all]
    second = {t.link: t for t in passes_until(crossed, 1, "route_gradients").terms}
    assert second["ce:a"].trains == frozenset()  # stage `second` freezes a
    assert second["late"].trains == {seg("b.up"), seg("b.down")}


def test_fix_untrained_makes_fixed_teachers(crossed):
    assert passes_until(crossed, 0, "fix_untrained").fixed == {"c"}  # no active link trains c
    second = passes_until(crossed, 1, "fix_untrained")
    assert second.fixed == {"a", "c"} and any("c trained by no link" in n for n in second.notes)


def test_assign_batchnorm_keeps_running_statistics_of_cross_calls(crossed):
    plan = passes_until(crossed, 0, "assign_batchnorm")
    stats = {str(s.module) + "(" + s.input + ")": s.stats for s in plan.steps if isinstance(s, Call)}
    assert stats == {"a.up(x)": "update", "a.down(a.up(x))": "update", "b.up(x)": "update",
                     "b.down(b.up(x))": "update", "b.down(a.up(x))": "keep", "a.down(b.up(x))": "keep"}
    graph = load_text(CROSSED + "train: {bn_stats: all}\n")
    everything = passes_until(bind(graph, NUM_CLASSES, SHAPE), 0, "assign_batchnorm")
    assert {s.stats for s in everything.steps if isinstance(s, Call)} == {"update"}
    second = passes_until(crossed, 1, "assign_batchnorm")  # a is fixed: its calls are in eval mode anyway
    assert all(s.stats == "update" for s in second.steps if isinstance(s, Call) and s.module.network == "a")


def test_group_gradients_merges_only_exact_groups(crossed):
    plan = passes_until(crossed, 0, "group_gradients")
    assert sum(len(g.terms) for g in plan.groups) == len(plan.terms)
    assert len(plan.groups) < len({t.trains for t in plan.terms})  # something was merged
    for group in plan.groups:  # one backward into group.trains gives each term exactly what it trains
        for term in (t for t in plan.terms if t.link in group.terms):
            assert term.deps & group.trains == term.trains, term.link


def test_the_pipeline_is_the_passes_in_order(crossed):
    seen = []
    final = compile_plan(crossed, crossed.graph.stages[0], trace=lambda name, plan: seen.append(name))
    assert seen == ["lower", "prune_links", "eliminate_dead_steps", "route_gradients", "fix_untrained",
                    "assign_batchnorm", "group_gradients", "fuse_calls", "choose_backward"]
    assert final.groups and final.fixed == {"c"}


def test_plan_passes_prints_the_plan_after_each_pass(capsys):
    assert main(["plan", str(ROOT / "graphs/xml.yaml"), "--passes"]) == 0
    out = capsys.readouterr().out
    for name in ("lower", "prune_links", "eliminate_dead_steps", "route_gradients", "assign_batchnorm",
                 "group_gradients"):
        assert f"after {name} (train)" in out
    assert out.index("after lower") < out.index("after group_gradients")
    assert "batch statistics, running ones kept" in out.split("after assign_batchnorm")[1]


# --- one program per run; no data for plan, render, validate ---------------------------------------
@pytest.mark.parametrize(("graph", "plans"), [("xml.yaml", 2), ("kd.yaml", 3)])
def test_a_run_compiles_once_per_stage_and_once_for_evaluation(graph, plans, tmp_path, monkeypatch):
    import ktgraph.compile.pipeline as pipeline

    calls = []
    real = pipeline.compile_plan
    monkeypatch.setattr(pipeline, "compile_plan", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    short = ["stages.0.epochs=1", "stages.1.epochs=1"] if graph == "kd.yaml" else ["train.epochs=1"]
    assert main(["run", str(ROOT / "graphs" / graph), "--out", str(tmp_path / "run"), "--no-progress", *short,
                 "data.limit_train=32", "data.limit_test=16", "data.image_size=8", "train.batch_size=16"]) == 0
    assert len(calls) == plans  # the end-of-run table, pictures and report read the same program




@pytest.mark.usefixtures("no_loading")
def test_plan_render_and_validate_need_no_data(tmp_path, capsys):
    xml = str(ROOT / "graphs/xml.yaml")
    assert main(["plan", xml]) == 0
    assert main(["render", xml, "-o", str(tmp_path / "xml.dot")]) == 0
    assert main(["validate", xml]) == 0
    capsys.readouterr()
    # A Tiny ImageNet table can be planned before the data is on this machine.
    assert main(["plan", xml, "data.name=image_folder", "data.num_classes=200", "data.image_size=64"]) == 0
    logits = next(line for line in capsys.readouterr().out.splitlines() if "= net1;" in line)
    assert logits.endswith("; 200")  # net1's logits: 200 classes, known without the data
    assert main(["plan", xml, "data.name=image_folder"]) == 2
    assert "set data.root, or data.num_classes" in capsys.readouterr().err


# --- BatchNorm policy as plan data, structural identity --------------------------------------------
def test_batchnorm_policy_never_touches_a_module(batch):
    """Cut after the stem, so both down-halves hold a BatchNorm that a cross call reads."""
    built = Built("""
networks:
  a: {model: tiny_test, cuts: [stem], parts: [up, down]}
  b: {model: tiny_test, cuts: [stem], parts: [up, down]}
crosses:
  - {kind: xml, networks: [a, b]}
links:
  - {kind: ce, each: {i: [a, b, a-b, b-a]}, target: "{i}"}
""")
    assert [s.stats for s in built.plan.steps if isinstance(s, Call)].count("keep") == 2
    seen = set()
    norms = [m for m in built.model.modules() if isinstance(m, nn.BatchNorm2d)]
    hooks = [m.register_forward_pre_hook(lambda m, i: seen.add(m.track_running_stats)) for m in norms]
    built.model.train()
    built.executor.forward(batch[0])
    for hook in hooks:
        hook.remove()
    assert seen == {True}  # no call switched running statistics off to apply its policy
    for name in "ab":  # each down-half's statistics saw its own network's features once, the cross call none
        net = built.net(name)
        bn = net.block1[1]
        with torch.no_grad():
            own = net.block1[0](net.stem(batch[0]))
        torch.testing.assert_close(bn.running_mean, 0.1 * own.mean(dim=(0, 2, 3)))
        assert bn.num_batches_tracked.item() == 1


def test_module_conversion_reaches_every_segment():
    """resnet8's stem BatchNorm is a direct child of the model: a copied reference would never see SyncBN."""
    job = prepare(load_graph(ROOT / "graphs/xml.yaml", ["data.image_size=16"]), with_data=False)
    modules = job.modules
    stem_before = modules.networks["net1"].bn1
    assert nn.SyncBatchNorm.convert_sync_batchnorm(modules) is modules
    for segment in modules.segments.values():
        norms = [m for m in segment.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    up = modules.segments[seg("net1.up")]
    assert dict(up.owned())["bn1"] is modules.networks["net1"].bn1 is not stem_before
    modules.eval()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        from_plan = Executor(job.program.eval, modules).outputs(Executor(job.program.eval, modules).forward(x))
        torch.testing.assert_close(from_plan["net1"], modules.networks["net1"](x))


@pytest.mark.parametrize("name", sorted(p.stem for p in EXPECTED.glob("*.txt")))
def test_state_dict_keys_are_those_older_checkpoints_have(name):
    """Keys written by ktgraph before this compiler (tests/expected/state_keys, one per graph)."""
    old = (EXPECTED / f"{name}.txt").read_text().split()
    file, overrides = {"xml_adapters": ("graphs/xml.yaml", ["networks.net2.model=wrn16_2"]),
                       "fitnet_like": (str(EXPECTED / "fitnet_like.yaml"), [])}.get(name, (f"graphs/{name}.yaml", []))
    job = prepare(load_graph(ROOT / file if not Path(file).is_absolute() else file,
                             ["data.image_size=16", *overrides]), with_data=False)
    state = job.modules.state_dict()
    renamed = upgrade_state(dict.fromkeys(old), job.bound.legacy_keys())
    assert list(renamed) == list(state)  # same keys, same order, after renaming legacy regressor keys
    if name != "fitnet_like":
        assert old == list(state)  # the bundled graphs' checkpoints load as they are
    else:
        assert [k for k in state if k.startswith("regressors.")][0] == "regressors.student:body>teacher:body.0.weight"


def test_an_old_checkpoint_of_a_mimic_graph_loads(tmp_path):
    """A checkpoint whose regressor is keyed by its link's name loads into the structural key."""
    job = prepare(load_graph(EXPECTED / "fitnet_like.yaml", ["data.image_size=16"]), with_data=False)
    old_keys = (EXPECTED / "fitnet_like.txt").read_text().split()
    values = [torch.full_like(v, i) if v.is_floating_point() else v for i, v in enumerate(job.modules.state_dict().values())]
    old = dict(zip(old_keys, values))
    fresh = prepare(load_graph(EXPECTED / "fitnet_like.yaml", ["data.image_size=16"]), with_data=False).modules
    fresh.load_state_dict(upgrade_state(old, job.bound.legacy_keys()))
    regressor = next(iter(fresh.regressors.values()))
    index = old_keys.index("regressors.regressor:mimic:teacher:body->student:body.0.weight")
    assert torch.equal(regressor[0].weight, torch.full_like(regressor[0].weight, index))
