"""``base:``: a graph file written on top of another file's sections (a shared training recipe).

The bundled method files share one recipe (data, optimiser, schedule, epochs) so that two methods
differ only in their graph, as mmengine's ``_base_`` configs share theirs. The base is read as
safely as the file; the file's own values win mapping by mapping, and a list replaces the base's
list whole. A base names no base of its own: a recipe is always one file away from the graph.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import GraphError, did_you_mean
from .safe_yaml import YamlLimits, too_large
from .source import Source, parse_yaml

BASE = "base"


def read_text(path: Path, limits: YamlLimits) -> str:
    """A graph file's text, or a located error saying why it cannot be read."""
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:  # said before reading it
            raise too_large(size, str(path), limits)
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        data = path.read_bytes()
        line = data[: err.start].count(b"\n") + 1
        raise GraphError(f"the file is not UTF-8 text (byte {data[err.start]:#04x})", file=str(path), line=line,
                         suggestion="save the graph file as UTF-8") from None
    except OSError as err:
        raise GraphError(f"cannot read the graph file: {err.strerror or err}", file=str(path)) from None


def with_base(raw: Any, source: Source, limits: YamlLimits) -> Any:
    """The document with its ``base:`` file's sections under its own; where each field came from is
    kept (``source.bases``), so an error in a field the base gives names the base file's line."""
    if not isinstance(raw, dict) or BASE not in raw:
        return raw
    name = raw.pop(BASE)
    if not isinstance(name, str) or not name.strip():
        raise source.locate(GraphError("`base` names the file this graph builds on", where=(BASE,),
                                       expected="a path relative to this file, e.g. `base: recipes/digits.yaml`"))
    path = Path(source.file).parent / name
    if not path.is_file():
        folder = path.parent
        near = did_you_mean(path.name, [p.name for p in folder.glob("*.y*ml")]) if folder.is_dir() else ""
        raise source.locate(GraphError(f"base file `{name}` does not exist (looked for {path})", where=(BASE,),
                                       suggestion=near or "give a path relative to this graph file"))
    base, base_source = parse_yaml(read_text(path, limits), str(path), limits)
    if not isinstance(base, dict):
        raise GraphError("a base file holds sections (`data:`, `train:`, ...)", file=str(path),
                         expected="a mapping of sections")
    if BASE in base:
        raise base_source.locate(GraphError("a base file cannot name a base of its own", where=(BASE,),
                                            suggestion=f"copy what it needs into {path.name}"))
    source.bases.append(base_source)
    return _merged(base, raw)


def _merged(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in own.items():
        below = merged.get(key)
        merged[key] = _merged(below, value) if isinstance(below, dict) and isinstance(value, dict) else value
    return merged
