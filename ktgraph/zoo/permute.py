"""Function-preserving channel permutations of a ResNet's residual stream.

Two networks trained apart have no reason to order their channels alike. Reordering one
network's channels at a cut (its output channels up to the cut and the matching input channels
after it, BatchNorm parameters and running statistics included) changes nothing it computes, and
makes its channel ``i`` line up with the other network's channel ``i`` (Git Re-Basin's
weight-space symmetry).

In a ResNet the skip connections tie every block that adds into one tensor to one permutation:
a *stream* is the residual tensor between two shortcut convolutions. Permuting the stream a cut
lies on reorders every writer of it (the stem or a block's shortcut conv + BN, and each block's
last conv + BN) and every reader (each block's first conv, a pre-activation BN, the shortcut conv
of the next stage, the head). Streams without a shortcut conv between them are one stream: in
ktgraph's CIFAR ResNets the stem and ``layer1`` share one.

Families known: ktgraph's CIFAR ResNet and Wide ResNet, torchvision's ResNet, ResNeXt and Wide
ResNet (basic and bottleneck blocks), with or without ``cifar_stem`` or synchronised BatchNorm.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tv

from ktgraph.errors import GraphError
from ktgraph.zoo.cifar_resnet import BasicBlock, CifarResNet, WideBasic, WideResNet
from ktgraph.zoo.cuts import resnet_layers

TensorAxis = tuple[str, int]
"""A parameter or buffer by its name in the model's state dict, and the axis that holds channels."""


@dataclass
class Stream:
    """One residual stream: its width, the stages whose output it is and every tensor axis it reorders."""

    channels: int
    stages: list[str] = field(default_factory=list)
    tensors: list[TensorAxis] = field(default_factory=list)


@dataclass(frozen=True)
class _Family:
    """Module names (relative to the model or a block) that write a stream or read it."""

    stem: tuple[str, ...]  # writers of the first stream
    head: tuple[str, ...]  # readers of the last stream
    blocks: dict[type[nn.Module], tuple[tuple[str, ...], tuple[str, ...], str]]  # readers, writers, shortcut


_TV_BLOCKS = {tv.BasicBlock: (("conv1",), ("conv2", "bn2"), "downsample"),
              tv.Bottleneck: (("conv1",), ("conv3", "bn3"), "downsample")}
_FAMILIES: dict[type[nn.Module], _Family] = {
    CifarResNet: _Family(("conv1", "bn1"), ("fc",), {BasicBlock: (("conv1",), ("conv2", "bn2"), "shortcut")}),
    WideResNet: _Family(("conv1",), ("bn", "fc"), {WideBasic: (("bn1", "conv1"), ("conv2",), "shortcut")}),
    tv.ResNet: _Family(("conv1", "bn1"), ("fc",), _TV_BLOCKS),
}


def streams(model: nn.Module) -> list[Stream]:
    """The model's residual streams in model order; a GraphError for a model of no known family."""
    family = _FAMILIES.get(type(model))
    if family is None:
        raise GraphError(f"cannot map the channels of model `{type(model).__name__}`",
                         expected="a ResNet ktgraph can permute: resnet8 ... resnet110, wrn*, or torchvision's "
                                  "resnet/resnext/wide_resnet", suggestion="use `method: none` for this pair")
    found: list[Stream] = []
    stream = _new_stream(model, family.stem, "", found)
    stream.stages.append("stem")
    for layer in resnet_layers(model):
        for index, block in enumerate(getattr(model, layer)):
            stream = _block(model, f"{layer}.{index}", block, family, stream, found)
        stream.stages.append(layer)
    stream.tensors += _readers(model, family.head, "")
    return found


def stream_at(model: nn.Module, cut: str) -> Stream:
    """The stream a cut after stage ``cut`` passes to the next segment."""
    every = streams(model)
    for stream in every:
        if cut in stream.stages:
            return stream
    raise GraphError(f"no residual stream ends at `{cut}`",
                     expected="a cut after one of: " + ", ".join(s for st in every for s in st.stages))


