"""Use your own network in ktgraph: register it, build it by name, cut it into segments.

Nothing in ktgraph is edited: the model lives in this file. It declares where it
may be cut with a ``ktgraph_stages()`` method (see ``ktgraph.zoo.cuts``); a model
built like a ResNet (``layer1``, ``layer2``, ...) or as ``features`` +
``classifier`` would be cuttable without it.

Run: python examples/custom_model.py
"""

from __future__ import annotations

import torch
from torch import nn

from ktgraph.zoo import allowed_cuts, create_model, register_model, split


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class TinyNet(nn.Module):
    """A small CNN for 32x32 images: stem, two downsampling blocks, head."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, width)
        self.block1 = conv_bn_relu(width, 2 * width, stride=2)
        self.block2 = conv_bn_relu(2 * width, 4 * width, stride=2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.block1(self.stem(x))))

    def ktgraph_stages(self) -> list[tuple[str, nn.Module]]:
        """The modules ``forward`` runs, in order; the last one is the head."""
        return [("stem", self.stem), ("block1", self.block1), ("block2", self.block2), ("head", self.head)]


@register_model
def tinynet(num_classes: int, width: int = 16) -> TinyNet:
    """Now `model: tinynet` works in a graph file, like any built-in name."""
    return TinyNet(num_classes, width)


def main() -> None:
    model = create_model("tinynet", num_classes=10, width=8).eval()
    print("allowed cuts:", ", ".join(allowed_cuts(model)))

    segments = split(model, ["block1"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = x
        for segment in segments:
            out = segment(out)
            count = sum(p.numel() for p in segment.parameters())
            print(f"segment {'+'.join(segment.stages):<12} {count:>6,} parameters -> output {tuple(out.shape)}")
        assert torch.allclose(out, model(x), atol=1e-5)
    print(f"model total          {sum(p.numel() for p in model.parameters()):>6,} parameters")


if __name__ == "__main__":
    main()
