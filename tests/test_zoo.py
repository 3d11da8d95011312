"""ktgraph.zoo: building models by name, the built-in CIFAR networks, cutting networks into segments."""

from __future__ import annotations

import copy
import functools
import runpy
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn

from ktgraph.errors import GraphError
from ktgraph.zoo import MODELS, Segment, allowed_cuts, create_model, is_model, list_models, register_model, split

CLASSES = 10
RESNET3 = ["stem", "layer1", "layer2", "layer3"]
RESNET4 = [*RESNET3, "layer4"]
ROOT = Path(__file__).resolve().parents[1]


def _numbered(prefix: str, n: int) -> list[str]:
    return [f"{prefix}.{i}" for i in range(n)]


# name -> (constructor kwargs, input side, the cuts it allows). CIFAR networks get 16x16
# inputs and ImageNet ones 32x32, to keep the file fast.
CASES: dict[str, tuple[dict, int, list[str]]] = {
    **{f"resnet{d}": ({}, 16, RESNET3) for d in (8, 14, 20, 32, 44, 56, 110)},
    **{f"wrn{d}_{k}": ({}, 16, RESNET3) for d, k in ((16, 2), (16, 4), (28, 2), (28, 10), (40, 2))},
    "wrn": ({"depth": 10, "widen_factor": 3, "dropout": 0.3}, 16, RESNET3),
    "resnet18": ({}, 32, RESNET4),
    "resnext50_32x4d": ({}, 32, RESNET4),
    "mobilenet_v2": ({}, 32, _numbered("features", 19)),
    "mobilenet_v3_small": ({}, 32, _numbered("features", 13)),
    "efficientnet_b0": ({}, 32, _numbered("features", 9)),
    "vgg11_bn": ({}, 32, _numbered("features", 29)),
    "convnext_tiny": ({}, 32, _numbered("features", 8)),
    "timm:resnet18": ({}, 32, RESNET4),
    "timm:efficientnet_b0": ({}, 32, ["conv_stem", "bn1", *_numbered("blocks", 7), "conv_head", "bn2"]),
    "timm:mobilenetv3_small_100": ({}, 32, ["conv_stem", "bn1", *_numbered("blocks", 6)]),
    "timm:convnext_atto": ({}, 32, ["stem", *_numbered("stages", 4), "norm_pre"]),
    "timm:regnetx_002": ({}, 32, ["stem", "s1", "s2", "s3", "s4", "final_conv"]),
}

MULTI_CUTS = [
    ("resnet20", ["stem", "layer2"]),
    ("wrn16_2", RESNET3),
    ("resnet18", RESNET4),
    ("mobilenet_v2", ["features.3", "features.13"]),
    ("timm:efficientnet_b0", ["bn1", "blocks.3", "bn2"]),
    ("timm:convnext_atto", CASES["timm:convnext_atto"][2]),
]




@functools.cache
def _model(name: str) -> nn.Module:
    """Each case's model, built once for the whole file, in eval mode."""
    torch.manual_seed(0)
    return create_model(name, CLASSES, **CASES[name][0]).eval()


@pytest.fixture(autouse=True, scope="module")
def _free_models() -> Iterator[None]:
    """The cached models take about 1 GB: let other test files have it back."""
    yield
    _model.cache_clear()


def _input(name: str) -> torch.Tensor:
    side = CASES[name][1]
    return torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))


def _params(module: nn.Module) -> list[nn.Parameter]:
    return list(module.parameters())


def _assert_faithful(model: nn.Module, segments: list[Segment], x: torch.Tensor) -> None:
    """Segments in sequence give model(x), and their parameters partition the model's."""
    with torch.no_grad():
        out = x
        for segment in segments:
            out = segment(out)
        torch.testing.assert_close(out, model(x), atol=1e-5, rtol=1e-5)
    ids = [id(p) for segment in segments for p in _params(segment)]
    assert len(ids) == len(set(ids)), "a parameter is in two segments"
    assert set(ids) == {id(p) for p in _params(model)}
    assert sum(p.numel() for s in segments for p in _params(s)) == sum(p.numel() for p in _params(model))


