"""A command's positional words: graph files and ``key=value`` overrides."""
from __future__ import annotations

from pathlib import Path

from ..errors import GraphError
from ..graph import KTGraph, load_graph


def _is_file(word: str) -> bool:
    try:
        return Path(word).exists()
    except OSError:  # a name too long to be a file, say
        return False


def split_targets(items: list[str]) -> tuple[list[str], list[str]]:
    """Positional words with ``=`` are overrides; the others are files."""
    overrides = [i for i in items if "=" in i and not _is_file(i)]
    return [i for i in items if i not in overrides], overrides


def one_graph(targets: list[str], command: str, usage: str, *, allow_imports: bool) -> tuple[KTGraph, str]:
    """The one graph file of a command, loaded with the overrides that follow it; and its name."""
    files, overrides = split_targets(targets)
    if len(files) != 1:
        raise GraphError(f"ktgraph {command} takes one graph file", file="command line", expected=usage)
    return load_graph(files[0], overrides, allow_imports=allow_imports), files[0]
