"""Channel mapping seen from outside: ``ktgraph map`` and what a run writes about its mapping.

``ktgraph map FILE`` builds the graph (loading its networks' weights), maps each ``mapping:``
as a run would before its stage, prints the three matching scores, linear CKA and the
assignment, and with ``--out DIR`` draws each cut's score matrix before and after. Nothing is
trained or saved. A run writes the same into ``mapping.json`` and ``mapping/*.svg``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import GraphError
from ..graph import KTGraph
from ..runtime import prepare
from ..runtime.mapping import MappedCut, Reporter, map_channels
from ..runtime.rundir import MAPPING_DIR, MAPPING_JSON
from .report import plot_channel_scores
from .targets import one_graph


def map_graph(graph: KTGraph, *, cut: str | None = None) -> list[MappedCut]:
    """Every ``mapping:`` of the graph (only at part ``cut`` when given), applied to freshly built modules."""
    if not graph.mappings:
        raise GraphError("the graph has no `mapping:` on a cross", where=("crosses",),
                         suggestion="add `mapping: {method: hungarian}` to the cross to inspect")
    chosen = graph.mappings
    if cut is not None:
        parts = sorted({p for m in graph.mappings for p in m.parts})
        if cut not in parts:
            raise GraphError(f"--cut `{cut}` is not a mapped cut", file="command line",
                             expected="one of: " + ", ".join(parts))
        chosen = [dataclasses.replace(m, parts=(cut,)) for m in graph.mappings if cut in m.parts]
    job = prepare(graph)
    assert job.data is not None
    return [r for m in chosen for r in map_channels(graph, job.modules, m, job.data, job.device)]


def describe(record: MappedCut) -> str:
    """A record in a few lines: what was matched, the three scores, CKA and the order."""
    head = f"{record.network} -> {record.reference} at `{record.part}`"
    if record.order is None:
        return f"{head}: widths differ; least-squares start of {', '.join(record.adapters)} (linear CKA " \
               f"{record.cka:.3f})"
    s = record.scores
    return (f"{head} ({len(record.order)} channels, {record.score}, {record.method}):\n"
            f"  matching score  identity {s['identity']:.4f}  random {s['random']:.4f}  mapped {s['mapped']:.4f}"
            f"   (linear CKA {record.cka:.3f})\n  order: {' '.join(map(str, record.order))}")


def write_mapping(records: list[MappedCut], folder: str | Path,
                  earlier: Sequence[dict[str, Any]] = ()) -> list[Path]:
    """``mapping.json`` (the ``earlier`` stages' records, then these) and a heatmap per mapped cut. The file is
    written whole from what the run holds, so mapping again (a resumed stage, `ktgraph map` run twice) never
    repeats a record."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / MAPPING_JSON
    file.write_text(json.dumps([*earlier, *(r.saved() for r in records)], indent=1) + "\n")
    written = [file]
    for r in records:
        if r.matrix is not None and r.order is not None:
            title = f"{r.network} matched to {r.reference} at `{r.part}` ({r.score}, {r.method})"
            written.append(plot_channel_scores(r.matrix, r.order, title,
                                               folder / MAPPING_DIR / f"{r.reference}-{r.network}-{r.part}.svg"))
    return written


def run_reporter(folder: Path, echo: Callable[[str], object]) -> Reporter:
    """What a run does with each stage's new mapping records: print them, and write them after the earlier
    stages' into its folder."""
    def report(records: list[MappedCut], earlier: list[dict[str, Any]]) -> None:
        for record in records:
            echo(describe(record))
        write_mapping(records, folder, earlier)
    return report


def cmd_map(args: argparse.Namespace) -> int:
    graph, _ = one_graph(args.targets, "map", "ktgraph map FILE [key=value ...] [--cut PART] [--out DIR]",
                         allow_imports=args.allow_imports)
    try:
        records = map_graph(graph, cut=args.cut)
    except GraphError as err:
        raise graph.locate(err) from None
    print("\n".join(describe(r) for r in records))
    if args.out:
        print("wrote " + ", ".join(map(str, write_mapping(records, args.out))), file=sys.stderr)
    return 0
