"""The Xross table: every path of a trained run with its accuracy and its cost.

Cross paths make one trained graph many models (seed 000's *dynamic computation*):
with K networks cut into P parts there are up to K^P chains of segments, each a
standalone network with its own accuracy, size and speed. This module evaluates a
run's last checkpoint on every network, cross path, aggregate and ensemble, and
measures for each of them

* the exact parameter count: the distinct parameters of the segments, adapters and
  aggregators it runs, each counted once (dedupe by identity);
* MACs per image, counted by PyTorch's own ``FlopCounterMode`` (MACs = FLOPs / 2),
  each distinct segment call once (an ensemble shares its members' prefixes, as the
  compiled plan does);
* latency per batch: eval mode, no grad, a warm-up, then the median of repeats.

Every cost runs only the steps of the run's eval plan that the row depends on.
The tables follow the seed: up-half x down-half matrices for two-part crosses, one
line per path with a column per part for more parts, then the ensembles.
"""
from __future__ import annotations

import csv
import json
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate
from tqdm.auto import tqdm

from ..compile import INPUT, Aggregate, Plan, compile_plan
from ..compile.compiler import ENSEMBLE_NETWORKS, ENSEMBLE_PATHS
from ..errors import GraphError, TrainingError, unknown_name
from ..graph import KTGraph
from .evaluate import evaluate, make_loader
from .executor import Executor
from .model import GraphModel
from .summary import node_kind, node_route

CSV_NAME = "xross.csv"
MARKDOWN_NAME = "xross.md"
CSV_COLUMNS = ("node", "kind", "parts", "segments", "params", "macs", "latency_ms", "batch_size", "top1_last",
               "top5_last", "top1_best", "best_epoch")
PATH_KINDS = ("network", "cross path")  # rows that are one chain of segments (what `ktgraph pick` exports)
KINDS = ("network", "cross path", "aggregate", "ensemble")


@dataclass
class Row:
    """One evaluated node of a run.

    ``segments``: the chain of segments of a path (empty for aggregates and
    ensembles); ``route``: how the node is computed, as written in the CSV
    (``net1.up > net2.down``, ``mean(net1, net2)``); ``parts``: the network that owns
    each part position, for paths whose networks share part names (else empty), and
    ``part_names`` those positions' names. Accuracies are in percent: ``top1_last``
    from this evaluation of the last checkpoint, ``top1_best`` the same split's top-1
    at ``best_epoch`` (the run's epoch, counted from 1 over all stages, where the node
    was best: chosen on val when the run has one, else on test).
    """

    node: str
    kind: str
    route: str
    params: int
    macs: int | None
    latency_ms: float | None
    batch_size: int | None
    top1_last: float
    top5_last: float | None = None
    top1_best: float | None = None
    best_epoch: int | None = None
    segments: tuple[str, ...] = ()
    parts: tuple[str, ...] = ()
    part_names: tuple[str, ...] = ()
    device: str = ""

    @property
    def is_path(self) -> bool:
        return self.kind in PATH_KINDS

    def csv_record(self) -> dict[str, Any]:
        def number(value: float | None, digits: int) -> str:
            return "" if value is None else f"{value:.{digits}f}"

        return {"node": self.node, "kind": self.kind, "parts": " ".join(self.parts), "segments": self.route,
                "params": self.params, "macs": "" if self.macs is None else self.macs,
                "latency_ms": number(self.latency_ms, 4), "batch_size": self.batch_size or "",
                "top1_last": number(self.top1_last, 4), "top5_last": number(self.top5_last, 4),
                "top1_best": number(self.top1_best, 4), "best_epoch": self.best_epoch or ""}

    @classmethod
    def from_csv(cls, record: dict[str, str]) -> Row:
        def opt(key: str, kind: type) -> Any:
            value = (record.get(key) or "").strip()
            return kind(value) if value else None

        kind = record["kind"]
        route = record["segments"]
        return cls(node=record["node"], kind=kind, route=route, params=int(record["params"]),
                   macs=opt("macs", int), latency_ms=opt("latency_ms", float), batch_size=opt("batch_size", int),
                   top1_last=float(record["top1_last"]), top5_last=opt("top5_last", float),
                   top1_best=opt("top1_best", float), best_epoch=opt("best_epoch", int),
                   segments=tuple(route.split(" > ")) if kind in PATH_KINDS else (),
                   parts=tuple(record.get("parts", "").split()))


