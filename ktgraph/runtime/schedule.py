"""Optimizers and learning-rate schedules: a stage's ``optimizer`` and ``schedule``, one parameter group per
network with an optimizer of its own."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..bind import GraphModules
from ..graph import Stage
from ..settings import OptimizerSettings, ScheduleSettings


class Group(NamedTuple):
    """A parameter group: ``network`` None is the stage's default group (every other trainable parameter)."""

    network: str | None
    params: list[torch.nn.Parameter]
    settings: OptimizerSettings


def parameter_groups(modules: GraphModules, stage: Stage) -> list[Group]:
    """The default group first (it holds adapters, regressors and aggregators too, and may be empty), then one
    per network with an optimizer of its own that trains something in this stage; no parameter is in two."""
    own = [Group(name, modules.own_parameters(name), settings) for name, settings in stage.groups]
    own = [group for group in own if group.params]
    taken = {id(p) for group in own for p in group.params}
    rest = [p for p in modules.parameters() if p.requires_grad and id(p) not in taken]
    return [Group(None, rest, stage.optimizer), *own]


def make_optimizer(groups: list[Group]) -> torch.optim.Optimizer:
    """One optimizer over the groups (they share its kind: a stage has one; each group has its hyperparameters)."""
    kind = torch.optim.SGD if groups[0].settings.name == "sgd" else torch.optim.AdamW
    return kind([{"params": g.params, **g.settings.torch_args()} for g in groups], **groups[0].settings.torch_args())


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
    """Stepped once per iteration, so warm-up and cosine are smooth within epochs. Every group's rate is its own
    lr times the same factor (``min_lr`` is the default group's floor; the others end at the same fraction)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step / steps_per_epoch, epochs, spec, base_lr))
