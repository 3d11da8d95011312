"""The graph language: schema, safe loading and command-line overrides."""
from .loader import LoadedGraph, Source, load_spec, parse_yaml, validate
from .schema import GraphSpec

__all__ = ["GraphSpec", "LoadedGraph", "Source", "load_spec", "parse_yaml", "validate"]
