"""What ``ktgraph run`` says while it trains: the run directory once it exists, then one line per epoch.

Progress bars show a step's loss only and vanish between epochs; a cluster job's log (no terminal,
``--no-progress``) would otherwise hold nothing until the run ends. Lines go to stderr, with the
bars, so stdout keeps only the result tables; they are written with ``tqdm.write``, so an open bar
is redrawn below a line rather than broken.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from tqdm.auto import tqdm

from ..runtime.events import AfterEvaluation, Callback, RunStart


def epoch_line(event: AfterEvaluation, networks: Iterable[str]) -> str:
    """``distill 2/4 · teacher 71.20 (best 71.20, distill ep 2) · student 40.10 (best 41.30, teacher ep 1) ·
    3.2 s``: each network's test top-1 this epoch and at its best epoch so far (the tables' "top-1 at
    best"), then the epoch's seconds (training, calibration and evaluation)."""
    test, best = event.metrics.get("test", {}), event.best
    parts = [f"{event.epoch.stage} {event.epoch.epoch + 1}/{event.epoch.epochs}"]
    for name in networks:
        if name in test:
            at_best = (f" (best {best[name]['test']['top1']:.2f}, {best[name]['stage']} ep {best[name]['epoch']})"
                       if name in best else "")
            parts.append(f"{name} {test[name]['top1']:.2f}{at_best}")
    parts.append(f"{event.metrics['seconds']:.1f} s")
    return " · ".join(parts)


class ProgressLines(Callback):
    """Names the run directory when training starts (so a refused run prints nothing but its error), then
    prints :func:`epoch_line` after every epoch's evaluation. Give it to rank 0 only."""

    def __init__(self, run_dir: str | Path, networks: Iterable[str], processes: int = 1,
                 stream: TextIO | None = None) -> None:
        self.run_dir = run_dir
        self.networks = list(networks)
        self.processes = processes
        self.stream = stream

    def _write(self, text: str) -> None:
        tqdm.write(text, file=self.stream or sys.stderr)

    def on_run_start(self, event: RunStart) -> None:
        where = f" (resumed at stage {event.stage + 1}, epoch {event.epoch + 1})" if event.resumed else ""
        many = f" ({self.processes} processes)" if self.processes > 1 else ""
        self._write(f"run directory: {self.run_dir}{many}{where}")

    def after_evaluation(self, event: AfterEvaluation) -> None:
        self._write(epoch_line(event, self.networks))
