"""The run directory: the one place that knows its file names, and writes and reads its files.

Readers are tolerant: a missing or half-written file is "nothing yet", so reports work on a
run directory copied from another machine, or on one whose run is still going.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch
import yaml

from ..errors import TrainingError
from .checkpoint import load_checkpoint, save_atomic
from .measure import PATH_KINDS, Row

CONFIG = "config.yaml"
ENV = "env.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoints/last.pt"
XROSS_CSV = "xross.csv"
XROSS_MD = "xross.md"
REPORT = "report.md"
GRAPH_SVG = "graph.svg"
GRAPH_IMAGES = (GRAPH_SVG, "graph.png")
CURVES = "curves.svg"
HEATMAP = "xross_heatmap.svg"
PARETO = "pareto.svg"
TENSORBOARD = "tensorboard"
XROSS_COLUMNS = ("node", "kind", "parts", "segments", "params", "macs", "latency_ms", "batch_size", "top1_last",
                 "top5_last", "top1_best", "best_epoch")
Position = tuple[int, int]  # (stage index, epochs done in it)


class RunDir:
    """A run directory at ``path`` (which need not exist yet)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    def is_run(self) -> bool:
        return (self.path / CONFIG).is_file()

    # --- the resolved config and the environment --------------------------------------------------------
    def write_config(self, document: dict[str, Any]) -> None:
        self._write(CONFIG, yaml.safe_dump(document, sort_keys=False))

    def read_config(self) -> dict[str, Any] | None:
        return self._mapping(CONFIG, yaml.safe_load, yaml.YAMLError)

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        self._write(name, json.dumps(data, indent=2))

    def read_json(self, name: str) -> dict[str, Any] | None:
        return self._mapping(name, json.loads, json.JSONDecodeError)

    # --- metrics: one JSON line per epoch -------------------------------------------------------------
    def append_metrics(self, line: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with (self.path / METRICS).open("a") as handle:
            handle.write(json.dumps(line) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """The epochs in training order; blank lines and a torn last line (a killed run) are skipped."""
        path = self.path / METRICS
        if not path.is_file():
            return []
        lines = []
        for text in path.read_text().splitlines():
            try:
                line = json.loads(text) if text.strip() else None
            except json.JSONDecodeError:
                line = None
            if isinstance(line, dict):
                lines.append(line)
        return sorted(lines, key=lambda d: (d.get("stage_index", 0), d.get("epoch", 0)))

    def keep_metrics_upto(self, position: Position) -> None:
        """Drop the lines a checkpoint has not seen (a run stopped between its metrics and its checkpoint)."""
        if (self.path / METRICS).exists():
            kept = [line for line in self.read_metrics()
                    if (line.get("stage_index", 0), line.get("epoch", 0)) <= tuple(position)]
            self._write(METRICS, "".join(json.dumps(line) + "\n" for line in kept))

    # --- checkpoints ------------------------------------------------------------------------------------
    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    def save_checkpoint(self, payload: dict[str, Any]) -> None:
        save_atomic(payload, self.checkpoint)

    def load_checkpoint(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        if not self.checkpoint.is_file():
            raise TrainingError(f"no checkpoint at {self.checkpoint}; the run has not finished an epoch yet "
                                "(a run writes one after each epoch)")
        return load_checkpoint(self.checkpoint, map_location)

    # --- the Xross table --------------------------------------------------------------------------------
    def write_xross(self, rows: list[Row]) -> Path:
        path = self.path / XROSS_CSV
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=XROSS_COLUMNS)
            writer.writeheader()
            writer.writerows(_record(row) for row in rows)
        return path

    def read_xross(self) -> list[Row]:
        """The rows of ``xross.csv``; [] when the file is not there (yet)."""
        path = self.path / XROSS_CSV
        if not path.is_file():
            return []
        with path.open(newline="") as handle:
            return [_row(record) for record in csv.DictReader(handle)]

    # --- plain text ---------------------------------------------------------------------------------------
    def write_text(self, name: str, text: str) -> Path:
        """Write a whole file at once (a reader never sees half of it)."""
        self._write(name, text)
        return self.path / name

    def _write(self, name: str, text: str) -> None:
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)

    def _mapping(self, name: str, parse: Any, error: type[Exception]) -> dict[str, Any] | None:
        path = self.path / name
        if not path.is_file():
            return None
        try:
            data = parse(path.read_text())
        except error:
            return None
        return data if isinstance(data, dict) else None


def _record(row: Row) -> dict[str, Any]:
    def number(value: float | None, digits: int) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    return {"node": row.node, "kind": row.kind, "parts": " ".join(row.parts), "segments": row.route,
            "params": row.params, "macs": "" if row.macs is None else row.macs,
            "latency_ms": number(row.latency_ms, 4), "batch_size": row.batch_size or "",
            "top1_last": number(row.top1_last, 4), "top5_last": number(row.top5_last, 4),
            "top1_best": number(row.top1_best, 4), "best_epoch": row.best_epoch or ""}


def _row(record: dict[str, str]) -> Row:
    def opt(key: str, kind: type) -> Any:
        value = (record.get(key) or "").strip()
        return kind(value) if value else None

    kind, route = record["kind"], record["segments"]
    return Row(node=record["node"], kind=kind, route=route, params=int(record["params"]), macs=opt("macs", int),
               latency_ms=opt("latency_ms", float), batch_size=opt("batch_size", int),
               top1_last=float(record["top1_last"]), top5_last=opt("top5_last", float),
               top1_best=opt("top1_best", float), best_epoch=opt("best_epoch", int),
               segments=tuple(route.split(" > ")) if kind in PATH_KINDS else (),
               parts=tuple(record.get("parts", "").split()))
