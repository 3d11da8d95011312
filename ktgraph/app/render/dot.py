"""DOT built with the ``graphviz`` package, and rendered with a dot binary.

:func:`render` writes DOT text or runs a dot binary: the system ``dot`` when there is one,
else the ``graphviz-pure`` program that the ``graphviz-pure`` package installs (see
:func:`find_renderer`); an SVG's text is then held to its laid-out widths (:mod:`.fit`). The small
helpers here are shared by the graph and plan drawings.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import graphviz

from ...errors import GraphError
from .fit import fit_text, laid_out_widths

FORMATS = ("svg", "dot", "png")
FONT = "Helvetica"
# One strong colour per cross path (cycled); none is grey, blue or green, which links use.
CROSS_COLORS = ("#d95f02", "#7b3294", "#c51b7d", "#a6611a", "#e7298a", "#8c510a", "#b2182b", "#542788")
# Pale fills: one per network (segments and own logits), one per gradient group.
NETWORK_FILLS = ("#dbe9f6", "#fde0c5", "#e0f0d8", "#eadcf0", "#fbe3e8", "#e8e4d0", "#d9f0ef", "#f2f2c6")
GROUP_FILLS = ("#cfe3f7", "#fcd7b6", "#d3ecc9", "#e4d2ef", "#f9d3dc", "#e9e3c3", "#c9ecea", "#f1f0b5")


def esc(text: str) -> str:
    """Free text (a description, a link's own name) with its backslashes kept literal in DOT."""
    return text.replace("\\", "\\\\")


def num(x: float) -> str:
    return f"{x:g}"


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def lines(*parts: str) -> str:
    """A multi-line DOT label (``\\n`` centres each line)."""
    return "\\n".join(p for p in parts if p)


def wrap(items: Sequence[str], per_line: int = 3, sep: str = ", ") -> str:
    rows = [sep.join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    return "\\n".join(rows)


def new_digraph(name: str, label: str) -> graphviz.Digraph:
    dot = graphviz.Digraph(name=name)
    dot.attr(rankdir="LR", newrank="true", nodesep="0.25", ranksep="0.45", fontname=FONT, fontsize="14",
             labelloc="t", labeljust="l", label=esc(label))
    dot.attr("node", fontname=FONT, fontsize="11")
    dot.attr("edge", fontname=FONT, fontsize="9", arrowsize="0.7")
    return dot


# --- rendering ------------------------------------------------------------------------

def _graphviz_pure_binary() -> str | None:
    """The ``graphviz-pure`` program, a dot-compatible binary with no Python code.

    The ``graphviz-pure`` wheel installs it as a script: the distribution's RECORD
    lists it (``../../../bin/graphviz-pure``), which gives its path even when the
    environment's ``bin`` is not on PATH. PATH is the fallback.
    """
    names = {"graphviz-pure", "graphviz-pure.exe"}
    try:
        dist = metadata.distribution("graphviz-pure")
    except metadata.PackageNotFoundError:
        dist = None
    for file in (dist.files or []) if dist else []:
        if file.name in names:
            path = Path(dist.locate_file(file)).resolve()
            if path.is_file():
                return str(path)
    scripts = Path(sys.executable).parent
    for name in sorted(names):
        if (scripts / name).is_file():
            return str(scripts / name)
    return shutil.which("graphviz-pure")


def find_renderer() -> list[str]:
    """The command that turns DOT on stdin into a picture: system ``dot``, else ``graphviz-pure``."""
    system = shutil.which("dot")
    if system:
        return [system]
    pure = _graphviz_pure_binary()
    if pure:
        return [pure, "-Kdot"]
    raise GraphError("no Graphviz renderer found: neither a `dot` program on PATH nor the `graphviz-pure` "
                     "program", file="command line",
                     suggestion="pip install graphviz-pure (or install Graphviz), or write DOT with --format dot")


def render(dot: graphviz.Digraph, out: str | Path, fmt: str = "svg") -> Path:
    """Write ``dot`` to ``out``: its DOT source for ``fmt="dot"``, else the rendered picture."""
    out = Path(out)
    if fmt not in FORMATS:
        raise GraphError(f"unknown picture format `{fmt}`", file="command line", expected=", ".join(FORMATS))
    if fmt == "dot":
        out.write_text(dot.source, encoding="utf-8")
        return out
    command = find_renderer()
    if fmt == "svg":  # laid out twice (the same input, the same layout): once for the widths, once to draw
        widths = laid_out_widths(json.loads(_run(command, "json", dot.source)))
        out.write_bytes(fit_text(_run(command, "svg", dot.source).decode("utf-8"), widths).encode("utf-8"))
    else:
        out.write_bytes(_run(command, fmt, dot.source))
    return out


def _run(command: list[str], fmt: str, source: str) -> bytes:
    """What the renderer ``command`` writes for DOT ``source`` in format ``fmt``."""
    try:
        done = subprocess.run([*command, f"-T{fmt}"], input=source.encode("utf-8"), capture_output=True,
                              check=False, timeout=300)
    except OSError as err:
        raise GraphError(f"cannot run {command[0]}: {err}", file="command line") from None
    if done.returncode != 0 or not done.stdout:
        message = done.stderr.decode("utf-8", "replace").strip() or f"exit status {done.returncode}"
        raise GraphError(f"{Path(command[0]).name} failed to render the graph: {message}", file="command line")
    return done.stdout
