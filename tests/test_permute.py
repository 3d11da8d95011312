"""Permuting a residual stream preserves the function: logits equal to 1e-5 at every cut."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ktgraph.errors import GraphError
from ktgraph.zoo import allowed_cuts, create_model
from ktgraph.zoo.permute import permute, stream_at, streams


def _trained_like(model: nn.Module, seed: int) -> nn.Module:
    """Random BatchNorm statistics and affine terms, so a wrong permutation of any of them shows."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            for tensor, centre in ((module.weight, 1.0), (module.bias, 0.0), (module.running_mean, 0.0)):
                tensor.data = centre + 0.2 * torch.randn(tensor.shape, generator=gen)
            module.running_var.data = torch.rand(module.running_var.shape, generator=gen) + 0.5
    return model.eval()


CIFAR = ["resnet8", "resnet20", "wrn16_2", "wrn28_2"]


@pytest.mark.parametrize("name", CIFAR + ["resnet18"])
def test_every_cut_preserves_the_logits(name: str) -> None:
    model = _trained_like(create_model(name, 10), 0)
    size = 32 if name in CIFAR else 64
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    for i, cut in enumerate(allowed_cuts(model)):
        stream = stream_at(model, cut)
        order = torch.randperm(stream.channels, generator=torch.Generator().manual_seed(i))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        permute(model, stream, order)
        with torch.no_grad():
            assert (model(x) - expected).abs().max() <= 1e-5, cut
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
        assert changed, f"{cut}: nothing was permuted"


def test_a_permuted_stream_reorders_its_features() -> None:
    """The features at the cut come out in the new order: channel i is old channel order[i]."""
    model = _trained_like(create_model("resnet8", 10), 2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model.layer2(model.layer1(model.relu(model.bn1(model.conv1(x)))))
        order = torch.randperm(32)
        permute(model, stream_at(model, "layer2"), order)
        after = model.layer2(model.layer1(model.relu(model.bn1(model.conv1(x)))))
    torch.testing.assert_close(after, before[:, order], atol=1e-5, rtol=0)


def test_streams_join_stages_without_a_shortcut_conv() -> None:
    found = streams(create_model("resnet8", 10))
    assert [s.stages for s in found] == [["stem", "layer1"], ["layer2"], ["layer3"]]
    assert [s.channels for s in found] == [16, 32, 64]


def test_unknown_families_and_bad_orders_are_errors() -> None:
    with pytest.raises(GraphError, match="cannot map the channels of model `MobileNetV2`"):
        streams(create_model("mobilenet_v2", 10))
    model = create_model("resnet8", 10)
    with pytest.raises(GraphError, match="permutation of 32"):
        permute(model, stream_at(model, "layer2"), [0] * 32)
