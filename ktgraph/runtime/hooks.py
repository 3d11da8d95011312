"""Units as subscribers: each unit's ``on_epoch_start`` and ``on_epoch_end`` run on the training events.

An aggregator's ``on_epoch_end`` gets the held-out split as its own input records (the logits
and features it reads, and the labels), computed with the eval plan, so a unit can re-estimate
its state between epochs (KDCL-General's weights from a validation covariance, for instance).
Under several processes each reads its shard of the split, and a unit sums over processes what it
needs (KDCL-General all-reduces its error sums), so every rank holds the same state.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..bind import GraphModules
from ..compile import Plan
from ..graph import Aggregator, KTGraph
from ..kinds import AggregatorInput, Unit
from .events import Callback, EpochEnd, EpochStart
from .executor import Executor


@dataclass
class HeldOutInputs:
    """The held-out split as one aggregator's input records, one per batch, without gradients."""

    plan: Plan
    aggregator: Aggregator
    modules: GraphModules
    loader: DataLoader
    device: torch.device

    def batches(self) -> Iterator[AggregatorInput]:
        nodes = [r.name for r in self.aggregator.inputs + self.aggregator.features]
        sub = self.plan.restrict(nodes)
        named = {**sub.features, **sub.outputs}
        executor = Executor(sub, self.modules)
        was_training = self.modules.training
        self.modules.eval()
        try:
            with torch.no_grad():
                for images, labels in self.loader:
                    images, labels = images.to(self.device), labels.to(self.device)
                    values = executor.forward(images)
                    yield AggregatorInput([values[named[r.name]] for r in self.aggregator.inputs],
                                          [values[named[r.name]] for r in self.aggregator.features], labels)
        finally:
            self.modules.train(was_training)


class UnitHooks(Callback):
    """The units of a graph that have hooks, subscribed to the epoch events."""

    def __init__(self, graph: KTGraph, modules: GraphModules, eval_plan: Plan, heldout: DataLoader | None,
                 device: torch.device) -> None:
        self.modules = modules
        self.eval_plan = eval_plan
        self.heldout = heldout
        self.device = device
        self.every_aggregator = list(graph.aggregators.values())  # any may report state in the metrics
        self.aggregators = [a for a in self.every_aggregator if a.unit.has_hooks()]
        self.units: list[Unit] = list({id(u): u for u in (*(l.loss for l in graph.links),
                                                          *(l.gate for l in graph.links))
                                       if u.has_hooks()}.values())
        self.adapters = [(key, unit) for key, unit in modules.adapter_units.items() if unit.has_hooks()]

    def _module(self, agg: Aggregator) -> Any:
        return self.modules.module(agg.id)

    def on_epoch_start(self, event: EpochStart) -> None:
        for agg in self.aggregators:
            agg.unit.on_epoch_start(self._module(agg), event.epoch)
        for unit in self.units:
            unit.on_epoch_start(None, event.epoch)
        for key, adapter in self.adapters:
            adapter.on_epoch_start(self.modules.get_submodule(key), event.epoch)

    def metrics(self) -> dict[str, dict[str, float]]:
        """Each aggregator's state as its unit reports it (for the epoch's metrics line), by aggregator."""
        found = {agg.name: agg.unit.metrics(self._module(agg), [r.name for r in agg.inputs])
                 for agg in self.every_aggregator}
        return {name: values for name, values in found.items() if values}

    def on_epoch_end(self, event: EpochEnd) -> None:
        epoch = event.epoch
        for agg in self.aggregators:
            heldout = None if self.heldout is None else HeldOutInputs(self.eval_plan, agg, self.modules,
                                                                      self.heldout, self.device)
            agg.unit.on_epoch_end(self._module(agg), epoch, heldout)
        for unit in self.units:
            unit.on_epoch_end(None, epoch, None)
        for key, adapter in self.adapters:
            adapter.on_epoch_end(self.modules.get_submodule(key), epoch, None)
