"""Safe loading of graph files, with the line of every field kept for error messages.

YAML is read with PyYAML's SafeLoader only (no tags that import or call code).
Command-line overrides (``train.epochs=200``) are applied to the raw document before
validation, so they are checked exactly like the file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import GraphError, did_you_mean
from .schema import GraphSpec

Loc = tuple[str | int, ...]


@dataclass
class Source:
    """Where each field of a document came from: file lines, or a command-line override."""

    file: str
    lines: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    overrides: dict[Loc, str] = field(default_factory=dict)

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
            if prefix in self.lines:
                err.file = self.file
                err.line, err.column = self.lines[prefix]
                return err
        err.file = self.file
        return err


@dataclass
class LoadedGraph:
    """A validated graph spec together with where it came from."""

    spec: GraphSpec
    source: Source
    raw: dict[str, Any]


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


def parse_yaml(text: str, file: str) -> tuple[Any, Source]:
    """Parse YAML safely, keeping the line of every key; syntax errors name line and column."""
    source = Source(file=file)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark or exc.context_mark
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
    try:
        value = yaml.safe_load(text) if text.strip() else None
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


def _data_loc(raw: Any, loc: tuple[Any, ...]) -> Loc:
    """Map a pydantic error location onto the document path (dropping union tags)."""
    out: list[str | int] = []
    node = raw
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
            out.append(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            out.append(part)
    return tuple(out)


_EXPECTED = {
    "bool_parsing": "true or false", "bool_type": "true or false",
    "int_parsing": "a whole number", "int_type": "a whole number", "int_from_float": "a whole number",
    "float_parsing": "a number", "float_type": "a number", "finite_number": "a finite number",
    "string_type": "text (quote it if it looks like a number or true/false)",
    "dict_type": "a mapping of `key: value` entries", "model_type": "a mapping of `key: value` fields",
    "model_attributes_type": "a mapping of `key: value` fields",
    "list_type": "a list: `[a, b]` or one `- item` per line", "tuple_type": "a list: `[a, b]`",
}


def _convert(exc: ValidationError, raw: Any) -> list[GraphError]:
    errors = []
    for item in exc.errors(include_url=False):
        loc = _data_loc(raw, item["loc"])
        kind = item["type"]
        ctx = item.get("ctx") or {}
        given = item.get("input")
        message = item["msg"].removeprefix("Value error, ")
        expected = suggestion = ""
        if kind == "unknown_field":
            loc = loc + (ctx["field"],)
            expected = f"one of the fields {ctx['expected']}"
            suggestion = ctx["suggestion"]
        elif kind == "missing":
            message = f"required field `{item['loc'][-1]}` is missing"
        elif kind in ("literal_error", "enum"):
            choices = [c.strip().strip("'") for c in str(ctx.get("expected", "")).replace(" or ", ",").split(",")]
            message = f"`{given}` is not allowed"
            expected = "one of " + ", ".join(c for c in choices if c)
            suggestion = did_you_mean(str(given), choices)
        elif kind == "union_tag_invalid":
            loc = loc + ("kind",) if isinstance(given, dict) and "kind" in given else loc
            tags = [t.strip().strip("'") for t in str(ctx.get("expected_tags", "")).split(",")]
            message = f"unknown kind `{ctx.get('tag')}`"
            expected = "kind one of " + ", ".join(tags)
            suggestion = did_you_mean(str(ctx.get("tag")), tags)
        elif kind == "union_tag_not_found":
            message = "this entry needs a `kind` field"
            expected = str(ctx.get("expected_tags", ""))
        elif kind == "string_pattern_mismatch":
            message = f"`{given}` is not a valid name"
            expected = "letters, digits and underscores, not starting with a digit"
        elif kind in ("model_type", "model_attributes_type", "dict_type") and not isinstance(given, dict):
            message = f"expected a mapping here, got {_describe(given)}"
            expected = _EXPECTED[kind]
        elif kind in ("list_type", "tuple_type") and not isinstance(given, (list, tuple)):
            message = f"expected a list here, got {_describe(given)}"
            expected = _EXPECTED[kind]
        elif given is not None and not isinstance(given, (dict, list)):
            message = f"{message} (got {given!r})"
            expected = _EXPECTED.get(kind, "")
        if kind == "value_error" and isinstance(given, dict):
            # A validator of a whole section whose message names one of its keys: point at that key.
            named = [k for k in given if isinstance(k, str) and f"`{k}`" in message]
            if len(named) == 1 and loc + (named[0],) == _data_loc(raw, loc + (named[0],)):
                loc = loc + (named[0],)
        errors.append(GraphError(message, where=loc, expected=expected, suggestion=suggestion))
    return errors


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return f"{type(value).__name__} {value!r}"


class GraphErrors(GraphError):
    """Several problems in one file, reported together."""

    def __init__(self, errors: list[GraphError]) -> None:
        super().__init__(errors[0].message)
        self.errors = errors
        first = errors[0]
        self.where, self.file, self.line, self.column = first.where, first.file, first.line, first.column

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


def validate(raw: Any, source: Source) -> GraphSpec:
    """Validate a raw document against the schema; every problem located in the file."""
    if not isinstance(raw, dict):
        raise source.locate(GraphError("a graph file must be a mapping of sections",
                                       expected="top-level keys such as networks, links, data, train"))
    try:
        return GraphSpec.model_validate(raw)
    except ValidationError as exc:
        errors = [source.locate(e) for e in _convert(exc, raw)]
        raise (errors[0] if len(errors) == 1 else GraphErrors(errors)) from None


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LoadedGraph:
    """Read, override and validate a graph file (references are checked by ``build_graph``)."""
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
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        data = path.read_bytes()
        line = data[: err.start].count(b"\n") + 1
        raise GraphError(f"the file is not UTF-8 text (byte {data[err.start]:#04x})", file=str(path), line=line,
                         suggestion="save the graph file as UTF-8") from None
    except OSError as err:
        raise GraphError(f"cannot read the graph file: {err.strerror or err}", file=str(path)) from None
    raw, source = parse_yaml(text, str(path))
    if raw is None:
        raise GraphError("the graph file is empty", file=str(path),
                         expected="at least `networks:` and `links:` sections (see graphs/*.yaml)")
    if isinstance(raw, dict):
        for assignment in overrides:
            apply_override(raw, assignment, source)
    return LoadedGraph(spec=validate(raw, source), source=source, raw=raw)
