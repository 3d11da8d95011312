"""``ktgraph compare``: methods side by side as a paper tables them.

Each method is a seed group (or one run): its nodes' test top-1 as mean ± std over seeds, the
average of its networks, and, against a baseline, the paired gain seed by seed (see
:mod:`ktgraph.app.stats`). A gain smaller than the seed-to-seed spread is flagged, since that is
where one seed's luck decides the sign. Runs trained on other data, networks or training recipes
are refused (the message names the field), because then the table would not compare methods.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import GraphError, did_you_mean
from ..runtime.checkpoint import config_difference, trained_config
from ..runtime.groupdir import GroupDir
from ..runtime.rundir import SUMMARY, RunDir
from .stats import Paired, Spread, paired, spread

AVERAGE = "avg(networks)"  # the average of the networks' top-1, seed by seed (not an ensemble)
METRIC_FIELDS = {"top1_last": "top1_last", "top1_best": "top1_at_best"}
NETWORK_FIELDS = ("model", "cifar_stem", "kwargs", "weights")  # what makes a network name mean one network


@dataclass
class Method:
    """One compared method: a seed group or a single run, with each finished seed's summary."""

    label: str
    source: Path
    config: dict[str, Any]
    summaries: dict[int, dict[str, Any]]
    unfinished: list[int]

    def values(self, node: str, metric: str) -> dict[int, float]:
        """Seed -> the node's ``metric`` (``avg(networks)``: the networks' average), for seeds that have it."""
        field = METRIC_FIELDS[metric]
        found = {}
        for seed, summary in self.summaries.items():
            rows = summary["rows"]
            chosen = [r for r in rows if r["kind"] == "network"] if node == AVERAGE else \
                [r for r in rows if r["node"] == node]
            if chosen:
                found[seed] = sum(r[field] for r in chosen) / len(chosen)
        return found

    def nodes(self) -> list[str]:
        return [r["node"] for r in next(iter(self.summaries.values()))["rows"]]

    def kinds(self) -> dict[str, str]:
        return {r["node"]: r["kind"] for r in next(iter(self.summaries.values()))["rows"]}

    def chosen_on(self) -> set[str]:
        return {r["best_chosen_on"] for s in self.summaries.values() for r in s["rows"]}


def open_method(path: str | Path) -> Method:
    """A seed group or a finished run, or a located error saying why the folder is neither."""
    folder = Path(path)
    group = GroupDir(folder)
    if group.is_group():
        config = group.read_group_config() or {}
        seeds = list(config.get("train", {}).get("seeds") or [])
        found = {s: group.seed_summary(s) for s in seeds}
        summaries = {s: v for s, v in found.items() if v is not None}
        unfinished = [s for s, v in found.items() if v is None]
        if not summaries:
            raise GraphError("no seed of this group has finished", file=str(folder),
                             suggestion=f"continue it with `ktgraph run --resume {folder}`")
    elif RunDir(folder).is_run():
        run = RunDir(folder)
        config = run.read_config() or {}
        summary = run.read_json(SUMMARY)
        if summary is None:
            raise GraphError("the run has not finished (no summary.json)", file=str(folder),
                             suggestion=f"continue it with `ktgraph run --resume {folder}`")
        summaries, unfinished = {int(config.get("train", {}).get("seed", 0)): summary}, []
    else:
        raise GraphError(f"{folder} is neither a run directory (config.yaml) nor a seed group (group.yaml)",
                         file=str(folder), suggestion="give folders that `ktgraph run` wrote")
    return Method(str(config.get("name") or folder.name), folder, config, summaries, unfinished)


def open_methods(paths: list[str]) -> list[Method]:
    """The methods, each labelled by its graph's name (and its folder where two share a name)."""
    methods = [open_method(p) for p in paths]
    shared = {label for label, count in Counter(m.label for m in methods).items() if count > 1}
    for method in methods:  # counted before any is renamed: every method of a shared name shows its folder
        if method.label in shared:
            method.label = f"{method.label} ({method.source.name})"
    repeated = [label for label, count in Counter(m.label for m in methods).items() if count > 1]
    if repeated:
        raise GraphError(f"`{repeated[0]}` is given twice", file="command line", suggestion="give each folder once")
    return methods


