"""Reading a run directory's files, tolerantly: a missing or half-written file is "nothing yet".

The report reads files (through the same readers that wrote them), so it works on a
run directory copied from another machine, and on one whose run is still going.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..runtime.xross import CSV_NAME as XROSS_CSV
from ..runtime.xross import Row, read_csv

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
ENV = "env.json"
CONFIG = "config.yaml"
XROSS_MD = "xross.md"
CHECKPOINT = "checkpoints/last.pt"


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


def read_json(run_dir: str | Path, name: str) -> dict[str, Any] | None:
    """A JSON file of the run as a mapping; None when it is missing or unreadable."""
    return _read_mapping(Path(run_dir) / name, json.loads, json.JSONDecodeError)


def read_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's resolved ``config.yaml`` as a mapping; None when it is missing or unreadable."""
    return _read_mapping(Path(run_dir) / CONFIG, yaml.safe_load, yaml.YAMLError)


def _read_mapping(path: Path, parse: Callable[[str], Any], error: type[Exception]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = parse(path.read_text())
    except error:
        return None
    return data if isinstance(data, dict) else None


def read_xross(run_dir: str | Path) -> list[Row]:
    """The rows of ``xross.csv``; [] when the file is not there (yet)."""
    path = Path(run_dir) / XROSS_CSV
    return read_csv(path) if path.is_file() else []


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
