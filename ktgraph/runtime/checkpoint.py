"""Checkpoints and run files written atomically, and checkpoints read back safely (``weights_only=True``).

A file is written to a temporary file in its folder (``.NAME.<random suffix>.tmp``), synced to disk,
renamed over its name, and the folder synced: a crash, a signal or a full disk leaves the
previous version whole and at most a temporary file, which the next start removes. Files get
the permissions the user's umask gives. A checkpoint that cannot be read, or holds something
else than a checkpoint, is a one-line :class:`TrainingError` saying what is wrong and what to do.
"""
from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from ..errors import TrainingError, write_error

TEMP_SUFFIX = ".tmp"
MODEL_KEYS: dict[str, type] = {"model": dict}
RESUME_KEYS: dict[str, type] = {"model": dict, "optimizer": dict, "scheduler": dict, "scaler": dict, "stage": int,
                                "epoch": int, "best": dict, "last": dict}
# Fields of a resolved config that change where or how fast a run trains, not what it learns.
UNTRAINED_FIELDS = (("name",), ("description",), ("data", "root"), ("data", "num_workers"), ("train", "device"),
                    ("train", "eval_batch_size"), ("train", "tensorboard"), ("train", "keep_checkpoints"),
                    ("train", "batching"), ("train", "compile"), ("train", "calibrate"), ("train", "threads"),
                    ("train", "seeds"))


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` through ``write(handle)`` so that no reader and no crash ever sees half of it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise write_error(err, path) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException as err:  # a signal too: no temporary file is left behind
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise write_error(err, path) from None
        raise
    sync_folder(path.parent)


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`write_atomic`: a crash mid-write leaves the previous checkpoint intact."""
    write_atomic(path, lambda handle: torch.save(obj, handle))


def file_mode() -> int:
    """0666 less the user's umask: what ``open()`` would give (``mkstemp`` alone gives 0600)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():  # Linux: read without changing it
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be synced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    required: dict[str, type] = MODEL_KEYS, advice: str = "") -> dict[str, Any]:
    """A checkpoint's payload, read with ``weights_only=True`` and checked to hold ``required``."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"no checkpoint at {path}; nothing to resume (a run writes one after its first epoch)")

    def unusable(problem: str) -> TrainingError:
        return TrainingError(f"{path} is not a usable checkpoint: {problem}. {advice}".rstrip())

    try:
        if path.stat().st_size == 0:
            raise unusable("it is empty (0 bytes)")
        if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
            raise unusable("it is not a PyTorch file (its bytes are damaged, cut short, or of another file)")
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise unusable("it holds objects other than tensors and plain values, which ktgraph never writes "
                           "(weights_only loading refused it)") from None
        raise unusable("it is not a PyTorch file (damaged, or another kind of file)") from None
    except OSError as err:
        raise unusable(f"it cannot be read ({err.strerror or err})") from None
    except (RuntimeError, EOFError, ValueError, KeyError, AttributeError, TypeError, IndexError):
        raise unusable("it is truncated or damaged (torch.load could not read it)") from None
    if not isinstance(payload, dict):
        raise unusable(f"it holds a {type(payload).__name__}, not a ktgraph checkpoint's mapping")
    for key, kind in required.items():
        if not isinstance(payload.get(key), kind) or isinstance(payload.get(key), bool):
            raise unusable(f"its `{key}` entry is {'missing' if key not in payload else 'not a ' + kind.__name__}")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload["model"].items()):
        raise unusable("its `model` entry is not a state dict of tensors")
    return payload


def upgrade_state(state: dict[str, Any], renames: dict[str, str]) -> dict[str, Any]:
    """A state dict with the key prefixes of older checkpoints renamed (``renames``: old -> new)."""
    out = {}
    for key, value in state.items():
        old = next((prefix for prefix in renames if key.startswith(prefix)), None)
        out[renames[old] + key[len(old):] if old else key] = value
    return out


def trained_config(document: dict[str, Any]) -> dict[str, Any]:
    """The parts of a resolved config that decide what a run trains (a checkpoint records them)."""
    config = json.loads(json.dumps(document))
    for *sections, name in UNTRAINED_FIELDS:
        node = config
        for section in sections:
            node = node.get(section, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(name, None)
    return config


def config_difference(saved: Any, current: Any, where: str = "", *, here: str = "in config.yaml",
                      there: str = "in the checkpoint") -> str | None:
    """The first field that differs between two resolved configs, said as "`FIELD` is A here and B there"."""
    field = f"`{where}`" if where else "the config"
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in [*current, *(k for k in saved if k not in current)]:
            inner = f"{where}.{key}" if where else str(key)
            if key not in saved or key not in current:
                now = json.dumps(current[key]) if key in current else "not set"
                then = json.dumps(saved[key]) if key in saved else "not set"
                return f"`{inner}` is {now} {here} and {then} {there}"
            found = config_difference(saved[key], current[key], inner, here=here, there=there)
            if found:
                return found
        return None
    if isinstance(saved, list) and isinstance(current, list):
        if len(saved) != len(current):
            return f"{field} has {len(current)} entries {here} and {len(saved)} {there}"
        return next((found for i, (a, b) in enumerate(zip(saved, current))
                     if (found := config_difference(a, b, f"{where}.{i}", here=here, there=there))), None)
    if saved != current:
        return f"{field} is {json.dumps(current)} {here} and {json.dumps(saved)} {there}"
    return None
