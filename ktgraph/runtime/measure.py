"""Measuring every node of a trained graph: exact parameters, MACs and latency, from the eval plan.

Cross paths make one trained graph many models (the XML study's *dynamic computation*): with K
networks cut into P parts there are up to K^P chains of segments, each a standalone network
with its own accuracy, size and speed. For each network, cross path, aggregate and ensemble:

* the exact parameter count: the distinct parameters of the segments, adapters and
  aggregators it runs, each counted once (dedupe by identity);
* MACs per image, counted by PyTorch's ``FlopCounterMode`` (MACs = FLOPs / 2), each distinct
  segment call once (an ensemble shares its members' prefixes, as the plan does);
* latency per batch: eval mode, no grad, a warm-up, then the median of repeats.

Every cost runs only the steps of the eval plan that the node depends on (``Plan.restrict``).
Before training, :func:`call_costs` and :func:`node_costs` give the same counts, per segment and
adapter too, without timing anything (``ktgraph plan --costs``).
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..bind import GraphModules
from ..compile import INPUT, Call, Plan, Value
from ..compile.fusion import unfuse
from ..errors import unknown_name
from ..graph import AdapterId, KTGraph, SegmentId
from .executor import Executor

PATH_KINDS = ("network", "cross path")  # rows that are one chain of segments (what `ktgraph pick` exports)
KINDS = ("network", "cross path", "aggregate", "ensemble")


@dataclass
class Row:
    """One evaluated node of a run.

    ``segments``: the chain of segments of a path (empty for aggregates and ensembles);
    ``route``: how the node is computed (``net1.up > net2.down``, ``mean(net1, net2)``);
    ``parts``: the network that owns each part position, for paths whose networks share part
    names (else empty), and ``part_names`` those positions' names. Accuracies are in percent:
    ``top1_last`` from the last checkpoint, ``top1_best`` the same split's top-1 at
    ``best_epoch`` (counted from 1 over all stages; chosen on val when the run has one);
    ``calibrated``: evaluated with BatchNorm statistics estimated for this path
    (``runtime/calibrate.py``).
    """

    node: str
    kind: str
    route: str
    params: int
    macs: int | None
    latency_ms: float | None
    batch_size: int | None
    top1_last: float
    top5_last: float | None = None
    top1_best: float | None = None
    best_epoch: int | None = None
    segments: tuple[str, ...] = ()
    parts: tuple[str, ...] = ()
    part_names: tuple[str, ...] = ()
    device: str = ""
    calibrated: bool = False

    @property
    def is_path(self) -> bool:
        return self.kind in PATH_KINDS


def row_nodes(graph: KTGraph, plan: Plan) -> list[str]:
    """Networks, cross paths, aggregates, ensembles: every node a table shows, in that order."""
    order = {kind: i for i, kind in enumerate(KINDS)}
    nodes = list(plan.outputs)
    return sorted(nodes, key=lambda n: (order[graph.node_kind(n)], nodes.index(n)))


def node_plan(plan: Plan, graph: KTGraph, node: str) -> Plan:
    """``plan`` restricted to what ``node`` (or its alias, ``net1-net1``) needs, unbatched: a node's
    cost is that of its own calls, whether or not the plan batches them with others'."""
    node = graph.aliases.get(node, node)
    if node not in plan.outputs:
        raise unknown_name("node", node, row_nodes(graph, plan))
    return unfuse(plan).restrict([node])


def node_params(modules: GraphModules, plan: Plan) -> int:
    """Exact parameter count of what a (restricted) plan runs: each distinct parameter once."""
    return sum(p.numel() for p in modules.parameters_of(plan.owners(), trainable=False))


def _device(modules: GraphModules) -> torch.device:
    return next(modules.parameters()).device


def _dtype(modules: GraphModules) -> torch.dtype:
    return next(modules.parameters()).dtype