# --- which steps a node needs ----------------------------------------------------------------
def eval_plan(model: GraphModel, graph: KTGraph) -> Plan:
    """The plan that computes every path, aggregate and ensemble of ``graph``."""
    return compile_plan(graph, mode="eval", adapters=model.adapter_keys)


def _resolve(graph: KTGraph, plan: Plan, node: str) -> str:
    node = graph.aliases.get(node, node)
    if node not in plan.outputs:
        raise unknown_name("node", node, row_nodes(graph, plan))
    return node


def node_plan(plan: Plan, node: str) -> Plan:
    """``plan`` restricted to the steps ``node``'s value depends on, in plan order."""
    producers = {}
    for step in plan.steps:
        for out in (step.outs if isinstance(step, Aggregate) else (step.out,)):
            producers[out] = step
    needed, seen, stack = set(), set(), [plan.outputs[node]]
    while stack:
        value = stack.pop()
        if value == INPUT or value in seen:
            continue
        seen.add(value)
        step = producers[value]
        needed.add(step)
        stack.extend(step.inputs)
    steps = tuple(step for step in plan.steps if step in needed)
    return replace(plan, steps=steps, outputs={node: plan.outputs[node]}, terms=(), groups=())


def node_modules(model: GraphModel, graph: KTGraph, node: str, plan: Plan | None = None) -> list[str]:
    """The keys of the distinct modules (segments, adapters, aggregators) ``node`` runs."""
    plan = plan or eval_plan(model, graph)
    sub = node_plan(plan, _resolve(graph, plan, node))
    return list(dict.fromkeys(step.module for step in sub.steps))


def path_params(model: GraphModel, graph: KTGraph, node: str, plan: Plan | None = None) -> int:
    """Exact parameter count of a node: its distinct modules' parameters, each counted once."""
    seen: dict[int, int] = {}
    for key in node_modules(model, graph, node, plan):
        for p in model.module(key).parameters():
            seen.setdefault(id(p), p.numel())
    return sum(seen.values())


def _device(model: GraphModel) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def path_macs(model: GraphModel, graph: KTGraph, node: str, input_shape: tuple[int, ...] | None = None,
              plan: Plan | None = None) -> int:
    """Multiply-accumulates per image (FLOPs / 2 from ``FlopCounterMode``), each distinct call once."""
    from torch.utils.flop_counter import FlopCounterMode

    plan = plan or eval_plan(model, graph)
    executor = Executor(node_plan(plan, _resolve(graph, plan, node)), model)
    x = torch.zeros(1, *(input_shape or model.input_shape), device=_device(model))
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            executor.forward(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


@torch.no_grad()
def path_latency(model: GraphModel, graph: KTGraph, node: str, *, batch_size: int | None = None,
                 input_shape: tuple[int, ...] | None = None, warmup: int = 2, repeats: int = 10,
                 max_seconds: float | None = 2.0, plan: Plan | None = None) -> float:
    """Median wall-clock milliseconds for one batch through ``node``'s steps (eval mode, no grad).

    ``batch_size`` defaults to the run's ``train.eval_batch_size``. After ``warmup``
    untimed batches, ``repeats`` batches are timed, or fewer (never under 3) once
    ``max_seconds`` have been spent timing, so slow CPU runs stay bounded.
    """
    plan = plan or eval_plan(model, graph)
    executor = Executor(node_plan(plan, _resolve(graph, plan, node)), model)
    batch_size = batch_size or graph.spec.train.eval_batch_size
    device = _device(model)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, *(input_shape or model.input_shape), generator=generator).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            executor.forward(x)
        sync()
        times: list[float] = []
        for _ in range(max(1, repeats)):
            started = time.perf_counter()
            executor.forward(x)
            sync()
            times.append(time.perf_counter() - started)
            if max_seconds is not None and len(times) >= 3 and sum(times) > max_seconds:
                break
    finally:
        model.train(was_training)
    return 1000.0 * statistics.median(times)