def permute(model: nn.Module, stream: Stream, order: Sequence[int] | Tensor) -> None:
    """Reorder the stream's channels in place: new channel ``i`` is old channel ``order[i]``."""
    index = torch.as_tensor(order, dtype=torch.long)
    if sorted(index.tolist()) != list(range(stream.channels)):
        raise GraphError(f"a channel order of the stream must be a permutation of {stream.channels} channels",
                         expected=f"each of 0 ... {stream.channels - 1} once")
    owned = dict(_tensors(model))
    with torch.no_grad():
        for name, axis in stream.tensors:
            tensor = owned[name]
            tensor.copy_(tensor.index_select(axis, index.to(tensor.device)))


def _tensors(model: nn.Module) -> list[tuple[str, Tensor]]:
    return [*model.named_parameters(), *model.named_buffers()]


def _block(model: nn.Module, path: str, block: nn.Module, family: _Family, stream: Stream,
           found: list[Stream]) -> Stream:
    """Add a block's readers and writers; a block with a shortcut conv starts a new stream."""
    roles = family.blocks.get(type(block))
    if roles is None:
        raise GraphError(f"cannot map the channels of block `{path}` ({type(block).__name__})",
                         expected="the blocks of " + ", ".join(k.__name__ for k in family.blocks))
    readers, writers, shortcut_name = roles
    stream.tensors += _readers(model, readers, path)
    shortcut = getattr(block, shortcut_name)
    if isinstance(shortcut, (nn.Conv2d, nn.Sequential)):
        name = shortcut_name if isinstance(shortcut, nn.Conv2d) else f"{shortcut_name}.0"
        stream.tensors += _readers(model, (name,), path)
        rest = [] if isinstance(shortcut, nn.Conv2d) else [f"{shortcut_name}.{i}" for i in range(1, len(shortcut))]
        stream = _new_stream(model, (name, *rest), path, found)
    stream.tensors += _writers(model, writers, path)
    return stream


def _new_stream(model: nn.Module, writers: tuple[str, ...], path: str, found: list[Stream]) -> Stream:
    """A stream its first writer (a conv) starts."""
    conv = model.get_submodule(_join(path, writers[0]))
    stream = Stream(int(conv.out_channels), [], _writers(model, writers, path))
    found.append(stream)
    return stream


def _writers(model: nn.Module, names: Sequence[str], path: str) -> list[TensorAxis]:
    """Output channels: a conv's weight and bias, every per-channel tensor of a BatchNorm."""
    return [axis for name in names for axis in _axes(model, _join(path, name), reading=False)]


def _readers(model: nn.Module, names: Sequence[str], path: str) -> list[TensorAxis]:
    """Input channels: a conv's or linear layer's weight columns; a BatchNorm before a conv (pre-activation)."""
    return [axis for name in names for axis in _axes(model, _join(path, name), reading=True)]


def _axes(model: nn.Module, full: str, *, reading: bool) -> list[TensorAxis]:
    module = model.get_submodule(full)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return _batchnorm(full, module)
    if reading and isinstance(module, (nn.Conv2d, nn.Linear)):
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise GraphError(f"cannot permute the input of grouped conv `{full}`")
        return [(f"{full}.weight", 1)]
    if not reading and isinstance(module, nn.Conv2d):
        return [(f"{full}.weight", 0)] + ([(f"{full}.bias", 0)] if module.bias is not None else [])
    if not reading and isinstance(module, nn.Identity):
        return []
    raise GraphError(f"cannot permute the {'input' if reading else 'output'} of `{full}` ({type(module).__name__})")


def _batchnorm(full: str, module: nn.Module) -> list[TensorAxis]:
    names = ("weight", "bias", "running_mean", "running_var")
    return [(f"{full}.{n}", 0) for n in names if getattr(module, n, None) is not None]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
