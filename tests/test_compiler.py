"""The compiler's passes: prefix sharing, pruning and exact gradient grouping."""
from __future__ import annotations

import torch

from conftest import Built
from ktgraph.compile import Term, gradient_groups
from ktgraph.compile.format import format_plan
from ktgraph.graph import SegmentId
from ktgraph.kinds import GATES, LINKS


def crossed(cut: str, links: str) -> str:
    """Two tiny networks cut into up/down after ``cut``, both cross paths, and ``links``."""
    return f"""
networks:
  a: {{model: tiny_test, cuts: [{cut}], parts: [up, down]}}
  b: {{model: tiny_test, cuts: [{cut}], parts: [up, down]}}
crosses:
  - {{kind: xml, networks: [a, b]}}
links:{links}"""


def ids(*names: str) -> frozenset[SegmentId]:
    return frozenset(SegmentId(*name.split(".")) for name in names)


def term(name: str, trains: set[str], deps: set[str]) -> Term:
    return Term(link=name, node=name, loss=LINKS["ce"](), gate=GATES["through"](), weight=1.0, target=name,
                source=None, trains=ids(*trains), deps=ids(*deps))


def test_groups_merge_only_when_exact():
    own = term("own", {"a.up", "a.down"}, {"a.up", "a.down"})
    up = term("up", {"a.up"}, {"a.up", "b.down"})
    other = term("other", {"b.up", "b.down"}, {"b.up", "b.down"})
    groups = gradient_groups((own, up, other))
    assert {g.trains: set(g.terms) for g in groups} == {
        ids("a.up", "a.down"): {"own", "up"},
        ids("b.up", "b.down"): {"other"},
    }
    # up's loss depends on b.down, which the b group trains: never merged with it.
    assert all(not ({"up", "other"} <= set(g.terms)) for g in groups)


def test_undetached_source_widens_dependencies():
    built = Built("""
networks:
  a: {model: tiny_test}
  b: {model: tiny_test}
links:
  - {kind: kl, source: b, target: a, detach: false}
""")
    (t,) = built.plan.terms
    assert t.trains == ids("a.p1")  # default: the target's own parameters
    assert t.deps == ids("a.p1", "b.p1")


def test_unused_paths_and_cutoff_links_are_not_computed(batch):
    built = Built(crossed("block1", """
  - {kind: ce, each: {i: [a, b]}, target: "{i}"}
  - {kind: ce, target: a-b, gate: cutoff}
"""))
    assert built.plan.calls_of(SegmentId("b", "down")) == 1  # b.down(a.up(x)) only fed a cut-off link
    calls = {}
    hooks = [segment.owned()[0][1].register_forward_hook(
        lambda m, i, o, s=str(sid): calls.update({s: calls.get(s, 0) + 1}))
        for sid, segment in built.model.segments.items()]  # the first module each segment runs
    built.executor.forward(batch[0])
    for h in hooks:
        h.remove()
    assert calls == {"a.up": 1, "a.down": 1, "b.up": 1, "b.down": 1}


def test_plan_text_shows_sharing_formulas_and_groups():
    built = Built(crossed("block1", """
  - {kind: ce, target: a, weight: 0.5}
  - {kind: kl, source: b, target: a-b, T: 2, trains: [a.up], gate: linear}
"""))
    text = format_plan(built.plan)
    assert "v1 = a.up(x)    # shared by 2 readers" in text
    assert "0.5 · through · CE(" in text
    assert "1 · linear(k/k_end) · 4·KL(" in text and "[T=2]" in text
    assert "trains a.up" in text
    assert "gradient groups" in text


def test_bn_statistics_follow_own_path_only(batch):
    built = Built(crossed("stem", """
  - {kind: ce, each: {i: [a, b, a-b, b-a]}, target: "{i}"}
"""))
    x = batch[0]
    bn = built.net("a").block1[1]
    built.model.train()
    built.executor.forward(x)
    with torch.no_grad():
        h = built.net("a").block1[0](built.net("a").stem(x))
        expected = 0.9 * torch.zeros(8) + 0.1 * h.mean(dim=(0, 2, 3))
    torch.testing.assert_close(bn.running_mean, expected)  # the cross call b.up -> a.down left it alone
    assert bn.num_batches_tracked.item() == 1
