"""From a validated spec to a resolved graph: every name checked, every shorthand expanded.

This stage needs no torch: it only knows names. Shapes (and so adapters) are decided
later, when the modules are built.
"""
from __future__ import annotations

import itertools
import string
from dataclasses import dataclass
from typing import Any

import networkx as nx

from ..errors import GraphError, unknown_name
from ..spec.loader import LoadedGraph
from ..spec.schema import AttentionAggregator, GraphSpec, NetworkSpec, StageSpec
from .refs import ALL, LABEL, Ref

Where = tuple[str | int, ...]


@dataclass(frozen=True)
class Network:
    name: str
    spec: NetworkSpec
    segments: tuple[str, ...]  # "net.part", in order


@dataclass(frozen=True)
class Path:
    """A chain of segments; ``adapter`` says how to join segments whose shapes differ."""

    name: str
    segments: tuple[str, ...]
    adapter: str
    owners: tuple[str, ...]  # the network of each segment
    where: Where = ()

    @property
    def is_cross(self) -> bool:
        return len(set(self.owners)) > 1

    def junctions(self) -> list[tuple[str, str]]:
        """Consecutive segment pairs from different networks (where adapters may sit)."""
        return [(a, b) for a, b, oa, ob in zip(self.segments, self.segments[1:], self.owners, self.owners[1:])
                if oa != ob]


def junction_key(upstream: str, downstream: str) -> str:
    """The name of the adapter between two segments, e.g. ``a.up>b.down``."""
    return f"{upstream}>{downstream}"


@dataclass(frozen=True)
class Aggregator:
    name: str
    kind: str
    inputs: tuple[Ref, ...]
    features: tuple[Ref, ...] = ()
    reduction: int = 8
    where: Where = ()

    def outputs(self) -> tuple[str, ...]:
        """Mean gives one output named like the aggregator; attention one per input."""
        if self.kind == "attention":
            return tuple(f"{self.name}.{ref.name}" for ref in self.inputs)
        return (self.name,)


@dataclass(frozen=True)
class Link:
    """One resolved, expanded link. ``trains`` is None for "the target's own parameters"."""

    name: str
    kind: str
    source: Ref
    target: Ref
    weight: float
    gate: str
    gate_length: int
    trains: frozenset[str] | None
    T: float = 1.0
    detach: bool = True
    loss: str = "mse"
    adapter: str = "auto"
    where: Where = ()


@dataclass
class KTGraph:
    """The resolved graph: networks, paths, aggregators, links, and a networkx view."""

    spec: GraphSpec
    networks: dict[str, Network]
    paths: dict[str, Path]
    aliases: dict[str, str]
    aggregators: dict[str, Aggregator]
    links: list[Link]
    stages: list[StageSpec]
    source: Any = None

    @property
    def segments(self) -> list[str]:
        return [s for net in self.networks.values() for s in net.segments]

    def network_of(self, segment: str) -> str:
        return segment.split(".", 1)[0]

    def owner_network(self, owner: str) -> str | None:
        """The network a parameter owner belongs to; None for adapters, aggregators, regressors."""
        network = self.network_of(owner)
        return network if network in self.networks and owner in self.networks[network].segments else None

    def path_of_feature(self, segment: str) -> tuple[str, ...]:
        """The own-path prefix that ends in ``segment``."""
        net = self.networks[self.network_of(segment)]
        return net.segments[: net.segments.index(segment) + 1]


