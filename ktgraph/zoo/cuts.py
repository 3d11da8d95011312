"""Cut a network into consecutive segments at named stages.

A network is read as an ordered list of *stages*; running them one after
another equals ``model(x)``. ``split(model, ["layer2"])`` cuts after stage
``layer2`` and gives :class:`~ktgraph.zoo.segment.Segment` views that run the
network's own modules, never copies, so training a segment trains the network and
its state_dict stays valid. Every parameter lies in exactly one segment.

How stages are found (first match wins):

1. **Declared.** ``model.ktgraph_stages() -> list[tuple[str, nn.Module]]``: the
   model's own submodules, run one after another in that order; the last is the
   head. Together they must hold every parameter of the model exactly once.
   A custom network that is neither ResNet-like nor ``features`` + ``classifier``
   declares its stages this way.
2. **ResNet-like** (children ``layer1``, ``layer2``, ...): ``stem`` (the children
   registered before ``layer1``), ``layer1`` ... ``layerN``, ``head``. The head is
   ``model.forward_head`` when the model has one (timm and ktgraph models: it
   applies timm's ``drop_rate``), else ``avgpool`` -> flatten -> ``fc``
   (torchvision). Covers ktgraph's CIFAR ResNet and WRN, torchvision
   ResNet/ResNeXt/Wide ResNet and timm's ResNet family.
3. **features + classifier** (torchvision MobileNetV2/V3, EfficientNet, VGG,
   AlexNet, ConvNeXt): ``features.0`` ... ``features.{n-1}``, ``head``. The head
   is ``avgpool`` (global average pooling where there is none, as in MobileNetV2),
   then flatten unless the classifier flattens itself (ConvNeXt), then
   ``classifier``.
4. **timm with feature_info**: the children ``forward_features`` calls, in call
   order, where a Sequential holding a ``feature_info`` module is split into its
   children (``blocks.0`` ... ``blocks.6``, ``stages.0`` ...), then ``head``
   running ``model.forward_head``. Checked on efficientnet, mobilenetv3,
   convnext and regnet.

Stage names other than ``stem`` and ``head`` are module paths in the model.

Any split with cuts is checked first, in eval mode, on a probe batch (by default
two random 64x64 images with the first conv's channels; pass ``example=`` for
other inputs): the stages must give ``model(x)`` to 1e-5, or the split raises a
GraphError. This is what rejects models whose forward is not a plain chain
(ViT, DenseNet's final ReLU, SqueezeNet). A split with no cuts always works: one
segment, stage ``model``, that calls the model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from itertools import count, pairwise, takewhile

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ktgraph.errors import GraphError, did_you_mean
from ktgraph.zoo.segment import Method, Segment, Stage, Step

PROBE_SIZE = 64
"""Side of the default probe images: large enough for AlexNet and stride-32 networks."""

_flatten: Step = partial(torch.flatten, start_dim=1)
_global_avg_pool: Step = partial(F.adaptive_avg_pool2d, output_size=1)


def allowed_cuts(model: nn.Module, *, example: Tensor | None = None) -> list[str]:
    """The stages one may cut after, in model order: all but the head.

    Raises GraphError when the model cannot be cut at all.
    """
    return [stage.name for stage in _plan(model, example)[:-1]]


def split(model: nn.Module, cuts: Sequence[str], *, example: Tensor | None = None) -> list[Segment]:
    """Cut ``model`` after each stage in ``cuts`` (model order): ``len(cuts) + 1`` segments."""
    if isinstance(cuts, str):
        raise TypeError("cuts must be a sequence of stage names, not a single string")
    if not cuts:
        return [Segment.whole(model)]
    stages = _plan(model, example)
    positions = _positions(list(cuts), [stage.name for stage in stages[:-1]])
    bounds = [0, *(p + 1 for p in positions), len(stages)]
    return [Segment(model, stages[start:stop]) for start, stop in pairwise(bounds)]


def _positions(cuts: list[str], allowed: list[str]) -> list[int]:
    """Where each cut is among the allowed ones; they must be known, distinct and in order."""
    in_order = ", ".join(allowed) or "none: the model has a single stage"
    for cut in cuts:
        if cut not in allowed:
            raise GraphError(
                f"cannot cut after `{cut}`",
                expected=f"stages to cut after, in model order: {in_order}",
                suggestion=did_you_mean(cut, allowed),
            )
    positions = [allowed.index(cut) for cut in cuts]
    for (first, p), (second, q) in pairwise(zip(cuts, positions, strict=True)):
        if p == q:
            raise GraphError(f"cut `{first}` is given twice", expected=f"distinct cuts in model order: {in_order}")
        if q < p:
            raise GraphError(
                f"cuts out of order: `{second}` comes before `{first}` in the model",
                expected=f"cuts in model order: {in_order}",
            )
    return positions


def _plan(model: nn.Module, example: Tensor | None) -> list[Stage]:
    """The model's stages, checked to hold each parameter once and to reproduce ``model(x)``."""
    probe = _probe(model) if example is None else example
    with _evaluating(model):
        try:
            expected = model(probe.clone())
        except Exception as err:  # the probe does not fit the model: say so instead of a raw traceback
            raise _uncuttable(
                model,
                f"it fails on a probe batch of shape {tuple(probe.shape)} ({err})",
                expected="a probe batch the model accepts",
                suggestion="pass `example=` a batch shaped like the model's input",
            ) from err
        stages = _find_stages(model, probe)
        _check_partition(model, stages)
        _check_reproduces(model, stages, probe, expected)
    return stages


