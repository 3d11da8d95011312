"""The training loop: stages, epochs, evaluation, metrics, checkpoints and resume.

The trainer executes a job's program: one train plan per stage, the eval plan after every
epoch, and announces each moment as a training event (``runtime/events.py``). Reproducibility:
every epoch reseeds torch from (seed, stage, epoch) and builds its data order from the same
number, and each training example draws its augmentation from a seed of its own, so a run
resumed from the checkpoint of epoch e replays epochs e+1... exactly as the uninterrupted run
would (on CPU). A checkpoint records the config it was trained with, and is written only when
every loss, gradient, parameter and buffer is finite.

What depends on the number of processes (shards, reductions, who writes) is the
:class:`~ktgraph.runtime.strategy.Local` or ``Distributed`` strategy's.
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..compile import Plan
from ..errors import TrainingError
from ..graph import KTGraph, ModuleId, Stage
from ..data import LabelledView
from ..kinds import EpochInfo, GateContext
from .calibrate import calibrate_job
from .evaluate import evaluate
from .events import (AfterBackward, AfterEvaluation, BeforeCheckpoint, Callback, EpochEnd, EpochStart, Events,
                     Progress, RunEnd, RunStart, StageStart)
from .executor import Executor
from .checkpoint import config_difference, trained_config, upgrade_state
from .hooks import UnitHooks
from .job import Job
from .rundir import RunDir
from .schedule import Group, make_optimizer, make_scheduler, parameter_groups
from .strategy import Local


def epoch_seed(seed: int, stage: int, epoch: int) -> int:
    return seed * 1_000_003 + stage * 10_007 + epoch


def update_passes(graph: KTGraph, plan: Plan) -> list[frozenset[ModuleId]]:
    """For alternating updates: one pass per network (DML's schedule), then one for the rest.

    Each pass recomputes the forward with the parameters the previous passes updated.
    Adapter, aggregator and regressor parameters, which belong to no network, are updated in
    a last pass.
    """
    owners = frozenset().union(*(g.trains for g in plan.groups))
    passes = [frozenset(o for o in owners if o.network == name) for name in graph.networks]
    passes = [p for p in passes if p]
    rest = owners.difference(*passes)
    return passes + ([rest] if rest else [])


class Trainer:
    """Trains a job's graph and records everything a run directory should hold."""

    def __init__(self, job: Job, run_dir: str | Path | RunDir, *, progress_bar: bool = True,
                 callbacks: Iterable[Callback] = (), strategy: Local | None = None) -> None:
        self.job = job
        self.graph = job.graph
        self.settings = job.graph.train
        self.modules = job.modules
        self.program = job.program
        self.device = job.device
        if job.data is None:
            raise TrainingError("a trainer needs the job's data: prepare(graph) with with_data=True")
        self.data = job.data
        self.run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.strategy = strategy if strategy is not None else Local(job.device)
        self.progress_bar = progress_bar and self.strategy.is_main
        self.eval_executor = Executor(self.program.eval, self.modules)
        if self.settings.amp != "off" and self.device.type != "cuda":
            warnings.warn(f"train.amp={self.settings.amp} applies on CUDA only; training in float32 on "
                          f"{self.device.type}", stacklevel=2)
        self.state = Progress()
        self._resume_payload: dict[str, Any] | None = None
        self._config = trained_config(self.graph.document)
        self._params: list[torch.nn.Parameter] = []
        self._pending: tuple[torch.Tensor, int] | None = None  # the last backward's "all gradients finite", its batch
        # Each process reads its shard of the held-out split; a unit that sums over it reduces over processes.
        heldout = (self.strategy.loader(self.data.val, self.settings.eval_batch_size)
                   if self.data.val is not None else None)
        self.unit_hooks = UnitHooks(self.graph, self.modules, self.program.eval, heldout, self.device)
        self.events = Events([self.unit_hooks, *callbacks])
        self.stopped: str | None = None  # why a callback stopped the run, once it has

    # --- resume ----------------------------------------------------------------------
    def resume(self, payload: dict[str, Any] | None = None) -> None:
        """Continue from the run directory's last checkpoint (or its ``payload``, read already), which must
        have been trained with this config."""
        if payload is None:
            payload = self.run_dir.load_checkpoint(map_location=self.device, resume=True)
        if isinstance(payload.get("config"), dict):  # checkpoints of older versions record none
            difference = config_difference(payload["config"], self._config)
            if difference:
                raise TrainingError(f"{self.run_dir.checkpoint} was trained with another config: {difference}. "
                                    "Put config.yaml back as it was to resume, or train the new config in another "
                                    "folder")
        try:
            self.modules.load_state_dict(upgrade_state(payload["model"], self.job.bound.legacy_keys()))
        except (RuntimeError, KeyError) as err:
            raise TrainingError(f"the checkpoint in {self.run_dir} does not fit its config.yaml: "
                                f"{str(err).splitlines()[0]}") from None
        self.state = Progress(payload["stage"], payload["epoch"], payload["best"], payload["last"])
        self._resume_payload = payload
        if self.strategy.is_main:
            self.run_dir.keep_metrics_upto((self.state.stage, self.state.epoch))
            self.run_dir.drop_checkpoints_after((self.state.stage, self.state.epoch))

    # --- training --------------------------------------------------------------------
    def fit(self) -> Progress:
        """Train to the end, or until a callback stops the run (``self.stopped`` then says why)."""
        self.events.emit("on_run_start", RunStart(self.job, self._resume_payload is not None, self.state.stage,
                                                  self.state.epoch))
        while self.state.stage < len(self.graph.stages) and not self._stopping():
            self._fit_stage(self.graph.stages[self.state.stage], self.program.stages[self.state.stage])
            if self.state.epoch < self.graph.stages[self.state.stage].epochs:
                break  # stopped within the stage
            self.state.stage += 1
            self.state.epoch = 0
            self._resume_payload = None
        if self._stopping() and self.state.stage < len(self.graph.stages):
            self.stopped = self.events.stop or "stopped on another process"
        self.events.emit("on_run_end", RunEnd(self.state, self.stopped))
        return self.state

    def _stopping(self) -> bool:
        """Whether a callback on any process asked to stop (every process then stops at the same epoch)."""
        return self.strategy.any(self.events.stop is not None)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        amp = self.settings.amp
        if amp == "off" or self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    def _fit_stage(self, stage: Stage, plan: Plan) -> None:
        # Networks no active link trains are fixed teachers: no gradient, BatchNorm in eval mode.
        self.modules.set_fixed(plan.fixed)
        executor = Executor(plan, self.modules)
        groups = parameter_groups(self.modules, stage)
        optimizer = make_optimizer(groups)
        steps = math.ceil(len(self.data.train) / self.settings.batch_size)
        scheduler = make_scheduler(optimizer, stage.schedule, stage.epochs, steps, stage.optimizer.lr)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.settings.amp == "fp16"
                                      and self.device.type == "cuda")
        if self._resume_payload is not None:
            try:
                optimizer.load_state_dict(self._resume_payload["optimizer"])
                scheduler.load_state_dict(self._resume_payload["scheduler"])
                scaler.load_state_dict(self._resume_payload["scaler"])
            except (ValueError, KeyError, TypeError, RuntimeError) as err:
                raise TrainingError(f"the optimizer state in {self.run_dir.checkpoint} does not fit the parameters "
                                    f"stage `{stage.name}` trains: {str(err).splitlines()[0]}") from None
        self._params = [p for p in self.modules.parameters() if p.requires_grad]
        self._pending = None
        self.events.emit("on_stage_start", StageStart(stage, self.state.stage, plan, self.job, self.data, self.modules,
                                                      optimizer))
        for epoch in range(self.state.epoch, stage.epochs):
            if self._stopping():
                return
            started = time.perf_counter()
            info = EpochInfo(stage.name, self.state.stage, epoch, stage.epochs)
            self.events.emit("on_epoch_start", EpochStart(info))
            train_stats = self._train_epoch(executor, optimizer, scheduler, scaler, stage, epoch, steps)
            self._check_state(stage, epoch)
            if not self.settings.sync_bn:  # each process updated its statistics on its own shard
                self.strategy.average_buffers(list(self.modules.buffers()))
            self.events.emit("on_epoch_end", EpochEnd(info))
            results, calibration = self._evaluate()
            self._record(stage, epoch, results)
            self.state.epoch = epoch + 1
            line = {"stage": stage.name, "stage_index": self.state.stage, "epoch": epoch + 1,
                    "lr": optimizer.param_groups[0]["lr"], **self._network_lrs(groups, optimizer),
                    "seconds": round(time.perf_counter() - started, 3),
                    "images": {split: len(d) for split, d in (("test", self.data.test), ("val", self.data.val))
                               if d is not None},
                    **train_stats, **calibration, **results}
            if executor.compile_seconds is not None:
                line["compile_seconds"] = round(executor.compile_seconds, 3)
            if state := self.unit_hooks.metrics():
                line["aggregators"] = state
            # Metrics first: a crash before the checkpoint replays this epoch, and resume drops its line.
            if self.strategy.is_main:
                self.run_dir.append_metrics(line)
            self.events.emit("after_evaluation", AfterEvaluation(info, line, self.state.best))
            payload = {"model": self.modules.state_dict(), "optimizer": optimizer.state_dict(),
                       "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "stage": self.state.stage,
                       "epoch": self.state.epoch, "best": self.state.best, "last": self.state.last,
                       "config": self._config}
            self.events.emit("before_checkpoint", BeforeCheckpoint(info, payload))
            if self.strategy.is_main:
                self.run_dir.save_checkpoint(payload, keep=self.settings.keep_checkpoints)

    @staticmethod
    def _network_lrs(groups: list[Group], optimizer: torch.optim.Optimizer) -> dict[str, dict[str, float]]:
        """``lrs``: the rate of each network's own group, when there are any (``lr`` is the default group's)."""
        if len(groups) == 1:
            return {}
        return {"lrs": {str(g.network): p["lr"] for g, p in zip(groups[1:], optimizer.param_groups[1:])}}

    def _train_epoch(self, executor: Executor, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                     stage: Stage, epoch: int, steps: int) -> dict[str, Any]:
        info = EpochInfo(stage.name, self.state.stage, epoch, stage.epochs)
        seed = epoch_seed(self.settings.seed, self.state.stage, epoch)
        torch.manual_seed(seed + 7919 * self.strategy.rank)  # dropout: its own masks on each process's shard
        augment = seed if isinstance(self.data.train, LabelledView) else None
        loader = self.strategy.loader(self.data.train, self.settings.batch_size, shuffle=True, seed=seed,
                                      num_workers=self.graph.data.num_workers, augment_seed=augment)
        shares = loader.batch_sampler.global_batches()  # type: ignore[union-attr]
        self.modules.train()
        sums: dict[str, float] = defaultdict(float)
        node_sums: dict[str, float] = defaultdict(float)
        passes = update_passes(self.graph, executor.plan) if self.settings.update == "alternating" else [None]
        bar = tqdm(loader, desc=f"{stage.name} epoch {epoch + 1}/{stage.epochs}", leave=False,
                   disable=not self.progress_bar, dynamic_ncols=True)
        values: dict[str, float] = {}
        for batch_index, (images, labels) in enumerate(bar):
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            share = labels.shape[0] / shares[batch_index]  # this process's part of the global batch
            iteration = epoch * steps + batch_index + 1
            ctx = GateContext(iteration=iteration, total_iterations=stage.epochs * steps, epoch=epoch)
            for only in passes:
                with self._autocast():
                    losses = executor.losses(executor.forward(images, labels, ctx), labels, ctx)
                values = self._read_losses(losses, stage, epoch, batch_index)
                optimizer.zero_grad(set_to_none=True)
                # Each process's loss weighted by its share of the global batch, then the gradients summed:
                # the global batch's gradient, through synchronised BatchNorm too, however uneven the shards.
                executor.backward(losses, scaler.scale if share == 1 else (lambda t: scaler.scale(t * share)), only)
                self.strategy.reduce_gradients(self._params)
                if not scaler.is_enabled():  # with fp16 the scaler skips steps whose gradients overflow
                    self._pending = self._gradients_finite(batch_index)
                self.events.emit("after_backward", AfterBackward(info, batch_index, iteration, values, self.modules))
                scaler.step(optimizer)
                scaler.update()
            scheduler.step()
            for name, value in values.items():
                sums[name] += value * share
            for node, value in executor.node_losses(values).items():
                node_sums[node] += value * share
            if self.progress_bar:
                bar.set_postfix(loss=f"{sum(values.values()):.3f}")
        # Each value was added as this process's share of its global batch: summed over processes (one
        # collective for links and nodes), they are the global batches' values; their mean per batch is logged.
        keys = [("links", k) for k in sums] + [("node_loss", k) for k in node_sums]
        totals = self.strategy.sum(torch.tensor([*sums.values(), *node_sums.values()], dtype=torch.float64,
                                                device=self.device)).tolist()
        batches = max(len(loader), 1)
        means: dict[str, dict[str, float]] = {"links": {}, "node_loss": {}}
        for (kind, name), total in zip(keys, totals):
            means[kind][name] = total / batches
        return means

    # --- the non-finite guard ----------------------------------------------------------
    def _read_losses(self, losses: dict[str, torch.Tensor], stage: Stage, epoch: int, batch: int) -> dict[str, float]:
        """The step's loss values, and the previous backward's gradient check, in one device-to-host copy."""
        pending, self._pending = self._pending, None
        checks = [v.detach().float() for v in losses.values()] + ([pending[0].float()] if pending else [])
        numbers = torch.stack(checks).tolist()
        if pending is not None and not numbers.pop():
            self._gradient_error(stage, epoch, pending[1])
        values = dict(zip(losses, numbers))
        for name, value in values.items():
            if not math.isfinite(value):
                raise TrainingError(f"link `{name}` gave a non-finite loss ({value}) in stage `{stage.name}`, epoch "
                                    f"{epoch + 1}, batch {batch + 1}; {self._last_good()}. Lower the learning rate "
                                    "or check the link's weight and temperature")
        return values

    def _gradients_finite(self, batch: int) -> tuple[torch.Tensor, int] | None:
        """Whether every gradient is finite, as a tensor on the device (read with the next losses: no extra sync)."""
        grads = [p.grad for p in self._params if p.grad is not None]
        if not grads:
            return None
        # The 2-norm: one fused kernel on CUDA, vectorised on CPU (the max-norm is many times slower there).
        return torch.isfinite(torch.nn.utils.get_total_norm(grads, 2.0)), batch

    def _gradient_error(self, stage: Stage, epoch: int, batch: int) -> None:
        name = next((n for n, p in self.modules.named_parameters()
                     if p.grad is not None and not bool(torch.isfinite(p.grad).all())), None)
        what = f"the gradient of `{name}` became non-finite" if name else "the gradients' norm overflowed"
        raise TrainingError(f"{what} in stage `{stage.name}`, epoch {epoch + 1}, batch {batch + 1}, though every "
                            f"loss was finite; {self._last_good()}. Lower the learning rate or check the links' "
                            "weights")

    def _check_state(self, stage: Stage, epoch: int) -> None:
        """Every gradient of the last step, parameter and buffer finite, before anything is evaluated or saved."""
        pending, self._pending = self._pending, None
        if pending is not None and not bool(pending[0]):
            self._gradient_error(stage, epoch, pending[1])
        state = {k: t for k, t in self.modules.state_dict().items() if t.is_floating_point()}
        if state and not bool(torch.isfinite(torch.nn.utils.get_total_norm(list(state.values()), float("inf")))):
            name = next(k for k, t in state.items() if not bool(torch.isfinite(t).all()))
            raise TrainingError(f"`{name}` holds non-finite values at the end of stage `{stage.name}`, epoch "
                                f"{epoch + 1}, though every loss and gradient was finite; {self._last_good()}. "
                                "Lower the learning rate")

    def _last_good(self) -> str:
        if self.run_dir.checkpoint.exists():
            return f"the last good checkpoint is {self.run_dir.checkpoint}"
        return "no checkpoint was written yet"

    def _evaluate(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Every node's accuracy per split, and what the metrics say about calibration: which nodes
        were evaluated with calibrated BatchNorm statistics (none when ``train.calibrate.every_epoch``
        is false) and what estimating them cost."""
        about: dict[str, Any] = {}
        if self.settings.calibrate.every_epoch:
            started = time.perf_counter()
            self.eval_executor.calibration = calibrate_job(self.job, self.strategy)
            nodes = self.eval_executor.calibration.nodes(self.program.eval)
            if nodes:
                about = {"calibrated": sorted(nodes), "calibration_seconds": round(time.perf_counter() - started, 3)}
        splits = {"test": self.data.test, "val": self.data.val}
        results = {}
        for name, dataset in splits.items():
            if dataset is not None:
                loader = self.strategy.loader(dataset, self.settings.eval_batch_size,
                                              num_workers=self.graph.data.num_workers)
                results[name] = evaluate(self.eval_executor, loader, self.device, self.data.num_classes,
                                         self.strategy)
        return results, about

    def _record(self, stage: Stage, epoch: int, results: dict[str, Any]) -> None:
        """Last and best accuracy per node; "best" is chosen on val when there is one, else test."""
        select = "val" if "val" in results else "test"
        for node, test in results["test"].items():
            entry = {"stage": stage.name, "epoch": epoch + 1, "test": test, select: results[select][node]}
            self.state.last[node] = entry
            best = self.state.best.get(node)
            if best is None or results[select][node]["top1"] > best[select]["top1"]:
                self.state.best[node] = entry

