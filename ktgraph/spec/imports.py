"""Opt-in imports of user Python (custom models registered with ``@register_model``).

A graph file may list modules under ``imports:``; they are imported only when the user
passes ``--allow-imports`` (or ``allow_imports=True``), never just because a file says so.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from ..errors import GraphError
from .loader import LoadedGraph


def import_user_modules(loaded: LoadedGraph, allow: bool) -> None:
    imports = loaded.spec.imports
    if not imports:
        return
    if not allow:
        raise loaded.source.locate(GraphError(
            f"this graph imports Python code ({', '.join(imports)}), which is off by default",
            where=("imports",), suggestion="rerun with --allow-imports if you trust these modules"))
    base = Path(loaded.source.file).resolve().parent
    for index, name in enumerate(imports):
        try:
            if name.endswith(".py"):
                file = (base / name).resolve()
                spec = importlib.util.spec_from_file_location(file.stem, file)
                if spec is None or spec.loader is None or not file.is_file():
                    raise ImportError(f"no file {file}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[file.stem] = module
                spec.loader.exec_module(module)
            else:
                sys.path.insert(0, str(base))
                try:
                    importlib.import_module(name)
                finally:
                    sys.path.remove(str(base))
        except ImportError as err:
            raise loaded.source.locate(GraphError(f"cannot import `{name}`: {err}", where=("imports", index),
                                                  expected="a module name or a .py file next to the graph")) from None
