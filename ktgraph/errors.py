"""User-facing errors: each one names where the problem is and how to fix it.

Every mistake a user can make in a graph file or on the command line ends as a
:class:`GraphError`. The CLI prints it and exits with status 2; it never shows a
traceback for these.
"""
from __future__ import annotations

import difflib
import errno
import os
import shutil
from collections.abc import Iterable
from pathlib import Path


def closest(name: str, candidates: Iterable[str], n: int = 1) -> list[str]:
    """The candidates that look most like ``name`` (for "did you mean ...?")."""
    pool = sorted(set(candidates))
    # Same name but for case or a look-alike character (`resnet2O` for `resnet20`): that one first.
    exact = [c for c in pool if _plain(c) == _plain(name) and c != name]
    found = difflib.get_close_matches(name, pool, n=n + 8, cutoff=0.6)
    if not found:
        lowered = {c.lower(): c for c in pool}
        found = [lowered[m] for m in difflib.get_close_matches(name.lower(), list(lowered), n=n + 8, cutoff=0.6)]

    def rank(candidate: str) -> tuple[float, int]:
        # Equal similarity: prefer the longer shared prefix (typos sit late in a name more often than early).
        a, b = name.lower(), candidate.lower()
        return (-round(difflib.SequenceMatcher(None, a, b).ratio(), 6), -len(os.path.commonprefix([a, b])))

    ranked = sorted(found, key=rank)  # stable: difflib's own order breaks the remaining ties
    return (exact + [c for c in ranked if c not in exact])[:n]


_LOOKALIKE = str.maketrans({"o": "0", "l": "1", "i": "1", "-": "_"})


def _plain(name: str) -> str:
    return name.lower().translate(_LOOKALIKE)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """A suggestion sentence, or an empty string when nothing is close."""
    found = closest(name, candidates)
    return f"did you mean `{found[0]}`?" if found else ""


class GraphError(Exception):
    """A problem in a graph file or its overrides.

    ``where`` is the dotted field path (``networks.net1.model``); the loader fills
    ``file``/``line``/``column`` from the YAML it read.
    """

    def __init__(
        self,
        message: str,
        *,
        where: tuple[str | int, ...] | str = (),
        expected: str = "",
        suggestion: str = "",
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.where = tuple(where.split(".")) if isinstance(where, str) and where else tuple(where or ())
        self.expected = expected
        self.suggestion = suggestion
        self.file = file
        self.line = line
        self.column = column

    @property
    def field(self) -> str:
        return ".".join(str(p) for p in self.where)

    def __str__(self) -> str:
        place = self.file or "<graph>"
        if self.line is not None:
            place += f":{self.line}"
            if self.column is not None:
                place += f":{self.column}"
        text = f"{place}: "
        if self.field:
            text += f"{self.field}: "
        text += self.message
        if self.expected:
            text += f"\n  expected: {self.expected}"
        if self.suggestion:
            text += f"\n  hint: {self.suggestion}"
        return text


def unknown_name(kind: str, name: str, known: Iterable[str], where: tuple[str | int, ...] | str = ()) -> GraphError:
    """The error for a reference to something that is not registered or declared."""
    known = sorted(set(known))
    shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
    return GraphError(
        f"unknown {kind} `{name}`",
        where=where,
        expected=f"one of: {shown}" if known else f"a declared {kind}",
        suggestion=did_you_mean(name, known),
    )


class TrainingError(Exception):
    """A run that cannot go on (a non-finite loss, a missing checkpoint)."""


class UntrainedModuleWarning(UserWarning):
    """A module with trainable parameters that no link of any stage trains: its weights stay as initialised."""


def write_error(err: OSError, path: Path) -> TrainingError:
    """A failed write, said plainly: a full disk names itself and the folder it is the disk of."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f"{shutil.disk_usage(path.parent).free:,} bytes free"
        except OSError:
            free = "no space left"
        return TrainingError(f"the disk is full ({free} on the disk that holds {path.parent}): could not write "
                             f"{path.name}; the file's previous version is kept and no temporary file is left. "
                             "Free some space, then continue")
    return TrainingError(f"could not write {path}: {err.strerror or err}")