def _recipe(config: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for two runs to compare methods: data and training recipe (seeds left out)."""
    trained = trained_config(config)
    train = {k: v for k, v in trained.get("train", {}).items() if k != "seed"}
    return {"data": trained.get("data"), "train": train}


def mismatch(methods: list[Method]) -> GraphError | None:
    """The first difference in data, training recipe or a shared network name, as a located error."""
    first = methods[0]
    for other in methods[1:]:
        difference = config_difference(_recipe(other.config), _recipe(first.config),
                                       here=f"in {first.source}", there=f"in {other.source}")
        if difference is None:
            nets = first.config.get("networks", {}), other.config.get("networks", {})
            shared = [n for n in nets[0] if n in nets[1]]
            mine = {n: {f: nets[0][n].get(f) for f in NETWORK_FIELDS} for n in shared}
            theirs = {n: {f: nets[1][n].get(f) for f in NETWORK_FIELDS} for n in shared}
            difference = config_difference({"networks": theirs}, {"networks": mine},
                                           here=f"in {first.source}", there=f"in {other.source}")
        if difference is not None:
            return GraphError(f"these runs do not compare methods: {difference}", file=str(other.source),
                              suggestion="compare runs with the same data, networks and training recipe "
                                         "(graphs/recipes/), or compare them anyway with `ktgraph compare "
                                         "--allow-mismatch`")
    return None


def default_nodes(methods: list[Method]) -> list[str]:
    """Every method's networks, then their average, then every ensemble, in order of appearance."""
    networks: list[str] = []
    ensembles: list[str] = []
    for method in methods:
        for node, kind in method.kinds().items():
            target = networks if kind == "network" else ensembles if kind == "ensemble" else None
            if target is not None and node not in target:
                target.append(node)
    return [*networks, AVERAGE, *ensembles]


def check_nodes(methods: list[Method], nodes: list[str]) -> None:
    known = {n for m in methods for n in m.nodes()} | {AVERAGE}
    for node in nodes:
        if node not in known:
            raise GraphError(f"no compared run has a node `{node}`", file="command line",
                             suggestion=did_you_mean(node, known) or f"nodes: {', '.join(sorted(known))}")


def find_baseline(methods: list[Method], name: str) -> Method:
    for method in methods:
        if name in (method.label, method.config.get("name"), method.source.name, str(method.source)):
            return method
    raise GraphError(f"--baseline `{name}` is none of the compared methods", file="command line",
                     suggestion=did_you_mean(name, [m.label for m in methods])
                     or f"methods: {', '.join(m.label for m in methods)}")


@dataclass
class Cell:
    """One method at one node: its spread over seeds and, against the baseline, the paired gain."""

    method: str
    node: str
    values: dict[int, float]
    spread: Spread | None
    gain: Paired | None = None
    within_spread: bool = False


def cells(methods: list[Method], nodes: list[str], metric: str, baseline: Method | None) -> list[Cell]:
    """Every (method, node) cell; a gain is smaller than the spread when its size is below the larger of
    the two methods' seed-to-seed standard deviations at that node."""
    found = []
    for method in methods:
        for node in nodes:
            values = method.values(node, metric)
            cell = Cell(method.label, node, values, spread(list(values.values())) if values else None)
            if baseline is not None and baseline is not method and values:
                base = baseline.values(node, metric)
                cell.gain = paired(values, base)
                if cell.gain is not None:
                    stds = [s for s in (cell.spread.std, spread(list(base.values())).std) if s is not None]
                    cell.within_spread = bool(stds) and abs(cell.gain.difference.mean) < max(stds)
            found.append(cell)
    return found