class _Builder:
    def __init__(self, loaded: LoadedGraph | GraphSpec) -> None:
        self.spec = loaded.spec if isinstance(loaded, LoadedGraph) else loaded
        self.source = loaded.source if isinstance(loaded, LoadedGraph) else None
        self.networks: dict[str, Network] = {}
        self.paths: dict[str, Path] = {}
        self.aliases: dict[str, str] = {}
        self.aggregators: dict[str, Aggregator] = {}

    # --- networks and paths -------------------------------------------------------
    def networks_(self) -> None:
        for name, spec in self.spec.networks.items():
            segments = tuple(f"{name}.{part}" for part in spec.part_names())
            self.networks[name] = Network(name, spec, segments)
            self.paths[name] = Path(name, segments, "none", (name,) * len(segments), ("networks", name))
            self.aliases["-".join([name] * len(segments))] = name

    def segment(self, ref: str, where: Where) -> str:
        if ref not in self.segment_names:
            raise unknown_name("segment", ref, self.segment_names, where)
        return ref

    @property
    def segment_names(self) -> list[str]:
        return [s for net in self.networks.values() for s in net.segments]

    def add_path(self, path: Path) -> None:
        if path.name in self.paths or path.name in self.aliases:
            existing = self.paths.get(self.aliases.get(path.name, path.name))
            if existing and existing.segments == path.segments:
                return
            raise GraphError(f"path name `{path.name}` is used twice", where=path.where,
                             suggestion="rename one of the paths")
        self.paths[path.name] = path

    def declared_paths(self) -> None:
        for name, spec in self.spec.paths.items():
            where = ("paths", name)
            if name in self.networks:
                raise GraphError(f"path `{name}` has the name of a network", where=where)
            segments = tuple(self.segment(s, where + ("segments", i)) for i, s in enumerate(spec.segments))
            self._check_order(name, segments, where)
            own = self.networks[segments[-1].split(".")[0]].segments
            if segments[-1] != own[-1]:
                raise GraphError(f"path `{name}` ends with `{segments[-1]}`, an intermediate feature; a path "
                                 "must end with a network's last part, which gives class logits",
                                 where=where + ("segments", len(segments) - 1),
                                 suggestion=f"end the path with `{own[-1]}`; to compare features use a mimic link "
                                            "on `net.part`")
            self.add_path(Path(name, segments, spec.adapter, tuple(s.split(".")[0] for s in segments), where))

    def _check_order(self, name: str, segments: tuple[str, ...], where: Where) -> None:
        """A path reads the image first, and segments of one network follow each other in its order."""
        first = self.networks[segments[0].split(".")[0]].segments
        if segments[0] != first[0]:
            raise GraphError(f"path `{name}` starts with `{segments[0]}`, which reads the output of "
                             f"`{first[first.index(segments[0]) - 1]}`, not the input image",
                             where=where + ("segments", 0), suggestion=f"start the path with a first part such as "
                                                                       f"`{first[0]}`")
        for i, (a, b) in enumerate(zip(segments, segments[1:]), start=1):
            own = self.networks[a.split(".")[0]].segments
            if b in own and own.index(b) != own.index(a) + 1:
                after = own[own.index(a) + 1] if own.index(a) + 1 < len(own) else "nothing (it is the last part)"
                raise GraphError(f"path `{name}`: `{b}` cannot follow `{a}`; in its network `{a}` is followed "
                                 f"by {after if after.startswith('nothing') else f'`{after}`'}",
                                 where=where + ("segments", i), expected="the parts of one network in their order")

    def crosses(self) -> None:
        for index, cross in enumerate(self.spec.crosses):
            where: Where = ("crosses", index)
            for i, net in enumerate(cross.networks):
                if net not in self.networks:
                    raise unknown_name("network", net, self.networks, where + ("networks", i))
            if len(set(cross.networks)) != len(cross.networks):
                raise GraphError("a network is listed twice", where=where + ("networks",))
            parts = self.spec.networks[cross.networks[0]].part_names()
            for net in cross.networks[1:]:
                if self.spec.networks[net].part_names() != parts:
                    raise GraphError(
                        f"networks crossed together must have the same parts; `{cross.networks[0]}` has "
                        f"{parts} but `{net}` has {self.spec.networks[net].part_names()}",
                        where=where + ("networks",), suggestion="give them the same `parts:` names and cut counts")
            if len(parts) < 2:
                raise GraphError("crossed networks need at least one cut", where=where,
                                 suggestion="add `cuts:` to the networks")
            module_cuts = self.spec.networks[cross.networks[0]].cuts
            for ci, cut in enumerate(cross.cut or []):
                if cut not in parts[:-1] and cut in module_cuts:
                    raise GraphError(f"cross cut `{cut}` is a module name; a cross cuts at a part name",
                                     where=where + ("cut", ci), expected="one of: " + ", ".join(parts[:-1]),
                                     suggestion=f"write `cut: {parts[module_cuts.index(cut)]}` (the part that "
                                                f"ends at `{cut}`)")
            for combo in self._combinations(cross.kind, cross.networks, parts, cross.cut, where):
                segments = tuple(f"{net}.{part}" for net, part in zip(combo, parts))
                self.add_path(Path("-".join(combo), segments, cross.adapter, combo, where))

    @staticmethod
    def _combinations(kind: str, nets: list[str], parts: list[str], cuts: list[str] | None,
                      where: Where) -> list[tuple[str, ...]]:
        if kind == "all":
            if cuts is not None:
                raise GraphError("`cut` applies to kind xml only (kind all crosses at every cut)",
                                 where=where + ("cut",))
            return [c for c in itertools.product(nets, repeat=len(parts)) if len(set(c)) > 1]
        allowed = parts[:-1]
        combos = []
        for ci, cut in enumerate(cuts or allowed):
            if cut not in allowed:
                raise unknown_name("cut (a part name other than the last)", cut, allowed, where + ("cut", ci))
            split = parts.index(cut) + 1
            for up, down in itertools.permutations(nets, 2):
                combos.append((up,) * split + (down,) * (len(parts) - split))
        return combos

    # --- references -------------------------------------------------------------
    def ref(self, name: str, where: Where, *, allow_label: bool = False) -> Ref:
        if name == LABEL and allow_label:
            return Ref("label", LABEL)
        if name in self.paths:
            return Ref("logits", name)
        if name in self.aliases:
            return Ref("logits", self.aliases[name])
        if name in self.segment_names:
            net = self.networks[name.split(".")[0]]
            if name == net.segments[-1]:
                return Ref("logits", net.name)
            return Ref("feature", name)
        outputs = {o: agg for agg in self.aggregators.values() for o in agg.outputs()}
        if name in outputs:
            return Ref("aggregate", name)
        if name in self.aggregators:
            raise GraphError(f"aggregator `{name}` has one output per input",
                             where=where, expected="one of " + ", ".join(self.aggregators[name].outputs()))
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
        known = list(self.paths) + list(self.aliases) + self.segment_names + list(outputs)
        raise unknown_name("node", name, known + ([LABEL] if allow_label else []), where)

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
            for inp in list(agg.inputs) + list(getattr(agg, "features", [])):
                base = inp.split(".")[0]
                if base in pending:
                    order.add_edge(base, name)
        try:
            ordered = list(nx.topological_sort(order))
        except nx.NetworkXUnfeasible:
            cycle = " -> ".join(a for a, _ in nx.find_cycle(order))
            raise GraphError(f"aggregators read each other in a cycle: {cycle}",
                             where=("aggregators", cycle.split(" ")[0])) from None
        for name in ordered:
            agg = pending[name]
            where: Where = ("aggregators", name)
            inputs = tuple(self.ref(r, where + ("inputs", i)) for i, r in enumerate(agg.inputs))
            for i, r in enumerate(inputs):
                if not r.predicts:
                    raise GraphError(f"`{r}` is a feature, not logits", where=where + ("inputs", i),
                                     expected="a network, path or aggregator output")
            features: tuple[Ref, ...] = ()
            if isinstance(agg, AttentionAggregator):
                features = tuple(self.ref(r, where + ("features", i)) for i, r in enumerate(agg.features))
                for i, r in enumerate(features):
                    if r.kind != "feature":
                        raise GraphError(f"`{r}` is not an intermediate feature", where=where + ("features", i),
                                         expected="a segment output `net.part` that is not the last part")
            self.aggregators[name] = Aggregator(name, agg.kind, inputs, features,
                                                getattr(agg, "reduction", 8), where)

    # --- links --------------------------------------------------------------------
    def expand(self, index: int, link: Any) -> list[dict[str, Any]]:
        where: Where = ("links", index)
        fields = link.model_dump()
        if not link.each:
            return [fields]
        names = list(link.each)
        out = []
        for values in itertools.product(*(link.each[n] for n in names)):
            if link.distinct and len(set(values)) < len(values):
                continue
            env = dict(zip(names, values))
            out.append({k: self._fill(v, env, where + (k,)) for k, v in fields.items()})
        if not out:
            raise GraphError("`each` expands to no link", where=where + ("each",),
                             suggestion="with distinct: true, every variable needs values that differ")
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
        return value

    def trains(self, names: list[str] | None, where: Where) -> frozenset[str] | None:
        if names is None:
            return None
        owners: set[str] = set()
        for i, name in enumerate(names):
            if name == ALL:
                owners.add(ALL)
            elif name in self.networks:
                owners.update(self.networks[name].segments)
            elif name in self.segment_names or name in self.aggregators:
                owners.add(name)
            elif ">" in name and all(p in self.segment_names for p in name.split(">")):
                owners.add(name)
            else:
                known = list(self.networks) + self.segment_names + list(self.aggregators) + [ALL]
                raise unknown_name("thing to train", name, known, where + (i,))
        return frozenset(owners)

    def links_(self) -> list[Link]:
        links: list[Link] = []
        names: dict[str, Where] = {}
        for index, spec in enumerate(self.spec.links):
            for fields in self.expand(index, spec):
                where: Where = ("links", index)
                source = self.ref(fields["source"], where + ("source",), allow_label=True)
                target = self.ref(fields["target"], where + ("target",))
                kind = fields["kind"]
                if kind in ("ce", "kl") and not target.predicts:
                    raise GraphError(f"a {kind} link needs a target that predicts classes; `{target}` is a feature",
                                     where=where + ("target",), suggestion="use kind: mimic for features")
                if kind == "kl" and not source.predicts:
                    raise GraphError(f"a kl link needs logits as source; `{source}` is a {source.kind}",
                                     where=where + ("source",),
                                     suggestion="use kind: ce to learn from the label" if source.kind == "label"
                                     else "use kind: mimic for features")
                if kind == "mimic" and source.kind == "label":
                    raise GraphError("a mimic link needs a feature as source", where=where + ("source",))
                gate = fields["gate"]
                if gate["kind"] == "correct" and not (source.predicts or source.kind == "label"):
                    raise GraphError("the correct gate needs a source that predicts classes",
                                     where=where + ("gate",), expected="through, cutoff, linear or ramp")
                name = fields["name"] or (f"ce:{target}" if kind == "ce" else f"{kind}:{source}->{target}")
                if name in names:
                    raise GraphError(f"two links are named `{name}`", where=where,
                                     suggestion="give one of them a `name:`")
                names[name] = where
                links.append(Link(
                    name=name, kind=kind, source=source, target=target, weight=float(fields["weight"]),
                    gate=gate["kind"], gate_length=gate["length"],
                    trains=self.trains(fields["trains"], where + ("trains",)),
                    T=fields.get("T", 1.0), detach=fields.get("detach", True), loss=fields.get("loss", "mse"),
                    adapter=fields.get("adapter", "auto"), where=where))
        return links

    def stages(self, links: list[Link]) -> None:
        link_names = [l.name for l in links]
        for si, stage in enumerate(self.spec.stages):
            for li, name in enumerate(stage.links or []):
                if name not in link_names:
                    raise unknown_name("link", name, link_names, ("stages", si, "links", li))
            for fi, net in enumerate(stage.freeze):
                if net not in self.networks:
                    raise unknown_name("network", net, self.networks, ("stages", si, "freeze", fi))

    def build(self) -> KTGraph:
        self.networks_()
        self.declared_paths()
        self.crosses()
        self.aggregators_()
        links = self.links_()
        self.stages(links)
        graph = KTGraph(self.spec, self.networks, self.paths, self.aliases, self.aggregators, links,
                        list(self.spec.stages), self.source)
        return graph


def build_graph(loaded: LoadedGraph | GraphSpec) -> KTGraph:
    """Resolve every reference of a spec; errors are located in the file it came from."""
    builder = _Builder(loaded)
    try:
        return builder.build()
    except GraphError as err:
        if builder.source is not None:
            builder.source.locate(err)
        raise
