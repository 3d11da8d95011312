"""Adapters: the modules that join tensors of different shapes.

A cross path whose mid features differ in channels is joined by an adapter at its junction
(``conv1x1_relu``, as in the XML seeds); a mimic link whose features differ goes through a
regressor (``conv_bn_relu``, FitNet's). Register your own with ``@register_adapter`` on a
function ``(in_channels, out_channels) -> nn.Module``; ``label`` is what drawings show.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator
from torch import nn

from ..config import choice_error
from ..registry import Registry

AdapterFactory = Callable[[int, int], nn.Module]
ADAPTERS: Registry[AdapterFactory] = Registry("adapter")
register_adapter = ADAPTERS.register
AUTO, NONE = "auto", "none"


def _adapter_name(name: str) -> str:
    if name not in (AUTO, NONE) and name not in ADAPTERS:
        raise choice_error("adapter", name, [AUTO, NONE, *ADAPTERS.list()])
    return name


AdapterChoice = Annotated[str, AfterValidator(_adapter_name)]
"""``auto`` (the default kind where shapes differ), ``none`` (shapes must agree) or a registered adapter."""


def adapter_label(kind: str) -> str:
    return str(ADAPTERS.metadata(kind).get("label", kind))


def make_adapter(kind: str, in_channels: int, out_channels: int) -> nn.Module:
    return ADAPTERS.get(kind)(in_channels, out_channels)


@register_adapter(label="1x1 conv+ReLU")
def conv1x1_relu(in_channels: int, out_channels: int) -> nn.Module:
    """1x1 convolution (with bias) + ReLU: the XML seeds' junction adapter."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(inplace=False))


@register_adapter(label="1x1 conv+BN+ReLU")
def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Module:
    """1x1 convolution (no bias) + BatchNorm + ReLU: FitNet's regressor."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=False))
