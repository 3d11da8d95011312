"""From a validated spec to a resolved graph: every name checked, every shorthand expanded.

This stage needs no model: it only knows names. Shapes (and so adapters and regressors) are
decided when the graph is bound to its modules (:mod:`ktgraph.bind`).
"""
from __future__ import annotations

import itertools
import string
from pathlib import Path as FilePath
from typing import Any

import networkx as nx
from pydantic import BaseModel

from ..errors import GraphError, unknown_name
from ..kinds import AGGREGATORS, GATES, LINKS, AggregatorKind, LinkKind
from ..spec.loader import LoadedGraph, load_spec
from ..spec.schema import GraphSpec
from ..spec.validate import validate_section
from .cells import cell_gates
from .ids import AdapterId, AggregatorId, ModuleId
from .optim import check_networks, network_groups, stage_optimizer
from .records import ALL, LABEL, Aggregator, Ensemble, KTGraph, Link, Ref, Scales, Stage, Where
from .structure import Structure

ENSEMBLE_NETWORKS = "mean(networks)"
ENSEMBLE_PATHS = "mean(paths)"


class _Builder(Structure):
    def __init__(self, loaded: LoadedGraph | GraphSpec) -> None:
        super().__init__(loaded.spec if isinstance(loaded, LoadedGraph) else loaded)
        self.source = loaded.source if isinstance(loaded, LoadedGraph) else None
        self.aggregators: dict[str, Aggregator] = {}

    # --- references -------------------------------------------------------------
    def ref(self, name: str, where: Where, *, allow_label: bool = False) -> Ref:
        if name == LABEL and allow_label:
            return Ref("label", LABEL)
        if name in self.paths:
            return Ref("logits", name)
        if name in self.aliases:
            return Ref("logits", self.aliases[name])
        if name in self.segment_ids:
            segment = self.segment_ids[name]
            if segment == self.networks[segment.network].segments[-1]:
                return Ref("logits", segment.network)
            return Ref("feature", name, segment)
        outputs = {o: agg for agg in self.aggregators.values() for o in agg.outputs}
        if name in outputs:
            return Ref("aggregate", name)
        if name in self.aggregators:
            raise GraphError(f"aggregator `{name}` has one output per input",
                             where=where, expected="one of " + ", ".join(self.aggregators[name].outputs))
        pieces = name.split("-")
        if len(pieces) > 1 and all(p in self.networks for p in pieces):
            nets = ", ".join(dict.fromkeys(pieces))
            raise GraphError(f"unknown path `{name}`", where=where,
                             expected="a path declared under `paths:` or made by `crosses:`",
                             suggestion=f"add `crosses: [{{kind: xml, networks: [{nets}]}}]` "
                                        f"or declare `{name}` under `paths:`")
        if "{" in name:
            raise GraphError(f"unknown node `{name}`", where=where, expected="a network, path, `net.part` or "
                             "aggregator output", suggestion="placeholders like `{i}` need `each: {i: [...]}` "
                                                             "on the same link")
        known = list(self.paths) + list(self.aliases) + list(self.segment_ids) + list(outputs)
        raise unknown_name("node", name, known + ([LABEL] if allow_label else []), where)

    # --- aggregators ---------------------------------------------------------------
    def aggregators_(self) -> None:
        pending = dict(self.spec.aggregators)
        for name in pending:
            if name in self.paths or name in self.aliases:
                raise GraphError(f"aggregator `{name}` has the name of a network or path",
                                 where=("aggregators", name), suggestion="choose another name")
        # Aggregators may read other aggregators: resolve in dependency order.
        order = nx.DiGraph()
        for name, agg in pending.items():
            order.add_node(name)
            for inp in list(agg.inputs) + list(agg.features):
                if inp.split(".")[0] in pending:
                    order.add_edge(inp.split(".")[0], name)
        try:
            ordered = list(nx.topological_sort(order))
        except nx.NetworkXUnfeasible:
            cycle = " -> ".join(a for a, _ in nx.find_cycle(order))
            raise GraphError(f"aggregators read each other in a cycle: {cycle}",
                             where=("aggregators", cycle.split(" ")[0])) from None
        for name in ordered:
            entry = pending[name]
            where: Where = ("aggregators", name)
            unit: AggregatorKind = _unit(AGGREGATORS.get(entry.kind), entry, where)
            if unit.needs_heldout and self.spec.data.val_split == 0:
                raise GraphError(f"the {unit.kind} aggregator estimates its state on the validation split, and "
                                 "the data has none", where=where + ("kind",),
                                 suggestion="set data.val_split (e.g. 0.1)")
            if len(entry.inputs) < unit.min_inputs:
                raise GraphError(f"the {unit.kind} aggregator needs at least {unit.min_inputs} inputs",
                                 where=where + ("inputs",))
            inputs = tuple(self.ref(r, where + ("inputs", i)) for i, r in enumerate(entry.inputs))
            for i, r in enumerate(inputs):
                if not r.predicts:
                    raise GraphError(f"`{r}` is a feature, not logits", where=where + ("inputs", i),
                                     expected="a network, path or aggregator output")
            if unit.reads_features == "none" and entry.features:
                raise GraphError(f"the {unit.kind} aggregator reads no features", where=where + ("features",))
            if unit.reads_features == "one_per_input" and len(entry.features) != len(entry.inputs):
                raise GraphError("`features` needs one feature per input (the pooled feature of that peer)",
                                 where=where + ("features",))
            if unit.reads_features == "one" and len(entry.features) != 1:
                raise GraphError(f"the {unit.kind} aggregator reads one feature", where=where + ("features",),
                                 expected="`features: [net.part]`, e.g. the shared trunk's output")
            features = tuple(self.ref(r, where + ("features", i)) for i, r in enumerate(entry.features))
            for i, r in enumerate(features):
                if r.kind != "feature":
                    raise GraphError(f"`{r}` is not an intermediate feature", where=where + ("features", i),
                                     expected="a segment output `net.part` that is not the last part")
            self.aggregators[name] = Aggregator(name, unit, inputs, features, where)

    def ensembles(self) -> dict[str, Ensemble]:
        """The networks' mean, and all paths' mean when there are cross paths."""
        found = {}
        if len(self.networks) > 1:
            found[ENSEMBLE_NETWORKS] = Ensemble(ENSEMBLE_NETWORKS, tuple(self.networks),
                                                f"mean logits of {len(self.networks)} networks")
        if len(self.paths) > len(self.networks):
            found[ENSEMBLE_PATHS] = Ensemble(ENSEMBLE_PATHS, tuple(self.paths),
                                             f"mean logits of all {len(self.paths)} paths")
        return found

    # --- links --------------------------------------------------------------------
    def expand(self, index: int, link: Any) -> list[tuple[dict[str, Any], Where, tuple[str, ...]]]:
        """The template's links, each with where its gate was written (the link's `gate`, or a `gates` cell)
        and the `each` values it was made from."""
        where: Where = ("links", index)
        fields = link.model_dump()
        gates = fields.pop("gates")
        if not link.each:
            if gates is not None:
                raise GraphError("`gates` sets the gate of each link an `each` template makes; this link has no "
                                 "`each`", where=where + ("gates",), suggestion="write its gate in `gate:`")
            return [(fields, where + ("gate",), ())]
        names = list(link.each)
        made: dict[tuple[str, ...], dict[str, Any]] = {}
        for values in itertools.product(*(link.each[n] for n in names)):
            if link.distinct and len(set(values)) < len(values):
                continue
            env = dict(zip(names, values))
            made[values] = {k: self._fill(v, env, where + (k,)) for k, v in fields.items()}
        if not made:
            raise GraphError("`each` expands to no link", where=where + ("each",),
                             suggestion="with distinct: true, every variable needs values that differ")
        cells = cell_gates(gates, link.each, set(made), where + ("gates",)) if gates is not None else {}
        out = []
        for values, filled in made.items():
            gate, gate_where = cells.get(values, (filled["gate"], where + ("gate",)))
            out.append(({**filled, "gate": gate}, gate_where, values))
        return out

    def _fill(self, value: Any, env: dict[str, str], where: Where) -> Any:
        if isinstance(value, str):
            try:
                fields = list(string.Formatter().parse(value))
            except ValueError as err:
                raise GraphError(f"`{value}` is not a valid template: {err}", where=where,
                                 expected="placeholders written `{name}`; write `{{` or `}}` for a brace") from None
            for _, field_name, _, _ in fields:
                if field_name is not None and field_name not in env:
                    raise GraphError(f"`{{{field_name}}}` is not a variable of `each`", where=where,
                                     expected="one of " + ", ".join("{%s}" % v for v in env))
            try:
                return value.format_map(env)
            except (ValueError, AttributeError, IndexError, KeyError, TypeError) as err:
                raise GraphError(f"`{value}` cannot be filled in: {err}", where=where,
                                 expected="plain placeholders such as `{i}`") from None
        if isinstance(value, list):
            return [self._fill(v, env, where) for v in value]
        if isinstance(value, dict) and where[-1:] == ("trains",):  # a scaled entry: {"{i}.trunk": 0.5}
            return {self._fill(k, env, where): v for k, v in value.items()}
        return value

    def trains(self, entries: list[str | dict[str, float]] | None,
               where: Where) -> tuple[frozenset[ModuleId] | None, bool, Scales]:
        """What a link's ``trains`` names, whether it says ``all``, and the gradient factors it gives."""
        if entries is None:
            return None, False, ()
        owners: set[ModuleId] = set()
        scales: dict[ModuleId, float] = {}
        everything = False
        for i, entry in enumerate(entries):
            name, factor = next(iter(entry.items())) if isinstance(entry, dict) else (entry, None)
            if name == ALL:
                if factor is not None:
                    raise GraphError("`all` cannot be scaled", where=where + (i,),
                                     suggestion="scale the modules themselves, e.g. `{b1.trunk: 0.5}`")
                everything = True
                continue
            named = self.owners_named(name, where + (i,))
            owners |= named
            scales.update((owner, factor) for owner in named if factor is not None)
        return frozenset(owners), everything, tuple(sorted(scales.items(), key=lambda item: str(item[0])))

    def owners_named(self, name: str, where: Where) -> frozenset[ModuleId]:
        up, _, down = name.partition(">")
        if name in self.networks:
            return frozenset(self.networks[name].segments)
        if name in self.segment_ids:
            return frozenset({self.segment_ids[name]})
        if name in self.aggregators:
            return frozenset({AggregatorId(name)})
        if up in self.segment_ids and down in self.segment_ids:
            return frozenset({AdapterId(self.segment_ids[up], self.segment_ids[down])})
        known = list(self.networks) + list(self.segment_ids) + list(self.aggregators) + [ALL]
        raise unknown_name("thing to train", name, known, where)

    def link(self, fields: dict[str, Any], where: Where, gate_where: Where, cell: tuple[str, ...] = ()) -> Link:
        loss: LinkKind = _unit(LINKS.get(fields["kind"]), fields, where)
        gate = _unit(GATES.get(fields["gate"]["kind"], gate_where + ("kind",)), fields["gate"], gate_where,
                     own_fields_only=False)
        source = self.ref(fields["source"], where + ("source",), allow_label=True)
        target = self.ref(fields["target"], where + ("target",))
        kind = loss.kind
        if loss.target_must == "logits" and not target.predicts:
            raise GraphError(f"a {kind} link needs a target that predicts classes; `{target}` is a feature",
                             where=where + ("target",), suggestion="use kind: mimic for features")
        if loss.source_must == "label" and source.kind != "label":
            raise GraphError(f"a {kind} link learns from the label; `{source}` cannot be its source",
                             where=where + ("source",), suggestion="leave `source` out (or write `source: label`)")
        if loss.source_must == "logits" and not source.predicts:
            raise GraphError(f"a {kind} link needs logits as source; `{source}` is a {source.kind}",
                             where=where + ("source",),
                             suggestion="use kind: ce to learn from the label" if source.kind == "label"
                             else "use kind: mimic for features")
        if loss.source_must == "value" and source.kind == "label":
            raise GraphError(f"a {kind} link needs a feature as source", where=where + ("source",))
        if gate.masks and not (source.predicts or source.kind == "label"):
            raise GraphError(f"the {gate.kind} gate needs a source that predicts classes", where=gate_where,
                             expected=", ".join(g for g in GATES if not GATES[g].masks))
        trains, everything, scales = self.trains(fields["trains"], where + ("trains",))
        name = fields["name"] or (f"{kind}:{target}" if source.kind == "label" else f"{kind}:{source}->{target}")
        return Link(name=name, loss=loss, gate=gate, source=source, target=target, weight=float(fields["weight"]),
                    trains=trains, trains_all=everything, train_adapters=bool(fields["train_adapters"]), where=where,
                    cell=cell, scales=scales)

    def links_(self) -> list[Link]:
        links: list[Link] = []
        names: set[str] = set()
        for index, spec in enumerate(self.spec.links):
            for fields, gate_where, cell in self.expand(index, spec):
                link = self.link(fields, ("links", index), gate_where, cell)
                if link.name in names:
                    raise GraphError(f"two links are named `{link.name}`", where=link.where,
                                     suggestion="give one of them a `name:`")
                names.add(link.name)
                links.append(link)
        return links

    def stages(self, links: list[Link]) -> list[Stage]:
        link_names = [link.name for link in links]
        train = self.spec.train
        check_networks(train, self.spec.networks)
        stages = []
        for si, stage in enumerate(self.spec.stages):
            for li, name in enumerate(stage.links or []):
                if name not in link_names:
                    raise unknown_name("link", name, link_names, ("stages", si, "links", li))
            for fi, net in enumerate(stage.freeze):
                if net not in self.networks:
                    raise unknown_name("network", net, self.networks, ("stages", si, "freeze", fi))
            optimizer, schedule = stage_optimizer(train, stage.optimizer, stage.schedule, ("stages", si))
            stages.append(Stage(stage.name, stage.epochs or train.epochs, optimizer, schedule,
                                None if stage.links is None else frozenset(stage.links), frozenset(stage.freeze),
                                network_groups(train, self.spec.networks, stage.name, optimizer)))
        return stages or [Stage("main", train.epochs, train.optimizer, train.schedule,
                                groups=network_groups(train, self.spec.networks, "main", train.optimizer))]

    def document(self) -> dict[str, Any]:
        """The fully resolved file as plain data; relative ``imports:`` files made absolute, and ``weights``
        files and runs too (they are read relative to the working directory), so that a run's config.yaml
        means the same from any directory."""
        document = self.spec.model_dump(mode="json")
        if document.get("search") is None:  # only a search file has one
            document.pop("search", None)
        # No override written, none recorded: a run whose checkpoint predates these fields still resumes.
        for entry, keys in [*((n, ("optimizer",)) for n in document["networks"].values()),
                            *((s, ("optimizer", "schedule")) for s in document["stages"])]:
            for key in keys:
                if not entry[key]:
                    del entry[key]
        if self.source is not None and document.get("imports"):
            base = FilePath(self.source.file).resolve().parent
            document["imports"] = [str((base / name).resolve()) if name.endswith(".py") else name
                                   for name in document["imports"]]
        for network in document["networks"].values():
            weights = network.get("weights")
            if isinstance(weights, str):
                network["weights"] = str(FilePath(weights).resolve())
            elif isinstance(weights, dict):
                weights["run"] = str(FilePath(weights["run"]).resolve())
        return document

    def build(self) -> KTGraph:
        self.networks_()
        self.declared_paths()
        self.crosses()
        self.aggregators_()
        links = self.links_()
        spec = self.spec
        if spec.train.calibrate.split == "val" and spec.data.val_split == 0:
            raise GraphError("train.calibrate.split is `val` but the data has no validation split",
                             where=("train", "calibrate", "split"),
                             suggestion="set data.val_split (e.g. 0.1), or calibrate on split: train")
        return KTGraph(spec.name, spec.description, self.networks, self.paths, self.aliases, self.aggregators,
                       self.ensembles(), links, self.stages(links), bool(spec.stages), spec.data, spec.train,
                       self.document(), self.source, self.mappings)


def _unit(cls: type[BaseModel], fields: Any, where: Where, *, own_fields_only: bool = True) -> Any:
    """A unit from a file entry's fields: the common fields of its section left out, or (a gate, which
    has none) every field checked, so that a `gates` cell's unknown field is an error too."""
    data = fields.model_dump() if isinstance(fields, BaseModel) else fields
    return validate_section(cls, {k: v for k, v in data.items() if k in cls.model_fields or not own_fields_only}, where)


def load_graph(path: str | FilePath, overrides: list[str] | tuple[str, ...] = (), *,
               allow_imports: bool = False) -> KTGraph:
    """Read, validate and resolve a graph file; its ``imports:`` run only with ``allow_imports``."""
    return build_graph(load_spec(path, overrides, allow_imports=allow_imports))


def build_graph(loaded: LoadedGraph | GraphSpec) -> KTGraph:
    """Resolve every reference of a spec; errors are located in the file it came from."""
    builder = _Builder(loaded)
    try:
        return builder.build()
    except GraphError as err:
        if builder.source is not None:
            builder.source.locate(err)
        raise
