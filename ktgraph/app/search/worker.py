"""Workers: processes that take trials from one study until its budget is spent.

``--workers K`` starts K processes, each with ``cores // K`` threads: K default-threaded runs side
by side fight over the same cores (on 2 cores, four of them take 3.5× as long as with one thread
each). A worker reads the search from the folder's ``search.yaml``, so every worker, a restarted
one included, runs exactly the search the folder was made for.
"""
from __future__ import annotations

import multiprocessing
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ...runtime.strategy import cores_each
from .folder import read_folder
from .study import fail_orphans, make_sampler, open_study, spent
from .trial import run_trial


@dataclass(frozen=True)
class Budget:
    """What one invocation may spend: trials counted over the whole study, seconds per worker."""

    trials: int
    timeout: float | None = None


def work(folder: Path, budget: Budget, index: int = 0, threads: int | None = None) -> Counter[str]:
    """Take trials until the study holds ``budget.trials`` or the time is up; how each one ended."""
    if threads is not None:
        torch.set_num_threads(threads)
    search, place = read_folder(folder)
    study = open_study(place, search, offset=index)
    orphans = fail_orphans(study)
    if search.spec.sampler.seed is not None:  # a restarted worker must not draw the same values again
        study.sampler = make_sampler(search, index + 1000 * len(study.get_trials(deepcopy=False)))
    ended: Counter[str] = Counter({"orphans failed": len(orphans)} if orphans else {})
    started = time.monotonic()
    while budget.timeout is None or time.monotonic() - started < budget.timeout:
        with place.claim():
            if spent(study) >= budget.trials:
                break
            trial = study.ask(search.distributions())
        state = run_trial(study, trial, search, folder).name.lower()
        ended[state] += 1
        print(f"trial {trial.number}: {state}", file=sys.stderr, flush=True)
    return ended


def run_workers(folder: Path, budget: Budget, workers: int) -> Counter[str]:
    """One worker in this process, or ``workers`` processes sharing the cores; what their trials did."""
    if workers == 1:
        return work(folder, budget)
    threads = cores_each(workers)
    context = multiprocessing.get_context("spawn")  # a fork would copy torch's thread pools mid-use
    with context.Pool(workers) as pool:
        results = [pool.apply_async(work, (folder, budget, index, threads)) for index in range(workers)]
        total: Counter[str] = Counter()
        for result in results:
            total.update(result.get())
    return total

