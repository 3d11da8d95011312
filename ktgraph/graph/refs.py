"""What a name in a graph file can point at, once resolved."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ALL = "all"
LABEL = "label"


@dataclass(frozen=True)
class Ref:
    """A value a link or aggregator reads.

    ``logits``: the output of path ``name``; ``feature``: the output of segment
    ``name`` (``net.part``) on its own network's path; ``aggregate``: output ``name``
    of an aggregator (``agg`` or ``agg.input``); ``label``: the ground truth.
    """

    kind: Literal["logits", "feature", "aggregate", "label"]
    name: str

    @property
    def predicts(self) -> bool:
        """Whether this value is class logits (so it can be gated on being correct)."""
        return self.kind in ("logits", "aggregate")

    def __str__(self) -> str:
        return self.name
