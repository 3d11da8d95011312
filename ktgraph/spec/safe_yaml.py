"""YAML read once, safely and within limits: a file size, what aliases expand to, a nesting depth.

PyYAML's own composer recurses once per nesting level (a deep file ends in a RecursionError) and
does not count what aliases stand for (six hundred bytes of anchors can stand for a billion
values, which every later pass would walk). Here the node tree is built from the parser's events
in a loop, each node's size counted with its aliases expanded, and the first limit crossed is a
:class:`GraphError` naming the line. The C parser is used when PyYAML has it; only the safe
constructor ever builds values, so no tag can import or call code.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import yaml
from yaml import events
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import GraphError

LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SIZE_VARIABLE = "KTGRAPH_MAX_YAML_BYTES"


@dataclass(frozen=True)
class YamlLimits:
    """The most a graph file may hold; ``max_bytes`` can be raised with ``KTGRAPH_MAX_YAML_BYTES``."""

    max_bytes: int = 1_000_000
    max_values: int = 100_000  # scalars and collections, each alias counted as what it stands for
    max_depth: int = 64

    @classmethod
    def from_environment(cls) -> YamlLimits:
        text = os.environ.get(SIZE_VARIABLE, "").strip()
        if not text:
            return cls()
        if not text.isdigit() or int(text) < 1:
            raise GraphError(f"`{text}` is not a number of bytes", file=f"environment variable {SIZE_VARIABLE}",
                             expected="a whole number of bytes, e.g. 5000000")
        return cls(max_bytes=int(text))


def too_large(size: int, file: str, limits: YamlLimits) -> GraphError:
    return GraphError(f"the file is {size:,} bytes, over the limit of {limits.max_bytes:,} bytes for graph files",
                      file=file, suggestion=f"a graph file is a few kB; to read a larger one, set "
                                            f"{SIZE_VARIABLE}={size} in the environment")


def load_limited(text: str, file: str, limits: YamlLimits | None = None) -> tuple[Any, Node | None]:
    """The document's values and its node tree (None for an empty document), read once.

    Syntax errors are PyYAML's ``MarkedYAMLError``; crossing a limit is a located GraphError.
    """
    limits = limits or YamlLimits.from_environment()
    if len(text) > limits.max_bytes:
        raise too_large(len(text.encode("utf-8")), file, limits)
    loader = LOADER(text)
    try:
        node = _Composer(loader, file, limits).document()
        return (loader.construct_document(node) if node is not None else None), node
    finally:
        loader.dispose()


class _Composer:
    """Nodes from parser events, with a stack instead of recursion."""

    def __init__(self, loader: Any, file: str, limits: YamlLimits) -> None:
        self.loader, self.file, self.limits = loader, file, limits
        self.anchors: dict[str, Node] = {}
        self.sizes: dict[int, int] = {}  # id(node) -> values it stands for, once the node is complete
        self.aliased = False

    def error(self, message: str, mark: Any, **fields: str) -> GraphError:
        return GraphError(message, file=self.file, line=mark.line + 1 if mark else None,
                          column=mark.column + 1 if mark else None, **fields)

    def document(self) -> Node | None:
        loader = self.loader
        loader.get_event()  # stream start
        if loader.check_event(events.StreamEndEvent):
            return None
        loader.get_event()  # document start
        root = self._compose()
        loader.get_event()  # document end
        if not loader.check_event(events.StreamEndEvent):
            raise self.error("the file holds more than one YAML document", loader.peek_event().start_mark,
                             suggestion="remove the `---` line: a graph file is one document")
        return root

    def _compose(self) -> Node:
        stack: list[list[Any]] = []  # [node, size, key waiting for its value]
        while True:
            event = self.loader.get_event()
            if isinstance(event, (events.SequenceStartEvent, events.MappingStartEvent)):
                kind = SequenceNode if isinstance(event, events.SequenceStartEvent) else MappingNode
                node = kind(self._tag(kind, event, None), [], event.start_mark, None, flow_style=event.flow_style)
                self._anchor(event, node)
                stack.append([node, 1, None])
                if len(stack) > self.limits.max_depth:
                    raise self.error(f"the values are nested more than {self.limits.max_depth} levels deep",
                                     event.start_mark, expected="a graph file nests a few levels of sections")
                continue
            if isinstance(event, (events.SequenceEndEvent, events.MappingEndEvent)):
                node, size, _ = stack.pop()
                node.end_mark = event.end_mark
                self.sizes[id(node)] = size
            elif isinstance(event, events.AliasEvent):
                if event.anchor not in self.anchors:
                    raise self.error(f"alias `*{event.anchor}` names no anchor defined before it", event.start_mark,
                                     suggestion=f"define `&{event.anchor}` on an earlier value")
                node = self.anchors[event.anchor]
                if id(node) not in self.sizes:
                    raise self.error(f"alias `*{event.anchor}` is inside the value it refers to", event.start_mark,
                                     expected="aliases to complete values (no value can contain itself)")
                size = self.sizes[id(node)]
                self.aliased = True
            elif isinstance(event, events.ScalarEvent):
                node = ScalarNode(self._tag(ScalarNode, event, event.value), event.value, event.start_mark,
                                  event.end_mark, style=event.style)
                self._anchor(event, node)
                size = self.sizes[id(node)] = 1
            else:  # the parser yields nothing else inside a document
                raise self.error(f"unexpected YAML event {type(event).__name__}", event.start_mark)
            if not stack:
                return node
            self._attach(stack[-1], node, size, event.start_mark)

    def _attach(self, parent: list[Any], node: Node, size: int, mark: Any) -> None:
        parent[1] += size
        if parent[1] > self.limits.max_values:
            if not self.aliased:
                raise self.error(f"the file holds more than {self.limits.max_values:,} values", mark,
                                 expected="a graph file of a few hundred values")
            raise self.error(f"the file stands for more than {self.limits.max_values:,} values once its aliases "
                             "are expanded", mark, expected="aliases that repeat a value a few times",
                             suggestion="write the repeated values out, or use fewer nested aliases")
        collection = parent[0]
        if isinstance(collection, SequenceNode):
            collection.value.append(node)
        elif parent[2] is None:
            parent[2] = node
        else:
            collection.value.append((parent[2], node))
            parent[2] = None

    def _anchor(self, event: Any, node: Node) -> None:
        if event.anchor is None:
            return
        if event.anchor in self.anchors:
            raise self.error(f"anchor `&{event.anchor}` is defined twice", event.start_mark,
                             suggestion="give each anchor its own name")
        self.anchors[event.anchor] = node

    def _tag(self, kind: type, event: Any, value: str | None) -> str:
        if event.tag is not None and event.tag != "!":
            return event.tag
        return self.loader.resolve(kind, value, event.implicit)
