"""Binding a graph to its modules: models built and cut, every shape known, adapters and regressors decided.

Everything the compiler needs to know about modules is found here, once, from a dry run of
each network on a tiny tensor: the input and output shape of every segment, which junctions
need an adapter, each aggregator's module and output shapes, which mimic links need a
regressor. A mismatch is reported against the path, aggregator or link that caused it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import hashlib

import torch
from torch import nn

from ..errors import GraphError
from ..graph import AdapterId, KTGraph, Network, Ref, RegressorId, RunWeights, SegmentId
from ..kinds import ADAPTERS, AUTO, NONE, AggregatorInput, GateContext, adapter_hint, leading_conv
from ..zoo import Segment, create_model, load_state, split
from ..zoo.permute import stream_at
from ..zoo.sync_batchnorm import convert_sync_batchnorm
from .modules import GraphModules

Shape = tuple[int, ...]
PROBE_BATCH = 2
JUNCTION = "conv1x1_relu"  # the adapter kind a path's `adapter: auto` stands for at a junction


@dataclass
class BoundGraph:
    """A graph with its modules. Shapes are per sample (no batch dimension)."""

    graph: KTGraph
    modules: GraphModules
    num_classes: int
    input_shape: Shape
    shapes: dict[SegmentId, tuple[Shape, Shape]]  # (input, output) of each segment on its own path
    adapters: dict[AdapterId, str]  # the junctions that have an adapter, and its kind
    aggregate_shapes: dict[str, Shape]  # the shape of each aggregator output
    regressors: dict[str, RegressorId]  # link name -> the regressor its target goes through
    regressor_kinds: dict[RegressorId, str]  # each regressor's adapter kind
    fusable: dict[SegmentId, str | None]  # each segment's architecture signature, None if it cannot be batched
    device: str = "cpu"  # the device type the modules will run on (what batching pays on)

    def value_shape(self, ref: Ref) -> Shape:
        """The shape of a node's value: every segment of any path gets its own-path input (adapters see to it)."""
        if ref.kind == "logits":
            return self.shapes[self.graph.paths[ref.name].segments[-1]][1]
        if ref.kind == "feature":
            assert ref.segment is not None
            return self.shapes[ref.segment][1]
        if ref.name in self.graph.ensembles:
            return (self.num_classes,)
        return self.aggregate_shapes[ref.name]

    def legacy_keys(self) -> dict[str, str]:
        """State-dict prefixes of checkpoints written before regressors were keyed structurally."""
        return {f"regressors.regressor:{link.replace('.', ':')}.": f"regressors.{rid.key}."
                for link, rid in self.regressors.items()}


InitialWeights = Mapping[str, Mapping[str, torch.Tensor]]  # network -> the state it starts from


def bind(graph: KTGraph, num_classes: int, input_shape: Shape, *, device: str = "cpu",
         sync_bn: bool = False, weights: InitialWeights | None = None) -> BoundGraph:
    """Build and check every module of ``graph`` for ``num_classes`` classes and inputs of ``input_shape``.

    ``device`` is the type of device the modules will run on; it decides nothing here but is
    what the compiler's batching pass reads. ``sync_bn`` converts every network's BatchNorm to
    a synchronised one as soon as the network is built, before it is cut, so every segment runs
    the converted modules. ``weights`` holds the initial state of the networks whose ``weights:`` name
    an earlier run (read by the runtime, which knows run directories); a network missing from it
    starts from its ``weights`` file, or is initialised when none is named.
    """
    try:
        return _Binder(graph, num_classes, tuple(input_shape), device, sync_bn, weights or {}).bind()
    except GraphError as err:
        raise graph.locate(err) from None


