"""Where a drawing's text lands, read from the SVG: for tests that text fits its picture, its boxes, its neighbours.

A text's width is what the SVG holds it to (``textLength``); without one, a viewer draws whatever font it
has, so the width is estimated for a wide one: 0.6 em a character (Helvetica averages about 0.5).
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

SVG = "{http://www.w3.org/2000/svg}"
WIDE_EM = 0.6
ASCENT, DESCENT = 0.72, 0.21  # Helvetica's, in em: how far a line reaches above and below its baseline
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in the picture's coordinates


@dataclass(frozen=True)
class Text:
    text: str
    box: Box
    group: str  # the class of the <g> it is in: graph, cluster, node or edge
    owner: str  # that group's <title>


def _numbers(value: str) -> list[float]:
    return [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", value)]


def _transform(root: ET.Element) -> tuple[float, float, float, float]:
    """Scale and translation of the top group, which holds everything Graphviz draws."""
    spec = root.find(f"{SVG}g").get("transform", "")
    scale = _numbers(m.group(1)) if (m := re.search(r"scale\(([^)]*)\)", spec)) else [1.0]
    shift = _numbers(m.group(1)) if (m := re.search(r"translate\(([^)]*)\)", spec)) else [0.0, 0.0]
    return scale[0], scale[-1], shift[0], shift[-1]


def _shape_box(group: ET.Element, place) -> Box | None:
    """The bounding box of a group's own outline (polygon, path or ellipse), if it has one."""
    xs: list[float] = []
    ys: list[float] = []
    for el in group:
        tag = el.tag.removeprefix(SVG)
        if tag in ("polygon", "path"):
            nums = _numbers(el.get("points") or el.get("d") or "")
            xs += nums[0::2]
            ys += nums[1::2]
        elif tag == "ellipse":
            cx, cy, rx, ry = (float(el.get(a)) for a in ("cx", "cy", "rx", "ry"))
            xs += [cx - rx, cx + rx]
            ys += [cy - ry, cy + ry]
    if not xs:
        return None
    x0, y0 = place(min(xs), min(ys))
    x1, y1 = place(max(xs), max(ys))
    return x0, y0, x1, y1


@dataclass
class Drawing:
    view: Box
    texts: list[Text]
    boxes: dict[str, Box]  # a cluster's or node's outline by its <title>


def read_drawing(path: Path) -> Drawing:
    root = ET.parse(path).getroot()
    vx, vy, vw, vh = _numbers(root.get("viewBox"))
    sx, sy, tx, ty = _transform(root)

    def place(x: float, y: float) -> tuple[float, float]:
        return x * sx + tx, y * sy + ty

    texts: list[Text] = []
    boxes: dict[str, Box] = {}
    for group in root.iter(f"{SVG}g"):
        title = group.find(f"{SVG}title")
        owner = (title.text or "") if title is not None else ""
        box = _shape_box(group, place)
        if box and group.get("class") in ("cluster", "node"):
            boxes[owner] = box
        for el in group.findall(f"{SVG}text"):
            size = float(el.get("font-size", "14"))
            content = el.text or ""
            width = float(el.get("textLength") or WIDE_EM * size * len(content)) * sx
            x, y = place(float(el.get("x")), float(el.get("y")))
            start = {"start": x, "end": x - width}.get(el.get("text-anchor", "start"), x - width / 2)
            texts.append(Text(content, (start, y - ASCENT * size * sy, start + width, y + DESCENT * size * sy), group.get("class", ""), owner))
    return Drawing((vx, vy, vx + vw, vy + vh), texts, boxes)


def inside(inner: Box, outer: Box, slack: float = 0.5) -> bool:
    return (inner[0] >= outer[0] - slack and inner[1] >= outer[1] - slack
            and inner[2] <= outer[2] + slack and inner[3] <= outer[3] + slack)


def overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def misplaced_text(path: Path) -> list[str]:
    """Each text of the drawing at ``path`` that leaves the picture, its node's outline, its cluster's
    outline, or (for legend entries) the legend's box."""
    drawing = read_drawing(path)
    legends = [box for owner, box in drawing.boxes.items() if owner.startswith("cluster_") and owner.endswith("legend")]
    wrong = []
    for t in drawing.texts:
        if not inside(t.box, drawing.view):
            wrong.append(f"{t.text!r} leaves the picture")
        own = drawing.boxes.get(t.owner)
        if own and not inside(t.box, own):
            wrong.append(f"{t.text!r} leaves the outline of {t.owner}")
        if "legend#" in t.owner and not any(inside(t.box, legend) for legend in legends):
            wrong.append(f"{t.text!r} leaves the legend")
    return wrong


def overlapping_edge_labels(path: Path) -> list[tuple[str, str]]:
    """Pairs of edge labels (or lines of them) that cover each other."""
    labels = [t for t in read_drawing(path).texts if t.group == "edge"]
    return [(a.text, b.text) for i, a in enumerate(labels) for b in labels[i + 1:] if overlap(a.box, b.box)]


def figure_texts(path: Path) -> list[tuple[str, Box]]:
    """Each text of a matplotlib SVG (text kept as text) and its box; a text turned by ±90° stands upright."""
    found = []
    for el in ET.parse(path).getroot().iter(f"{SVG}text"):
        style = dict(part.split(":", 1) for part in (el.get("style") or "").split(";") if ":" in part)
        style = {key.strip(): value.strip() for key, value in style.items()}
        size = _numbers(style.get("font-size", "10"))[0]
        spec = el.get("transform", "")
        shift = _numbers(m.group(1)) if (m := re.search(r"translate\(([^)]*)\)", spec)) else [0.0, 0.0]
        x, y = float(el.get("x", 0)) + shift[0], float(el.get("y", 0)) + shift[-1]
        turn = _numbers(m.group(1))[0] if (m := re.search(r"rotate\(([^)]*)\)", spec)) else 0.0
        content = "".join(el.itertext())
        length = WIDE_EM * size * len(content)
        anchor = style.get("text-anchor", "start")
        start = {"start": 0.0, "end": -length}.get(anchor, -length / 2)
        if abs(turn) == 90:  # reads upwards: its length runs along y
            found.append((content, (x - ASCENT * size, y - start - length, x + DESCENT * size, y - start)))
        else:
            found.append((content, (x + start, y - ASCENT * size, x + start + length, y + DESCENT * size)))
    return found
