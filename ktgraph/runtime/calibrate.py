"""Calibrating the eval plan: BatchNorm statistics for the calls that read features their own do not describe.

A down-half learns its running statistics on its own network's up-half. On a cross path it is
fed another network's features, whose mean and variance differ channel by channel, and eval-mode
BatchNorm then normalises them wrongly: the path looks untrained though its weights are fine.
:func:`calibrate` re-estimates, for each call the eval plan marks ``calibrated``, the statistics
of the features that call is fed: a train-mode BatchNorm forward with the cumulative average
(momentum None: the mean of the batch means and of the unbiased batch variances), no gradients,
on training images without augmentation. The estimates live beside the model
(``runtime/statistics.py``); the trained model's own statistics are never written. The batches
are a seeded draw, so ``eval`` and ``pick`` recompute exactly the statistics a table was made with.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import replace

import torch
from torch import nn

from ..compile import Call, Plan
from ..data import DataBundle
from ..errors import GraphError
from ..settings import CalibrateSettings
from .executor import Executor
from .job import Job
from .statistics import Calibration, fresh_buffers
from .strategy import Local


@torch.no_grad()
def calibrate(plan: Plan, modules: nn.Module, batches: Iterable, device: torch.device) -> Calibration:
    """Estimate the statistics of every ``calibrated`` call of an eval plan on ``batches`` of images.

    Calls run in plan order, so a calibrated call downstream of another is fed features normalised
    with batch statistics, as in any BatchNorm re-estimation; own-path calls use their running
    statistics, as they are evaluated.
    """
    calibration = Calibration(estimating=True)
    for step in plan.steps:
        if isinstance(step, Call) and step.stats == "calibrated":
            buffers = fresh_buffers(modules.module(step.module))
            if buffers:
                calibration.buffers[step.out] = buffers
    if calibration.buffers:
        needed = plan.ancestors(calibration.buffers)
        steps = tuple(s for s in plan.steps if set(s.outputs) & needed)
        executor = Executor(replace(plan, steps=steps, outputs={}, features={}, terms=(), groups=()), modules,
                            calibration)
        was_training = modules.training
        modules.eval()
        try:
            for images, _ in batches:
                executor.forward(images.to(device, non_blocking=True))
                calibration.batches += 1
        finally:
            modules.train(was_training)
    calibration.estimating = False
    return calibration


def calibration_batches(data: DataBundle, settings: CalibrateSettings, *, batch_size: int, seed: int,
                        num_workers: int = 0, strategy: Local | None = None) -> Iterator:
    """The first ``settings.batches`` batches of a seeded shuffle of the calibration split, unaugmented
    (this process's shard of each, under a distributed ``strategy``)."""
    dataset = data.val if settings.split == "val" else data.train_plain
    if dataset is None:
        raise GraphError(f"train.calibrate.split is `{settings.split}` but the run has no such split",
                         where=("train", "calibrate", "split"),
                         suggestion="calibrate on split: train, or set data.val_split above 0")
    size = min(batch_size, len(dataset))
    loader = (strategy or Local()).loader(dataset, size, shuffle=True, seed=seed, num_workers=num_workers,
                                          drop_last=True)
    return itertools.islice(loader, settings.batches)


def calibrate_job(job: Job, strategy: Local | None = None) -> Calibration:
    """The job's eval plan calibrated as its ``train.calibrate`` says, on the job's device.

    Under a distributed ``strategy`` each process estimates on its shard of every batch and the
    estimates are averaged over processes: with ``train.sync_bn`` every batch's statistics are
    already global and the result is the single-process estimate; without it, the mean of the
    shards' estimates. Every process then evaluates with the same statistics.
    """
    assert job.data is not None, "calibration needs the job's data"
    train = job.graph.train
    batches = calibration_batches(job.data, train.calibrate, batch_size=train.batch_size, seed=train.seed,
                                  num_workers=job.graph.data.num_workers, strategy=strategy)
    calibration = calibrate(job.program.eval, job.modules, batches, job.device)
    if strategy is not None:
        strategy.average_buffers([b for buffers in calibration.buffers.values() for b in buffers.values()])
    return calibration
