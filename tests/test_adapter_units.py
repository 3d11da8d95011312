"""Adapters are registered units: full shapes in, a module or a located refusal out, lifecycle hooks."""
from __future__ import annotations

import warnings
from typing import ClassVar, Literal

import pytest
import torch
from torch import nn

from conftest import load_text
from ktgraph.bind import bind
from ktgraph.compile import compile_program
from ktgraph.errors import GraphError
from ktgraph.kinds import ADAPTERS, AGGREGATORS, GATES, LINKS, Adapter, EpochInfo, register_adapter
from ktgraph.runtime.events import EpochEnd
from ktgraph.runtime.hooks import UnitHooks

CALLS: list[tuple[str, nn.Module, int]] = []


@pytest.fixture
def pool_adapter():
    saved = [r.snapshot() for r in (ADAPTERS, AGGREGATORS, GATES, LINKS)]

    @register_adapter
    class Pool1x1(Adapter):
        """The docs' example (extending.md), with a hook that records its calls."""

        kind: Literal["pool_1x1"] = "pool_1x1"
        label: ClassVar[str] = "pool+1x1 conv"

        def build(self, source, target):
            if len(source) != 3 or source[1] % target[1] or source[2] % target[2]:
                raise self.refuse(source, target, "it only shrinks by whole factors", "a larger source map")
            return nn.Sequential(nn.AdaptiveAvgPool2d(target[1:]), nn.Conv2d(source[0], target[0], 1))

        def on_epoch_end(self, module, epoch, heldout):
            CALLS.append(("end", module, epoch.epoch))

    yield
    for registry, snapshot in zip((ADAPTERS, AGGREGATORS, GATES, LINKS), saved):
        registry.restore(snapshot)
    CALLS.clear()


GRAPH = """
networks:
  t: {model: tiny_test, cuts: [block1], parts: [mid, top], kwargs: {width: 6}}
  s: {model: tiny_test, cuts: [stem], parts: [low, top]}
links:
  - {kind: ce, target: s}
  - {kind: mimic, source: t.mid, target: s.low, adapter: pool_1x1}
"""


def test_a_user_adapter_maps_full_shapes_and_gets_its_hooks(pool_adapter):
    graph = load_text(GRAPH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bound = bind(graph, 5, (3, 8, 8))
    module = next(iter(bound.modules.regressors.values()))
    assert module(torch.randn(2, 4, 8, 8)).shape == (2, 8, 4, 4)  # s.low (4, 8, 8) -> t.mid (8, 4, 4)
    hooks = UnitHooks(graph, bound.modules, compile_program(bound).eval, None, torch.device("cpu"))
    hooks.on_epoch_end(EpochEnd(EpochInfo("main", 0, 3, 5)))
    assert CALLS == [("end", module, 3)]


def test_a_refusal_names_the_link_and_its_adapter_field(pool_adapter):
    graph = load_text(GRAPH.replace("source: t.mid, target: s.low", "source: s.low, target: t.mid"))
    with pytest.raises(GraphError) as caught:
        bind(graph, 5, (3, 8, 8))
    err = caught.value
    assert err.where == ("links", 1, "adapter")
    assert "link `mimic:s.low->t.mid`: the pool_1x1 adapter cannot map (8, 4, 4) to (4, 8, 8)" in err.message
    assert err.expected == "a larger source map"
