"""Networks and paths: the segments each network is cut into, declared paths and generated crosses."""
from __future__ import annotations

import itertools

from ..errors import GraphError, unknown_name
from ..spec.schema import GraphSpec, MappingSpec, RunWeightsSpec
from .ids import SegmentId
from .records import CrossMapping, Network, Path, RunWeights, Where, declared_pairs


class Structure:
    """Networks, their segments and every path, resolved from a spec (the first half of building a graph)."""

    def __init__(self, spec: GraphSpec) -> None:
        self.spec = spec
        self.networks: dict[str, Network] = {}
        self.paths: dict[str, Path] = {}
        self.aliases: dict[str, str] = {}
        self.segment_ids: dict[str, SegmentId] = {}
        self.mappings: list[CrossMapping] = []

    def networks_(self) -> None:
        for name, spec in self.spec.networks.items():
            for part in spec.shares:
                if part not in spec.part_names():
                    raise unknown_name("part", part, spec.part_names(), ("networks", name, "shares", part))
            segments = tuple(self.shared(name, part, i) if part in spec.shares else SegmentId(name, part)
                             for i, part in enumerate(spec.part_names()))
            self.segment_ids.update((f"{name}.{s.part}", s) for s in segments)
            weights = spec.weights if not isinstance(spec.weights, RunWeightsSpec) else RunWeights(
                spec.weights.run, spec.weights.network, spec.weights.checkpoint)
            self.networks[name] = Network(name, spec.model, tuple(spec.cuts), segments, spec.cifar_stem,
                                          weights, spec.frozen, dict(spec.kwargs))
            self.paths[name] = Path(name, segments, "none", ("networks", name), self.declared)
            self.aliases["-".join([name] * len(segments))] = name

    def shared(self, name: str, part: str, index: int) -> SegmentId:
        """The owner's segment that network ``name`` runs as its ``index``-th part (``shares: {part: owner}``).

        Only a leading run of parts can be shared (a trunk: it reads the image, so it is computed once for
        every branch), from a network declared earlier that owns it, built from the same model and cuts."""
        spec = self.spec.networks[name]
        owner = spec.shares[part]
        where = ("networks", name, "shares", part)
        parts = spec.part_names()
        if any(p not in spec.shares for p in parts[:index]):
            raise GraphError(f"`{name}` shares `{part}` but not the parts before it", where=where,
                             suggestion="share a trunk: the first parts, in order (" + ", ".join(parts[:index + 1]) + ")")
        if owner not in self.networks:
            raise unknown_name("network declared before this one", owner, self.networks, where)
        segment = self.networks[owner].segments[index]
        if segment.network != owner:
            raise GraphError(f"`{owner}` shares `{segment}` itself", where=where,
                             suggestion=f"write `{part}: {segment.network}`, the network that owns it")
        theirs, ours = self.spec.networks[owner], spec
        for field in ("model", "cuts", "cifar_stem", "kwargs"):
            if getattr(theirs, field) != getattr(ours, field):
                raise GraphError(f"`{name}` shares `{segment}` but its `{field}` differs from `{owner}`'s",
                                 where=("networks", name, field), expected=f"{getattr(theirs, field)!r}, as `{owner}`",
                                 suggestion="a shared trunk needs the same model and cuts on every branch")
        if spec.weights is not None:
            raise GraphError(f"`{name}` shares `{segment}`: its `weights` would load into a trunk it does not own",
                             where=("networks", name, "weights"), suggestion=f"load the weights into `{owner}`")
        if segment.part != part:
            raise GraphError(f"`{name}`'s part `{part}` is `{owner}`'s `{segment.part}`", where=where,
                             suggestion=f"name the part `{segment.part}` as `{owner}` does")
        return segment

    @property
    def declared(self) -> frozenset[tuple[SegmentId, SegmentId]]:
        return declared_pairs(self.networks.values())

    def segment(self, ref: str, where: Where) -> SegmentId:
        if ref not in self.segment_ids:
            raise unknown_name("segment", ref, self.segment_ids, where)
        return self.segment_ids[ref]

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
            own = self.networks[segments[-1].network].segments
            if segments[-1] != own[-1]:
                raise GraphError(f"path `{name}` ends with `{segments[-1]}`, an intermediate feature; a path "
                                 "must end with a network's last part, which gives class logits",
                                 where=where + ("segments", len(segments) - 1),
                                 suggestion=f"end the path with `{own[-1]}`; to compare features use a mimic link "
                                            "on `net.part`")
            self.add_path(Path(name, segments, spec.adapter, where, self.declared))

    def _check_order(self, name: str, segments: tuple[SegmentId, ...], where: Where) -> None:
        """A path reads the image first, and segments of one network follow each other in its order."""
        first = self.networks[segments[0].network].segments
        if segments[0] != first[0]:
            raise GraphError(f"path `{name}` starts with `{segments[0]}`, which reads the output of "
                             f"`{first[first.index(segments[0]) - 1]}`, not the input image",
                             where=where + ("segments", 0), suggestion=f"start the path with a first part such as "
                                                                       f"`{first[0]}`")
        for i, (a, b) in enumerate(zip(segments, segments[1:]), start=1):
            own = self.networks[a.network].segments
            if b in own and own.index(b) != own.index(a) + 1:
                after = f"`{own[own.index(a) + 1]}`" if own.index(a) + 1 < len(own) else "nothing (it is the last part)"
                raise GraphError(f"path `{name}`: `{b}` cannot follow `{a}`; in its network `{a}` is followed "
                                 f"by {after}", where=where + ("segments", i),
                                 expected="the parts of one network in their order")

    def crosses(self) -> None:
        for index, cross in enumerate(self.spec.crosses):
            where: Where = ("crosses", index)
            for i, net in enumerate(cross.networks):
                if net not in self.networks:
                    raise unknown_name("network", net, self.networks, where + ("networks", i))
            if len(set(cross.networks)) != len(cross.networks):
                raise GraphError("a network is listed twice", where=where + ("networks",))
            parts = self.networks[cross.networks[0]].parts
            for net in cross.networks[1:]:
                if self.networks[net].parts != parts:
                    raise GraphError(
                        f"networks crossed together must have the same parts; `{cross.networks[0]}` has "
                        f"{list(parts)} but `{net}` has {list(self.networks[net].parts)}",
                        where=where + ("networks",), suggestion="give them the same `parts:` names and cut counts")
            if len(parts) < 2:
                raise GraphError("crossed networks need at least one cut", where=where,
                                 suggestion="add `cuts:` to the networks")
            module_cuts = self.networks[cross.networks[0]].cuts
            for ci, cut in enumerate(cross.cut or []):
                if cut not in parts[:-1] and cut in module_cuts:
                    raise GraphError(f"cross cut `{cut}` is a module name; a cross cuts at a part name",
                                     where=where + ("cut", ci), expected="one of: " + ", ".join(parts[:-1]),
                                     suggestion=f"write `cut: {parts[module_cuts.index(cut)]}` (the part that "
                                                f"ends at `{cut}`)")
            names = []
            for combo in _combinations(cross.kind, cross.networks, list(parts), cross.cut, where):
                segments = tuple(self.networks[net].segments[i] for i, net in enumerate(combo))
                same = next((n for n in self.networks if self.networks[n].segments == segments), None)
                if same is not None:  # branches of one trunk, crossed where they share it
                    raise GraphError(f"cross path `{'-'.join(combo)}` runs exactly the segments of `{same}`'s own "
                                     "path: these networks share the parts before that cut", where=where + ("networks",),
                                     suggestion="cross them after the parts they share (`cut:`), or not at all")
                names.append("-".join(combo))
                self.add_path(Path(names[-1], segments, cross.adapter, where, self.declared))
            if cross.mapping is not None:
                if cross.mapping.split == "val" and self.spec.data.val_split == 0:
                    raise GraphError("mapping.split is `val` but the data has no validation split",
                                     where=where + ("mapping", "split"),
                                     suggestion="set data.val_split (e.g. 0.1), or map on split: train")
                self.mappings.append(_mapping(cross.mapping, cross.networks, cross.cut or list(parts[:-1]),
                                              tuple(names), where + ("mapping",)))


def _mapping(spec: MappingSpec, networks: list[str], cuts: list[str], paths: tuple[str, ...],
             where: Where) -> CrossMapping:
    """The record of a cross's ``mapping:``; its cuts must be cuts of the cross."""
    for ci, cut in enumerate(spec.cut or []):
        if cut not in cuts:
            raise unknown_name("cut of this cross", cut, cuts, where + ("cut", ci))
    return CrossMapping(tuple(networks), tuple(spec.cut or cuts), paths, spec.method, spec.score, spec.batches,
                        spec.split, where)


def _combinations(kind: str, nets: list[str], parts: list[str], cuts: list[str] | None,
                  where: Where) -> list[tuple[str, ...]]:
    if kind == "all":
        if cuts is not None:
            raise GraphError("`cut` applies to kind xml only (kind all crosses at every cut)", where=where + ("cut",))
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
