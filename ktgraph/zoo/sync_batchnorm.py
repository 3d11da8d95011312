"""BatchNorm whose batch statistics cover every process's shard (``train.sync_bn``), on any device.

torch's ``SyncBatchNorm`` runs its fused kernels on GPUs only. This subclass keeps them there and
elsewhere (CPU with gloo) computes the same thing with a differentiable all-reduce: the global
mean, then the global biased variance (two passes, for accuracy), normalisation with them, and
running statistics updated with the unbiased global variance. Its backward sums the gradients of
the statistics over ranks, as torch's does, so the gradient equals the single-process gradient
of the whole batch.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


class _Summed(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced gradient: every rank's loss reaches every shard."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: Any) -> Tensor:  # type: ignore[override]
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=ctx.group)
        return out, None


class SyncBatchNorm(nn.SyncBatchNorm):
    """``nn.SyncBatchNorm`` that also synchronises on devices its kernels do not support."""

    def forward(self, input: Tensor) -> Tensor:
        if input.device.type == "cuda" or not self._synchronises():
            return super().forward(input)
        self._check_input_dim(input)
        group = self.process_group or dist.group.WORLD
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = torch.full((1,), input.numel() // input.size(1), dtype=input.dtype, device=input.device)
        sums = _Summed.apply(torch.cat([input.sum(dims), count]), group)
        n = sums[-1]
        mean = sums[:-1] / n
        centred = input - mean.view(shape)
        var = _Summed.apply((centred * centred).sum(dims), group) / n
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        self._update_running(mean.detach(), var.detach() * n / (n - 1).clamp(min=1))
        return out

    def _synchronises(self) -> bool:
        return (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size(self.process_group or dist.group.WORLD) > 1)

    @torch.no_grad()
    def _update_running(self, mean: Tensor, unbiased_var: Tensor) -> None:
        if not self.track_running_stats:
            return
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        if self.running_mean is None or self.running_var is None:  # a call that keeps the statistics
            return
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), factor)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm of ``module`` made a :class:`SyncBatchNorm` (weights and statistics kept)."""
    module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for sub in module.modules():
        if type(sub) is nn.SyncBatchNorm:
            sub.__class__ = SyncBatchNorm
    return module
