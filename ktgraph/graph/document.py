"""A graph file as a document: its YAML with the line of every key, overridden and built on demand.

What a search varies is the document, not the resolved graph: each trial is the same file with a
few overrides. The layers above the graph read files through this class and never the language
(:mod:`ktgraph.spec`) itself, so errors keep pointing at the file's lines.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path as FilePath
from typing import Any

from pydantic import BaseModel

from ..errors import GraphError
from ..spec import Source, load_document, read_document
from ..spec.source import apply_override
from ..spec.validate import GraphErrors, validate_section
from .build import build_graph
from .records import KTGraph, Where


@dataclasses.dataclass(frozen=True)
class Document:
    """A parsed graph file (or part of one) and where each of its keys came from."""

    raw: dict[str, Any]
    source: Source

    @classmethod
    def read(cls, path: str | FilePath) -> Document:
        raw, source = read_document(path)
        if not isinstance(raw, dict):
            raise source.locate(GraphError("a graph file must be a mapping of sections",
                                           expected="top-level keys such as networks, links, data, train"))
        return cls(raw, source)

    def overridden(self, overrides: list[str] | tuple[str, ...]) -> Document:
        """A copy with ``key=value`` overrides applied (checked when the copy is built); this one is unchanged."""
        copied = Document(copy.deepcopy(self.raw),
                          dataclasses.replace(self.source, overrides=dict(self.source.overrides)))
        for assignment in overrides:
            apply_override(copied.raw, assignment, copied.source)
        return copied

    def without(self, key: str) -> Document:
        return Document({k: v for k, v in self.raw.items() if k != key}, self.source)

    def build(self) -> KTGraph:
        """The resolved graph (a copy of the document is validated: building never changes this one)."""
        return build_graph(load_document(copy.deepcopy(self.raw), self.source))

    def locate(self, err: GraphError) -> GraphError:
        return self.source.locate(err)

    def check(self, model: type[BaseModel], where: Where) -> Any:
        """The section at ``where`` validated against ``model``, errors located in the file."""
        data: Any = self.raw
        for part in where:
            data = data[part]
        try:
            return validate_section(model, data, where)
        except GraphErrors as found:
            raise GraphErrors([self.locate(err) for err in found.errors]) from None
        except GraphError as err:
            raise self.locate(err) from None
