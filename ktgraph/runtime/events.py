"""Training events: what the trainer announces, with a typed record each, and who listens.

A :class:`Callback` overrides the methods of the events it wants (mmengine's hooks are the
model); the others do nothing. The trainer emits, in order::

    run_start · (stage_start · (epoch_start · after_backward* · epoch_end · after_evaluation
    · before_checkpoint)*)* · run_end

Units (gates, link kinds, aggregators) listen through :class:`~ktgraph.runtime.hooks.UnitHooks`,
the TensorBoard logger and the graph search through their own callbacks. A callback stops the
run by raising :class:`StopRun` with a reason: the run ends cleanly at the next epoch boundary
(the epoch under way is trained, evaluated and checkpointed first), its run directory says
``stopped`` and why, and ``ktgraph run --resume`` continues it.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..kinds import EpochInfo

if TYPE_CHECKING:
    import torch

    from ..bind import GraphModules
    from ..compile import Plan
    from ..data import DataBundle
    from ..graph import Stage
    from .job import Job


@dataclass
class Progress:
    """Where a run is; saved in every checkpoint."""

    stage: int = 0
    epoch: int = 0  # next epoch to run within the stage
    best: dict[str, dict[str, Any]] = field(default_factory=dict)
    last: dict[str, dict[str, Any]] = field(default_factory=dict)


class StopRun(Exception):  # noqa: N818 -- a request, not an error
    """Raised by a callback to end the run cleanly; ``reason`` is recorded in the run directory."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RunStart:
    job: Job
    resumed: bool
    stage: int  # where the run starts: stage index and epochs done in it
    epoch: int


@dataclass(frozen=True)
class StageStart:
    stage: Stage
    index: int
    plan: Plan
    job: Job
    data: DataBundle
    modules: GraphModules
    optimizer: torch.optim.Optimizer


@dataclass(frozen=True)
class EpochStart:
    epoch: EpochInfo


@dataclass(frozen=True)
class AfterBackward:
    """Gradients are in ``.grad`` (reduced over processes); the optimizer has not stepped."""

    epoch: EpochInfo
    batch: int  # counted from 0 within the epoch
    iteration: int  # global step within the stage, from 1 (what gates read)
    losses: dict[str, float]  # this process's link values for the step
    modules: GraphModules


@dataclass(frozen=True)
class EpochEnd:
    """Training of the epoch is over; nothing is evaluated yet."""

    epoch: EpochInfo


@dataclass(frozen=True)
class AfterEvaluation:
    """The epoch's metrics line (as ``metrics.jsonl`` holds it), identical on every process, and each node's
    best entry so far (as ``Progress.best``: chosen on val when there is one, else test)."""

    epoch: EpochInfo
    metrics: dict[str, Any]
    best: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class BeforeCheckpoint:
    """The checkpoint about to be written; a callback may add entries of its own to ``payload``."""

    epoch: EpochInfo
    payload: dict[str, Any]


@dataclass(frozen=True)
class RunEnd:
    state: Progress
    stopped: str | None  # the reason a callback stopped the run; None when it trained to the end


class Callback:
    """Listens to training events; override the ones you need."""

    def on_run_start(self, event: RunStart) -> None: ...
    def on_stage_start(self, event: StageStart) -> None: ...
    def on_epoch_start(self, event: EpochStart) -> None: ...
    def after_backward(self, event: AfterBackward) -> None: ...
    def on_epoch_end(self, event: EpochEnd) -> None: ...
    def after_evaluation(self, event: AfterEvaluation) -> None: ...
    def before_checkpoint(self, event: BeforeCheckpoint) -> None: ...
    def on_run_end(self, event: RunEnd) -> None: ...


EVENTS = tuple(name for name in vars(Callback) if name.startswith(("on_", "after_", "before_")))


@dataclass
class Events:
    """The callbacks of one run, called in order; a :class:`StopRun` is remembered, not propagated."""

    callbacks: list[Callback] = field(default_factory=list)
    stop: str | None = None  # the first reason given

    def add(self, callbacks: Iterable[Callback]) -> None:
        self.callbacks.extend(callbacks)

    def emit(self, event: str, record: Any) -> None:
        for callback in self.callbacks:
            try:
                getattr(callback, event)(record)
            except StopRun as request:
                if self.stop is None:
                    self.stop = f"{request.reason} ({type(callback).__name__}, {event})"
