"""Channel mapping of crossed networks, run before the first step of the stage that first trains their paths.

For each ``mapping:`` of the graph, each of its cuts and each network after the first (the
reference): ``batches`` batches of the chosen split (without augmentation, in file order) run
through both networks' segments up to the cut, in eval mode; the streamed moments of the two
features score every channel pair (:mod:`ktgraph.zoo.matching`) and

* equal widths: the assignment is applied as a function-preserving permutation of the network's
  residual stream at the cut (:mod:`ktgraph.zoo.permute`), so its own accuracy does not change;
* different widths: each 1×1 adapter between the pair at that cut starts as the least-squares map
  from one network's features to the other's (bias included), instead of its random start.

Every process computes the same numbers from the same batches; under ``torch.distributed`` rank
0's orders and adapter weights are then broadcast, so a near-tie can never split the ranks.
The records go into every checkpoint (``mapping``); a run resumed within or after the mapped
stage reads them back and does not map again (the checkpoint's weights are already mapped).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..bind import GraphModules
from ..data import DataBundle
from ..errors import GraphError, TrainingError
from ..graph import AdapterId, CrossMapping, KTGraph, SegmentId
from ..kinds import leading_conv
from ..kinds.collective import distributed
from ..zoo.matching import Moments, assign, least_squares, linear_cka, matching_scores, score_matrix
from ..zoo.permute import permute, stream_at
from .evaluate import make_loader
from .events import BeforeCheckpoint, Callback, RunStart, StageStart

PAYLOAD_KEY = "mapping"


@dataclass
class MappedCut:
    """One network matched to the reference at one cut: what was found and what changed."""

    reference: str
    network: str
    part: str
    method: str
    score: str
    scores: dict[str, float]  # the three matching scores (identity, random, mapped); empty for different widths
    cka: float
    order: list[int] | None  # the applied order (new channel i = old channel order[i]); None: widths differ
    adapters: list[str] = field(default_factory=list)  # adapters started by least squares
    matrix: Tensor | None = field(default=None, repr=False)  # the score matrix before mapping (not saved)

    def saved(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "matrix"}


def map_channels(graph: KTGraph, modules: GraphModules, mapping: CrossMapping, data: DataBundle,
                 device: torch.device) -> list[MappedCut]:
    """Score, assign and apply one ``mapping:`` in place; the records in order (cut, then network)."""
    dataset = data.train_plain if mapping.split == "train" else data.val
    if dataset is None:
        raise graph.locate(GraphError(f"mapping.split `{mapping.split}` has no data", where=mapping.where))
    loader = make_loader(dataset, graph.train.batch_size, num_workers=graph.data.num_workers)
    reference, *others = mapping.networks
    found = []
    for part in mapping.parts:
        for network in others:
            moments = _moments(graph, modules, (reference, network), part, loader, mapping.batches, device)
            if moments is None:
                raise graph.locate(GraphError(f"mapping.split `{mapping.split}` holds no examples",
                                              where=mapping.where))
            found.append(_apply(graph, modules, mapping, reference, network, part, moments))
    return found


def _moments(graph: KTGraph, modules: GraphModules, pair: tuple[str, str], part: str, loader: Any, batches: int,
             device: torch.device) -> Moments | None:
    """The joint moments of both networks' features at the cut, over the first ``batches`` batches (None for a
    split without examples)."""
    ups = [_up_to(graph, modules, network, part) for network in pair]
    moments: Moments | None = None
    was_training = modules.training
    modules.eval()
    try:
        with torch.no_grad():
            for index, (images, _) in enumerate(loader):
                if index == batches:
                    break
                a, b = (up(images.to(device)) for up in ups)
                moments = moments or Moments(a.shape[1], b.shape[1])
                moments.add(a, b)
    finally:
        modules.train(was_training)
    return moments


def _up_to(graph: KTGraph, modules: GraphModules, network: str, part: str) -> Callable[[Tensor], Tensor]:
    """The network's segments up to and including ``part``, as one function."""
    segments = [modules.segments[s] for s in graph.path_of_feature(SegmentId(network, part))]

    def run(x: Tensor) -> Tensor:
        for segment in segments:
            x = segment(x)
        return x
    return run