@torch.no_grad()
def node_macs(modules: GraphModules, plan: Plan, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates per image (FLOPs / 2 from ``FlopCounterMode``), each distinct call once."""
    x = torch.zeros(1, *input_shape, device=_device(modules), dtype=_dtype(modules))
    was_training = modules.training
    modules.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            Executor(plan, modules).forward(x)
    finally:
        modules.train(was_training)
    return int(counter.get_total_flops()) // 2


@torch.no_grad()
def node_latency(modules: GraphModules, plan: Plan, input_shape: tuple[int, ...], batch_size: int, *,
                 warmup: int = 2, repeats: int = 10, max_seconds: float | None = 2.0) -> float:
    """Median wall-clock milliseconds for one batch through a (restricted) plan, eval mode, no grad.

    After ``warmup`` untimed batches, ``repeats`` batches are timed, or fewer (never under 3)
    once ``max_seconds`` have been spent timing, so slow CPU runs stay bounded.
    """
    executor = Executor(plan, modules)
    device = _device(modules)
    x = torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(0)).to(device, _dtype(modules))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    was_training = modules.training
    modules.eval()
    try:
        for _ in range(warmup):
            executor.forward(x)
        sync()
        times: list[float] = []
        for _ in range(max(1, repeats)):
            started = time.perf_counter()
            executor.forward(x)
            sync()
            times.append(time.perf_counter() - started)
            if max_seconds is not None and len(times) >= 3 and sum(times) > max_seconds:
                break
    finally:
        modules.train(was_training)
    return 1000.0 * statistics.median(times)


def part_positions(graph: KTGraph, node: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(owner of each part position, the positions' names) when the path's networks share part names."""
    if node not in graph.paths:
        return (), ()
    path = graph.paths[node]
    names = {graph.networks[o].parts for o in path.owners}
    if len(names) != 1:
        return (), ()
    part_names = names.pop()
    own = tuple(s.part for s in path.segments)
    return (path.owners, part_names) if own == part_names else ((), ())


def measure_rows(graph: KTGraph, modules: GraphModules, plan: Plan, input_shape: tuple[int, ...],
                 nodes: Iterable[str], accuracy: dict[str, dict[str, float]],
                 best: dict[str, tuple[int, float]], *, batch_size: int, repeats: int = 10, warmup: int = 2,
                 max_seconds: float | None = 2.0, progress: Any = iter,
                 calibrated: Collection[str] = ()) -> list[Row]:
    """A row per node: its accuracy (given, ``calibrated`` for the nodes evaluated with calibrated
    BatchNorm statistics), best epoch (given) and measured costs."""
    rows = []
    for node in progress(list(nodes)):
        sub = node_plan(plan, graph, node)
        parts, part_names = part_positions(graph, node)
        epoch, top1_best = best.get(node, (None, None))
        latency = (node_latency(modules, sub, input_shape, batch_size, warmup=warmup, repeats=repeats,
                                max_seconds=max_seconds) if repeats > 0 else None)
        rows.append(Row(
            node=node, kind=graph.node_kind(node), route=graph.node_route(node), params=node_params(modules, sub),
            macs=node_macs(modules, sub, input_shape), latency_ms=latency, batch_size=batch_size,
            top1_last=accuracy[node]["top1"], top5_last=accuracy[node].get("top5"), top1_best=top1_best,
            best_epoch=epoch, segments=tuple(map(str, graph.paths[node].segments)) if node in graph.paths else (),
            parts=parts, part_names=part_names, device=str(_device(modules)), calibrated=node in calibrated))
    return rows


@dataclass(frozen=True)
class Cost:
    """The exact size and MACs per image of one module call or one node, known before training.

    ``name``: a segment (``net1.up``), an adapter (``net1.up>net2.down``) or a node;
    ``input_shape``: per sample, what the call reads (for a node, the image).
    """

    name: str
    kind: str
    route: str
    input_shape: tuple[int, ...]
    params: int
    macs: int


def call_costs(modules: GraphModules, plan: Plan) -> list[Cost]:
    """One row per segment and adapter the plan runs: its own parameters and the MACs of one call.

    A segment is costed on its own path's input (``Plan.own_path``), where it runs in its own
    network; a cross path's calls of it cost the same once an adapter has fitted the shape.
    """
    plan = unfuse(plan)
    own = plan.own_path()
    chosen: dict[SegmentId | AdapterId, Call] = {}
    for step in plan.steps:
        if isinstance(step, Call) and isinstance(step.module, (SegmentId, AdapterId)):
            if step.module not in chosen or (step.out in own and chosen[step.module].out not in own):
                chosen[step.module] = step
    costs = []
    for module, step in chosen.items():
        shape = plan.values[step.input].shape
        alone = replace(plan, steps=(replace(step, input=INPUT, stats="update"),), outputs={}, features={},
                        values={INPUT: Value(INPUT, shape), step.out: plan.values[step.out]}, terms=(), groups=(),
                        notes=())
        costs.append(Cost(name=str(module), kind="segment" if isinstance(module, SegmentId) else "adapter",
                          route=str(module), input_shape=shape, params=node_params(modules, alone),
                          macs=node_macs(modules, alone, shape)))
    return costs


def node_costs(graph: KTGraph, modules: GraphModules, plan: Plan, input_shape: tuple[int, ...],
               nodes: Iterable[str]) -> list[Cost]:
    """Parameters and MACs of each node, as ``measure_rows`` counts them, with no data and no timing."""
    costs = []
    for node in nodes:
        sub = node_plan(plan, graph, node)
        costs.append(Cost(name=node, kind=graph.node_kind(node), route=graph.node_route(node), input_shape=input_shape,
                          params=node_params(modules, sub), macs=node_macs(modules, sub, input_shape)))
    return costs
