"""Run a plan: the forward steps, the gated loss terms, and the routed backward passes.

Each step runs itself (:meth:`~ktgraph.compile.ir.Step.run`); the executor gives it the modules
and applies a call's BatchNorm policy without touching a module: a call that keeps running
statistics runs under ``torch.func.functional_call`` with those buffers set to None, which is
exactly BatchNorm with batch statistics and no update, composable with vmap and compile.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..bind import GraphModules
from ..compile import INPUT, Plan
from ..compile.ir import Stats
from ..graph import ModuleId
from ..kinds import GateContext
from ..zoo import Segment

V = TypeVar("V", Tensor, float)
_RUNNING = ("running_mean", "running_var", "num_batches_tracked")


class _Scope(nn.Module):
    """Runs ``fn`` inside ``root``, so that functional_call can stand in for some of root's buffers."""

    def __init__(self, root: nn.Module, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.root = root
        object.__setattr__(self, "_fn", fn)  # not a child: root holds its modules

    def forward(self, x: Tensor) -> Tensor:
        return self._fn(x)


class Executor:
    """Executes one compiled plan on a graph's modules."""

    def __init__(self, plan: Plan, modules: GraphModules) -> None:
        self.plan = plan
        self.modules = modules
        self.labels: Tensor | None = None
        self.ctx: GateContext | None = None
        self._kept: dict[ModuleId, tuple[_Scope, dict[str, None]]] = {}
        self._params: dict[frozenset[ModuleId], list[nn.Parameter]] = {}

    # --- what steps run with ---------------------------------------------------------------------------
    def module(self, owner: ModuleId) -> object:
        return self.modules.module(owner)

    def call(self, owner: ModuleId, x: Tensor, stats: Stats) -> Tensor:
        module = self.modules.module(owner)
        assert module is not None
        if stats == "update" or not module.training:
            return module(x)
        scope, buffers = self._keeping(owner, module)
        return functional_call(scope, buffers, (x,), tie_weights=False, strict=False) if buffers else module(x)

    def _keeping(self, owner: ModuleId, module: Segment | nn.Module) -> tuple[_Scope, dict[str, None]]:
        """A scope for ``module`` and the names of the running statistics to hold still while it runs."""
        if owner not in self._kept:
            root, owned = (module.network, module.owned()) if isinstance(module, Segment) else (module, [("", module)])
            buffers = {}
            for path, held in owned:
                for name, norm in held.named_modules():
                    if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.track_running_stats:
                        prefix = ".".join(p for p in ("root", path, name) if p)
                        buffers.update((f"{prefix}.{b}", None) for b in _RUNNING)
            self._kept[owner] = (_Scope(root, module), buffers)
        return self._kept[owner]

    # --- forward, losses, backward ----------------------------------------------------------------------
    def forward(self, x: Tensor, labels: Tensor | None = None, ctx: GateContext | None = None) -> dict[str, Tensor]:
        """Every value of the plan, keyed by its expression."""
        self.labels, self.ctx = labels, ctx
        values: dict[str, Tensor] = {INPUT: x}
        for step in self.plan.steps:
            values.update(zip(step.outputs, step.run(self, [values[v] for v in step.inputs])))
        return values

    def outputs(self, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The plan's named nodes (networks, paths, aggregates, features)."""
        return {node: values[value] for node, value in self.plan.outputs.items()}

    def losses(self, values: Mapping[str, Tensor], labels: Tensor, ctx: GateContext) -> dict[str, Tensor]:
        """The value of every compiled link, keyed by link name."""
        return {t.link: t.value(values, labels, ctx) for t in self.plan.terms}

    def node_losses(self, losses: Mapping[str, V]) -> dict[str, V]:
        """Each node's loss: the sum of its incoming links (tensors, or the floats logged)."""
        nodes: dict[str, V] = {}
        for term in self.plan.terms:
            nodes[term.node] = nodes[term.node] + losses[term.link] if term.node in nodes else losses[term.link]
        return nodes

    def _parameters(self, owners: frozenset[ModuleId]) -> list[nn.Parameter]:
        if owners not in self._params:
            self._params[owners] = self.modules.parameters_of(owners)
        return self._params[owners]

    def backward(self, losses: Mapping[str, Tensor], scale: Callable[[Tensor], Tensor] = lambda t: t,
                 only: frozenset[ModuleId] | None = None) -> None:
        """Accumulate each group's gradient into exactly the parameters it trains.

        One forward serves every group: each backward is restricted with ``inputs=`` so a loss
        flows through other segments without updating them. ``only`` narrows every group to
        some owners (one network at a time, for alternating updates).
        """
        work = []
        for group in self.plan.groups:
            owners = group.trains if only is None else group.trains & only
            params = self._parameters(owners) if owners else []
            total = sum(losses[name] for name in group.terms)
            if params and isinstance(total, Tensor) and total.requires_grad:
                work.append((total, params))
        for n, (total, params) in enumerate(work):
            torch.autograd.backward(scale(total), inputs=params, retain_graph=n < len(work) - 1)
