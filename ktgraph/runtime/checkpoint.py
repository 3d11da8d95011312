"""Checkpoints written atomically and read back safely (``weights_only=True``)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import TrainingError


def save_atomic(obj: Any, path: str | Path) -> None:
    """Write to a temporary file in the same folder, fsync it, then rename over ``path``.

    A crash mid-write leaves the previous checkpoint intact, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"no checkpoint at {path}; nothing to resume (a run writes one after its first epoch)")
    return torch.load(path, map_location=map_location, weights_only=True)


def upgrade_state(state: dict[str, Any], renames: dict[str, str]) -> dict[str, Any]:
    """A state dict with the key prefixes of older checkpoints renamed (``renames``: old -> new)."""
    out = {}
    for key, value in state.items():
        old = next((prefix for prefix in renames if key.startswith(prefix)), None)
        out[renames[old] + key[len(old):] if old else key] = value
    return out