# --- cutting -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_allowed_cuts_per_family(name: str) -> None:
    assert allowed_cuts(_model(name), example=_input(name)) == CASES[name][2]


@pytest.mark.parametrize("name", CASES)
def test_every_single_cut_reproduces_the_model(name: str) -> None:
    model, x = _model(name), _input(name)
    for cut in CASES[name][2]:
        segments = split(model, [cut], example=x)
        assert len(segments) == 2
        assert segments[0].stages[-1] == cut and segments[1].stages[-1] == "head"
        _assert_faithful(model, segments, x)


@pytest.mark.parametrize(("name", "cuts"), MULTI_CUTS)
def test_several_cuts_reproduce_the_model(name: str, cuts: list[str]) -> None:
    model, x = _model(name), _input(name)
    segments = split(model, cuts, example=x)
    assert len(segments) == len(cuts) + 1
    assert [s.stages[-1] for s in segments[:-1]] == cuts
    assert [stage for s in segments for stage in s.stages] == [*CASES[name][2], "head"]
    _assert_faithful(model, segments, x)


def test_the_default_probe_works_without_example() -> None:
    model = _model("resnet18")
    assert allowed_cuts(model) == RESNET4
    _assert_faithful(model, split(model, ["layer2"]), torch.randn(2, 3, 64, 64))


def test_no_cuts_is_one_segment_for_any_model() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, CLASSES))
    (segment,) = split(model, [])
    assert segment.stages == ("model",) and segment.net is model
    _assert_faithful(model, [segment], torch.randn(2, 3, 2, 2))
    with pytest.raises(GraphError, match="cannot be cut"):
        allowed_cuts(model)


def test_a_vision_transformer_cannot_be_cut_but_runs_whole() -> None:
    model = create_model("timm:vit_tiny_patch16_224", CLASSES, img_size=32, patch_size=16).eval()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(GraphError, match="cannot be cut"):
        split(model, ["blocks.3"], example=x)
    _assert_faithful(model, split(model, []), x)


@pytest.mark.parametrize("name", ["densenet121", "squeezenet1_0"])
def test_torchvision_models_with_other_heads_fail_clearly(name: str) -> None:
    with pytest.raises(GraphError, match="cannot be cut: running its stages"):
        allowed_cuts(create_model(name, CLASSES), example=torch.randn(1, 3, 64, 64))


def test_a_probe_the_model_rejects_asks_for_an_example() -> None:
    model = create_model("timm:vit_tiny_patch16_224", CLASSES, img_size=32, patch_size=16)
    with pytest.raises(GraphError, match="probe batch of shape") as info:
        allowed_cuts(model)
    assert "example=" in info.value.suggestion


def test_bad_cut_lists_the_allowed_ones_and_suggests() -> None:
    with pytest.raises(GraphError) as info:
        split(_model("resnet18"), ["layr2"], example=_input("resnet18"))
    assert "stem, layer1, layer2, layer3, layer4" in info.value.expected
    assert info.value.suggestion == "did you mean `layer2`?"
    with pytest.raises(GraphError, match="cannot cut after `head`"):
        split(_model("resnet18"), ["head"], example=_input("resnet18"))


@pytest.mark.parametrize(("cuts", "message"), [(["layer2", "stem"], "out of order"), (["layer1", "layer1"], "twice")])
def test_cuts_must_be_distinct_and_in_order(cuts: list[str], message: str) -> None:
    with pytest.raises(GraphError, match=message):
        split(_model("resnet20"), cuts, example=_input("resnet20"))


