"""ktgraph's built-in CIFAR networks: ResNet-(6n+2) and Wide ResNet-d-k.

Both use torchvision's attribute names (``conv1``, ``layer1`` ... ``layer3``,
``avgpool``, ``fc``) so :mod:`ktgraph.zoo.cuts` cuts them like any ResNet, and both
split ``forward`` into ``forward_features`` + ``forward_head`` as timm models do.
Registered names: ``resnet8`` ... ``resnet110``, ``wrn16_2`` ... ``wrn40_2`` and
``wrn`` (any depth and width, given as keyword arguments).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from ktgraph.errors import GraphError
from ktgraph.zoo.registry import register_model


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def _blocks_per_stage(depth: int, extra_layers: int, family: str) -> int:
    """``n`` in depth = 6n + extra_layers: three stages of ``n`` two-conv blocks."""
    n, rest = divmod(depth - extra_layers, 6)
    if rest or n < 1:
        raise GraphError(
            f"{family} depth must be 6n+{extra_layers} with n >= 1, got {depth}",
            expected=", ".join(str(6 * k + extra_layers) for k in range(1, 5)) + ", ...",
        )
    return n


def _stage(
    block: type[nn.Module], in_channels: int, out_channels: int, n: int, stride: int, **kw: float
) -> nn.Sequential:
    """``n`` blocks; only the first one changes the resolution and width."""
    first = block(in_channels, out_channels, stride, **kw)
    return nn.Sequential(first, *(block(out_channels, out_channels, 1, **kw) for _ in range(n - 1)))


def _kaiming_init(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)


class BasicBlock(nn.Module):
    """Post-activation residual block of He et al. (2016): conv-BN-ReLU-conv-BN, add, ReLU.

    Where the shape changes the shortcut is a strided 1x1 conv + BN ("option B"),
    not the paper's parameter-free zero padding ("option A"), as in most
    distillation code; resnet20 has 272,474 parameters instead of 269,722.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: a 3x3 stem, stages of 16/32/64 channels, no max-pool."""

    def __init__(self, num_classes: int, depth: int) -> None:
        super().__init__()
        n = _blocks_per_stage(depth, 2, "CIFAR ResNet")
        self.conv1 = _conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _stage(BasicBlock, 16, 16, n, stride=1)
        self.layer2 = _stage(BasicBlock, 16, 32, n, stride=2)
        self.layer3 = _stage(BasicBlock, 32, 64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        _kaiming_init(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class WideBasic(nn.Module):
    """Pre-activation block of Zagoruyko & Komodakis (2016): (BN-ReLU-conv) twice, dropout between.

    Where the shape changes, the 1x1 shortcut conv reads the pre-activated input,
    as in the authors' code.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-depth-widen_factor: stages of 16k/32k/64k channels, final BN-ReLU in the head."""

    def __init__(self, num_classes: int, depth: int, widen_factor: int, dropout: float = 0.0) -> None:
        super().__init__()
        n = _blocks_per_stage(depth, 4, "Wide ResNet")
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = _conv3x3(3, 16)
        self.layer1 = _stage(WideBasic, 16, widths[0], n, stride=1, dropout=dropout)
        self.layer2 = _stage(WideBasic, widths[0], widths[1], n, stride=2, dropout=dropout)
        self.layer3 = _stage(WideBasic, widths[1], widths[2], n, stride=2, dropout=dropout)
        self.bn = nn.BatchNorm2d(widths[2])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        _kaiming_init(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.layer3(self.layer2(self.layer1(self.conv1(x))))

    def forward_head(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(self.relu(self.bn(x))), 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def wrn(num_classes: int, depth: int, widen_factor: int, dropout: float = 0.0) -> WideResNet:
    """A Wide ResNet of any shape, e.g. ``create_model("wrn", 100, depth=22, widen_factor=4)``."""
    return WideResNet(num_classes, depth, widen_factor, dropout)


# The named shapes are partials of the two classes: one definition per family.
for _depth in (8, 14, 20, 32, 44, 56, 110):
    register_model(name=f"resnet{_depth}", description=f"CIFAR ResNet-{_depth}: 3 stages of 16/32/64 channels")(
        partial(CifarResNet, depth=_depth))
for _depth, _width in ((16, 2), (16, 4), (28, 2), (28, 10), (40, 2)):
    register_model(name=f"wrn{_depth}_{_width}", description=f"Wide ResNet-{_depth}-{_width} for CIFAR")(
        partial(WideResNet, depth=_depth, widen_factor=_width))
