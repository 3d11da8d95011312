"""The training loop: stages, epochs, evaluation, metrics, checkpoints and resume.

The trainer executes a job's program: one train plan per stage, the eval plan after every
epoch. Reproducibility: every epoch reseeds torch from (seed, stage, epoch) and builds its data
order from the same number, so a run resumed from the checkpoint of epoch e replays epochs
e+1... exactly as the uninterrupted run would (on CPU). A checkpoint records the config it was
trained with, and is written only when every loss, gradient, parameter and buffer is finite.
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..compile import Plan
from ..errors import TrainingError
from ..graph import KTGraph, ModuleId, Stage
from ..kinds import EpochInfo, GateContext
from .calibrate import calibrate_job
from .evaluate import evaluate, make_loader
from .executor import Executor
from .checkpoint import config_difference, trained_config, upgrade_state
from .hooks import Hooks
from .job import Job
from .rundir import RunDir
from .schedule import make_optimizer, make_scheduler


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


@dataclass
class Progress:
    """Where a run is; saved in every checkpoint."""

    stage: int = 0
    epoch: int = 0  # next epoch to run within the stage
    best: dict[str, dict[str, Any]] = field(default_factory=dict)
    last: dict[str, dict[str, Any]] = field(default_factory=dict)


class Trainer:
    """Trains a job's graph and records everything a run directory should hold."""

    def __init__(self, job: Job, run_dir: str | Path | RunDir, *, progress_bar: bool = True) -> None:
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
        self.progress_bar = progress_bar
        self.eval_executor = Executor(self.program.eval, self.modules)
        if self.settings.amp != "off" and self.device.type != "cuda":
            warnings.warn(f"train.amp={self.settings.amp} applies on CUDA only; training in float32 on "
                          f"{self.device.type}", stacklevel=2)
        self.state = Progress()
        self._resume_payload: dict[str, Any] | None = None
        self._config = trained_config(self.graph.document)
        self._params: list[torch.nn.Parameter] = []
        self._pending: tuple[torch.Tensor, int] | None = None  # the last backward's "all gradients finite", its batch
        self.on_epoch: list[Callable[[dict[str, Any]], None]] = []  # called with each metrics line
        heldout = make_loader(self.data.val, self.settings.eval_batch_size) if self.data.val is not None else None
        self.hooks = Hooks(self.graph, self.modules, self.program.eval, heldout, self.device)

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
        self.run_dir.keep_metrics_upto((self.state.stage, self.state.epoch))
        self.run_dir.drop_checkpoints_after((self.state.stage, self.state.epoch))

    # --- training --------------------------------------------------------------------
    def fit(self) -> Progress:
        while self.state.stage < len(self.graph.stages):
            self._fit_stage(self.graph.stages[self.state.stage], self.program.stages[self.state.stage])
            self.state.stage += 1
            self.state.epoch = 0
            self._resume_payload = None
        return self.state

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        amp = self.settings.amp
        if amp == "off" or self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    def _fit_stage(self, stage: Stage, plan: Plan) -> None:
        # Networks no active link trains are fixed teachers: no gradient, BatchNorm in eval mode.
        self.modules.set_fixed(plan.fixed)
        executor = Executor(plan, self.modules)
        optimizer = make_optimizer([p for p in self.modules.parameters() if p.requires_grad], self.settings.optimizer)
        steps = math.ceil(len(self.data.train) / self.settings.batch_size)
        scheduler = make_scheduler(optimizer, self.settings.schedule, stage.epochs, steps, self.settings.optimizer.lr)
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
        for epoch in range(self.state.epoch, stage.epochs):
            started = time.perf_counter()
            info = EpochInfo(stage.name, self.state.stage, epoch, stage.epochs)
            self.hooks.epoch_start(info)
            train_stats = self._train_epoch(executor, optimizer, scheduler, scaler, stage, epoch, steps)
            self._check_state(stage, epoch)
            self.hooks.epoch_end(info)
            results, calibration = self._evaluate()
            self._record(stage, epoch, results)
            self.state.epoch = epoch + 1
            line = {"stage": stage.name, "stage_index": self.state.stage, "epoch": epoch + 1,
                    "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - started, 3),
                    **train_stats, **calibration, **results}
            if executor.compile_seconds is not None:
                line["compile_seconds"] = round(executor.compile_seconds, 3)
            if state := self.hooks.metrics():
                line["aggregators"] = state
            # Metrics first: a crash before the checkpoint replays this epoch, and resume drops its line.
            self.run_dir.append_metrics(line)
            for callback in self.on_epoch:
                callback(line)
            self.run_dir.save_checkpoint({
                "model": self.modules.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "stage": self.state.stage,
                "epoch": self.state.epoch, "best": self.state.best, "last": self.state.last,
                "config": self._config}, keep=self.settings.keep_checkpoints)

    def _train_epoch(self, executor: Executor, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                     stage: Stage, epoch: int, steps: int) -> dict[str, Any]:
        seed = epoch_seed(self.settings.seed, self.state.stage, epoch)
        torch.manual_seed(seed)
        loader = make_loader(self.data.train, self.settings.batch_size, shuffle=True, seed=seed,
                             num_workers=self.graph.data.num_workers)
        self.modules.train()
        sums: dict[str, float] = defaultdict(float)
        node_sums: dict[str, float] = defaultdict(float)
        passes = update_passes(self.graph, executor.plan) if self.settings.update == "alternating" else [None]
        bar = tqdm(loader, desc=f"{stage.name} epoch {epoch + 1}/{stage.epochs}", leave=False,
                   disable=not self.progress_bar, dynamic_ncols=True)
        values: dict[str, float] = {}
        for batch_index, (images, labels) in enumerate(bar):
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            ctx = GateContext(iteration=epoch * steps + batch_index + 1, total_iterations=stage.epochs * steps,
                              epoch=epoch)
            for only in passes:
                with self._autocast():
                    losses = executor.losses(executor.forward(images, labels, ctx), labels, ctx)
                values = self._read_losses(losses, stage, epoch, batch_index)
                optimizer.zero_grad(set_to_none=True)
                executor.backward(losses, scaler.scale, only)
                if not scaler.is_enabled():  # with fp16 the scaler skips steps whose gradients overflow
                    self._pending = self._gradients_finite(batch_index)
                scaler.step(optimizer)
                scaler.update()
            scheduler.step()
            for name, value in values.items():
                sums[name] += value
            for node, value in executor.node_losses(values).items():
                node_sums[node] += value
            if self.progress_bar:
                bar.set_postfix(loss=f"{sum(values.values()):.3f}")
        batches = max(len(loader), 1)
        return {"links": {k: v / batches for k, v in sums.items()},
                "node_loss": {k: v / batches for k, v in node_sums.items()}}

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
            self.eval_executor.calibration = calibrate_job(self.job)
            nodes = self.eval_executor.calibration.nodes(self.program.eval)
            if nodes:
                about = {"calibrated": sorted(nodes), "calibration_seconds": round(time.perf_counter() - started, 3)}
        splits = {"test": self.data.test, "val": self.data.val}
        results = {}
        for name, dataset in splits.items():
            if dataset is not None:
                loader = make_loader(dataset, self.settings.eval_batch_size, num_workers=self.graph.data.num_workers)
                results[name] = evaluate(self.eval_executor, loader, self.device, self.data.num_classes)
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

