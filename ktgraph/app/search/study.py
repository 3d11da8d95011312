"""The Optuna study a search's workers share: its storage, sampler and pruner, and who may start a trial.

Storage: by default a journal file in the search folder (``JournalStorage`` over
``JournalFileBackend``): every change is one appended line written under a file lock, so several
processes on one machine share it safely, where SQLite's single writer would make concurrent
workers fail with "database is locked". A ``postgresql://`` or ``mysql://`` URL lets workers on
several machines share one study (a journal file on NFS is not safe: its lock is not).

The trial budget is global: a worker claims a trial under a lock next to the storage, counting
the trials that are finished, running or failed by their own graph, so K workers never start more
than ``trials``. A trial whose worker died (killed, machine rebooted) stays RUNNING in the
storage; the next worker on that machine marks it failed and it does not count.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from .space import Search

JOURNAL = "study.journal"
CLAIM_LOCK = "claim.lock"
SPENT = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
ERROR_ATTR = "error"  # a failed trial whose graph failed (counts against the budget), not its worker
WORKER_ATTR = "worker"  # host and pid of the process that runs the trial


@dataclass(frozen=True)
class StudyPlace:
    """Where a search's study lives: its storage (a URL or a journal file) and its name."""

    folder: Path
    storage: str  # a database URL, or the path of a journal file
    name: str

    @property
    def is_url(self) -> bool:
        return "://" in self.storage

    def open_storage(self) -> BaseStorage:
        if self.is_url:
            return RDBStorage(self.storage)
        return JournalStorage(JournalFileBackend(self.storage))

    @contextlib.contextmanager
    def claim(self) -> Iterator[None]:
        """Held while a worker counts the trials and asks for one (one machine: a file lock)."""
        with open(self.folder / CLAIM_LOCK, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def make_sampler(search: Search, offset: int) -> optuna.samplers.BaseSampler:
    """The file's sampler; a seed is shifted by ``offset`` (worker and restart) so workers differ."""
    seed = None if search.spec.sampler.seed is None else search.spec.sampler.seed + offset
    if search.spec.sampler.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(search: Search) -> optuna.pruners.BasePruner:
    """ASHA as the knowledge-transfer-graph paper used it; resources are epochs of the whole run."""
    pruner = search.spec.pruner
    if pruner.name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=pruner.min_epochs,
                                                      reduction_factor=pruner.reduction_factor,
                                                      min_early_stopping_rate=0)
    if pruner.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=pruner.min_epochs,
                                              max_resource=pruner.max_epochs or search.epochs,
                                              reduction_factor=pruner.reduction_factor)
    return optuna.pruners.NopPruner()


def open_study(place: StudyPlace, search: Search, offset: int = 0) -> optuna.Study:
    """Create the study, or join it (a second worker, or the same command run again)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the search prints its own lines
    return optuna.create_study(study_name=place.name, storage=place.open_storage(), direction="maximize",
                               sampler=make_sampler(search, offset), pruner=make_pruner(search),
                               load_if_exists=True)


def spent(study: optuna.Study) -> int:
    """Trials that count against the budget: all but those whose worker died or was interrupted."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in SPENT or (t.state == TrialState.FAIL and ERROR_ATTR in t.user_attrs))


def this_worker() -> dict[str, object]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def fail_orphans(study: optuna.Study) -> list[int]:
    """Mark failed the RUNNING trials of this machine whose worker process is gone; their numbers."""
    host, orphans = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER_ATTR) or {}
        if worker.get("host") == host and not _alive(int(worker.get("pid", 0))):
            study.tell(trial.number, state=TrialState.FAIL)
            orphans.append(trial.number)
    return orphans


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
