"""Link kinds: the loss a link computes between its source and its target.

Each loss is per sample, shape (B,), so that every link shares one reduction convention: summed
over classes or elements of a sample, averaged over the batch by the gate ("batchmean"), never
an elementwise mean over B·C. The functional forms are below the units that use them. Register
your own kind with ``@register_link`` on a :class:`LinkKind` subclass.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ..errors import GraphError
from ..registry import Registry
from .adapters import AUTO, NONE, AdapterChoice, adapter_hint
from .base import Unit
from .gates import GateContext

LINKS: Registry[type[LinkKind]] = Registry("link kind")
register_link = LINKS.register
Shape = tuple[int, ...]
REGRESSOR = "conv_bn_relu"  # the adapter kind a mimic link's `adapter: auto` stands for


@dataclass(frozen=True)
class LinkInput:
    """What a link's loss reads: its target and source values (None: the label), the labels, the gate context."""

    target: Tensor
    source: Tensor | None
    labels: Tensor
    ctx: GateContext


class LinkKind(Unit):
    """A loss between two values of the graph.

    ``source_must``: ``label``, ``logits`` (a path or aggregate) or ``value`` (logits or a
    feature); ``target_must``: ``logits`` or ``value``. The graph builder checks both, so a
    link can never read something its loss cannot use.
    """

    family: ClassVar[str] = "link kind"
    registry: ClassVar[Registry[type[LinkKind]]] = LINKS
    source_must: ClassVar[str] = "logits"
    target_must: ClassVar[str] = "logits"
    style: ClassVar[dict[str, str]] = {"color": "#555555", "style": "solid", "fontcolor": "#555555"}

    @property
    def detached(self) -> bool:
        """Whether gradients stop at the source (the teacher)."""
        return bool(getattr(self, "detach", True))

    @abstractmethod
    def per_sample(self, x: LinkInput) -> Tensor:
        """The loss of each sample, shape (B,)."""

    def formula(self, target: str, source: str) -> str:
        """The loss as ``ktgraph plan`` writes it; ``*`` marks a source that is not detached."""
        return f"{self.kind}({target}, {source}{'' if self.detached else '*'})"

    def edge_label(self) -> list[str]:
        """What a graph drawing writes on the link, before its weight."""
        return [self.kind]

    def regressor(self, target: Shape, source: Shape, link: str) -> str | None:
        """The adapter kind mapping the target to the source shape, or None: no regressor."""
        return None


@register_link
class CE(LinkKind):
    """Cross-entropy of the target's logits against the label."""

    kind: Literal["ce"] = "ce"
    source_must: ClassVar[str] = "label"
    style: ClassVar[dict[str, str]] = {"color": "#8c8c8c", "style": "solid", "fontcolor": "#5a5a5a"}

    def per_sample(self, x: LinkInput) -> Tensor:
        return cross_entropy(x.target, x.labels)

    def formula(self, target: str, source: str) -> str:
        return f"CE({target}, label)"


@register_link
class KL(LinkKind):
    """T² · KL(softmax(source/T) ‖ softmax(target/T)) per sample: the source is the teacher."""

    kind: Literal["kl"] = "kl"
    T: float = Field(1.0, gt=0, description="temperature")
    detach: bool = True
    style: ClassVar[dict[str, str]] = {"color": "#1f5fbf", "style": "solid", "fontcolor": "#1f5fbf"}

    def per_sample(self, x: LinkInput) -> Tensor:
        assert x.source is not None
        return kl_divergence(x.source, x.target, self.T)

    def formula(self, target: str, source: str) -> str:
        star = "" if self.detach else "*"
        return f"{self.T ** 2:g}·KL({source}{star} ‖ {target}) [T={self.T:g}]"

    def edge_label(self) -> list[str]:
        return ["kl", f"T={self.T:g}"]


@register_link
class Mimic(LinkKind):
    """A distance between a target feature and a source feature, through a regressor when shapes differ."""

    kind: Literal["mimic"] = "mimic"
    loss: Literal["mse", "l1", "cosine"] = "mse"
    adapter: AdapterChoice = AUTO
    detach: bool = True
    source_must: ClassVar[str] = "value"
    target_must: ClassVar[str] = "value"
    style: ClassVar[dict[str, str]] = {"color": "#2e8b3a", "style": "dotted", "fontcolor": "#2e8b3a",
                                       "penwidth": "1.8"}

    def per_sample(self, x: LinkInput) -> Tensor:
        assert x.source is not None
        return feature_mimic(x.source, x.target, self.loss)

    def formula(self, target: str, source: str) -> str:
        return f"{self.loss.upper()}({target}, {source}{'' if self.detach else '*'})"

    def edge_label(self) -> list[str]:
        return ["mimic"] + ([self.loss] if self.loss != "mse" else [])

    def regressor(self, target: Shape, source: Shape, link: str) -> str | None:
        """``auto``: a ``conv_bn_relu`` (``REGRESSOR``) where shapes differ (it maps channels and spatial size, or refuses)."""
        if source == target and self.adapter in (AUTO, NONE):
            return None
        if self.adapter == NONE:
            raise GraphError(f"link `{link}`: target feature {target} cannot be compared with source feature "
                             f"{source}", where=("adapter",),
                             suggestion=adapter_hint(target, source, REGRESSOR,
                                                     "compare logits with a `kl` link, feature maps with `mimic`"))
        return REGRESSOR if self.adapter == AUTO else self.adapter


# --- the functional forms ------------------------------------------------------------------------
def wide(x: Tensor) -> Tensor:
    """``x`` in at least float32: autocast's half-precision values are widened, float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """CE(z, y) per sample."""
    return F.cross_entropy(wide(logits), labels, reduction="none")


def kl_divergence(source: Tensor, target: Tensor, T: float = 1.0) -> Tensor:
    """T^2 * KL(softmax(source/T) || softmax(target/T)) per sample (the source is the teacher)."""
    log_p_source = F.log_softmax(wide(source) / T, dim=1)
    log_p_target = F.log_softmax(wide(target) / T, dim=1)
    return (T * T) * (log_p_source.exp() * (log_p_source - log_p_target)).sum(dim=1)


def feature_mimic(source: Tensor, target: Tensor, kind: str = "mse") -> Tensor:
    """Distance between a target feature and a source (teacher) feature, per sample.

    ``mse`` and ``l1`` are means over the feature's elements, so their batch mean equals the
    elementwise mean over the whole tensor (FitNet's common convention); ``cosine`` is 1 - cos
    between the flattened features.
    """
    s, t = wide(source).flatten(1), wide(target).flatten(1)
    if kind == "mse":
        return (t - s).pow(2).mean(dim=1)
    if kind == "l1":
        return (t - s).abs().mean(dim=1)
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(t, s, dim=1)
    raise ValueError(f"unknown feature mimic loss {kind!r}")


def correct_mask(logits: Tensor, labels: Tensor) -> Tensor:
    """1.0 where the logits' top class is the label, else 0.0."""
    return (logits.argmax(dim=1) == labels).to(torch.float32)
