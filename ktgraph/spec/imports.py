"""Opt-in imports of user Python: models, gates, link kinds, aggregators registered from a file.

A graph file may list modules under ``imports:``; they are imported only when the user passes
``--allow-imports`` (or ``allow_imports=True``), never just because a file says so. They are
imported before the file is validated, so what they register can be used in the same file.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from ..errors import GraphError
from .source import Source


def import_user_modules(raw: dict[str, Any], source: Source, allow: bool) -> None:
    imports = raw.get("imports")
    if not imports or not isinstance(imports, list) or not all(isinstance(name, str) for name in imports):
        return  # nothing to import, or not a list of names: validation reports it
    if not allow:
        raise source.locate(GraphError(
            f"this graph imports Python code ({', '.join(imports)}), which is off by default",
            where=("imports",), suggestion="rerun with --allow-imports if you trust these modules"))
    base = Path(source.file).resolve().parent
    for index, name in enumerate(imports):
        try:
            if name.endswith(".py"):
                _import_file((base / name).resolve())
            else:
                sys.path.insert(0, str(base))
                try:
                    importlib.import_module(name)
                finally:
                    sys.path.remove(str(base))
        except ImportError as err:
            raise source.locate(GraphError(f"cannot import `{name}`: {err}", where=("imports", index),
                                           expected="a module name or a .py file next to the graph")) from None


def _import_file(file: Path) -> None:
    """Import a .py file once per process (a second graph naming it reuses the first import)."""
    name = f"ktgraph_user_{file.stem}_{abs(hash(str(file))):x}"
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None or not file.is_file():
        raise ImportError(f"no file {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
