"""Typed identities of the modules a graph has: segments, adapters, aggregators and regressors.

An identity is structural, never a string to parse: a segment is (network, part), an adapter
the junction of two segments, a regressor the two values a mimic link joins. ``str()`` is how
people read it (``net1.up``, ``net1.up>net2.down``); ``key`` is its name in a state dict, the
same for every graph that has the module (link names never enter it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


class _Id:
    @property
    def key(self) -> str:
        """Its name in a state dict (ModuleDict keys cannot hold dots)."""
        return str(self).replace(".", ":")


class _OfNoNetwork(_Id):
    network: ClassVar[None] = None  # no network's freeze reaches it


@dataclass(frozen=True, order=True)
class SegmentId(_Id):
    network: str
    part: str

    def __str__(self) -> str:
        return f"{self.network}.{self.part}"


@dataclass(frozen=True, order=True)
class AdapterId(_OfNoNetwork):
    """The adapter at a junction: ``up``'s output made to fit ``down``'s input."""

    up: SegmentId
    down: SegmentId

    def __str__(self) -> str:
        return f"{self.up}>{self.down}"


@dataclass(frozen=True, order=True)
class AggregatorId(_OfNoNetwork):
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, order=True)
class RegressorId(_OfNoNetwork):
    """The regressor of a mimic link: maps the ``target`` node's value to the ``source`` node's shape."""

    target: str
    source: str

    def __str__(self) -> str:
        return f"regressor({self.target}->{self.source})"

    @property
    def key(self) -> str:
        return f"{self.target}>{self.source}".replace(".", ":")


ModuleId = SegmentId | AdapterId | AggregatorId | RegressorId
"""Whatever owns parameters: what a link trains and what a plan step runs."""


def network_of(owner: ModuleId) -> str | None:
    """The network an owner belongs to; None for adapters, aggregators and regressors."""
    return owner.network


def by_name(owners: frozenset[ModuleId] | set[ModuleId]) -> list[ModuleId]:
    """Owners in a stable order for printing and iterating (by their readable names)."""
    return sorted(owners, key=str)
