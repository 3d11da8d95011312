"""The base of every section of a graph file and of every registered unit's config.

Unknown fields are errors that name the closest field, so a typo can never silently fall
back to a default. The loader (:mod:`ktgraph.spec.loader`) turns the custom errors raised
here into located messages: a ``ctx`` with ``expected`` and ``suggestion`` becomes the
message's ``expected:`` and ``hint:`` lines.
"""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from .errors import did_you_mean

Name = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class Strict(BaseModel):
    """Unknown fields are errors that name the closest field."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
            for key in data:
                if key not in known:
                    raise cls._unknown_field(str(key), known)
        return data

    @classmethod
    def _unknown_field(cls, key: str, known: set[str]) -> PydanticCustomError:
        return unknown_field(key, known)


def unknown_field(key: str, known: set[str], suggestion: str | None = None) -> PydanticCustomError:
    """A key that is none of ``known`` (located like any field error; the hint: ``suggestion``, else the
    closest field)."""
    return PydanticCustomError("unknown_field", "unknown field `{field}`",
                               {"field": key, "expected": ", ".join(sorted(known)),
                                "suggestion": did_you_mean(key, known) if suggestion is None else suggestion})


def choice_error(what: str, name: str, known: list[str]) -> PydanticCustomError:
    """A value that must be one of a registry's names (located like any field error)."""
    return PydanticCustomError("unknown_choice", "unknown {what} `{name}`",
                               {"what": what, "name": name, "expected": "one of " + ", ".join(known),
                                "suggestion": did_you_mean(name, known)})
