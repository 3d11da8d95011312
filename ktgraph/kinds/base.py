"""What every registered unit (gate, link kind, aggregator) shares.

A unit is one small class: its pydantic fields are its config (written in a graph file next
to ``kind:``), its methods its computation, its formula for ``ktgraph plan`` and its drawing
style. Units are frozen, so a resolved graph can hold them as plain values.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import ConfigDict
from pydantic_core import PydanticCustomError

from ..config import Strict, unknown_field
from ..errors import closest, did_you_mean
from ..registry import Registry

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class EpochInfo:
    """Where training is when a lifecycle hook runs (epochs count from 0 within the stage)."""

    stage: str
    stage_index: int
    epoch: int
    epochs: int


class HeldOut(Protocol):
    """The held-out (validation) split, as the input records of one unit."""

    def batches(self) -> Iterator[Any]: ...


class Unit(Strict):
    """A registered kind; subclasses declare ``kind: Literal["name"] = "name"``."""

    model_config = ConfigDict(frozen=True)
    family: ClassVar[str] = "kind"
    registry: ClassVar[Registry[Any]]

    @classmethod
    def _unknown_field(cls, key: str, known: set[str]) -> PydanticCustomError:
        """A field of another kind of the same family says which kinds take it, and a misspelling of
        one (with no close field of this kind) names it and its kinds: the user may have the wrong kind."""
        here = cls.model_fields.get("kind")
        registry = getattr(cls, "registry", None)
        if here is None or registry is None:
            return super()._unknown_field(key, known)
        kind = str(here.default)
        others = {name: set(registry[name].model_fields) - {"kind"} for name in registry if name != kind}

        def owners_of(field: str) -> list[str]:
            return [name for name, fields in others.items() if field in fields]

        owners = owners_of(key)
        context = {"field": key, "family": cls.family, "kind": kind}
        if owners:
            switch = f"`kind: {owners[0]}`" if len(owners) == 1 else "`kind:` " + " or ".join(owners)
            return PydanticCustomError(
                "unknown_field", "`{field}` applies to the {owners} {family} only, not `{kind}`",
                {**context, "owners": " and ".join(owners), "expected": ", ".join(sorted(known - {"kind"})),
                 "suggestion": f"set {switch}, or leave `{key}` out"})
        near = [] if did_you_mean(key, known) else closest(key, set().union(*others.values()))
        if near:
            hint = (f"did you mean `{near[0]}`? It is a field of the {' and '.join(owners_of(near[0]))} "
                    f"{cls.family}, not of `{kind}`")
            return unknown_field(key, known, hint)
        return super()._unknown_field(key, known)

    # --- lifecycle hooks (the trainer calls them; the defaults do nothing) ------------------------------
    def on_epoch_start(self, module: nn.Module | None, epoch: EpochInfo) -> None:
        """Called before each training epoch with the unit's module (None when it has none)."""

    def on_epoch_end(self, module: nn.Module | None, epoch: EpochInfo, heldout: HeldOut | None) -> None:
        """Called after each training epoch; ``heldout`` reads the validation split (None without one)."""

    @classmethod
    def has_hooks(cls) -> bool:
        return cls.on_epoch_start is not Unit.on_epoch_start or cls.on_epoch_end is not Unit.on_epoch_end
