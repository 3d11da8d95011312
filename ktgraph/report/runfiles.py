"""Reading a run directory's files, tolerantly: a missing or half-written file is "nothing yet".

The report reads files, never the code that wrote them, so it also works on a run
directory copied from another machine or written by an older ktgraph.
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
ENV = "env.json"
CONFIG = "config.yaml"
XROSS_CSV = "xross.csv"
XROSS_MD = "xross.md"
CHECKPOINT = "checkpoints/last.pt"

PATH_KINDS = ("network", "cross path")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The epochs of ``metrics.jsonl`` in training order; [] when there is none.

    Blank lines and a torn last line (a run killed while writing) are skipped.
    """
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    lines = []
    for text in path.read_text().splitlines():
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(line, dict):
            lines.append(line)
    return sorted(lines, key=lambda d: (d.get("stage_index", 0), d.get("epoch", 0)))


def epoch_offset(lines: Sequence[dict[str, Any]]) -> int:
    """What to add to a line's ``epoch`` for the 1-based epoch within its stage.

    ktgraph now writes 1-based epochs; run directories from before wrote 0-based ones
    (their first epoch of every stage is 0, which a 1-based file never has).
    """
    return 1 if any(line.get("epoch") == 0 for line in lines) else 0


def read_json(run_dir: str | Path, name: str) -> dict[str, Any] | None:
    path = Path(run_dir) / name
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def read_config(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class XrossRow:
    """One row of ``xross.csv``: a network, a cross path, an aggregate or an ensemble."""

    node: str
    kind: str
    parts: tuple[str, ...]  # owner network of each part position; () for aggregates and ensembles
    segments: str
    params: int | None
    macs: float | None
    latency_ms: float | None
    batch_size: int | None
    top1_last: float | None
    top5_last: float | None
    top1_best: float | None
    best_epoch: int | None

    @property
    def is_path(self) -> bool:
        return bool(self.parts) and self.kind in PATH_KINDS


def _number(text: str | None) -> float | None:
    if text is None or not str(text).strip():
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _integer(text: str | None) -> int | None:
    value = _number(text)
    return int(round(value)) if value is not None else None


def parse_xross_csv(text: str) -> list[XrossRow]:
    rows = []
    for raw in csv.DictReader(text.splitlines()):
        node = (raw.get("node") or "").strip()
        if not node:
            continue
        rows.append(XrossRow(
            node=node, kind=(raw.get("kind") or "").strip(),
            parts=tuple((raw.get("parts") or "").split()), segments=(raw.get("segments") or "").strip(),
            params=_integer(raw.get("params")), macs=_number(raw.get("macs")),
            latency_ms=_number(raw.get("latency_ms")), batch_size=_integer(raw.get("batch_size")),
            top1_last=_number(raw.get("top1_last")), top5_last=_number(raw.get("top5_last")),
            top1_best=_number(raw.get("top1_best")), best_epoch=_integer(raw.get("best_epoch"))))
    return rows


def read_xross(run_dir: str | Path) -> list[XrossRow]:
    """The rows of ``xross.csv``; [] when the file is not there (yet)."""
    path = Path(run_dir) / XROSS_CSV
    if not path.is_file():
        return []
    return parse_xross_csv(path.read_text())


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, cheapest first.

    A point (cost, accuracy) is dominated when another has cost <= and accuracy >=,
    one of them strictly. Identical points do not dominate each other: both stay.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best_cheaper = -math.inf  # the best accuracy among strictly cheaper points
    group_best = -math.inf
    group_cost = None
    for i in order:
        cost, acc = points[i]
        if cost != group_cost:
            best_cheaper = max(best_cheaper, group_best)
            group_cost, group_best = cost, acc  # sorted: the first of a cost group is its best
        if acc == group_best and acc > best_cheaper:
            front.append(i)
    return front


def human_count(value: float | None) -> str:
    """21320000 -> '21.32M' (the seed tables' style), 675392 -> '675.4k'."""
    if value is None:
        return "n/a"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}" if suffix in "MGT" else f"{value / scale:.1f}{suffix}"
    return f"{value:g}"