def _find_stages(model: nn.Module, probe: Tensor) -> list[Stage]:
    for find in (_declared, _resnet_like, _features_classifier, _timm_feature_info):
        stages = find(model, probe)
        if stages:
            names = [stage.name for stage in stages]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise _uncuttable(model, f"stage names repeat: {', '.join(repeated)}")
            return stages
    raise _uncuttable(model, "its structure matches no family ktgraph knows how to cut")


def _declared(model: nn.Module, probe: Tensor) -> list[Stage] | None:
    declare = getattr(model, "ktgraph_stages", None)
    if not callable(declare):
        return None
    paths = {id(module): path for path, module in model.named_modules() if path}
    stages = []
    for name, module in declare():
        if id(module) not in paths:
            raise _uncuttable(
                model, f"ktgraph_stages() gives stage `{name}` a module that is not a submodule of the model"
            )
        stages.append(Stage(name, ((paths[id(module)], module),), (module,)))
    return stages


def resnet_layers(model: nn.Module) -> list[str]:
    """A ResNet's stage names in order: ``layer1``, ``layer2``, ... as far as the model has them."""
    children = dict(model.named_children())
    return list(takewhile(children.__contains__, (f"layer{i}" for i in count(1))))


def _resnet_like(model: nn.Module, probe: Tensor) -> list[Stage] | None:
    children = dict(model.named_children())
    layers = resnet_layers(model)
    stem = list(takewhile(lambda name: name != "layer1", children))
    if not layers or not stem:
        return None
    if callable(getattr(model, "forward_head", None)):
        head: tuple[Step, ...] = (Method(model, "forward_head"),)
    elif "avgpool" in children and "fc" in children:
        head = _pool_flatten_classify(model, children["fc"])
    else:
        return None
    stages = [Stage("stem", tuple((name, children[name]) for name in stem), tuple(children[n] for n in stem))]
    stages += [_single(name, children[name]) for name in layers]
    return [*stages, _head(model, {*stem, *layers}, head)]


def _features_classifier(model: nn.Module, probe: Tensor) -> list[Stage] | None:
    features = getattr(model, "features", None)
    classifier = getattr(model, "classifier", None)
    if not isinstance(features, nn.Sequential) or not isinstance(classifier, nn.Module):
        return None
    stages = [_single(f"features.{name}", module) for name, module in features.named_children()]
    return [*stages, _head(model, {"features"}, _pool_flatten_classify(model, classifier))]


def _timm_feature_info(model: nn.Module, probe: Tensor) -> list[Stage] | None:
    feature_info = getattr(model, "feature_info", None)
    forward_features = getattr(model, "forward_features", None)
    if not (
        isinstance(feature_info, list) and callable(forward_features) and callable(getattr(model, "forward_head", None))
    ):
        return None
    marks = {info.get("module", "") for info in feature_info if isinstance(info, dict)}
    children = dict(model.named_children())
    trunk = _called_children(model, forward_features, probe)
    stages = [_single(path, module) for name in trunk for path, module in _expand(name, children[name], marks)]
    return [*stages, _head(model, set(trunk), (Method(model, "forward_head"),))]