def test_segments_share_the_models_modules_and_state() -> None:
    model = create_model("resnet8", CLASSES)
    first, second = split(model, ["layer1"])
    assert first.net.layer1 is model.layer1 and second.net.fc is model.fc
    keys = [k.removeprefix("net.") for s in (first, second) for k in s.state_dict()]
    assert sorted(keys) == sorted(model.state_dict())
    optimizer = torch.optim.SGD(second.parameters(), lr=1.0)
    before = model.fc.weight.detach().clone()
    second(first(torch.randn(2, 3, 16, 16))).sum().backward()
    optimizer.step()
    assert not torch.equal(model.fc.weight, before)


def test_an_in_place_first_step_does_not_overwrite_the_previous_output() -> None:
    model, x = _model("vgg11_bn"), _input("vgg11_bn")
    first, second = split(model, ["features.1"], example=x)  # BatchNorm, then ReLU(inplace=True)
    with torch.no_grad():
        feature = first(x)
        kept = feature.clone()
        second(feature)
    assert torch.equal(feature, kept)


def test_a_head_segment_keeps_timm_dropout_in_step_with_its_mode() -> None:
    model = create_model("timm:resnet18", CLASSES, drop_rate=0.5)
    *_, head = split(model, ["layer4"], example=torch.randn(2, 3, 32, 32))
    torch.manual_seed(0)
    feature = torch.randn(2, 512, 1, 1)
    head.eval()
    assert not model.training
    torch.testing.assert_close(head(feature), head(feature))
    head.train()
    assert model.training
    assert not torch.equal(head(feature), head(feature))


def test_a_deep_copy_of_segments_is_a_consistent_copy() -> None:
    model, x = _model("timm:resnet18"), _input("timm:resnet18")
    segments = split(model, ["layer2"], example=x)
    copies = copy.deepcopy(segments)
    assert not {id(p) for s in copies for p in s.parameters()} & {id(p) for p in model.parameters()}
    with torch.no_grad():
        copies[-1].net.fc.weight.zero_()
        copies[-1].net.fc.bias.zero_()
        assert torch.count_nonzero(copies[1](copies[0](x))) == 0
        assert torch.count_nonzero(segments[1](segments[0](x))) > 0


def test_splitting_leaves_modes_and_the_global_rng_alone() -> None:
    model = create_model("resnet8", CLASSES).train()
    model.layer2.eval()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    split(model, ["layer1"])
    assert torch.equal(torch.rand(3), expected)
    assert model.training and model.layer1.training and not model.layer2.training


# --- declared stages and user models ---------------------------------------------------------


class _Declared(nn.Module):
    """A tiny CNN that declares its stages; ``leave_out`` drops one to test the check."""

    def __init__(self, num_classes: int, leave_out: str = "") -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2))
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
        self.leave_out = leave_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))

    def ktgraph_stages(self) -> list[tuple[str, nn.Module]]:
        stages = [("conv1", self.body[0]), ("act", self.body[1]), ("conv2", self.body[2]), ("head", self.classifier)]
        return [(name, module) for name, module in stages if name != self.leave_out]


@pytest.fixture
def own_registry() -> Iterator[None]:
    """Registrations made by a test vanish after it."""
    saved = MODELS.snapshot()
    yield
    MODELS.restore(saved)


@pytest.mark.usefixtures("own_registry")
def test_a_registered_user_model_is_creatable_and_cuttable() -> None:
    @register_model
    def declared_net(num_classes: int, **kwargs: str) -> nn.Module:
        return _Declared(num_classes, **kwargs)

    assert is_model("declared_net") and "declared_net" in list_models("declared_*")
    model = create_model("declared_net", CLASSES).eval()
    x = torch.randn(2, 3, 8, 8)
    assert allowed_cuts(model, example=x) == ["conv1", "act", "conv2"]
    segments = split(model, ["conv1", "conv2"], example=x)
    assert [s.stages for s in segments] == [("conv1",), ("act", "conv2"), ("head",)]
    _assert_faithful(model, segments, x)

    with pytest.raises(GraphError, match=r"parameters outside every stage: body\.2\.weight"):
        split(create_model("declared_net", CLASSES, leave_out="conv2"), ["conv1"], example=x)