def _apply(graph: KTGraph, modules: GraphModules, mapping: CrossMapping, reference: str, network: str, part: str,
           moments: Moments) -> MappedCut:
    record = MappedCut(reference, network, part, mapping.method, mapping.score, {}, linear_cka(moments), None)
    if moments.width_a != moments.width_b:
        record.adapters = _init_adapters(graph, modules, mapping, reference, network, part, moments)
        return record
    matrix = score_matrix(moments, mapping.score)
    order = _same_on_every_rank(torch.tensor(assign(matrix, mapping.method)))
    model = modules.networks[network]
    cut = graph.networks[network].cuts[graph.networks[network].parts.index(part)]
    if mapping.method != "none":  # `none` keeps the order: nothing to permute, so any model can be scored
        try:
            permute(model, stream_at(model, cut), order)
        except GraphError as err:
            err.where = mapping.where
            raise graph.locate(err) from None
    record.order, record.scores, record.matrix = order.tolist(), matching_scores(matrix, order.tolist()), matrix
    return record


def _init_adapters(graph: KTGraph, modules: GraphModules, mapping: CrossMapping, reference: str, network: str,
                   part: str, moments: Moments) -> list[str]:
    """Least-squares starts for the 1×1 adapters joining the pair at ``part``, both directions."""
    started = []
    for source, target, reverse in ((reference, network, False), (network, reference, True)):
        parts = graph.networks[target].parts
        key = AdapterId(SegmentId(source, part), SegmentId(target, parts[parts.index(part) + 1])).key
        if key not in modules.adapters:
            continue
        conv = leading_conv(modules.adapters[key])
        assert conv is not None, "bind checks that a mapped junction's adapter starts with a 1x1 conv"
        weight, bias = least_squares(moments, reverse=reverse)
        with torch.no_grad():
            conv.weight.copy_(_same_on_every_rank(weight.to(conv.weight))[:, :, None, None])
            conv.bias.copy_(_same_on_every_rank(bias.to(conv.bias)))
        started.append(key)
    return started


def _same_on_every_rank(tensor: Tensor) -> Tensor:
    """Rank 0's value everywhere (a no-op in one process)."""
    if distributed():
        moved = tensor.to("cuda") if dist.get_backend() == "nccl" else tensor
        dist.broadcast(moved, src=0)
        tensor = moved.to(tensor.device)
    return tensor


Reporter = Callable[[list[MappedCut], list[dict[str, Any]]], None]  # a stage's new records, the earlier ones


class ChannelMapping(Callback):
    """Maps each ``mapping:`` at the start of the first stage whose training computes one of its paths.

    ``saved`` holds the records of an earlier process of this run (the checkpoint's ``mapping``
    entry); ``report`` receives each stage's new records and the saved ones of earlier stages (the run
    directory's ``mapping.json`` and heatmaps).
    """

    def __init__(self, graph: KTGraph, device: torch.device, saved: dict[str, Any] | None = None,
                 report: Reporter | None = None) -> None:
        self.graph = graph
        self.device = device
        self.done: dict[str, Any] = dict(saved or {})  # str(mapping index) -> its records
        self.report = report
        self.start = (0, 0)

    def on_run_start(self, event: RunStart) -> None:
        self.start = (event.stage, event.epoch) if event.resumed else (0, 0)

    def on_stage_start(self, event: StageStart) -> None:
        due = [(i, m) for i, m in enumerate(self.graph.mappings)
               if str(i) not in self.done and set(m.paths) & set(event.plan.outputs)]
        if not due:
            return
        if (event.index, 0) < self.start:
            raise TrainingError(f"stage `{event.stage.name}` maps channels but the checkpoint holds no mapping record; "
                                "start the run again: it was trained without this mapping")
        if event.optimizer.state:
            raise TrainingError("channel mapping needs a fresh optimizer (no momentum yet)")
        earlier = [cut for record in self.done.values() for cut in record["cuts"]]
        found = []
        for index, mapping in due:
            records = map_channels(self.graph, event.modules, mapping, event.data, self.device)
            self.done[str(index)] = {"stage": event.index, "cuts": [r.saved() for r in records]}
            found += records
        if self.report is not None:
            self.report(found, earlier)

    def before_checkpoint(self, event: BeforeCheckpoint) -> None:
        event.payload[PAYLOAD_KEY] = self.done
