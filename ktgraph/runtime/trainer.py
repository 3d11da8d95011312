"""The training loop: stages, epochs, evaluation, metrics, checkpoints and resume.

Reproducibility: every epoch reseeds torch from (seed, stage, epoch) and builds its
data order from the same number, so a run resumed from the checkpoint of epoch e
replays epochs e+1... exactly as the uninterrupted run would (on CPU).
"""
from __future__ import annotations

import contextlib
import json
import warnings
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..compile import Plan, compile_plan
from ..data import build_data
from ..errors import GraphError, TrainingError
from ..graph import KTGraph
from ..nn.gates import GateContext
from ..spec.schema import StageSpec
from .checkpoint import load_checkpoint, save_atomic
from .evaluate import evaluate, make_loader
from .executor import Executor
from .model import GraphModel
from .schedule import make_optimizer, make_scheduler

CHECKPOINT = "checkpoints/last.pt"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GraphError("train.device is `cuda` but no CUDA device is available", where=("train", "device"),
                         suggestion="use device=auto or device=cpu")
    return torch.device(name)


def epoch_seed(seed: int, stage: int, epoch: int) -> int:
    return seed * 1_000_003 + stage * 10_007 + epoch


def update_passes(graph: KTGraph, plan: Plan) -> list[frozenset[str]]:
    """For alternating updates: one pass per network (DML's schedule), then one for the rest.

    Each pass recomputes the forward with the parameters the previous passes updated.
    Adapter, aggregator and regressor parameters, which belong to no network, are
    updated in a last pass.
    """
    owners = frozenset().union(*(g.trains for g in plan.groups))
    passes = [frozenset(o for o in owners if graph.owner_network(o) == name) for name in graph.networks]
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
    """Trains a graph and records everything a run directory should hold."""

    def __init__(self, graph: KTGraph, run_dir: str | Path, *, progress_bar: bool = True) -> None:
        self.graph = graph
        self.spec = graph.spec
        self.train_spec = graph.spec.train
        self.run_dir = Path(run_dir)
        self.device = resolve_device(self.train_spec.device)
        self.progress_bar = progress_bar
        if self.device.type == "cpu":
            # Subnormal floats (common once images have flat backgrounds) make CPU
            # convolutions tens of times slower; flushing them changes nothing measurable.
            torch.set_flush_denormal(True)
        torch.manual_seed(self.train_spec.seed)
        self.data = build_data(graph.spec.data, self.train_spec.seed)
        shape = (self.data.in_channels, self.data.image_size, self.data.image_size)
        self.model = GraphModel(graph, self.data.num_classes, shape).to(self.device)
        self.eval_executor = Executor(self._plan("eval"), self.model)
        epochs = self.train_spec.epochs
        self.stages = [s if s.epochs else s.model_copy(update={"epochs": epochs}) for s in graph.stages] \
            or [StageSpec(name="main", epochs=epochs)]
        if self.train_spec.amp != "off" and self.device.type != "cuda":
            warnings.warn(f"train.amp={self.train_spec.amp} applies on CUDA only; training in float32 on "
                          f"{self.device.type}", stacklevel=2)
        self.state = Progress()
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._resume_payload: dict[str, Any] | None = None
        self.on_epoch: list[Callable[[dict[str, Any]], None]] = []  # called with each metrics line

    # --- plans -----------------------------------------------------------------------
    def _plan(self, mode: str, stage: StageSpec | None = None) -> Plan:
        frozen = self.model.frozen_networks() | set(stage.freeze if stage else ())
        return compile_plan(self.graph, mode=mode, adapters=self.model.adapter_keys,
                            regressors=self.model.regressor_keys, frozen=frozen,
                            active=stage.links if stage else None)

    # --- resume ----------------------------------------------------------------------
    def resume(self) -> None:
        """Continue from the run directory's last checkpoint."""
        payload = load_checkpoint(self.run_dir / CHECKPOINT, map_location=self.device)
        try:
            self.model.load_state_dict(payload["model"])
        except (RuntimeError, KeyError) as err:
            raise TrainingError(f"the checkpoint in {self.run_dir} does not fit its config.yaml: "
                                f"{str(err).splitlines()[0]}") from None
        self.state = Progress(payload["stage"], payload["epoch"], payload["best"], payload["last"])
        self._resume_payload = payload
        if self.metrics_path.exists():
            kept = [line for line in self.metrics_path.read_text().splitlines()
                    if line and (json.loads(line)["stage_index"], json.loads(line)["epoch"])
                    <= (self.state.stage, self.state.epoch)]
            self.metrics_path.write_text("".join(line + "\n" for line in kept))

    # --- training --------------------------------------------------------------------
    def fit(self) -> Progress:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while self.state.stage < len(self.stages):
            self._fit_stage(self.stages[self.state.stage])
            self.state.stage += 1
            self.state.epoch = 0
            self._resume_payload = None
        return self.state

    def _autocast(self):
        amp = self.train_spec.amp
        if amp == "off" or self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    def _fit_stage(self, stage: StageSpec) -> None:
        self.model.set_extra_frozen(set(stage.freeze))
        plan = self._plan("train", stage)
        # A network no active link trains is a fixed teacher: no gradient, BatchNorm in eval mode.
        trained = {self.graph.owner_network(o) for group in plan.groups for o in group.trains}
        self.model.set_extra_frozen(set(stage.freeze) | (set(self.graph.networks) - trained))
        executor = Executor(plan, self.model, self.train_spec.bn_stats)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = make_optimizer(params, self.train_spec.optimizer)
        steps = math.ceil(len(self.data.train) / self.train_spec.batch_size)
        scheduler = make_scheduler(optimizer, self.train_spec.schedule, stage.epochs, steps,
                                   self.train_spec.optimizer.lr)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.train_spec.amp == "fp16"
                                      and self.device.type == "cuda")
        if self._resume_payload is not None:
            optimizer.load_state_dict(self._resume_payload["optimizer"])
            scheduler.load_state_dict(self._resume_payload["scheduler"])
            scaler.load_state_dict(self._resume_payload["scaler"])
        for epoch in range(self.state.epoch, stage.epochs):
            started = time.perf_counter()
            train_stats = self._train_epoch(executor, optimizer, scheduler, scaler, stage, epoch, steps)
            results = self._evaluate()
            self._record(stage, epoch, results)
            self.state.epoch = epoch + 1
            line = {"stage": stage.name, "stage_index": self.state.stage, "epoch": epoch + 1,
                    "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - started, 3),
                    **train_stats, **results}
            # Metrics first: a crash before the checkpoint replays this epoch, and resume drops its line.
            with self.metrics_path.open("a") as handle:
                handle.write(json.dumps(line) + "\n")
            for callback in self.on_epoch:
                callback(line)
            save_atomic({"model": self.model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                         "stage": self.state.stage, "epoch": self.state.epoch,
                         "best": self.state.best, "last": self.state.last}, self.run_dir / CHECKPOINT)

    def _train_epoch(self, executor: Executor, optimizer, scheduler, scaler, stage: StageSpec, epoch: int,
                     steps: int) -> dict[str, Any]:
        seed = epoch_seed(self.train_spec.seed, self.state.stage, epoch)
        torch.manual_seed(seed)
        loader = make_loader(self.data.train, self.train_spec.batch_size, shuffle=True, seed=seed,
                             num_workers=self.spec.data.num_workers)
        self.model.train()
        sums: dict[str, float] = defaultdict(float)
        node_sums: dict[str, float] = defaultdict(float)
        passes = update_passes(self.graph, executor.plan) if self.train_spec.update == "alternating" else [None]
        bar = tqdm(loader, desc=f"{stage.name} epoch {epoch + 1}/{stage.epochs}", leave=False,
                   disable=not self.progress_bar, dynamic_ncols=True)
        for batch_index, (images, labels) in enumerate(bar):
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            ctx = GateContext(iteration=epoch * steps + batch_index + 1, total_iterations=stage.epochs * steps,
                              epoch=epoch)
            for only in passes:
                with self._autocast():
                    losses = executor.losses(executor.forward(images), labels, ctx)
                # One device-to-host copy per step serves the finiteness check and the logs.
                values = dict(zip(losses, torch.stack([v.detach().float() for v in losses.values()]).tolist()))
                self._check_finite(values, epoch, batch_index)
                optimizer.zero_grad(set_to_none=True)
                executor.backward(losses, scaler.scale, only)
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

    def _check_finite(self, values: dict[str, float], epoch: int, batch: int) -> None:
        for name, value in values.items():
            if not math.isfinite(value):
                where = (f"the last good checkpoint is {self.run_dir / CHECKPOINT}"
                         if (self.run_dir / CHECKPOINT).exists() else "no checkpoint was written yet")
                raise TrainingError(f"link `{name}` gave a non-finite loss ({value}) at epoch {epoch + 1}, "
                                    f"batch {batch + 1}; {where}. Lower the learning rate or check the link's "
                                    "weight and temperature")

    def _evaluate(self) -> dict[str, Any]:
        splits = {"test": self.data.test, "val": self.data.val}
        results = {}
        for name, dataset in splits.items():
            if dataset is not None:
                loader = make_loader(dataset, self.train_spec.eval_batch_size, num_workers=self.spec.data.num_workers)
                results[name] = evaluate(self.eval_executor, loader, self.device, self.data.num_classes)
        return results

    def _record(self, stage: StageSpec, epoch: int, results: dict[str, Any]) -> None:
        """Last and best accuracy per node; "best" is chosen on val when there is one, else test."""
        select = "val" if "val" in results else "test"
        for node, test in results["test"].items():
            entry = {"stage": stage.name, "epoch": epoch + 1, "test": test, select: results[select][node]}
            self.state.last[node] = entry
            best = self.state.best.get(node)
            if best is None or results[select][node]["top1"] > best[select]["top1"]:
                self.state.best[node] = entry
