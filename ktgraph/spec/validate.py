"""Validating a raw graph document against the schema, every problem located in the file."""
from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import GraphError, did_you_mean
from .schema import GraphSpec, graph_schema
from .source import Loc, Source

Model = TypeVar("Model", bound=BaseModel)


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


def convert_errors(exc: ValidationError, raw: Any) -> list[GraphError]:
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
            expected = f"one of the fields {ctx['expected']}" if ctx["expected"] else ""
            suggestion = ctx["suggestion"]
        elif kind == "unknown_choice":
            expected, suggestion = ctx["expected"], ctx["suggestion"]
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
    return validate_located(graph_schema(), raw, source)


def validate_located(model: type[Model], raw: Any, source: Source) -> Model:
    """A whole YAML document (a graph file, a suite file) checked against ``model``, every problem on its line."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise joined([source.locate(e) for e in convert_errors(exc, raw)]) from None


def validate_section(model: type[BaseModel], data: Any, where: Loc) -> Any:
    """One section checked against its own model; errors carry ``where`` before their field path."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = convert_errors(exc, data)
        for err in errors:
            err.where = where + err.where
        raise joined(errors) from None


def joined(errors: list[GraphError]) -> GraphError:
    """One error to raise for ``errors``: the error itself when there is one."""
    return errors[0] if len(errors) == 1 else GraphErrors(errors)
