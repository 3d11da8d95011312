"""Optimizers and learning-rate schedules from the ``train`` section."""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from ..settings import OptimizerSettings, ScheduleSettings


def make_optimizer(params: Iterable[torch.nn.Parameter], spec: OptimizerSettings) -> torch.optim.Optimizer:
    params = list(params)
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov,
                               weight_decay=spec.weight_decay)
    return torch.optim.AdamW(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)


def lr_factor(epoch: float, total_epochs: int, spec: ScheduleSettings, base_lr: float) -> float:
    """The multiplier of the base learning rate at a (fractional) epoch.

    Warm-up ramps linearly from 0 over ``warmup_epochs``; after it, ``multistep``
    multiplies by gamma at each milestone and ``cosine`` anneals to ``min_lr`` at the end.
    """
    if spec.warmup_epochs and epoch < spec.warmup_epochs:
        return (epoch + 1e-8) / spec.warmup_epochs
    if spec.name == "multistep":
        return spec.gamma ** sum(epoch >= m for m in spec.milestones)
    if spec.name == "cosine":
        span = max(total_epochs - spec.warmup_epochs, 1e-8)
        progress = min(max(epoch - spec.warmup_epochs, 0.0) / span, 1.0)
        floor = spec.min_lr / base_lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, spec: ScheduleSettings, epochs: int, steps_per_epoch: int,
                   base_lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per iteration, so warm-up and cosine are smooth within epochs."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step / steps_per_epoch, epochs, spec, base_lr))
