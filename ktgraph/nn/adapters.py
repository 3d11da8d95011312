"""Adapters that join tensors of different shapes.

``conv1x1_relu`` joins a cross path whose mid features differ in channels (the XML
seeds); ``conv_bn_relu`` is FitNet's regressor from a student feature to a teacher's.
"""
from __future__ import annotations

from torch import nn

ADAPTERS = ("conv1x1_relu", "conv_bn_relu")


def make_adapter(kind: str, in_channels: int, out_channels: int) -> nn.Module:
    if kind == "conv1x1_relu":
        return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(inplace=False))
    if kind == "conv_bn_relu":
        return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
                             nn.ReLU(inplace=False))
    raise ValueError(f"unknown adapter {kind!r}; expected one of {ADAPTERS}")
