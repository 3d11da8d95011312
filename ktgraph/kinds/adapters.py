"""Adapters: the registered units that map one tensor's shape onto another's.

A cross path whose mid features differ in channels is joined by an adapter at its junction
(``conv1x1_relu``, XML's junction adapter, docs/methods/xml.md); a mimic link whose features differ goes through a
regressor (``conv_bn_relu``, FitNet's), which may also change the spatial size. An adapter is a
unit like a gate or an aggregator: ``build(source, target)`` receives both full shapes (per sample)
and returns the module, or refuses with a :class:`GraphError` naming what it cannot map; it may
have lifecycle hooks, called with its module. Register your own with ``@register_adapter``.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Annotated, ClassVar, Literal

import torch.nn.functional as F
from pydantic import AfterValidator
from torch import Tensor, nn

from ..config import choice_error
from ..errors import GraphError
from ..registry import Registry
from .base import Unit

Shape = tuple[int, ...]
ADAPTERS: Registry[type[Adapter]] = Registry("adapter")
register_adapter = ADAPTERS.register
AUTO, NONE = "auto", "none"


def _adapter_name(name: str) -> str:
    if name not in (AUTO, NONE) and name not in ADAPTERS:
        raise choice_error("adapter", name, [AUTO, NONE, *ADAPTERS.list()])
    return name


AdapterChoice = Annotated[str, AfterValidator(_adapter_name)]
"""``auto`` (the default kind where shapes differ), ``none`` (shapes must agree) or a registered adapter."""


class Adapter(Unit):
    """Maps values of shape ``source`` (C, H, W per sample) to shape ``target``; ``label`` is what drawings show."""

    family: ClassVar[str] = "adapter"
    registry: ClassVar[Registry[type[Adapter]]] = ADAPTERS
    label: ClassVar[str] = ""

    @abstractmethod
    def build(self, source: Shape, target: Shape) -> nn.Module:
        """The module, or a GraphError saying why these shapes cannot be mapped."""

    def refuse(self, source: Shape, target: Shape, why: str, expected: str, suggestion: str = "") -> GraphError:
        """The error for shapes this adapter cannot map (the binder adds where, and which path or link)."""
        return GraphError(f"the {self.kind} adapter cannot map {source} to {target}: {why}", expected=expected,
                          suggestion=suggestion)


def adapter_label(kind: str) -> str:
    return ADAPTERS.get(kind).label or kind


def make_adapter(kind: str, source: Shape, target: Shape) -> nn.Module:
    return ADAPTERS.get(kind)().build(tuple(source), tuple(target))


def leading_conv(adapter: nn.Module) -> nn.Conv2d | None:
    """The 1×1 convolution with bias an adapter starts with (what a channel mapping's least-squares start
    sets), or None when it starts otherwise."""
    conv = adapter[0] if isinstance(adapter, nn.Sequential) else None
    ok = isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.bias is not None
    return conv if ok else None


def adapters_for(source: Shape, target: Shape) -> list[str]:
    """The registered adapter kinds that map ``source`` to ``target``: each is asked to build one."""
    fits = []
    for kind in ADAPTERS.list():
        try:
            make_adapter(kind, source, target)
        except Exception:  # noqa: BLE001 -- a user's adapter failing on these shapes refuses them
            continue
        fits.append(kind)
    return fits


def adapter_hint(source: Shape, target: Shape, auto: str, otherwise: str) -> str:
    """What to set where `adapter: none` meets shapes that differ, so that the advice works: ``auto``
    when the kind it stands for (``auto``) maps them, else a kind that does, else ``otherwise``."""
    fits = adapters_for(source, target)
    if auto in fits:
        return f"set `adapter: auto` (a {adapter_label(auto)} where the shapes differ)"
    if fits:
        return f"set `adapter: {fits[0]}` ({adapter_label(fits[0])}), which maps these shapes"
    return otherwise


@register_adapter
class Conv1x1ReLU(Adapter):
    """1x1 convolution (with bias) + ReLU: XML's junction adapter (docs/methods/xml.md); channels only."""

    kind: Literal["conv1x1_relu"] = "conv1x1_relu"
    label: ClassVar[str] = "1x1 conv+ReLU"

    def build(self, source: Shape, target: Shape) -> nn.Module:
        if len(source) != 3 or len(target) != 3 or source[1:] != target[1:]:
            raise self.refuse(source, target, "it changes channels, not spatial size",
                              "feature maps of the same height and width",
                              "cut both networks where their resolutions agree, or use `adapter: conv_bn_relu`")
        return nn.Sequential(nn.Conv2d(source[0], target[0], 1), nn.ReLU(inplace=False))


class Resize(nn.Module):
    """Bilinear resizing to a fixed spatial size (a regressor onto a larger or oddly sized map)."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.size}"


@register_adapter
class ConvBNReLU(Adapter):
    """Convolution (no bias) + BatchNorm + ReLU: FitNet's regressor, onto the target's channels and size.

    Same size: a 1x1 convolution. A source larger by an integer factor s in both sides: a 3x3
    convolution of stride s (padding 1). Any other size: bilinear resizing, then the 1x1 convolution.
    """

    kind: Literal["conv_bn_relu"] = "conv_bn_relu"
    label: ClassVar[str] = "conv+BN+ReLU"

    def build(self, source: Shape, target: Shape) -> nn.Module:
        if len(source) != 3 or len(target) != 3:
            raise self.refuse(source, target, "it maps feature maps only", "shapes (channels, height, width)",
                              "compare logits with a `kl` link, feature maps with `mimic`")
        (c_in, h, w), (c_out, th, tw) = source, target
        conv: list[nn.Module]
        if (h, w) == (th, tw):
            conv = [nn.Conv2d(c_in, c_out, 1, bias=False)]
        elif h % th == 0 and w % tw == 0 and h // th == w // tw:
            conv = [nn.Conv2d(c_in, c_out, 3, stride=h // th, padding=1, bias=False)]
        else:
            conv = [Resize((th, tw)), nn.Conv2d(c_in, c_out, 1, bias=False)]
        return nn.Sequential(*conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=False))
