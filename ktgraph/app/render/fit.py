"""SVG text that keeps to the room the layout gave it, whatever font the viewer draws it in.

Graphviz lays text out with Helvetica's widths, but an SVG names a font and leaves the choice to the
viewer: one without Helvetica (or Arial, which has the same widths) draws a wider font, and then a
title runs off the left edge, legend text out of its box and two edge labels into each other. So every
``<text>`` states the width it was laid out at (``textLength``; a viewer squeezes or stretches its font
to it), and the font list names Helvetica's metric twins before the generic family.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

# Fonts with Helvetica's character widths, in the order a viewer should try them.
FONT_FAMILY = "Helvetica,Arial,Liberation Sans,Arimo,Nimbus Sans,sans-serif"
_TEXT = re.compile(r'<text ([^>]*)>([^<]*)</text>')
_ATTR = re.compile(r'([\w:-]+)="([^"]*)"')

Key = tuple[str, str]


def _text_ops(obj: Any) -> Iterator[dict[str, Any]]:
    """Every text-drawing operation in Graphviz's JSON output, at any depth."""
    if isinstance(obj, dict):
        if obj.get("op") == "T":
            yield obj
        for value in obj.values():
            yield from _text_ops(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _text_ops(value)


def _coord(value: float) -> str:
    return f"{round(value, 2) + 0.0:.2f}"  # + 0.0: no "-0.00"


def _point(x: float, y: float) -> Key:
    """A text's anchor point in SVG coordinates; the point, not the text, since the JSON and the
    SVG escape some characters differently."""
    return _coord(x), _coord(y)


def laid_out_widths(layout: dict[str, Any]) -> dict[Key, float]:
    """The width Graphviz gave each piece of text, by its anchor point (``-Tjson`` output, whose y
    grows upwards)."""
    return {_point(op["pt"][0], -op["pt"][1]): float(op["width"]) for op in _text_ops(layout)}


def fit_text(svg: str, widths: dict[Key, float]) -> str:
    """``svg`` with each text held to its laid-out width and drawn in a Helvetica-wide font."""

    def fitted(match: re.Match[str]) -> str:
        attrs = dict(_ATTR.findall(match.group(1)))
        key = _point(float(attrs.get("x", 0)), float(attrs.get("y", 0)))
        if "font-family" in attrs:
            attrs["font-family"] = FONT_FAMILY
        if key in widths and "textLength" not in attrs:
            attrs["textLength"] = f"{widths[key]:.2f}"
            attrs["lengthAdjust"] = "spacingAndGlyphs"
        joined = " ".join(f'{name}="{value}"' for name, value in attrs.items())
        return f"<text {joined}>{match.group(2)}</text>"

    return _TEXT.sub(fitted, svg)
