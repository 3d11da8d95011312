"""Binding: a resolved graph's models built and cut, shapes known, adapters and regressors decided."""
from .bind import BoundGraph, bind
from .modules import GraphModules

__all__ = ["BoundGraph", "GraphModules", "bind"]
