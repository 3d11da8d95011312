"""Every trainable module of a graph, found by typed identity.

Networks, adapters, aggregators and regressors are registered (so the state dict is theirs,
keyed structurally: ``networks.net1.conv1.weight``, ``adapters.net1:up>net2:down.0.weight``,
``aggregators.attention.query.weight``, ``regressors.student:body>teacher:body.0.weight``).
Segments are views on the networks (:class:`~ktgraph.zoo.segment.Segment`), not registered.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import Tensor, nn

from ..graph import AdapterId, AggregatorId, ModuleId, RegressorId, SegmentId, by_name
from ..kinds import Adapter
from ..zoo import Segment


class GraphModules(nn.Module):
    """The modules of one bound graph; ``fixed`` networks train nothing and keep eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.networks = nn.ModuleDict()
        self.adapters = nn.ModuleDict()
        self.aggregators = nn.ModuleDict()
        self.regressors = nn.ModuleDict()
        self.segments: dict[SegmentId, Segment] = {}
        self.adapter_units: dict[str, Adapter] = {}  # "adapters.KEY" / "regressors.KEY" -> the unit that built it
        self.fixed: frozenset[str] = frozenset()
        self.borrowed: dict[str, tuple[SegmentId, ...]] = {}  # network -> the shared segments it runs

    def module(self, owner: ModuleId) -> Callable[..., Tensor] | nn.Module | None:
        """The segment, adapter, aggregator module (None for one without parameters) or regressor."""
        if isinstance(owner, SegmentId):
            return self.segments[owner]
        if isinstance(owner, AdapterId):
            return self.adapters[owner.key]
        if isinstance(owner, AggregatorId):
            return self.aggregators[owner.key] if owner.key in self.aggregators else None
        if isinstance(owner, RegressorId):
            return self.regressors[owner.key]
        raise TypeError(f"not a module identity: {owner!r}")

    def parameters_of(self, owners: Iterable[ModuleId], *, trainable: bool = True) -> list[nn.Parameter]:
        """The parameters of some owners, each once, in a stable order (only trainable ones by default)."""
        seen: dict[int, nn.Parameter] = {}
        for owner in by_name(set(owners)):
            module = self.module(owner)
            for param in module.parameters() if module is not None else ():
                if param.requires_grad or not trainable:
                    seen.setdefault(id(param), param)
        return list(seen.values())

    def own_parameters(self, network: str) -> list[nn.Parameter]:
        """A network's trainable parameters but those of the trunk it shares, which are its owner's."""
        shared = {id(p) for s in self.borrowed[network] for p in self.segments[s].parameters()}
        return [p for p in self.networks[network].parameters() if p.requires_grad and id(p) not in shared]

    def set_fixed(self, networks: Iterable[str]) -> None:
        """Fix ``networks`` (no gradient, BatchNorm statistics and dropout in eval mode); free the others."""
        self.fixed = frozenset(networks)
        for name, network in self.networks.items():
            network.requires_grad_(name not in self.fixed)
        for owner, segment in self._shared():
            for param in segment.parameters():
                param.requires_grad_(owner not in self.fixed)
        self.train(self.training)

    def train(self, mode: bool = True) -> GraphModules:
        super().train(mode)
        for name in self.fixed:
            self.networks[name].eval()
        for owner, segment in self._shared():
            segment.train(mode and owner not in self.fixed)
        return self

    def _shared(self) -> list[tuple[str, Segment]]:
        """(owner, segment) of each segment some network shares: it is fixed or free with its owner, whatever
        the networks that share it are (their models hold its modules too)."""
        return [(s.network, self.segments[s]) for shared in self.borrowed.values() for s in shared]
