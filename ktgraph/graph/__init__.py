"""The resolved knowledge-transfer graph (names checked, shorthands expanded)."""
from .build import Aggregator, KTGraph, Link, Network, Path, build_graph, junction_key
from .refs import ALL, LABEL, Ref

__all__ = ["ALL", "LABEL", "Aggregator", "KTGraph", "Link", "Network", "Path", "Ref", "build_graph",
           "junction_key"]
