"""Run a plan: the forward steps, the gated loss terms, and the routed backward passes."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

import torch
from torch import Tensor, nn

from ..compile import INPUT, Aggregate, Plan, Term
from ..nn.gates import GateContext, apply_gate
from ..nn.losses import correct_mask, cross_entropy, feature_mimic, kl_divergence
from .model import GraphModel

V = TypeVar("V", Tensor, float)


class Executor:
    """Executes one compiled plan on a :class:`GraphModel`."""

    def __init__(self, plan: Plan, model: GraphModel, bn_stats: str = "own") -> None:
        self.plan = plan
        self.model = model
        self.bn_stats = bn_stats
        self._norms: dict[str, list[nn.Module]] = {}
        self._params: dict[frozenset[str], list[nn.Parameter]] = {}

    def _parameters(self, owners: frozenset[str]) -> list[nn.Parameter]:
        """The trainable parameters of some owners (segments, adapters, ...), each once."""
        if owners not in self._params:
            seen: dict[int, nn.Parameter] = {}
            for owner in sorted(owners):
                for p in self.model.owner_parameters(owner):
                    if p.requires_grad:
                        seen.setdefault(id(p), p)
            self._params[owners] = list(seen.values())
        return self._params[owners]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Every value of the plan, keyed by its expression."""
        values: dict[str, Tensor] = {INPUT: x}
        for step in self.plan.steps:
            module = self.model.module(step.module)
            if isinstance(step, Aggregate):
                logits = [values[v] for v in step.logits]
                outs = module(logits, [values[v] for v in step.features]) if step.features else [module(logits)]
                values.update(zip(step.outs, outs))
            else:
                with self._statistics(step.module, keep=step.own or self.bn_stats == "all"):
                    values[step.out] = module(values[step.input])
        return values

    @contextlib.contextmanager
    def _statistics(self, key: str, keep: bool) -> Iterator[None]:
        """With ``keep=False``, BatchNorm uses batch statistics without updating its running ones.

        So by default a segment's running statistics describe its own network's features,
        not a blend with the features cross paths feed it (``train.bn_stats: own``).
        """
        if keep or not self.model.training:
            yield
            return
        if key not in self._norms:
            self._norms[key] = [m for m in self.model.module(key).modules()
                                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        norms = self._norms[key]
        for m in norms:
            m.track_running_stats = False
        try:
            yield
        finally:
            for m in norms:
                m.track_running_stats = True

    def outputs(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """The plan's named nodes (networks, paths, aggregates, features)."""
        return {node: values[value] for node, value in self.plan.outputs.items()}

    def term_loss(self, term: Term, values: dict[str, Tensor], labels: Tensor, ctx: GateContext) -> Tensor:
        """weight * gate(per-sample loss) for one link."""
        target = values[term.target]
        source = None if term.source is None else values[term.source]
        if source is not None and term.detach:
            source = source.detach()
        # The correct gate keeps samples the source predicts right; the label always is.
        mask = correct_mask(source, labels) if term.gate == "correct" and source is not None else None
        if term.kind == "ce":
            per_sample = cross_entropy(target, labels)
        elif term.kind == "kl":
            per_sample = kl_divergence(source, target, term.T)
        else:
            if term.regressor is not None:
                target = self.model.module(term.regressor)(target)
            per_sample = feature_mimic(source, target, term.loss)
        return term.weight * apply_gate(term.gate, per_sample, ctx, mask, term.gate_length)

    def losses(self, values: dict[str, Tensor], labels: Tensor, ctx: GateContext) -> dict[str, Tensor]:
        """The value of every compiled link, keyed by link name."""
        return {t.link: self.term_loss(t, values, labels, ctx) for t in self.plan.terms}

    def node_losses(self, losses: Mapping[str, V]) -> dict[str, V]:
        """Each node's loss: the sum of its incoming links (tensors, or the floats logged)."""
        nodes: dict[str, V] = {}
        for term in self.plan.terms:
            nodes[term.node] = nodes[term.node] + losses[term.link] if term.node in nodes else losses[term.link]
        return nodes

    def backward(self, losses: dict[str, Tensor], scale: Callable[[Tensor], Tensor] = lambda t: t,
                 only: frozenset[str] | None = None) -> None:
        """Accumulate each group's gradient into exactly the parameters it trains.

        One forward serves every group: each backward is restricted with ``inputs=`` so a
        loss flows through other segments without updating them. ``only`` narrows every
        group to some owners (one network at a time, for alternating updates).
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
