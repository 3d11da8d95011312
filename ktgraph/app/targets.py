"""A command's positional words: graph files and ``key=value`` overrides."""
from __future__ import annotations

from pathlib import Path


def _is_file(word: str) -> bool:
    try:
        return Path(word).exists()
    except OSError:  # a name too long to be a file, say
        return False


def split_targets(items: list[str]) -> tuple[list[str], list[str]]:
    """Positional words with ``=`` are overrides; the others are files."""
    overrides = [i for i in items if "=" in i and not _is_file(i)]
    return [i for i in items if i not in overrides], overrides
