"""Reading a graph file's YAML safely, keeping the line of every field for error messages.

YAML is read once, with PyYAML's safe constructor only (no tags that import or call code) and
within limits on size, alias expansion and depth (:mod:`ktgraph.spec.safe_yaml`). Command-line
overrides (``train.epochs=200``) are applied to the raw document before validation, so they
are checked exactly like the file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import GraphError
from .safe_yaml import YamlLimits, load_limited

Loc = tuple[str | int, ...]


@dataclass
class Source:
    """Where each field of a document came from: file lines, a ``base:`` file's lines, or a
    command-line override."""

    file: str
    lines: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    overrides: dict[Loc, str] = field(default_factory=dict)
    bases: list[Source] = field(default_factory=list)

    def locate(self, err: GraphError) -> GraphError:
        """Fill the file/line of ``err`` from its field path (the nearest known ancestor)."""
        if err.file is not None:
            return err
        loc = tuple(err.where)
        for cut in range(len(loc), -1, -1):
            prefix = loc[:cut]
            if prefix in self.overrides:
                err.file = f"command-line override `{self.overrides[prefix]}`"
                return err
            for origin in (self, *self.bases):  # the file's own line first: its values win
                if prefix in origin.lines:
                    err.file = origin.file
                    err.line, err.column = origin.lines[prefix]
                    return err
        err.file = self.file
        return err


def _walk(node: yaml.Node, loc: Loc, source: Source) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if key == "<<":
                continue
            here = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key in seen:
                raise GraphError(f"key `{key}` appears twice (first on line {seen[key]})",
                                 where=loc + (key,), file=source.file, line=here[0], column=here[1])
            seen[key] = here[0]
            source.lines[loc + (key,)] = here
            _walk(value_node, loc + (key,), source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            source.lines[loc + (index,)] = (item.start_mark.line + 1, item.start_mark.column + 1)
            _walk(item, loc + (index,), source)


def _yaml_hint(problem: str) -> str:
    """A fix for the usual causes of a YAML syntax error."""
    if "'\\t'" in problem:
        return "indent with spaces, not tabs"
    if "mapping values are not allowed" in problem:
        return "put a space after each `key:`, and quote values that contain `: `"
    if "expected ',' or ']'" in problem or "expected ',' or '}'" in problem or "flow" in problem:
        return "close every `[` with `]` and every `{` with `}`, and separate items with commas"
    if "block end" in problem or "indentation" in problem or "could not find expected ':'" in problem:
        return "indent this line like the other keys at its level (spaces only), and end each key with `:`"
    if "quoted scalar" in problem:
        return "close the quote on this line"
    return "check indentation, colons and quotes on this line"


def parse_yaml(text: str, file: str, limits: YamlLimits | None = None) -> tuple[Any, Source]:
    """Parse YAML safely, keeping the line of every key; syntax errors name line and column."""
    source = Source(file=file)
    try:
        data, node = load_limited(text, file, limits)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark or exc.context_mark
        if "constructor for the tag" not in str(exc.problem):  # an unhashable key, say
            raise GraphError(f"YAML error: {exc.problem}", file=file, line=mark.line + 1 if mark else None,
                             column=mark.column + 1 if mark else None,
                             expected="keys that are plain text or numbers") from None
        raise GraphError(f"YAML tag not allowed: {exc.problem}", file=file,
                         line=mark.line + 1 if mark else None, column=mark.column + 1 if mark else None,
                         expected="plain YAML values (graph files are read without tags that build objects)",
                         suggestion="remove the `!!` tag") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise GraphError(f"YAML syntax error: {exc.problem or exc.context}",
                         file=file, line=mark.line + 1 if mark else None,
                         column=mark.column + 1 if mark else None,
                         suggestion=_yaml_hint(str(exc.problem or exc.context))) from None
    except yaml.YAMLError as exc:
        raise GraphError(f"YAML error: {exc}", file=file) from None
    if node is not None:
        source.lines[()] = (node.start_mark.line + 1, node.start_mark.column + 1)
        _walk(node, (), source)
    return data, source


def apply_override(raw: dict[str, Any], assignment: str, source: Source) -> None:
    """Apply one ``dotted.key=value`` override; the value is read as a YAML scalar or list."""
    if "=" not in assignment:
        raise GraphError(f"override `{assignment}` is not of the form key=value",
                         file="command line", expected="dotted.key=value, e.g. train.epochs=200")
    key, _, text = assignment.partition("=")
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise GraphError(f"override `{assignment}` has an empty key part", file="command line")
    limits = YamlLimits.from_environment()
    if len(parts) > limits.max_depth:
        raise GraphError(f"override `{assignment}`: the key has more than {limits.max_depth} parts",
                         file="command line")
    try:
        value = load_limited(text, f"command-line override `{assignment}`", limits)[0] if text.strip() else None
    except yaml.YAMLError:
        value = text
    node: Any = raw
    loc: Loc = ()
    for part in parts[:-1]:
        step: str | int = int(part) if isinstance(node, list) and part.isdigit() else part
        if isinstance(node, dict):
            node = node.setdefault(step, {})
        elif isinstance(node, list) and isinstance(step, int) and step < len(node):
            node = node[step]
        elif isinstance(node, list):
            raise GraphError(f"override `{assignment}`: `{'.'.join(map(str, loc))}` has {len(node)} entries, "
                             f"so `{step}` is not one of them", file="command line",
                             expected=f"an index from 0 to {len(node) - 1}" if node else "a list with entries")
        else:
            raise GraphError(f"override `{assignment}`: `{'.'.join(map(str, loc + (step,)))}` is not a section",
                             file="command line")
        loc += (step,)
    last: str | int = int(parts[-1]) if isinstance(node, list) and parts[-1].isdigit() else parts[-1]
    if isinstance(node, list) and isinstance(last, int) and last < len(node):
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list):
        raise GraphError(f"override `{assignment}`: `{'.'.join(map(str, loc))}` has {len(node)} entries, "
                         f"so `{parts[-1]}` is not one of them", file="command line",
                         expected=f"an index from 0 to {len(node) - 1}" if node else "a list with entries")
    else:
        raise GraphError(f"override `{assignment}`: cannot set `{parts[-1]}` here", file="command line")
    source.overrides[loc + (last,)] = assignment
