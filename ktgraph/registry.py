"""One registry mechanism for everything a graph file can name.

Models, data sets, link kinds, gates, aggregators and adapters are each a :class:`Registry`,
in the style of timm's ``register_model``: a decorator records an entry under a name with its
metadata, registering a name again replaces the entry and warns, ``list(pattern)`` answers
shell-style patterns, and looking up an unknown name is a :class:`GraphError` that suggests the
closest one. A graph file can name only what is registered; a user adds entries from a module
listed under ``imports:`` (opt-in).
"""
from __future__ import annotations

import fnmatch
import functools
import re
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, overload

from .errors import GraphError, unknown_name

E = TypeVar("E")


def natural_order(name: str) -> list[str | int]:
    """Sort key putting resnet8 before resnet20 before resnet110."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class Registry(Generic[E]):
    """Named entries of one kind (``what``: "model", "gate", ...), each with a metadata dict.

    An entry's name is the ``name=`` given to :meth:`register`, else the ``kind`` default of a
    unit class (see :mod:`ktgraph.kinds.base`), else the entry's ``__name__``. ``version``
    grows with every change, so what is built from a registry (the schema) knows when to rebuild.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, E] = {}
        self._metadata: dict[str, dict[str, Any]] = {}
        self.version = 0

    @overload
    def register(self, entry: E, /) -> E: ...
    @overload
    def register(self, *, name: str | None = None, **metadata: Any) -> Callable[[E], E]: ...
    def register(self, entry: E | None = None, /, *, name: str | None = None,
                 **metadata: Any) -> E | Callable[[E], E]:
        """Use as ``@registry.register`` or ``@registry.register(name="x", key=value)``."""
        if entry is None:
            return lambda item: self._record(item, name, metadata)
        return self._record(entry, name, metadata)

    def _record(self, entry: E, name: str | None, metadata: dict[str, Any]) -> E:
        name = name or _name_of(entry)
        if name in self._entries:
            warnings.warn(f"{self.what} `{name}` was already registered; the new entry replaces it", stacklevel=3)
        self._entries[name] = entry
        self._metadata[name] = dict(metadata)
        self.version += 1
        return entry

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str, where: tuple[str | int, ...] = ()) -> E:
        """The entry, or a GraphError listing the registered names and the closest one."""
        if name not in self._entries:
            raise unknown_name(self.what, name, self._entries, where)
        return self._entries[name]

    def __getitem__(self, name: str) -> E:
        return self.get(name)

    def metadata(self, name: str) -> dict[str, Any]:
        self.get(name)
        return dict(self._metadata[name])

    def describe(self, name: str) -> str:
        """One line about an entry: its ``description`` metadata, else the first line of its docstring."""
        entry = self.get(name)
        text = self._metadata[name].get("description")
        if text is None and not isinstance(entry, functools.partial):
            text = (getattr(entry, "__doc__", None) or "").strip().split("\n")[0]
        return str(text or "")

    def entries(self) -> list[E]:
        """Every entry, in registration order."""
        return list(self._entries.values())

    def list(self, pattern: str = "*") -> list[str]:
        """The names matching a shell-style pattern, in natural order."""
        return sorted(fnmatch.filter(self._entries, pattern), key=natural_order)

    def snapshot(self) -> tuple[dict[str, E], dict[str, dict[str, Any]]]:
        return dict(self._entries), {k: dict(v) for k, v in self._metadata.items()}

    def restore(self, snapshot: tuple[dict[str, E], dict[str, dict[str, Any]]]) -> None:
        """Put back what :meth:`snapshot` saw (tests register entries and take them away again)."""
        self._entries, self._metadata = dict(snapshot[0]), dict(snapshot[1])
        self.version += 1


def _name_of(entry: Any) -> str:
    fields = getattr(entry, "model_fields", None)
    if fields and "kind" in fields and isinstance(fields["kind"].default, str):
        return fields["kind"].default
    name = getattr(entry, "__name__", None)
    if not isinstance(name, str) or name == "<lambda>":
        raise GraphError(f"cannot tell the name of {entry!r}: register it with name=...")
    return name