@pytest.mark.usefixtures("own_registry")
def test_registering_a_name_again_warns_and_replaces() -> None:
    register_model(name="tiny")(lambda num_classes: nn.Linear(4, num_classes))
    with pytest.warns(UserWarning, match="`tiny` was already registered"):
        register_model(name="tiny")(lambda num_classes: nn.Linear(8, num_classes))
    assert create_model("tiny", CLASSES).in_features == 8


@pytest.mark.usefixtures("own_registry")
def test_the_custom_model_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(ROOT / "examples" / "custom_model.py"), run_name="__main__")
    assert "parameters" in capsys.readouterr().out


# --- the registry ----------------------------------------------------------------------------


def test_names_resolve_to_ktgraph_then_torchvision_then_timm() -> None:
    assert list_models("resnet*") == [f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)]
    assert isinstance(create_model("resnet18", CLASSES), torchvision.models.ResNet)
    assert isinstance(create_model("torchvision:resnet18", CLASSES), torchvision.models.ResNet)
    assert isinstance(create_model("timm:resnet18", CLASSES), timm.models.ResNet)
    assert isinstance(create_model("regnetx_002", CLASSES), timm.models.RegNet)  # only timm has it
    assert create_model("resnet20", CLASSES).fc.out_features == CLASSES
    for name in ("resnet20", "resnet18", "timm:convnext_atto", "torchvision:vgg11", "timm:resnet18.a1_in1k"):
        assert is_model(name), name
    for name in ("resnet19", "timm:nope", "tim:resnet18", "torchvision:regnetx_002"):
        assert not is_model(name), name


def test_an_unknown_model_suggests_the_closest_name() -> None:
    with pytest.raises(GraphError, match="unknown model `resnet19`") as info:
        create_model("resnet19", CLASSES)
    assert info.value.suggestion == "did you mean `resnet18`?"
    with pytest.raises(GraphError) as info:
        create_model("timm:efficientnet_b9", CLASSES)
    assert info.value.suggestion.startswith("did you mean `timm:efficientnet_b")
    with pytest.raises(GraphError, match="unknown model library `tim`"):
        create_model("tim:resnet18", CLASSES)


def test_keyword_arguments_reach_the_constructor() -> None:
    assert create_model("timm:resnet18", CLASSES, drop_rate=0.25).drop_rate == 0.25
    assert create_model("wrn", CLASSES, depth=10, widen_factor=1, dropout=0.5).layer1[0].dropout.p == 0.5
    with pytest.raises(GraphError, match="cannot build model `resnet20`"):
        create_model("resnet20", CLASSES, widht=2)
    with pytest.raises(GraphError, match="depth must be 6n\\+4"):
        create_model("wrn", CLASSES, depth=27, widen_factor=2)
    with pytest.raises(GraphError, match="num_classes"):
        create_model("resnet20", 0)