def _called_children(model: nn.Module, forward_features: Step, probe: Tensor) -> list[str]:
    """The model's children that ``forward_features`` calls, in call order."""
    calls: list[str] = []
    hooks = [
        child.register_forward_hook(lambda *_, name=name: calls.append(name)) for name, child in model.named_children()
    ]
    try:
        forward_features(probe.clone())
    finally:
        for hook in hooks:
            hook.remove()
    repeated = sorted({name for name in calls if calls.count(name) > 1})
    if repeated:
        raise _uncuttable(model, f"forward_features calls {', '.join(repeated)} more than once")
    return calls


def _expand(path: str, module: nn.Module, marks: set[str]) -> list[tuple[str, nn.Module]]:
    """Split a Sequential into its children while a feature_info module lies inside it."""
    if isinstance(module, nn.Sequential) and any(mark.startswith(path + ".") for mark in marks):
        return [pair for name, child in module.named_children() for pair in _expand(f"{path}.{name}", child, marks)]
    return [(path, module)]


def _pool_flatten_classify(model: nn.Module, classifier: nn.Module) -> tuple[Step, ...]:
    """torchvision's head: pool, flatten (unless the classifier does it), classify."""
    pool = getattr(model, "avgpool", None)
    steps: list[Step] = [pool if isinstance(pool, nn.Module) else _global_avg_pool]
    if not any(isinstance(m, nn.Flatten) for m in classifier.modules()):
        steps.append(_flatten)
    return (*steps, classifier)


def _single(path: str, module: nn.Module) -> Stage:
    return Stage(path, ((path, module),), (module,))


def _head(model: nn.Module, used: set[str], steps: tuple[Step, ...]) -> Stage:
    """The ``head`` stage: it holds every child the earlier stages do not."""
    rest = tuple((name, child) for name, child in model.named_children() if name not in used)
    return Stage("head", rest, steps)


def _check_partition(model: nn.Module, stages: list[Stage]) -> None:
    paths = [path for stage in stages for path, _ in stage.owned]
    owned = set(paths)
    for path in paths:
        parts = path.split(".")
        inner = next((".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in owned), None)
        if inner is not None or paths.count(path) > 1:
            raise _uncuttable(model, f"module `{path}` is in more than one stage")
    holder: dict[int, str] = {}
    for stage in stages:
        for _, module in stage.owned:
            for param in module.parameters():
                if holder.setdefault(id(param), stage.name) != stage.name:
                    raise _uncuttable(model, f"stages `{holder[id(param)]}` and `{stage.name}` share a parameter")
    missing = [name for name, param in model.named_parameters() if id(param) not in holder]
    if missing:
        raise _uncuttable(model, f"parameters outside every stage: {', '.join(missing[:3])}")


def _check_reproduces(model: nn.Module, stages: list[Stage], probe: Tensor, expected: object) -> None:
    x = probe.clone()
    try:
        for stage in stages:
            for step in stage.steps:
                x = step(x)
    except Exception as err:  # a wrong guess at the structure shows as a shape error
        raise _uncuttable(model, f"running its stages in order fails ({err})") from err
    if not isinstance(expected, Tensor) or x.shape != expected.shape or not torch.allclose(x, expected, atol=1e-5):
        raise _uncuttable(model, "running its stages in order does not give model(x)")


def _probe(model: nn.Module) -> Tensor:
    """A fixed random batch (its own generator, so the global RNG is untouched)."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = conv.in_channels if conv is not None else 3
    x = torch.randn(2, channels, PROBE_SIZE, PROBE_SIZE, generator=torch.Generator().manual_seed(0))
    param = next(model.parameters(), None)
    return x if param is None else x.to(param.device, param.dtype)


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and no grad, then every module's own training flag back."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes:
            module.training = mode


def _uncuttable(
    model: nn.Module,
    reason: str,
    *,
    expected: str = "a ResNet-like, features+classifier or timm feature_info model, or one with ktgraph_stages()",
    suggestion: str = "use no cuts for this model, or declare its stages with a `ktgraph_stages()` method "
    "(see ktgraph.zoo.cuts)",
) -> GraphError:
    return GraphError(
        f"model `{type(model).__name__}` cannot be cut: {reason}", expected=expected, suggestion=suggestion
    )
