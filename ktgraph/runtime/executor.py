"""Run a plan: the forward steps, the gated loss terms, and the routed backward passes.

Each step runs itself (:meth:`~ktgraph.compile.ir.Step.run`); the executor gives it the modules
and applies a call's BatchNorm policy without touching a module: a call that keeps running
statistics runs under ``torch.func.functional_call`` with those buffers set to None, which is
exactly BatchNorm with batch statistics and no update, composable with vmap and compile; a
calibrated call of an eval plan runs with its value's estimated statistics in their place
(``runtime/statistics.py``).
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple, TypeVar

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..bind import GraphModules
from ..compile import INPUT, Call, Group, Plan
from ..compile.fusion import FusedCall
from ..compile.ir import Stats
from ..graph import ModuleId
from ..kinds import GateContext
from ..zoo import Segment
from .fusion import RUNNING, FusedRunner, Scope, norms, scope_of
from .statistics import Calibration, Norm, estimating

V = TypeVar("V", Tensor, float)


class _Held(NamedTuple):
    """A module's scope, its BatchNorms, and its running statistics named as ``None`` (a ``keep`` call)."""

    scope: Scope
    norms: list[Norm]
    kept: dict[str, None]


class Executor:
    """Executes one compiled plan on a graph's modules."""

    def __init__(self, plan: Plan, modules: GraphModules, calibration: Calibration | None = None) -> None:
        self.plan = plan
        self.modules = modules
        self.calibration = calibration  # estimated statistics of the calibrated calls (None: their own)
        self.labels: Tensor | None = None
        self.ctx: GateContext | None = None
        self._scopes: dict[ModuleId, _Held] = {}
        self._params: dict[frozenset[ModuleId], list[nn.Parameter]] = {}
        self._fused = {id(s): FusedRunner(s, modules) for s in plan.steps if isinstance(s, FusedCall)}
        for step in plan.steps:  # found now, so that nothing is looked up for the first time while compiling
            if isinstance(step, Call) and step.stats != "update":
                self._scope(step.module, modules.module(step.module))
        self._steps: Callable[[Tensor, Tensor | None], dict[str, Tensor]] = self._run_steps
        self.compile_seconds: float | None = None  # how long torch.compile took, once it has run
        if plan.compile:
            self._steps = torch.compile(self._run_steps, dynamic=False)

    # --- what steps run with ---------------------------------------------------------------------------
    def module(self, owner: ModuleId) -> object:
        return self.modules.module(owner)

    def call(self, owner: ModuleId, x: Tensor, stats: Stats, value: str) -> Tensor:
        module = self.modules.module(owner)
        assert module is not None
        if stats == "calibrated" and self.calibration is not None and value in self.calibration.buffers:
            held = self._scope(owner, module)
            with estimating(held.norms) if self.calibration.estimating else contextlib.nullcontext():
                return functional_call(held.scope, self.calibration.buffers[value], (x,), tie_weights=False,
                                       strict=False)
        if stats != "keep" or not module.training:
            return module(x)
        held = self._scope(owner, module)
        return functional_call(held.scope, held.kept, (x,), tie_weights=False, strict=False) if held.kept else module(x)

    def _scope(self, owner: ModuleId, module: Segment | nn.Module) -> _Held:
        """What a BatchNorm policy needs to run ``module``, found once per owner."""
        if owner not in self._scopes:
            scope, owned = scope_of(module)
            held = norms(owned)
            self._scopes[owner] = _Held(scope, [n for _, n in held],
                                        {f"{prefix}.{b}": None for prefix, _ in held for b in RUNNING})
        return self._scopes[owner]

    def fused(self, step: FusedCall, xs: list[Tensor]) -> list[Tensor]:
        return self._fused[id(step)](xs)

    # --- forward, losses, backward ----------------------------------------------------------------------
    def forward(self, x: Tensor, labels: Tensor | None = None, ctx: GateContext | None = None) -> dict[str, Tensor]:
        """Every value of the plan, keyed by its expression.

        With ``plan.compile`` the steps run through ``torch.compile`` (the first call compiles and
        its time is kept in ``compile_seconds``); the gate context, which changes every step, is
        then not given to aggregators, so that it cannot force a recompilation.
        """
        self.ctx = None if self.plan.compile else ctx
        if self.plan.compile and self.compile_seconds is None:
            started = time.perf_counter()
            values = self._steps(x, labels)
            self.compile_seconds = time.perf_counter() - started
            return values
        return self._steps(x, labels)

    def _run_steps(self, x: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
        self.labels = labels
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
        if self.plan.backward == "routed" and only is None:  # every term at once; the views route
            trained = [losses[t.link] for t in self.plan.terms if t.trains and losses[t.link].requires_grad]
            if trained:
                torch.autograd.backward(scale(torch.stack(trained).sum()))
            return
        work = []
        for group in self.plan.groups:
            owners = group.trains if only is None else group.trains & only
            params = self._parameters(owners) if owners else []
            total = sum(losses[name] for name in group.terms)
            if params and isinstance(total, Tensor) and total.requires_grad:
                work.append((total, params, self._factors(group, owners)))
        for n, (total, params, factors) in enumerate(work):
            if not factors:
                torch.autograd.backward(scale(total), inputs=params, retain_graph=n < len(work) - 1)
                continue
            grads = torch.autograd.grad(scale(total), params, retain_graph=n < len(work) - 1, allow_unused=True)
            for param, grad in zip(params, grads):
                if grad is not None:
                    grad = grad * factors[id(param)] if id(param) in factors else grad
                    param.grad = grad if param.grad is None else param.grad + grad

    def _factors(self, group: Group, owners: frozenset[ModuleId]) -> dict[int, float]:
        """The factor on each scaled parameter's gradient (``trains: [{module: factor}]``), by parameter id: the
        same as an identity-forward, scaled-backward function on the module's output when the module reads the
        image (a shared trunk), for then its parameters are all the gradient reaches."""
        return {id(p): factor for owner, factor in group.scales if owner in owners
                for p in self._parameters(frozenset({owner}))}
