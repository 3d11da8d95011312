"""Loading a graph file: read it safely, apply overrides, run opt-in imports, validate."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import GraphError, did_you_mean
from .base import read_text, with_base
from .imports import import_user_modules
from .safe_yaml import YamlLimits
from .schema import GraphSpec
from .source import Source, apply_override, parse_yaml
from .validate import Model, validate, validate_located


@dataclass
class LoadedGraph:
    """A validated graph spec together with where it came from."""

    spec: GraphSpec
    source: Source
    raw: dict[str, Any]


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = (), *,
              allow_imports: bool = False) -> LoadedGraph:
    """Read, override and validate a graph file (references are checked by ``build_graph``).

    A ``base:`` file's sections come first, under the file's own (:mod:`ktgraph.spec.base`).

    Its ``imports:`` run first when ``allow_imports`` is true (else they are an error), so what
    they register is part of the schema the file is checked against.
    """
    raw, source = read_document(path)
    return load_document(raw, source, overrides, allow_imports=allow_imports)


def read_document(path: str | Path) -> tuple[Any, Source]:
    """A graph file's YAML, read safely with the line of every key; nothing is validated yet."""
    path = Path(path)
    if path.is_dir():
        raise GraphError(f"`{path}` is a folder, not a graph file", file=str(path),
                         expected="a .yaml graph file",
                         suggestion="graph files there: " + ", ".join(sorted(p.name for p in path.glob("*.y*ml"))[:5])
                         if any(path.glob("*.y*ml")) else "")
    if not path.is_file():
        raise GraphError(f"no such graph file: {path}", file=str(path),
                         suggestion=did_you_mean(path.name, [p.name for p in path.parent.glob("*.y*ml")])
                         if path.parent.is_dir() else "")
    limits = YamlLimits.from_environment()
    text = read_text(path, limits)
    raw, source = parse_yaml(text, str(path), limits)
    raw = with_base(raw, source, limits)
    if raw is None:
        raise GraphError("the graph file is empty", file=str(path),
                         expected="at least `networks:` and `links:` sections (see graphs/*.yaml)")
    return raw, source


def load_document(raw: Any, source: Source, overrides: list[str] | tuple[str, ...] = (), *,
                  allow_imports: bool = False) -> LoadedGraph:
    """Override, import and validate a parsed document (``parse_yaml``'s result)."""
    if isinstance(raw, dict):
        for assignment in overrides:
            apply_override(raw, assignment, source)
        import_user_modules(raw, source, allow_imports)
    spec = validate(raw, source)
    _warn_shadowed_defaults(spec, source)
    return LoadedGraph(spec=spec, source=source, raw=raw)


def _warn_shadowed_defaults(spec: GraphSpec, source: Source) -> None:
    """``train.epochs``, ``train.optimizer.*`` and ``train.schedule.*`` are defaults of the stages: an override
    of one that some stage replaces says so (a stage's own value is the file's choice; the override does not
    replace it)."""
    for key, assignment in source.overrides.items():
        if key == ("train", "epochs"):
            own = [(f"stages.{i}.epochs", stage.name, stage.epochs) for i, stage in enumerate(spec.stages)
                   if stage.epochs is not None]
        elif len(key) == 3 and key[:2] in (("train", "optimizer"), ("train", "schedule")):
            section, name = key[1], getattr(spec.train, key[1]).name
            own = [(f"stages.{i}.{section}.{key[2]}", stage.name, getattr(stage, section).get(key[2], "its default"))
                   for i, stage in enumerate(spec.stages)
                   if key[2] in getattr(stage, section) or getattr(stage, section).get("name", name) != name]
        else:
            continue
        if own:
            value = assignment.partition("=")[2]
            fields = ", ".join(f"`{field}` ({stage}: {theirs})" for field, stage, theirs in own)
            warnings.warn(f"override `{assignment}` is the default of stages without their own `{key[-1]}`; these keep "
                          f"theirs: {fields}\n  hint: override them instead, e.g. "
                          + " ".join(f"{field}={value}" for field, _, _ in own), stacklevel=3)


def load_model_file(path: Path, model: type[Model], *, what: str, expected: str) -> tuple[Model, Source]:
    """Another YAML file of the language (a benchmark suite) read as safely as a graph file and
    validated against ``model``, every problem located on its line."""
    limits = YamlLimits.from_environment()
    raw, source = parse_yaml(read_text(path, limits), str(path), limits)
    if not isinstance(raw, dict):
        raise GraphError(f"{what} is a mapping", file=str(path), expected=expected)
    return validate_located(model, raw, source), source
