"""One trial: the base graph with the sampled values, trained with :func:`~ktgraph.app.run.fit` into its
own run directory while a callback reports the objective to Optuna after every epoch's evaluation.

A trial the pruner stops ends cleanly through :class:`~ktgraph.runtime.events.StopRun` (its run
directory says ``stopped`` and why) and keeps its config, metrics and status, not its weights.
"""
from __future__ import annotations

import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ...errors import GraphError, TrainingError, UntrainedModuleWarning
from ...runtime.events import AfterEvaluation, Callback, StopRun
from ...runtime.rundir import CHECKPOINTS
from ..run import fit
from .space import Search
from .study import ERROR_ATTR, WORKER_ATTR, this_worker

OVERRIDES_ATTR = "overrides"
EPOCHS_ATTR = "epochs"
RUN_ATTR = "run_dir"


@dataclass
class Reporter(Callback):
    """Reports the objective node's validation top-1 each epoch; stops the run when Optuna prunes it."""

    trial: optuna.Trial
    node: str
    values: list[float] = field(default_factory=list)
    pruned: bool = False

    def after_evaluation(self, event: AfterEvaluation) -> None:
        value = float(event.metrics["val"][self.node]["top1"])
        self.values.append(value)
        self.trial.report(value, step=len(self.values))  # steps: epochs of the whole run, from 1
        if self.trial.should_prune():
            self.pruned = True
            raise StopRun(f"pruned by the search after {len(self.values)} epoch(s): {self.node} val top-1 {value:.2f}")


def trial_dir(folder: Path, number: int) -> Path:
    return folder / "trials" / f"{number:04d}"


def run_trial(study: optuna.Study, trial: optuna.Trial, search: Search, folder: Path) -> TrialState:
    """Train the trial's graph and tell the study how it ended; an interruption fails it and propagates."""
    overrides = search.overrides(trial.params)  # sampled when the worker asked for the trial
    run_dir = trial_dir(folder, trial.number)
    for key, value in ((WORKER_ATTR, this_worker()), (OVERRIDES_ATTR, overrides), (RUN_ATTR, str(run_dir))):
        trial.set_user_attr(key, value)
    reporter = Reporter(trial, search.spec.objective.node)
    try:
        with warnings.catch_warnings():  # cut-off gates may leave a node untrained: a graph the search may try
            warnings.simplefilter("ignore", UntrainedModuleWarning)
            fitted = fit(search.graph_with(overrides), run_dir, progress_bar=False, callbacks=[reporter])
    except (TrainingError, GraphError) as err:  # a loss diverged, shapes of two choices clash: a result
        trial.set_user_attr(ERROR_ATTR, str(err))
        study.tell(trial, state=TrialState.FAIL)
        print(f"trial {trial.number} failed: {err}", file=sys.stderr)
        return TrialState.FAIL
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        raise
    trial.set_user_attr(EPOCHS_ATTR, len(reporter.values))
    if fitted.stopped and reporter.pruned:
        shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
        study.tell(trial, state=TrialState.PRUNED)
        return TrialState.PRUNED
    seen = reporter.values
    study.tell(trial, max(seen) if search.spec.objective.at == "best" else seen[-1])
    return TrialState.COMPLETE