# --- rows ------------------------------------------------------------------------------------
def _parts(graph: KTGraph, node: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(owner of each part position, the positions' names) when the path's networks share part names."""
    if node not in graph.paths:
        return (), ()
    path = graph.paths[node]
    names = {tuple(graph.networks[o].spec.part_names()) for o in path.owners}
    if len(names) != 1:
        return (), ()
    part_names = names.pop()
    own = tuple(s[len(o) + 1:] for s, o in zip(path.segments, path.owners))
    return (path.owners, part_names) if own == part_names else ((), ())


def row_nodes(graph: KTGraph, plan: Plan) -> list[str]:
    """Networks, cross paths, aggregates, ensembles: every node a table shows, in that order."""
    aggregates = {out for agg in graph.aggregators.values() for out in agg.outputs()}
    shown = set(graph.paths) | aggregates | {ENSEMBLE_NETWORKS, ENSEMBLE_PATHS}
    nodes = [n for n in plan.outputs if n in shown]
    order = {kind: i for i, kind in enumerate(KINDS)}
    position = {n: i for i, n in enumerate(nodes)}
    return sorted(nodes, key=lambda n: (order[node_kind(graph, n)], position[n]))


def best_epochs(run_dir: str | Path, split: str = "test",
                upto: tuple[int, int] | None = None) -> dict[str, tuple[int, float]]:
    """node -> (epoch, ``split`` top-1 at that epoch), the epoch chosen on val when logged, else test.

    Epochs are the lines of ``metrics.jsonl`` in training order, counted from 1 over all
    stages (for a one-stage run: the epoch number); ties keep the earliest epoch, as the
    trainer does. ``upto`` = (stage index, epochs done in it) of the checkpoint drops
    lines written after it (a run stopped between its metrics and its checkpoint).
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return {}
    lines = []
    for text in path.read_text().splitlines():
        try:
            line = json.loads(text) if text.strip() else None
        except json.JSONDecodeError:  # a torn last line
            line = None
        if isinstance(line, dict):
            lines.append(line)
    lines.sort(key=lambda d: (d.get("stage_index", 0), d.get("epoch", 0)))
    offset = 1 if any(d.get("epoch") == 0 for d in lines) else 0  # older runs logged 0-based epochs
    if upto is not None:
        lines = [d for d in lines if (d.get("stage_index", 0), d.get("epoch", 0) + offset) <= tuple(upto)]
    best: dict[str, tuple[float, int, float]] = {}
    for epoch, line in enumerate(lines, start=1):
        select = "val" if "val" in line else "test"
        report = split if split in line else "test"
        for node, accuracy in line.get(select, {}).items():
            if node not in best or accuracy["top1"] > best[node][0]:
                best[node] = (accuracy["top1"], epoch, line[report][node]["top1"])
    return {node: (epoch, top1) for node, (_, epoch, top1) in best.items()}


@dataclass
class LoadedRun:
    """A run directory brought back: its graph, data and the last checkpoint's model."""

    run_dir: Path
    graph: KTGraph
    data: Any
    model: GraphModel
    device: torch.device
    position: tuple[int, int] | None = None  # the checkpoint's (stage index, epochs done in that stage)


def load_run(run_dir: str | Path, *, device: str | torch.device | None = None,
             allow_imports: bool = False) -> LoadedRun:
    """Rebuild a run's graph, data and model from its ``config.yaml`` and ``checkpoints/last.pt``."""
    from ..data import build_data
    from .checkpoint import load_checkpoint
    from .run import CONFIG, load_graph
    from .trainer import CHECKPOINT, resolve_device

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GraphError(f"run directory {run_dir} does not exist", file=str(run_dir),
                         suggestion="give the folder `ktgraph run --out` wrote")
    if not (run_dir / CONFIG).is_file():
        raise GraphError(f"{run_dir} is not a run directory (no {CONFIG})", file=str(run_dir))
    graph = load_graph(run_dir / CONFIG, allow_imports=allow_imports)
    checkpoint = run_dir / CHECKPOINT
    if not checkpoint.is_file():
        raise TrainingError(f"no checkpoint at {checkpoint}; the run has not finished an epoch yet")
    try:
        data = build_data(graph.spec.data, graph.spec.train.seed)
        torch.manual_seed(graph.spec.train.seed)
        model = GraphModel(graph, data.num_classes, (data.in_channels, data.image_size, data.image_size))
    except GraphError as err:
        if graph.source is not None:
            graph.source.locate(err)
        raise
    target = torch.device(device) if device is not None else resolve_device(graph.spec.train.device)
    payload = load_checkpoint(checkpoint, map_location="cpu")
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, KeyError) as err:
        raise TrainingError(f"{checkpoint} does not match the graph in {run_dir / CONFIG}: "
                            f"{str(err).splitlines()[0]}") from None
    model.to(target).eval()
    if target.type == "cpu":
        torch.set_flush_denormal(True)  # as in training: subnormal floats slow CPU convolutions down
    position = (payload["stage"], payload["epoch"]) if "stage" in payload and "epoch" in payload else None
    return LoadedRun(run_dir, graph, data, model, target, position)


def xross_table(run_dir: str | Path, *, split: str = "test", progress: bool = True,
                batch_size: int | None = None, warmup: int = 2, repeats: int = 10,
                max_seconds: float | None = 2.0, device: str | torch.device | None = None,
                allow_imports: bool = False, run: LoadedRun | None = None,
                accuracy: dict[str, dict[str, float]] | None = None) -> list[Row]:
    """Evaluate every path, aggregate and ensemble of a run's last checkpoint, with its costs.

    ``split`` is ``test`` or ``val``; ``batch_size`` (default ``train.eval_batch_size``)
    is used for evaluation and latency; ``repeats=0`` skips the latency measurement;
    ``run`` reuses an already loaded run (see :func:`load_run`); ``accuracy`` reuses
    the split's accuracies of the last epoch when the caller already has them.
    """
    from .run import CONFIG, load_graph

    if split not in ("test", "val"):
        raise GraphError(f"unknown split `{split}`", expected="test or val", file="command line")
    no_val = GraphError("the run has no validation split", where=("data", "val_split"), file=str(run_dir),
                        suggestion="evaluate on --split test, or train with data.val_split > 0")
    config = Path(run_dir) / CONFIG
    if run is None and split == "val" and config.is_file() and \
            load_graph(config, allow_imports=allow_imports).spec.data.val_split == 0:
        raise no_val  # said before the slower loading of data and model
    run = run or load_run(run_dir, device=device, allow_imports=allow_imports)
    graph, model, data = run.graph, run.model, run.data
    dataset = data.test if split == "test" else data.val
    if dataset is None:
        raise no_val
    batch_size = batch_size or graph.spec.train.eval_batch_size
    plan = eval_plan(model, graph)
    nodes = row_nodes(graph, plan)
    if accuracy is None or not set(nodes) <= set(accuracy):
        executor = Executor(replace(plan, outputs={n: plan.outputs[n] for n in nodes}), model)
        loader = make_loader(dataset, batch_size)
        batches = tqdm(loader, desc=f"evaluating on {split}", leave=False, disable=not progress,
                       dynamic_ncols=True)
        accuracy = evaluate(executor, batches, run.device, data.num_classes)
    best = best_epochs(run.run_dir, split, run.position)
    rows = []
    for node in tqdm(nodes, desc="measuring costs", leave=False, disable=not progress, dynamic_ncols=True):
        parts, part_names = _parts(graph, node)
        epoch, top1_best = best.get(node, (None, None))
        rows.append(Row(
            node=node, kind=node_kind(graph, node), route=node_route(graph, node),
            params=path_params(model, graph, node, plan), macs=path_macs(model, graph, node, plan=plan),
            latency_ms=path_latency(model, graph, node, batch_size=batch_size, warmup=warmup, repeats=repeats,
                                    max_seconds=max_seconds, plan=plan) if repeats > 0 else None,
            batch_size=batch_size, top1_last=accuracy[node]["top1"], top5_last=accuracy[node].get("top5"),
            top1_best=top1_best, best_epoch=epoch,
            segments=graph.paths[node].segments if node in graph.paths else (), parts=parts,
            part_names=part_names, device=str(run.device)))
    return rows


def tables_after_training(trainer: Any, *, progress: bool = True, echo=print, **options: Any) -> list[Row]:
    """The end of a run: the Xross table of the trained model in memory (the last checkpoint's weights).

    Writes ``xross.csv`` and ``xross.md`` into the run directory, echoes the terminal
    tables and returns the rows; ``options`` go to :func:`xross_table`.
    """
    run = LoadedRun(Path(trainer.run_dir), trainer.graph, trainer.data, trainer.model, trainer.device)
    # The last epoch was just evaluated on test: its accuracies are the table's "last".
    last = {node: entry["test"] for node, entry in trainer.state.last.items()}
    rows = xross_table(trainer.run_dir, progress=progress, run=run, accuracy=last, **options)
    write_tables(rows, trainer.run_dir)
    echo(format_tables(rows))
    return rows


# --- tables ----------------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _count(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def _best(row: Row) -> str:
    return "" if row.top1_best is None else f"{row.top1_best:.2f} ({row.best_epoch})"


def _groups(rows: list[Row]) -> dict[tuple[str, ...], list[Row]]:
    """Path rows grouped by their part positions: one Xross table per group that has a cross path."""
    groups: dict[tuple[str, ...], list[Row]] = {}
    for row in rows:
        if row.is_path and row.parts and len(row.part_names) >= 2:
            groups.setdefault(row.part_names, []).append(row)
    return {names: group for names, group in groups.items() if any(r.kind == "cross path" for r in group)}


def _network_order(rows: list[Row]) -> list[str]:
    nets = [r.node for r in rows if r.kind == "network"]
    for row in rows:
        nets.extend(o for o in row.parts if o not in nets)
    return nets


def table_sections(rows: list[Row]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, headers, body) of each table: Xross tables, ensembles, then every row with its costs."""
    sections = []
    nets = _network_order(rows)
    for part_names, group in _groups(rows).items():
        if len(part_names) == 2:
            up, down = part_names
            cell = {r.parts: f"{_pct(r.top1_last)} ({_count(r.params)})" for r in group}
            downs = [n for n in nets if any(r.parts[1] == n for r in group)]
            ups = [n for n in nets if any(r.parts[0] == n for r in group)]
            body = [[u] + [cell.get((u, d), "-") for d in downs] for u in ups]
            sections.append((f"Xross table: up-half `{up}` (rows) x down-half `{down}` (columns), "
                             "top-1 % at the last epoch (#params)", [f"{up} \\ {down}", *downs], body))
        else:
            rank = {n: i for i, n in enumerate(nets)}
            ordered = sorted(group, key=lambda r: [rank[o] for o in r.parts])
            headers = [f"Part{i + 1} ({name})" for i, name in enumerate(part_names)]
            headers += ["top-1 last", "top-1 at best (ep)", "#params"]
            body = [[*r.parts, _pct(r.top1_last), _best(r), _count(r.params)] for r in ordered]
            sections.append((f"Xross table: {len(part_names)} parts ({', '.join(part_names)}), one line per path",
                             headers, body))
    combined = [r for r in rows if not r.is_path]
    if combined:
        body = [[r.node, r.kind, r.route, _pct(r.top1_last), _best(r), _count(r.params), _count(r.macs)]
                for r in combined]
        sections.append(("Ensembles and aggregates",
                         ["node", "kind", "inputs", "top-1 last", "top-1 at best (ep)", "#params", "MACs/image"],
                         body))
    top5 = any(r.top5_last is not None for r in rows)
    sizes = {r.batch_size for r in rows if r.batch_size}
    devices = {r.device for r in rows if r.device}
    latency = "latency ms" + (f" (batch {sizes.pop()})" if len(sizes) == 1 else " (per batch)")
    headers = ["node", "kind", "parts", "segments / inputs", "#params", "MACs/image", latency, "top-1 last"]
    headers += ["top-5 last"] if top5 else []
    headers += ["top-1 at best (ep)"]
    body = []
    for r in rows:
        line = [r.node, r.kind, " ".join(r.parts), r.route, _count(r.params), _count(r.macs),
                "" if r.latency_ms is None else f"{r.latency_ms:.2f}", _pct(r.top1_last)]
        line += [_pct(r.top5_last)] if top5 else []
        line += [_best(r)]
        body.append(line)
    where = f" on {devices.pop()}" if len(devices) == 1 else ""
    sections.append((f"All rows: exact parameters, MACs per image, median latency per batch{where}", headers, body))
    return sections


def format_tables(rows: list[Row], *, markdown: bool = False, title: str = "") -> str:
    """The tables as text: Markdown (with headings) or for the terminal."""
    parts = [f"# {title}\n" if markdown else f"{title}\n"] if title else []
    for heading, headers, body in table_sections(rows):
        table = tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)
        parts.append(f"## {heading}\n\n{table}\n" if markdown else f"{heading}\n{table}\n")
    return "\n".join(parts)


def write_csv(rows: list[Row], path: str | Path) -> Path:
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row.csv_record())
    return path


def read_csv(path: str | Path) -> list[Row]:
    with Path(path).open(newline="") as handle:
        return [Row.from_csv(record) for record in csv.DictReader(handle)]


def write_tables(rows: list[Row], run_dir: str | Path) -> dict[str, Path]:
    """Write ``xross.csv`` and ``xross.md`` into the run directory; return their paths."""
    run_dir = Path(run_dir)
    csv_path = write_csv(rows, run_dir / CSV_NAME)
    md_path = run_dir / MARKDOWN_NAME
    md_path.write_text(format_tables(rows, markdown=True, title=f"Xross evaluation of {run_dir.name}"))
    return {"csv": csv_path, "markdown": md_path}
