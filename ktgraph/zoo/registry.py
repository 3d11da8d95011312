"""One place to turn a model name from a graph file into an ``nn.Module``.

Names resolve in this order: a name registered with :func:`register_model`
(ktgraph's built-ins and the user's own), ``timm:<name>`` / ``torchvision:<name>``
to pick a library, then a bare name looked up in torchvision's classification
models and then in timm's. Nothing is ever downloaded: library models are built
without pretrained weights, and ``weights=`` only reads a local file.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import torch
from torch import nn

from ktgraph.errors import GraphError, did_you_mean
from ktgraph.registry import Registry

EntryPoint = Callable[..., nn.Module]
"""Builds a model: ``fn(num_classes: int, **kwargs) -> nn.Module``."""

MODELS: Registry[EntryPoint] = Registry("model")


@overload
def register_model(fn: EntryPoint) -> EntryPoint: ...
@overload
def register_model(*, name: str | None = None, **metadata: Any) -> Callable[[EntryPoint], EntryPoint]: ...
def register_model(
    fn: EntryPoint | None = None, *, name: str | None = None, **metadata: Any
) -> EntryPoint | Callable[[EntryPoint], EntryPoint]:
    """Record an entry point under ``name`` (default: the function's name), with metadata.

    Use as ``@register_model`` or ``@register_model(name="x")``. Registering a
    name again replaces the entry point and warns, since that is rarely meant.
    """
    if fn is None:
        return MODELS.register(name=name, **metadata)
    return MODELS.register(fn)


def list_models(pattern: str = "*") -> list[str]:
    """The names registered with ktgraph (built-ins and user models) matching a shell-style pattern.

    timm and torchvision models are not listed; ``timm.list_models()`` and
    ``torchvision.models.list_models()`` list them.
    """
    return MODELS.list(pattern)


def is_model(name: str) -> bool:
    """Whether :func:`create_model` accepts ``name`` (from any source)."""
    try:
        _resolve(name)
    except GraphError:
        return False
    return True


def check_model(name: str) -> None:
    """The error :func:`create_model` would raise for ``name``, without building anything."""
    _resolve(name)


def create_model(
    name: str,
    num_classes: int,
    *,
    cifar_stem: bool = False,
    weights: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the classifier ``name`` with ``num_classes`` outputs.

    ``cifar_stem`` swaps an ImageNet ResNet's 7x7/2 conv and max-pool for a 3x3/1
    conv so 32x32 inputs keep their resolution. ``weights`` is a local file with a
    state_dict (or a checkpoint dict holding one under ``state_dict``/``model``),
    loaded strictly after the stem change. Other keyword arguments go to the
    entry point or library constructor.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise GraphError(f"num_classes must be a positive integer, got {num_classes!r}", expected="an integer >= 1")
    build = _resolve(name)
    try:
        model = build(num_classes, **kwargs)
    except TypeError as err:
        raise GraphError(
            f"cannot build model `{name}`: {err}", expected="keyword arguments that the model's constructor accepts"
        ) from err
    if cifar_stem:
        _use_cifar_stem(model, name)
    if weights is not None:
        _load_weights(model, weights, name)
    return model


@dataclass(frozen=True)
class _Library:
    """A model library ktgraph can build from, without pretrained weights."""

    names: Callable[[], frozenset[str]]
    has: Callable[[str], bool]
    build: Callable[..., nn.Module]


@functools.cache
def _torchvision_names() -> frozenset[str]:
    from torchvision import models

    return frozenset(models.list_models(module=models))  # classification models only


@functools.cache
def _timm_names() -> frozenset[str]:
    import timm

    return frozenset(timm.list_models())


def _timm_has(name: str) -> bool:
    import timm

    return timm.is_model(name)  # also accepts pretrained tags such as `resnet18.a1_in1k`


def _build_torchvision(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    from torchvision import models

    return models.get_model(name, weights=None, num_classes=num_classes, **kwargs)


def _build_timm(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


# Bare names try the libraries in this order.
_LIBRARIES: dict[str, _Library] = {
    "torchvision": _Library(_torchvision_names, lambda name: name in _torchvision_names(), _build_torchvision),
    "timm": _Library(_timm_names, _timm_has, _build_timm),
}


def _resolve(name: str) -> EntryPoint:
    """The entry point for ``name``, or the GraphError naming the closest known model."""
    if name in MODELS:
        return MODELS[name]
    prefix, colon, bare = name.partition(":")
    if colon:
        library = _LIBRARIES.get(prefix)
        if library is None:
            raise GraphError(
                f"unknown model library `{prefix}` in `{name}`",
                expected="`timm:<name>` or `torchvision:<name>`, or a bare model name",
                suggestion=did_you_mean(prefix, _LIBRARIES),
            )
        if library.has(bare):
            return functools.partial(library.build, bare)
        raise GraphError(
            f"unknown {prefix} model `{bare}`",
            expected=f"a model name from `{prefix}`",
            suggestion=did_you_mean(name, (f"{prefix}:{n}" for n in library.names())),
        )
    for library in _LIBRARIES.values():
        if library.has(name):
            return functools.partial(library.build, name)
    known = set(MODELS).union(*(library.names() for library in _LIBRARIES.values()))
    raise GraphError(
        f"unknown model `{name}`",
        expected="a ktgraph model (" + ", ".join(list_models()[:8]) + ", ...), a torchvision or timm "
        "classification model, or `timm:<name>` / `torchvision:<name>`",
        suggestion=did_you_mean(name, known),
    )


def _use_cifar_stem(model: nn.Module, name: str) -> None:
    """Replace the 7x7/2 ``conv1`` by a 3x3/1 conv and drop ``maxpool``: the usual CIFAR ResNet stem."""
    conv = getattr(model, "conv1", None)
    if not isinstance(conv, nn.Conv2d) or not isinstance(getattr(model, "maxpool", None), nn.Module):
        raise GraphError(
            f"cifar_stem does not apply to model `{name}`",
            expected="an ImageNet-style ResNet with a single-conv `conv1` and a `maxpool` "
            "(torchvision resnet/resnext/wide_resnet, timm resnet)",
            suggestion="drop cifar_stem; ktgraph's CIFAR networks (resnet20, wrn28_10, ...) already have a CIFAR stem",
        )
    stem = nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(stem.weight, mode="fan_out", nonlinearity="relu")  # as torchvision and timm do
    model.conv1 = stem
    model.maxpool = nn.Identity()


def _load_weights(model: nn.Module, path: str, name: str) -> None:
    """Load a local state_dict strictly, turning every failure into a GraphError."""
    expected = "a local file saved with torch.save(model.state_dict(), path)"
    if not Path(path).is_file():
        raise GraphError(f"weights file `{path}` does not exist", expected=expected)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file: truncated, not torch, unsafe pickle
        raise GraphError(f"cannot read weights file `{path}`: {err}", expected=expected) from err
    state = _state_dict_in(saved)
    if state is None:
        raise GraphError(
            f"weights file `{path}` holds no state_dict",
            expected="a state_dict, or a dict with a `state_dict` or `model` entry holding one",
        )
    load_state(model, state, name, f"weights file `{path}`")


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], name: str, what: str) -> None:
    """Load ``state`` strictly into model ``name``; a mismatch is a GraphError listing it, ``what`` saying where
    the weights came from."""
    problems = _mismatches(model.state_dict(), state)
    if problems:
        raise GraphError(
            f"{what} does not fit model `{name}`: " + "; ".join(problems),
            suggestion="build the model with the name, num_classes and cifar_stem the weights were saved with",
        )
    model.load_state_dict(state, strict=True)


def _state_dict_in(saved: object) -> Mapping[str, torch.Tensor] | None:
    if isinstance(saved, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(saved.get(key), Mapping):
                saved = saved[key]
                break
    if isinstance(saved, Mapping) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in saved.items()):
        return saved
    return None


def _mismatches(own: Mapping[str, torch.Tensor], saved: Mapping[str, torch.Tensor]) -> list[str]:
    """Missing, unexpected and wrong-shape keys, a few of each, for the error message."""
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    shapes = [
        f"{k} (file {tuple(saved[k].shape)}, model {tuple(own[k].shape)})"
        for k in own
        if k in saved and saved[k].shape != own[k].shape
    ]
    found = (("missing", missing), ("unexpected", unexpected), ("wrong-shape", shapes))
    return [f"{len(keys)} {label} key(s): {_few(keys)}" for label, keys in found if keys]


def _few(items: list[str], shown: int = 3) -> str:
    more = len(items) - shown
    return ", ".join(items[:shown]) + (f", ... ({more} more)" if more > 0 else "")