@pytest.mark.parametrize("name", ["resnet18", "timm:resnet18"])
def test_cifar_stem_keeps_the_resolution(name: str) -> None:
    model = create_model(name, CLASSES, cifar_stem=True).eval()
    conv = model.conv1
    assert (conv.kernel_size, conv.stride, conv.padding, conv.out_channels) == ((3, 3), (1, 1), (1, 1), 64)
    assert conv.bias is None and isinstance(model.maxpool, nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    segments = split(model, ["layer4"], example=x)
    with torch.no_grad():
        assert segments[0](x).shape == (2, 512, 4, 4)
    _assert_faithful(model, segments, x)


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2"])
def test_cifar_stem_is_refused_without_an_imagenet_stem(name: str) -> None:
    with pytest.raises(GraphError, match="cifar_stem does not apply"):
        create_model(name, CLASSES, cifar_stem=True)


# --- weights ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrap",
    [lambda state: state, lambda state: {"state_dict": state, "epoch": 3}, lambda state: {"model": state}],
    ids=["state_dict", "checkpoint-state_dict", "checkpoint-model"],
)
def test_weights_load_from_a_local_file(tmp_path: Path, wrap: Callable[[dict], object]) -> None:
    source = create_model("resnet18", CLASSES, cifar_stem=True)
    path = tmp_path / "weights.pt"
    torch.save(wrap(source.state_dict()), path)
    loaded = create_model("resnet18", CLASSES, cifar_stem=True, weights=str(path))
    for (name, a), b in zip(source.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def _save(obj_or_model: object) -> Callable[[Path], None]:
    state = obj_or_model.state_dict() if isinstance(obj_or_model, nn.Module) else obj_or_model
    return lambda path: torch.save(state, path)


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda path: None, "does not exist"),
        (lambda path: path.write_bytes(b"not a torch file"), "cannot read"),
        (_save([1, 2, 3]), "holds no state_dict"),
        (
            _save(create_model("resnet14", CLASSES)),
            r"does not fit model `resnet20`: 36 missing key\(s\): layer1\.2\.conv1\.weight",
        ),
        (
            _save(create_model("resnet20", 100)),
            r"wrong-shape key\(s\): fc\.weight \(file \(100, 64\), model \(10, 64\)\)",
        ),
    ],
    ids=["missing", "garbage", "not-a-state-dict", "wrong-keys", "wrong-shapes"],
)
def test_bad_weights_are_graph_errors(tmp_path: Path, write: Callable[[Path], None], message: str) -> None:
    path = tmp_path / "weights.pt"
    write(path)
    with pytest.raises(GraphError, match=message):
        create_model("resnet20", CLASSES, weights=str(path))


# --- parameter counts against independent formulas ---------------------------------------------


def _conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k


def _cifar_resnet_params(depth: int, classes: int) -> int:
    """Stem conv+BN, 3 stages of n blocks (two conv+BN, 1x1 conv+BN shortcut where width changes), fc."""
    n, total, cin = (depth - 2) // 6, _conv(3, 16, 3) + 2 * 16, 16
    for cout in (16, 32, 64):
        for block in range(n):
            width_in = cin if block == 0 else cout
            total += _conv(width_in, cout, 3) + _conv(cout, cout, 3) + 2 * 2 * cout
            total += (_conv(width_in, cout, 1) + 2 * cout) if width_in != cout else 0
        cin = cout
    return total + 64 * classes + classes


def _wrn_params(depth: int, k: int, classes: int) -> int:
    """Stem conv, 3 stages of n (BN-conv-BN-conv, 1x1 shortcut where width changes), final BN, fc."""
    n, total, cin = (depth - 4) // 6, _conv(3, 16, 3), 16
    for cout in (16 * k, 32 * k, 64 * k):
        for block in range(n):
            width_in = cin if block == 0 else cout
            total += 2 * width_in + _conv(width_in, cout, 3) + 2 * cout + _conv(cout, cout, 3)
            total += _conv(width_in, cout, 1) if width_in != cout else 0
        cin = cout
    return total + 2 * 64 * k + 64 * k * classes + classes


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_papers_and_formulas() -> None:
    assert _count(_model("resnet20")) == _cifar_resnet_params(20, CLASSES) == 272_474  # "0.27M"
    for depth in (8, 14, 32, 44, 56, 110):
        assert _count(_model(f"resnet{depth}")) == _cifar_resnet_params(depth, CLASSES), depth
    assert _count(_model("wrn28_10")) == _wrn_params(28, 10, CLASSES) == 36_479_194  # "36.5M"
    for depth, k in ((16, 2), (16, 4), (28, 2), (40, 2)):
        assert _count(_model(f"wrn{depth}_{k}")) == _wrn_params(depth, k, CLASSES), (depth, k)
    assert _count(create_model("resnet18", 1000)) == 11_689_512
