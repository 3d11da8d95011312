"""The modules of a graph: networks cut into segments, adapters, aggregators, regressors.

Building them is also where shapes are checked: every segment, adapter and
aggregator runs once on a small tensor before training starts, and a mismatch is
reported against the path or link that caused it.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ..compile import Plan, compile_plan, regressor_key
from ..compile.compiler import MEAN_MODULE
from ..errors import GraphError
from ..graph import KTGraph, junction_key
from ..nn.adapters import make_adapter
from ..nn.aggregators import MeanLogits, PeerAttention
from ..zoo import create_model, split


def _key(name: str) -> str:
    """ModuleDict keys cannot hold dots."""
    return name.replace(".", ":")


class GraphModel(nn.Module):
    """All trainable modules of a graph; segments are views on the networks' own modules."""

    def __init__(self, graph: KTGraph, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.graph = graph
        self.input_shape = tuple(input_shape)
        self.networks = nn.ModuleDict()
        self.adapters = nn.ModuleDict()
        self.aggregators = nn.ModuleDict()
        self.regressors = nn.ModuleDict()
        self.segments: dict[str, nn.Module] = {}
        self.adapter_keys: set[str] = set()
        self.regressor_keys: set[str] = set()
        self.extra_frozen: set[str] = set()
        self._mean = MeanLogits()
        self._build_networks(num_classes)
        with torch.no_grad():
            shapes = self._own_path_shapes()
            self._build_adapters(shapes)
            self._build_aggregators(shapes)
            self._build_regressors()
            self._dry_run()

    # --- construction -----------------------------------------------------------------
    def _build_networks(self, num_classes: int) -> None:
        for name, net in self.graph.networks.items():
            spec = net.spec
            where = ("networks", name)
            try:
                model = create_model(spec.model, num_classes, cifar_stem=spec.cifar_stem, weights=spec.weights,
                                     **spec.kwargs)
            except GraphError as err:
                field = ("weights" if "weights file" in err.message else "cifar_stem" if "cifar_stem" in err.message
                         else "model" if err.message.startswith("unknown") or not spec.kwargs else "kwargs")
                err.where = err.where or where + (field,)
                raise
            except TypeError as err:
                raise GraphError(f"model `{spec.model}` rejected its arguments: {err}",
                                 where=where + ("kwargs",)) from None
            try:
                segments = split(model, spec.cuts)
            except GraphError as err:
                named = [i for i, cut in enumerate(spec.cuts) if f"`{cut}`" in err.message]
                err.where = err.where or where + (("cuts", named[-1]) if named else ("cuts",) if spec.cuts else ())
                raise
            self.networks[name] = model
            self.segments.update(zip(net.segments, segments))
        self.set_extra_frozen(set())

    def _probe(self) -> torch.Tensor:
        return torch.zeros(2, *self.input_shape)

    def _own_path_shapes(self) -> dict[str, tuple[torch.Size, torch.Size]]:
        """(input shape, output shape) of every segment on its own network's path."""
        self.eval()
        shapes = {}
        for net in self.graph.networks.values():
            x = self._probe()
            for segment in net.segments:
                try:
                    y = self.segments[segment](x)
                except Exception as err:  # any failure of user-chosen model code is a graph error
                    raise GraphError(f"segment `{segment}` fails on a {tuple(x.shape)} input: "
                                     f"{type(err).__name__}: {err}", where=("networks", net.name, "model"),
                                     suggestion="check data.image_size, the model and its cuts") from None
                shapes[segment] = (x.shape, y.shape)
                x = y
        return shapes

    def _build_adapters(self, shapes: dict[str, tuple[torch.Size, torch.Size]]) -> None:
        for path in self.graph.paths.values():
            for up, down in path.junctions():
                out, need = shapes[up][1], shapes[down][0]
                key = junction_key(up, down)
                if key in self.adapter_keys:
                    continue
                if out == need and path.adapter in ("auto", "none"):
                    continue
                where = path.where
                if path.adapter == "none":
                    raise GraphError(f"path `{path.name}`: `{up}` gives {tuple(out[1:])} but `{down}` takes "
                                     f"{tuple(need[1:])}", where=where + ("adapter",),
                                     suggestion="set `adapter: auto` to join them with a 1x1 conv + ReLU")
                if len(out) != 4 or out[2:] != need[2:]:
                    raise GraphError(f"path `{path.name}`: `{up}` gives {tuple(out[1:])} but `{down}` takes "
                                     f"{tuple(need[1:])}; an adapter can change channels but not spatial size",
                                     where=where, suggestion="cut both networks where their resolutions agree")
                kind = "conv1x1_relu" if path.adapter == "auto" else path.adapter
                self.adapters[_key(key)] = make_adapter(kind, out[1], need[1])
                self.adapter_keys.add(key)

    def _build_aggregators(self, shapes: dict[str, tuple[torch.Size, torch.Size]]) -> None:
        for agg in self.graph.aggregators.values():
            if agg.kind == "mean":
                self.aggregators[agg.name] = MeanLogits()
                continue
            dims = {shapes[ref.name][1][1] for ref in agg.features}
            if len(dims) != 1:
                raise GraphError(f"attention features have different channel counts {sorted(dims)}",
                                 where=agg.where + ("features",), expected="features of one width")
            self.aggregators[agg.name] = PeerAttention(dims.pop(), agg.reduction)

    def _build_regressors(self) -> None:
        mimics = [link for link in self.graph.links if link.kind == "mimic"]
        if not mimics:
            return
        plan = compile_plan(self.graph, adapters=self.adapter_keys)
        values = self._probe_values(plan)
        for link in mimics:
            if link.gate == "cutoff":
                continue
            term = next(t for t in plan.terms if t.link == link.name)
            source, target = values[term.source].shape, values[term.target].shape
            if source == target and link.adapter in ("auto", "none"):
                continue
            if link.adapter == "none" or len(source) != 4 or source[2:] != target[2:]:
                raise GraphError(f"link `{link.name}`: target feature {tuple(target[1:])} cannot be compared with "
                                 f"source feature {tuple(source[1:])}",
                                 where=link.where + (("adapter",) if link.adapter == "none" else ()),
                                 suggestion="use `adapter: auto` (a 1x1 conv + BN + ReLU regressor) and features "
                                            "of the same spatial size")
            kind = "conv_bn_relu" if link.adapter == "auto" else link.adapter
            self.regressors[_key(regressor_key(link.name))] = make_adapter(kind, target[1], source[1])
            self.regressor_keys.add(regressor_key(link.name))

    def _probe_values(self, plan: Plan) -> dict[str, torch.Tensor]:
        """Run a plan on the probe batch; any failure becomes a graph error, not a traceback."""
        from .executor import Executor  # the executor runs plans on this model

        try:
            return Executor(plan, self).forward(self._probe())
        except Exception as err:
            raise GraphError(f"the graph fails a dry run on a {tuple(self._probe().shape)} input: "
                             f"{type(err).__name__}: {err}", suggestion="check the shapes of paths and "
                             "aggregator inputs (`ktgraph plan` lists every step)") from None

    def _dry_run(self) -> None:
        for mode in ("train", "eval"):
            self._probe_values(compile_plan(self.graph, mode=mode, adapters=self.adapter_keys,
                                            regressors=self.regressor_keys))
        self.train()

    # --- lookup -----------------------------------------------------------------------
    def module(self, key: str) -> nn.Module:
        """The module a plan step or owner names: a segment, adapter, aggregator or regressor."""
        if key in self.segments:
            return self.segments[key]
        if key == MEAN_MODULE:
            return self._mean
        for table in (self.adapters, self.aggregators, self.regressors):
            if _key(key) in table:
                return table[_key(key)]
        raise KeyError(key)

    def owner_parameters(self, owner: str) -> Iterator[nn.Parameter]:
        return self.module(owner).parameters()

    def frozen_networks(self) -> set[str]:
        """Networks frozen by their spec, plus those the current stage freezes."""
        return {name for name, net in self.graph.networks.items() if net.spec.frozen} | self.extra_frozen

    def set_extra_frozen(self, names: set[str]) -> None:
        """Freeze ``names`` (for one training stage) and unfreeze the rest, spec-frozen ones excepted."""
        self.extra_frozen = set(names)
        frozen = self.frozen_networks()
        for name, network in self.networks.items():
            network.requires_grad_(name not in frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> GraphModel:
        """Frozen networks stay in eval mode (their BatchNorm statistics are fixed too)."""
        super().train(mode)
        for name in self.frozen_networks():
            self.networks[name].eval()
        return self
