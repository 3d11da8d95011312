"""A segment: consecutive stages of a network, a view that finds its modules in the network by path.

A segment registers nothing of its own. Each time it runs (or is asked for its parameters) it
looks its modules up in the network, so whatever replaces a module inside the network
(``SyncBatchNorm.convert_sync_batchnorm``, a compiled submodule, a user's own conversion)
reaches every segment, and the network alone owns the state: its ``state_dict`` and
pretrained weights stay valid. :meth:`Segment.as_module` gives an ``nn.Module`` of the
segment's current modules, for export.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

Step = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Stage:
    """A named stage: the modules it holds (path in the model, module) and what it runs."""

    name: str
    owned: tuple[tuple[str, nn.Module], ...]
    steps: tuple[Step, ...]


class Method:
    """A step that calls a model's method (timm's ``forward_head``), which reads ``model.training``."""

    def __init__(self, owner: nn.Module, method: str) -> None:
        self.owner = owner
        self.method = method

    def __call__(self, x: Tensor) -> Tensor:
        return getattr(self.owner, self.method)(x)


@dataclass(frozen=True)
class _Submodule:
    """A step that runs the network's module at ``path``, looked up when it runs."""

    path: str


class Segment:
    """Consecutive stages of ``network``, run in order; ``stages`` are their names."""

    def __init__(self, network: nn.Module, stages: Sequence[Stage]) -> None:
        self.network = network
        self.stages: tuple[str, ...] = tuple(stage.name for stage in stages)
        self.paths: tuple[str, ...] = tuple(path for stage in stages for path, _ in stage.owned)
        where = {id(module): path for path, module in network.named_modules(remove_duplicate=False)}
        self._steps: tuple[Step | _Submodule, ...] = tuple(
            _Submodule(where[id(step)]) if isinstance(step, nn.Module) and id(step) in where else step
            for stage in stages for step in stage.steps)
        self._clone_input = _in_place(self._resolve(self._steps[0]))

    @classmethod
    def whole(cls, model: nn.Module) -> Segment:
        """One segment that calls ``model`` itself, for any model."""
        return cls(model, [Stage("model", (("", model),), (model,))])

    def _resolve(self, step: Step | _Submodule) -> Step:
        return self.network.get_submodule(step.path) if isinstance(step, _Submodule) else step

    def __call__(self, x: Tensor) -> Tensor:
        if self._clone_input:  # keep the previous segment's output intact for losses that read it
            x = x.clone()
        for step in self._steps:
            x = self._resolve(step)(x)
        return x

    # --- what it holds, looked up now ---------------------------------------------------------------
    def owned(self) -> list[tuple[str, nn.Module]]:
        """(path in the network, module) of each module the segment holds, as the network has them now."""
        return [(path, self.network.get_submodule(path)) for path in self.paths]

    @property
    def net(self) -> nn.Module:
        """The held modules under their paths in the network (the network itself for a whole segment)."""
        if self.paths == ("",):
            return self.network
        root = nn.Module()
        for path, module in self.owned():
            _attach(root, path, module)
        return root

    def modules(self) -> Iterator[nn.Module]:
        for _, module in self.owned():
            yield from module.modules()

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return self.net.named_parameters()

    def parameters(self) -> Iterator[nn.Parameter]:
        for _, param in self.named_parameters():
            yield param

    def state_dict(self) -> dict[str, Tensor]:
        """The held modules' state, keyed as in the network with a ``net.`` prefix."""
        return self.net.state_dict(prefix="net.")

    @property
    def training(self) -> bool:
        return any(module.training for _, module in self.owned())

    def train(self, mode: bool = True) -> Segment:
        for _, module in self.owned():
            module.train(mode)
        for step in self._steps:
            if isinstance(step, Method):  # e.g. timm's forward_head reads model.training for dropout
                step.owner.training = mode
        return self

    def eval(self) -> Segment:
        return self.train(False)

    def as_module(self) -> nn.Module:
        """An ``nn.Module`` holding the segment's current modules, which runs like the segment."""
        return SegmentModule(self)

    def __repr__(self) -> str:
        return f"Segment(stages={self.stages})"


class SegmentModule(nn.Module):
    """A segment as an ``nn.Module`` (for ``nn.Sequential`` and export): its modules under ``net``."""

    def __init__(self, segment: Segment) -> None:
        super().__init__()
        self.net = segment.net
        self.stages = segment.stages
        self._steps = tuple(step if not isinstance(step, _Submodule) else self.net.get_submodule(step.path)
                            for step in segment._steps)
        self._clone_input = segment._clone_input

    def forward(self, x: Tensor) -> Tensor:
        if self._clone_input:
            x = x.clone()
        for step in self._steps:
            x = step(x)
        return x

    def extra_repr(self) -> str:
        return f"stages={self.stages}"


def _attach(root: nn.Module, path: str, module: nn.Module) -> None:
    """Register ``module`` under ``root`` at the dotted ``path``, adding empty containers on the way."""
    *parents, leaf = path.split(".")
    node = root
    for part in parents:
        if not hasattr(node, part):
            node.add_module(part, nn.Module())
        node = getattr(node, part)
    node.add_module(leaf, module)


def _in_place(step: Step) -> bool:
    """Whether a step starts by overwriting its input (``ReLU(inplace=True)``)."""
    while isinstance(step, nn.Sequential) and len(step):
        step = step[0]
    return getattr(step, "inplace", False) is True

