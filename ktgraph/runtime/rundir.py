"""The run directory: the one place that knows its file names, and writes and reads its files.

Readers are tolerant: a missing or half-written file is "nothing yet", so reports work on a
run directory copied from another machine, or on one whose run is still going. Writers are
atomic (:mod:`ktgraph.runtime.checkpoint`). A command that writes holds the folder's lock
(:meth:`RunDir.lock`), an OS file lock the system releases however the process ends.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from ..errors import GraphError, TrainingError, did_you_mean, write_error
from .checkpoint import MODEL_KEYS, RESUME_KEYS, TEMP_SUFFIX, load_checkpoint, save_atomic, write_atomic
from .measure import PATH_KINDS, Row

try:
    import fcntl
except ImportError:  # not POSIX: run directories are not locked (a warning says so)
    fcntl = None  # type: ignore[assignment]

CONFIG = "config.yaml"
ENV = "env.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
STATUS = "status.json"  # how training ended: running (or killed), stopped (by a callback, and why) or trained
CHECKPOINTS = "checkpoints"
CHECKPOINT = f"{CHECKPOINTS}/last.pt"
KEPT = re.compile(r"stage(\d+)-epoch(\d+)\.pt")  # checkpoints/stageS-epochEEEE.pt, with train.keep_checkpoints > 1
LOCK = ".lock"
XROSS_CSV = "xross.csv"
XROSS_MD = "xross.md"
REPORT = "report.md"
GRAPH_SVG = "graph.svg"
GRAPH_IMAGES = (GRAPH_SVG, "graph.png")
CURVES = "curves.svg"
HEATMAP = "xross_heatmap.svg"
PARETO = "pareto.svg"
TENSORBOARD = "tensorboard"
MAPPING_JSON = "mapping.json"  # the channel mapping's records (``runtime/mapping.py``)
MAPPING_DIR = "mapping"  # its score heatmaps
XROSS_COLUMNS = ("node", "kind", "parts", "segments", "params", "macs", "latency_ms", "batch_size", "top1_last",
                 "top5_last", "top1_best", "best_epoch", "calibrated")
Position = tuple[int, int]  # (stage index, epochs done in it)
RUN_FILES = (CONFIG, ENV, METRICS, SUMMARY, STATUS, CHECKPOINTS, XROSS_CSV, XROSS_MD, REPORT, *GRAPH_IMAGES, CURVES, HEATMAP,
             PARETO, TENSORBOARD, MAPPING_JSON, MAPPING_DIR, "picked-*")  # what `ktgraph run --overwrite` removes first


def safe_name(name: str, fallback: str = "run") -> str:
    """``name`` as one plain file name: characters other than letters, digits, ``.``, ``_`` and ``-``
    become ``_``; no leading dot or dash, at most 100 characters; ``fallback`` when nothing is left."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".-")[:100]
    return cleaned if cleaned.strip("._-") else fallback


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

    def require(self) -> None:
        """A located error unless the folder is a run directory: every command that reads one says the same."""
        if not self.path.is_dir():
            raise GraphError("the run directory does not exist", file=str(self),
                             suggestion="give the folder `ktgraph run --out` wrote")
        if not self.is_run():
            raise GraphError(f"not a run directory (no {CONFIG})", file=str(self),
                             suggestion="give the folder `ktgraph run --out` wrote")

    def contents(self) -> list[str]:
        """The names in the folder, its lock and the temporary files of interrupted writes left out."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir()
                      if p.name != LOCK and not (p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX)))

    def remove_run_files(self) -> None:
        """Delete what a run writes (``RUN_FILES``), for ``--overwrite``; other files stay."""
        self.remove_matching(RUN_FILES)

    def remove_matching(self, patterns: tuple[str, ...]) -> None:
        """Delete the files and folders the glob ``patterns`` match here."""
        for pattern in patterns:
            for path in self.path.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()

    def remove_temporary(self) -> list[Path]:
        """Delete the temporary files of writes a crash interrupted; hold the lock when calling this."""
        found = [p for folder in (self.path, self.path / CHECKPOINTS) if folder.is_dir()
                 for p in [*folder.glob(f".*{TEMP_SUFFIX}"), *folder.glob(".last.pt.*")] if p.is_file()]
        for path in found:
            path.unlink(missing_ok=True)
        return found

    # --- the lock --------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, command: str) -> Iterator[None]:
        """Hold the folder's lock while ``command`` writes in it; a folder another process holds is a
        GraphError naming that process. A folder that does not exist yet is not locked."""
        if not self.path.is_dir():
            yield
            return
        try:
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise GraphError(f"cannot write in the folder: {err.strerror or err}", file=str(self.path),
                             suggestion="give a folder you can write in") from None
        held = False
        try:
            if fcntl is None:
                warnings.warn(f"{self.path} is not locked: file locks need fcntl (POSIX); do not run two "
                              "commands on it at once", stacklevel=3)
            else:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held = True
                except OSError as err:
                    if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        warnings.warn(f"{self.path} is not locked: {err.strerror}", stacklevel=3)
                    else:
                        raise self._busy() from None
            if held:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()} {command}\n".encode())
            yield
        finally:
            if held:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
            os.close(fd)

    def _busy(self) -> GraphError:
        try:
            pid, _, command = (self.path / LOCK).read_text().strip().partition(" ")
        except OSError:
            pid, command = "", ""
        holder = f"PID {pid}, `ktgraph {command}`" if pid else "its PID not written yet"
        return GraphError(f"the run directory is in use by another ktgraph process ({holder})",
                          file=str(self.path), suggestion="wait until it ends, or stop it"
                          + (f" (kill {pid})" if pid else "") + "; a stopped run continues with `ktgraph run --resume`")

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
        """Append one line; a crash or a full disk can tear it, and readers skip a torn last line."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with (self.path / METRICS).open("a") as handle:
                handle.write(json.dumps(line) + "\n")
        except OSError as err:
            raise write_error(err, self.path / METRICS) from None

    def read_metrics(self) -> list[dict[str, Any]]:
        """The epochs in training order; blank lines and a torn last line (a killed run) are skipped."""
        path = self.path / METRICS
        if not path.is_file():
            return []
        lines = []
        for text in path.read_text(errors="replace").splitlines():
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

    def save_checkpoint(self, payload: dict[str, Any], keep: int = 1) -> None:
        """Replace ``last.pt``; with ``keep`` > 1 also keep it as ``stageS-epochE.pt``, the last ``keep`` of those."""
        save_atomic(payload, self.checkpoint)
        if keep <= 1:
            return
        kept = self.kept_checkpoint(payload["stage"], payload["epoch"])
        link = kept.with_name(f".{kept.name}.link{TEMP_SUFFIX}")
        try:
            link.unlink(missing_ok=True)
            os.link(self.checkpoint, link)  # the same file under a second name: no copy
            os.replace(link, kept)
        except OSError:
            link.unlink(missing_ok=True)
            data = self.checkpoint.read_bytes()
            write_atomic(kept, lambda handle: handle.write(data))
        for old in self.kept_checkpoints()[:-keep]:
            old.unlink(missing_ok=True)

    def kept_checkpoint(self, stage: int, epoch: int) -> Path:
        """Where ``train.keep_checkpoints`` keeps the checkpoint after ``epoch`` epochs of stage index ``stage``."""
        return self.path / CHECKPOINTS / f"stage{stage}-epoch{epoch:04d}.pt"

    def network_state(self, network: str, checkpoint: str = "last") -> dict[str, torch.Tensor]:
        """Network ``network``'s weights (its own keys, no prefix) at the last checkpoint or, for ``best``, at the
        kept checkpoint of its best epoch; a GraphError says what is missing and what to do."""
        self.require()
        try:
            payload = self.load_checkpoint()
            if checkpoint == "best" and network in payload.get("best", {}):
                best = payload["best"][network]
                stages = [stage["name"] for stage in (self.read_config() or {}).get("stages") or []]
                kept = self.kept_checkpoint(stages.index(best["stage"]) if best["stage"] in stages else 0,
                                            best["epoch"])
                if not kept.is_file():
                    raise GraphError(f"run {self} kept no checkpoint of `{network}`'s best epoch (stage "
                                     f"`{best['stage']}`, epoch {best['epoch']})",
                                     suggestion="take `checkpoint: last`, or train that run with "
                                                "train.keep_checkpoints large enough to keep its best epoch")
                payload = load_checkpoint(kept, "cpu", required=MODEL_KEYS)
        except TrainingError as err:
            raise GraphError(str(err)) from None
        prefix = f"networks.{network}."
        state = {key[len(prefix):]: value for key, value in payload["model"].items() if key.startswith(prefix)}
        if not state:
            names = sorted({key.split(".")[1] for key in payload["model"] if key.startswith("networks.")})
            raise GraphError(f"run {self} has no network `{network}`", expected="one of: " + ", ".join(names),
                             suggestion=did_you_mean(network, names))
        return state

    def kept_checkpoints(self) -> list[Path]:
        """``checkpoints/stageS-epochE.pt`` in training order."""
        found = [(tuple(map(int, m.groups())), p) for p in (self.path / CHECKPOINTS).glob("stage*-epoch*.pt")
                 if (m := KEPT.fullmatch(p.name))]
        return [p for _, p in sorted(found)]

    def drop_checkpoints_after(self, position: Position) -> None:
        """Remove kept checkpoints of epochs after ``position`` (left by a run resumed from an earlier one)."""
        for path in self.kept_checkpoints():
            match = KEPT.fullmatch(path.name)
            if match and tuple(map(int, match.groups())) > tuple(position):
                path.unlink(missing_ok=True)

    def load_checkpoint(self, map_location: str | torch.device = "cpu", *, resume: bool = False) -> dict[str, Any]:
        """The last checkpoint, checked: all a resume needs, or (``resume=False``) the model's state."""
        if not self.checkpoint.is_file():
            raise TrainingError(f"no checkpoint at {self.checkpoint}; the run has not finished an epoch yet "
                                "(a run writes one after each epoch)")
        return load_checkpoint(self.checkpoint, map_location, required=RESUME_KEYS if resume else MODEL_KEYS,
                               advice=self._fallback_advice())

    def _fallback_advice(self) -> str:
        earlier = [p for p in self.kept_checkpoints() if not _same_file(p, self.checkpoint)]
        if earlier:
            return (f"Continue from an earlier checkpoint: copy it over last.pt (cp {earlier[-1]} {self.checkpoint}), "
                    "then resume")
        return (f"Nothing earlier is kept (train.keep_checkpoints: N keeps the last N epochs' checkpoints); start "
                f"the run again with: ktgraph run {self.path / CONFIG} --out {self.path} --overwrite")

    # --- the Xross table --------------------------------------------------------------------------------
    def write_xross(self, rows: list[Row]) -> Path:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=XROSS_COLUMNS)
        writer.writeheader()
        writer.writerows(_record(row) for row in rows)
        self._write(XROSS_CSV, text.getvalue())
        return self.path / XROSS_CSV

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
        data = text.encode("utf-8")
        write_atomic(self.path / name, lambda handle: handle.write(data))

    def _mapping(self, name: str, parse: Any, error: type[Exception]) -> dict[str, Any] | None:
        path = self.path / name
        if not path.is_file():
            return None
        try:
            data = parse(path.read_text())
        except (error, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None


def make_folder(path: Path, what: str) -> None:
    """Create the folder ``what`` names (parents too), or say plainly why it cannot be."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GraphError(f"cannot create {what}: {err.strerror or err}", file=str(path),
                         suggestion="give --out a folder you can write in, on a file system that is not "
                                    "read-only") from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _record(row: Row) -> dict[str, Any]:
    def number(value: float | None, digits: int) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    return {"node": row.node, "kind": row.kind, "parts": " ".join(row.parts), "segments": row.route,
            "params": row.params, "macs": "" if row.macs is None else row.macs,
            "latency_ms": number(row.latency_ms, 4), "batch_size": row.batch_size or "",
            "top1_last": number(row.top1_last, 4), "top5_last": number(row.top5_last, 4),
            "top1_best": number(row.top1_best, 4), "best_epoch": row.best_epoch or "",
            "calibrated": "yes" if row.calibrated else ""}


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
               parts=tuple(record.get("parts", "").split()), calibrated=record.get("calibrated") == "yes")
