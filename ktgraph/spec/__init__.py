"""The graph language: schema (built from the registries), safe loading, overrides, opt-in imports."""
from .loader import LoadedGraph, load_document, load_spec, read_document
from .schema import GraphSpec, graph_schema
from .source import Source, parse_yaml
from .validate import validate

__all__ = ["GraphSpec", "LoadedGraph", "Source", "graph_schema", "load_document", "load_spec", "parse_yaml",
           "read_document", "validate"]