def architecture(segment: Segment) -> str | None:
    """What makes two segments' calls batchable as one: their model, stages, modules and parameter shapes.

    None when a module forbids it: SyncBatchNorm (a collective per call) or a BatchNorm with a
    cumulative average (``momentum=None``, whose update reads its counter as a Python number).
    """
    norms = [m for m in segment.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if any(isinstance(m, nn.SyncBatchNorm) or (m.track_running_stats and m.momentum is None) for m in norms):
        return None
    layout = [(name, type(m).__name__, [tuple(p.shape) for p in m.parameters(recurse=False)])
              for path, held in segment.owned() for name, m in held.named_modules(prefix=path)]
    digest = hashlib.sha1(repr((segment.stages, layout)).encode()).hexdigest()[:8]
    return (f"{type(segment.network).__name__}[{'+'.join(segment.stages)}], {len(layout)} modules, "
            f"{len(norms)} BatchNorm, #{digest}")


class _Binder:
    def __init__(self, graph: KTGraph, num_classes: int, input_shape: Shape, device: str, sync_bn: bool,
                 weights: InitialWeights) -> None:
        self.graph = graph
        self.weights = weights
        self.device = device
        self.sync_bn = sync_bn
        self.num_classes = num_classes
        self.input_shape = input_shape
        self.modules = GraphModules()
        self.shapes: dict[SegmentId, tuple[Shape, Shape]] = {}
        self.adapters: dict[AdapterId, str] = {}
        self.aggregate_shapes: dict[str, Shape] = {}
        self.regressors: dict[str, RegressorId] = {}
        self.regressor_kinds: dict[RegressorId, str] = {}

    def bind(self) -> BoundGraph:
        for network in self.graph.networks.values():
            self.network(network)
        self.modules.eval()
        with torch.no_grad():
            self.probe_segments()
            self.junctions()
            self.mappings()
            fusable = {sid: architecture(segment) for sid, segment in self.modules.segments.items()}
            bound = BoundGraph(self.graph, self.modules, self.num_classes, self.input_shape, self.shapes,
                               self.adapters, self.aggregate_shapes, self.regressors, self.regressor_kinds, fusable,
                               self.device)
            self.aggregators(bound)
            self.mimic_regressors(bound)
        self.modules.set_fixed(n for n, net in self.graph.networks.items() if net.frozen)
        self.modules.train()
        return bound

    def network(self, net: Network) -> None:
        where = ("networks", net.name)
        try:
            model = create_model(net.model, self.num_classes, cifar_stem=net.cifar_stem,
                                 weights=net.weights if isinstance(net.weights, str) else None, **net.kwargs)
            if isinstance(net.weights, RunWeights):
                if net.name not in self.weights:  # never silently initialised instead
                    raise GraphError(f"the weights of network `{net.weights.network}` of run {net.weights.run} were "
                                     "not read", suggestion="build the graph with runtime.prepare(), which reads them")
                load_state(model, self.weights[net.name], net.model,
                           f"network `{net.weights.network}` of run {net.weights.run}")
        except GraphError as err:
            field = ("weights" if "weights file" in err.message or " of run " in err.message
                     else "cifar_stem" if "cifar_stem" in err.message
                     else "model" if err.message.startswith("unknown") or not net.kwargs else "kwargs")
            err.where = err.where or where + (field,)
            raise
        except TypeError as err:
            raise GraphError(f"model `{net.model}` rejected its arguments: {err}", where=where + ("kwargs",)) from None
        if self.sync_bn:
            model = convert_sync_batchnorm(model)
        try:
            segments = split(model, net.cuts)
        except GraphError as err:
            named = [i for i, cut in enumerate(net.cuts) if f"`{cut}`" in err.message]
            err.where = err.where or where + (("cuts", named[-1]) if named else ("cuts",) if net.cuts else ())
            raise
        for sid, segment in zip(net.segments, segments):
            if sid.network == net.name:
                self.modules.segments[sid] = segment
            else:  # a shared trunk: this network's model runs the owner's modules, so it has one set of them
                for path, module in self.modules.segments[sid].owned():
                    model.set_submodule(path, module)
        self.modules.networks[net.name] = model
        self.modules.borrowed[net.name] = net.borrowed

    def probe_segments(self) -> None:
        """(input, output) shape of every segment on its own network's path."""
        for net in self.graph.networks.values():
            x = torch.zeros(PROBE_BATCH, *self.input_shape)
            for segment in net.segments:
                try:
                    y = self.modules.segments[segment](x)
                except Exception as err:  # any failure of user-chosen model code is a graph error
                    raise GraphError(f"segment `{segment}` fails on a {tuple(x.shape)} input: "
                                     f"{type(err).__name__}: {err}", where=("networks", net.name, "model"),
                                     suggestion="check data.image_size, the model and its cuts") from None
                self.shapes[segment] = (tuple(x.shape[1:]), tuple(y.shape[1:]))
                x = y

    def junctions(self) -> None:
        for path in self.graph.paths.values():
            for junction in path.junctions():
                out, need = self.shapes[junction.up][1], self.shapes[junction.down][0]
                if junction in self.adapters or (out == need and path.adapter in (AUTO, NONE)):
                    continue
                if path.adapter == NONE:
                    raise GraphError(f"path `{path.name}`: `{junction.up}` gives {out} but `{junction.down}` takes "
                                     f"{need}", where=path.where + ("adapter",),
                                     suggestion=adapter_hint(out, need, JUNCTION,
                                                             "cut the networks where their shapes agree"))
                kind = JUNCTION if path.adapter == AUTO else path.adapter
                self.adapter("adapters", junction.key, kind, (out, need), path.where + ("adapter",),
                             f"path `{path.name}` at `{junction}`: ")
                self.adapters[junction] = kind

    def mappings(self) -> None:
        """What each cross's ``mapping:`` will do when its stage starts, checked now (``validate`` and ``plan``
        say it): at a cut of equal widths the network's channels are permuted, so its model must have a
        residual stream there (unless ``method: none``); where widths differ, the junction adapters are
        started by least squares, so each must begin with a 1x1 conv with bias."""
        for mapping in self.graph.mappings:
            reference, *others = mapping.networks
            for part, network in ((part, network) for part in mapping.parts for network in others):
                try:
                    self.mapped_cut(mapping.method, reference, network, part)
                except GraphError as err:
                    err.message = f"mapping `{network}` to `{reference}` at `{part}`: {err.message}"
                    err.where = mapping.where
                    raise

    def mapped_cut(self, method: str, reference: str, network: str, part: str) -> None:
        widths = [self.shapes[SegmentId(n, part)][1][0] for n in (reference, network)]
        if widths[0] == widths[1]:
            if method != "none":
                net = self.graph.networks[network]
                stream_at(self.modules.networks[network], net.cuts[net.parts.index(part)])
            return
        joined = []
        for source, target in ((reference, network), (network, reference)):
            parts = self.graph.networks[target].parts
            key = AdapterId(SegmentId(source, part), SegmentId(target, parts[parts.index(part) + 1])).key
            if key in self.modules.adapters:
                if leading_conv(self.modules.adapters[key]) is None:
                    raise GraphError("their widths differ, so the mapping starts the junction adapter by least "
                                     "squares, which needs a 1x1 conv with bias first",
                                     suggestion="use `adapter: conv1x1_relu` on the cross")
                joined.append(key)
        if not joined:
            raise GraphError("their widths differ and no adapter joins them there")

    def adapter(self, family: str, key: str, kind: str, shapes: tuple[Shape, Shape], where: tuple[str | int, ...],
                what: str) -> None:
        """Build an adapter (or a regressor) into ``modules.<family>[key]``; a refusal is located at the
        field that chose it. Its unit is kept beside it for its lifecycle hooks."""
        unit = ADAPTERS.get(kind)()  # one unit: the one that builds the module also receives its hooks
        try:
            getattr(self.modules, family)[key] = unit.build(*(tuple(shape) for shape in shapes))
        except GraphError as err:
            err.message, err.where = what + err.message, err.where or where
            raise
        self.modules.adapter_units[f"{family}.{key}"] = unit

    def aggregators(self, bound: BoundGraph) -> None:
        """Each aggregator's module (from its inputs' shapes) and the shapes of its outputs, by a dry run."""
        for agg in self.graph.aggregators.values():
            logits = [bound.value_shape(r) for r in agg.inputs]
            features = [bound.value_shape(r) for r in agg.features]
            try:
                module = agg.unit.build(logits, features)
            except GraphError as err:
                err.where = agg.where + err.where
                raise
            if module is not None:
                self.modules.aggregators[agg.name] = module.eval()
            record = AggregatorInput([torch.zeros(PROBE_BATCH, *s) for s in logits],
                                     [torch.zeros(PROBE_BATCH, *s) for s in features],
                                     torch.zeros(PROBE_BATCH, dtype=torch.long), GateContext())
            try:
                outs = agg.unit.aggregate(module, record)
            except Exception as err:  # a user's aggregator failing on the shapes it is given
                raise GraphError(f"aggregator `{agg.name}` fails on inputs of shapes {logits} and features "
                                 f"{features}: {type(err).__name__}: {err}", where=agg.where) from None
            if len(outs) != len(agg.outputs):
                raise GraphError(f"aggregator `{agg.name}` gave {len(outs)} outputs, its kind promises "
                                 f"{len(agg.outputs)}", where=agg.where)
            self.aggregate_shapes.update((name, tuple(out.shape[1:])) for name, out in zip(agg.outputs, outs))

    def mimic_regressors(self, bound: BoundGraph) -> None:
        """A regressor for each link whose loss needs one to compare its target with its source."""
        kinds = self.regressor_kinds
        for link in self.graph.links:
            if link.gate.removes_link or link.source.kind == "label":
                continue
            target, source = bound.value_shape(link.target), bound.value_shape(link.source)
            try:
                kind = link.loss.regressor(target, source, link.name)
            except GraphError as err:
                err.where = link.where + err.where
                raise
            if kind is None:
                continue
            rid = RegressorId(link.target.name, link.source.name)
            if kinds.setdefault(rid, kind) != kind:
                raise GraphError(f"two links map `{rid.target}` to `{rid.source}` with different regressors "
                                 f"({kinds[rid]} and {kind})", where=link.where + ("adapter",),
                                 suggestion="give them the same `adapter` (they then share one regressor)")
            if rid.key not in self.modules.regressors:
                self.adapter("regressors", rid.key, kind, (target, source), link.where + ("adapter",),
                             f"link `{link.name}`: ")
            self.regressors[link.name] = rid
