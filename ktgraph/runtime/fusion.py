"""Running a fused call: K segment calls as one ``torch.func.vmap`` over a leading chunk dimension.

Every chunk runs the template segment under ``functional_call`` with its own parameters (stacked
inside the step for peers, shared for one segment on many inputs) and its own copy of the
BatchNorm buffers, so each chunk normalises with its own batch statistics and updates its own
running statistics, exactly as its unfused call would. The copies are then written back as the
unfused calls would have left them: a chunk whose policy keeps the statistics leaves nothing; a
peer's chunk writes its own network's buffers; several updating chunks of one segment replay the
sequential momentum updates in plan order.

For the routed backward, :class:`_Routed` runs the batched call once and returns, beside its
output, the views the plan asks for: the gradient of a view reaches the call's parameters only,
its inputs only, or neither, so one backward of every term routes exactly.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from ..compile.fusion import FusedCall
from ..zoo import Segment

RUNNING = ("running_mean", "running_var", "num_batches_tracked")


class Scope(nn.Module):
    """Runs ``fn`` inside ``root``, so that functional_call can stand in for some of root's tensors."""

    def __init__(self, root: nn.Module, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.root = root
        object.__setattr__(self, "_fn", fn)  # not a child: root holds its modules

    def forward(self, x: Tensor) -> Tensor:
        return self._fn(x)


def scope_of(module: Segment | nn.Module) -> tuple[Scope, list[tuple[str, nn.Module]]]:
    """A scope for a segment (its network) or a module, and the (path in the scope, module) it holds."""
    if isinstance(module, Segment):
        return Scope(module.network, module), [(".".join(p for p in ("root", path) if p), held)
                                               for path, held in module.owned()]
    return Scope(module, module), [("root", module)]


def held_tensors(owned: list[tuple[str, nn.Module]]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The parameters and buffers of the held modules, by their names in the scope."""
    params, buffers = {}, {}
    for path, module in owned:
        params.update((f"{path}.{n}", p) for n, p in module.named_parameters())
        buffers.update((f"{path}.{n}", b) for n, b in module.named_buffers())
    return params, buffers


def norms(owned: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """(buffer prefix in the scope, BatchNorm) of every BatchNorm that tracks running statistics."""
    return [(f"{path}.{name}" if name else path, m) for path, module in owned for name, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


class FusedRunner:
    """What running one fused call needs, found once by name (so module conversions still reach it)."""

    def __init__(self, step: FusedCall, modules: Any) -> None:
        self.step = step
        self.chunks = [modules.module(c.module) for c in step.unfused]
        self.scopes = [scope_of(m)[0] for m in self.chunks]
        params, buffers = held_tensors(scope_of(self.chunks[0])[1])
        self.param_names, self.buffer_names = list(params), list(buffers)
        self.norms = [prefix for prefix, _ in norms(scope_of(self.chunks[0])[1])]
        self.updating = [k for k, c in enumerate(step.unfused) if c.stats == "update"]
        self.kinds = sorted({(v.weights, v.input) for v in step.views})

    def __call__(self, xs: list[Tensor]) -> list[Tensor]:
        """The fused call's outputs: one per chunk, then one per view (see :class:`_Routed`)."""
        step, scope = self.step, self.scopes[0]
        names = self.param_names
        if step.kind == "inputs":
            params, param_dim = [scope.get_parameter(n) for n in names], None
        else:  # peers: every chunk's own leaves, stacked inside the step so gradients reach each of them
            params, param_dim = [torch.stack([s.get_parameter(n) for s in self.scopes]) for n in names], 0
        chunked = self.scopes if step.kind == "peers" else self.scopes[:1] * len(self.scopes)
        buffers = {n: torch.stack([s.get_buffer(n) for s in chunked]).clone() for n in self.buffer_names}
        same = all(x is xs[0] for x in xs)
        x = xs[0] if same else torch.stack(xs)
        if params and x.dtype != params[0].dtype:  # autocast does not reach inside vmap: chunks run at full precision
            x = x.to(params[0].dtype)

        def batched(p: list[Tensor], b: dict[str, Tensor], inp: Tensor) -> Tensor:
            return functional_call(scope, ({**dict(zip(names, p)), **b}), (inp,), tie_weights=False, strict=False)

        def call(p: list[Tensor], inp: Tensor) -> Tensor:
            out = vmap(batched, in_dims=(param_dim, 0, None if same else 0), randomness="different")(p, buffers, inp)
            if self.chunks[0].training:
                self._write_back(buffers)
            return out

        if not step.views:
            return list(call(params, x).unbind(0))
        y, *views = _Routed.apply(call, len(params), self.kinds, *params, x)
        routed = dict(zip(self.kinds, views))
        return list(y.unbind(0)) + [routed[(v.weights, v.input)][v.chunk] for v in step.views]

    def _write_back(self, copies: dict[str, Tensor]) -> None:
        """Running statistics as the unfused calls would have left them, in plan order."""
        with torch.no_grad():
            for prefix in self.norms:
                if self.step.kind == "peers":  # each chunk is its own network: its copy is its statistics
                    for k in self.updating:
                        norm = self.scopes[k].get_submodule(prefix)
                        for b in RUNNING:
                            getattr(norm, b).copy_(copies[f"{prefix}.{b}"][k])
                else:
                    _replay(self.scopes[0].get_submodule(prefix), [copies[f"{prefix}.{b}"] for b in RUNNING],
                            self.updating)


def _replay(norm: nn.modules.batchnorm._BatchNorm, copies: list[Tensor], updating: list[int]) -> None:
    """One module's running statistics after its updating chunks, one after another.

    Each chunk's copy started from the same statistics r0 and holds (1 - m) r0 + m s_k; the
    unfused calls apply r <- (1 - m) r + m s_k in turn.
    """
    mean, var, count = copies
    if len(updating) == 1:  # the common case (own path only): the chunk's copy, to the bit
        k = updating[0]
        norm.running_mean.copy_(mean[k])
        norm.running_var.copy_(var[k])
        norm.num_batches_tracked.copy_(count[k])
        return
    m = float(norm.momentum)
    r0_mean, r0_var = norm.running_mean.clone(), norm.running_var.clone()
    for k in updating:
        norm.running_mean.mul_(1 - m).add_(mean[k] - (1 - m) * r0_mean)
        norm.running_var.mul_(1 - m).add_(var[k] - (1 - m) * r0_var)
    norm.num_batches_tracked.add_(len(updating))


class _Routed(torch.autograd.Function):
    """A batched call whose output is also returned as views that route gradients.

    ``kinds`` lists the views' (weights, input) flags. The backward back-propagates the output's
    gradient plus the views that pass to the parameters into the parameters, and the output's
    gradient plus the views that pass to the input into the input: two partial backwards through
    the call, with the graph recorded once in the forward.
    """

    @staticmethod
    def forward(ctx: Any, call: Callable[..., Tensor], n_params: int, kinds: list[tuple[bool, bool]],
                *args: Tensor) -> tuple[Tensor, ...]:
        with torch.enable_grad():
            leaves = [a.detach().requires_grad_(a.requires_grad) for a in args]
            y = call(leaves[:n_params], leaves[n_params])
        ctx.recorded = (y, leaves, n_params, kinds)
        out = y.detach()
        return (out, *(out.clone() for _ in kinds))

    @staticmethod
    def backward(ctx: Any, grad: Tensor, *view_grads: Tensor) -> tuple[Tensor | None, ...]:
        y, leaves, n, kinds = ctx.recorded
        to_params = grad + sum((g for g, (w, _) in zip(view_grads, kinds) if w), torch.zeros_like(grad))
        to_input = grad + sum((g for g, (_, i) in zip(view_grads, kinds) if i), torch.zeros_like(grad))
        params, x = leaves[:n], leaves[n]
        wanted = [p for p in params if p.requires_grad]
        grads = dict(zip(map(id, wanted), torch.autograd.grad(y, wanted, to_params, retain_graph=True))) \
            if wanted else {}
        dx = torch.autograd.grad(y, x, to_input)[0] if x.requires_grad else None
        del ctx.recorded
        return (None, None, None, *(grads.get(id(p)) for p in params), dx)
