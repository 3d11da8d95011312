"""One registry mechanism for every kind, every registered unit checked by hand, user units used from YAML.

Every gate, link kind, aggregator, adapter, data set and model registered when the tests are
collected has a case here (computed by hand, or a round trip); a new built-in without one fails
``test_every_registered_*``. The example in ``examples/custom_kinds.py``
registers a gate and an aggregator (with a held-out hook) and ``examples/custom_kinds.yaml``
trains with them from the command line.
"""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from PIL import Image

from conftest import ROOT
from ktgraph.app.cli import REGISTRY_NAMES, main
from ktgraph.app.commands import REGISTRIES
from ktgraph.app.load import load_run
from ktgraph.data import DATASETS, data_info
from ktgraph.errors import GraphError
from ktgraph.kinds import ADAPTERS, AGGREGATORS, GATES, LINKS, AggregatorInput, GateContext, LinkInput, adapter_hint
from ktgraph.registry import Registry
from ktgraph.settings import DataSettings
from ktgraph.zoo import MODELS, allowed_cuts, create_model, split

LOSSES = torch.tensor([1.0, 2.0, 3.0, 6.0])  # mean 3




MASK = torch.tensor([1.0, 0.0, 1.0, 1.0])
CTX = GateContext(iteration=25, total_iterations=100, epoch=40)


# --- the mechanism ------------------------------------------------------------------------------
def test_a_registry_records_names_metadata_and_warns_on_overwrite():
    things: Registry = Registry("thing")

    @things.register
    def alpha() -> str:
        return "a"

    @things.register(name="beta10", size=10)
    def _beta() -> str:
        return "b"

    things.register(name="beta2")(lambda: "c")
    assert things.list() == ["alpha", "beta2", "beta10"]  # natural order
    assert things.list("beta*") == ["beta2", "beta10"]
    assert things.metadata("beta10") == {"size": 10} and things["alpha"]() == "a"
    version = things.version
    with pytest.warns(UserWarning, match="thing `alpha` was already registered"):
        things.register(name="alpha")(lambda: "z")
    assert things["alpha"]() == "z" and things.version > version
    with pytest.raises(GraphError, match=r"unknown thing `alhpa`[\s\S]*did you mean `alpha`\?"):
        things.get("alhpa")
    saved = things.snapshot()
    things.register(name="gamma")(lambda: "g")
    things.restore(saved)
    assert "gamma" not in things


def test_every_family_is_a_registry():
    for registry in (MODELS, DATASETS, LINKS, GATES, AGGREGATORS, ADAPTERS):
        assert isinstance(registry, Registry) and len(registry) >= 2


# --- every registered unit, by hand ----------------------------------------------------------------
GATE_CASES = {
    "through": ({}, 3.0),
    "cutoff": ({}, 0.0),
    "linear": ({}, 0.25 * 3.0),  # k / k_end = 25 / 100
    "correct": ({}, (1 + 3 + 6) / 4),  # masked sum over the full batch size
    "ramp": ({"length": 80}, 3.0 * math.exp(-5 * (1 - 40 / 80) ** 2)),
}


@pytest.mark.parametrize("name", GATES.list())
def test_every_registered_gate_against_a_hand_computed_value(name):
    fields, expected = GATE_CASES[name]
    gate = GATES[name](**fields)
    assert gate.reduce(LOSSES, CTX, MASK).item() == pytest.approx(expected)


SOURCE = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
TARGET = torch.tensor([[0.0, 1.0, 0.0], [1.0, -1.0, 2.0]])
LABELS = torch.tensor([0, 2])


def _kl_by_hand(source: torch.Tensor, target: torch.Tensor, T: float) -> list[float]:
    p, q = torch.softmax(source / T, 1), torch.softmax(target / T, 1)
    return [T * T * sum(p[n, c].item() * math.log(p[n, c].item() / q[n, c].item()) for c in range(3))
            for n in range(2)]


def _ce_by_hand(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    return [-math.log(math.exp(logits[n, labels[n]].item()) / sum(math.exp(v) for v in logits[n].tolist()))
            for n in range(len(labels))]


LINK_CASES = {
    "ce": ({}, _ce_by_hand(TARGET, LABELS)),
    "kl": ({"T": 2.0}, _kl_by_hand(SOURCE, TARGET, 2.0)),
    "mimic": ({"loss": "mse"}, [((0 - 2) ** 2 + (1 - 0) ** 2 + (0 + 1) ** 2) / 3, (0.5 ** 2 + 1.5 ** 2 + 2 ** 2) / 3]),
}


@pytest.mark.parametrize("name", LINKS.list())
def test_every_registered_link_kind_against_a_hand_computed_value(name):
    fields, expected = LINK_CASES[name]
    loss = LINKS[name](**fields)
    got = loss.per_sample(LinkInput(TARGET, SOURCE, LABELS, CTX))
    torch.testing.assert_close(got, torch.tensor(expected))


def test_mimic_losses_and_its_regressor_decision():
    l1 = LINKS["mimic"](loss="l1").per_sample(LinkInput(TARGET, SOURCE, LABELS, CTX))
    torch.testing.assert_close(l1, torch.tensor([(2 + 1 + 1) / 3, (0.5 + 1.5 + 2) / 3]))
    cosine = LINKS["mimic"](loss="cosine").per_sample(LinkInput(SOURCE * 3, SOURCE, LABELS, CTX))
    torch.testing.assert_close(cosine, torch.zeros(2), atol=1e-6, rtol=0)
    mimic = LINKS["mimic"]()
    assert mimic.regressor((16, 8, 8), (16, 8, 8), "m") is None
    assert mimic.regressor((16, 8, 8), (32, 8, 8), "m") == "conv_bn_relu"
    assert mimic.regressor((16, 8, 8), (32, 4, 4), "m") == "conv_bn_relu"  # the regressor maps the size too
    with pytest.raises(GraphError, match="cannot be compared"):
        LINKS["mimic"](adapter="none").regressor((16, 8, 8), (32, 4, 4), "m")


def test_adapter_none_hints_at_what_would_map_the_shapes():
    none = LINKS["mimic"](adapter="none")
    with pytest.raises(GraphError) as sizes:  # `auto` (conv_bn_relu) maps channels and spatial size
        none.regressor((16, 8, 8), (32, 4, 4), "m")
    assert sizes.value.suggestion.startswith("set `adapter: auto`")
    with pytest.raises(GraphError) as logits:  # no adapter maps a feature map onto logits: none suggested
        none.regressor((16, 8, 8), (10,), "m")
    assert "adapter" not in logits.value.suggestion and "`kl` link" in logits.value.suggestion
    # A junction's `auto` is conv1x1_relu, which keeps the spatial size: name the kind that changes it.
    assert adapter_hint((16, 8, 8), (32, 4, 4), "conv1x1_relu", "cut elsewhere").startswith(
        "set `adapter: conv_bn_relu`")
    assert adapter_hint((16, 8, 8), (32, 8, 8), "conv1x1_relu", "cut elsewhere").startswith("set `adapter: auto`")


def _attention_by_hand(logits, features, wq, wk):
    h = [f.mean(dim=(1, 2)) for f in features]  # one sample: pooled (d,)
    out = []
    for a in range(len(logits)):
        energy = [float(((wq @ h[a]) @ (wk @ h[b])).detach()) for b in range(len(logits))]
        weights = [math.exp(e) / sum(math.exp(x) for x in energy) for e in energy]
        out.append(sum(w * z for w, z in zip(weights, logits)))
    return out


@pytest.mark.parametrize("name", AGGREGATORS.list())
def test_every_registered_aggregator_against_a_hand_computed_value(name):
    torch.manual_seed(0)
    logits = [torch.randn(1, 3) for _ in range(3)]
    if name == "kdcl_linear":  # student 0 alone is right, confidently: any weight on the others raises the CE
        logits = [torch.tensor([[0.0, 5.0, 0.0]]), torch.tensor([[5.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 5.0]])]
    label = torch.tensor([1])
    features = [torch.randn(1, 4, 2, 2) for _ in range(3)]
    unit = AGGREGATORS[name](**({"reduction": 2} if name == "attention" else {}))
    module = unit.build([(3,)] * 3, [(4, 2, 2)] * 3)
    reads = {"attention": features, "one_gate": features[:1]}.get(name, [])
    if name == "one_gate":
        module.eval()  # a batch of one: its BatchNorm1d normalises with the running statistics (0 and 1)
    got = unit.aggregate(module, AggregatorInput(logits, reads, label))
    ce = [-math.log(math.exp(z[0, 1].item()) / sum(math.exp(v) for v in z[0].tolist())) for z in logits]
    if name == "mean" or name == "kdcl_general":  # General: uniform weights until its first epoch ends
        expected = [sum(z[0] for z in logits) / 3]
    elif name in ("kdcl_naive", "kdcl_linear"):
        expected = [logits[ce.index(min(ce))][0]]
    elif name == "kdcl_minlogit":
        expected = [torch.tensor([min(z[0, c].item() - z[0, 1].item() for z in logits) for c in range(3)])]
    elif name == "attention":
        expected = _attention_by_hand([z[0] for z in logits], [f[0] for f in features],
                                      module.query.weight, module.key.weight)
    elif name == "one_gate":  # softmax(ReLU(BN(Linear(pooled trunk feature)))) weighting the branches
        pooled = features[0][0].mean(dim=(1, 2))
        scores = [float(module.linear.weight[i] @ pooled + module.linear.bias[i]) / math.sqrt(1 + 1e-5) for i in range(3)]
        gates = [math.exp(max(v, 0.0)) / sum(math.exp(max(u, 0.0)) for u in scores) for v in scores]
        expected = [sum(g * z[0] for g, z in zip(gates, logits))]
    elif name == "others_mean":
        expected = [(sum(z[0] for z in logits) - z[0]) / 2 for z in logits]
    else:
        raise AssertionError(f"add a hand-computed case for the aggregator `{name}`")
    assert len(got) == len(unit.outputs("agg", ["p", "q", "r"]))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g[0], e.detach(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ADAPTERS.list())
def test_every_registered_adapter_maps_channels(name):
    adapter = ADAPTERS[name]().build((16, 4, 4), (32, 4, 4))
    params = sum(p.numel() for p in adapter.parameters())
    assert params == {"conv1x1_relu": 16 * 32 + 32, "conv_bn_relu": 16 * 32 + 2 * 32}[name]
    y = adapter.eval()(torch.randn(2, 16, 4, 4))
    assert y.shape == (2, 32, 4, 4) and bool((y >= 0).all())  # both end in a ReLU


def test_conv_bn_relu_maps_spatial_size_and_conv1x1_refuses():
    strided = ADAPTERS["conv_bn_relu"]().build((16, 8, 8), (32, 4, 4))
    assert sum(p.numel() for p in strided.parameters()) == 16 * 32 * 9 + 2 * 32  # 3x3 conv, stride 2
    assert strided.eval()(torch.randn(2, 16, 8, 8)).shape == (2, 32, 4, 4)
    resized = ADAPTERS["conv_bn_relu"]().build((16, 4, 4), (8, 6, 6))
    assert resized.eval()(torch.randn(2, 16, 4, 4)).shape == (2, 8, 6, 6)
    with pytest.raises(GraphError, match="changes channels, not spatial size"):
        ADAPTERS["conv1x1_relu"]().build((16, 8, 8), (32, 4, 4))
    with pytest.raises(GraphError, match="maps feature maps only"):
        ADAPTERS["conv_bn_relu"]().build((10,), (12,))


@pytest.mark.parametrize("name", DATASETS.list())
def test_every_registered_dataset_says_its_classes_without_loading(name, tmp_path):
    fields = {"root": str(tmp_path)} if name == "image_folder" else {}
    if name == "image_folder":
        for cls in ("cat", "dog", "owl"):
            (tmp_path / "train" / cls).mkdir(parents=True)
        Image.new("RGB", (24, 24)).save(tmp_path / "train" / "cat" / "a.png")
    info = data_info(DataSettings(name=name, **fields))
    assert (info.num_classes, info.image_size) == {"digits": (10, 16), "cifar10": (10, 32), "cifar100": (100, 32),
                                                   "image_folder": (3, 24)}[name]
    assert data_info(DataSettings(name=name, num_classes=7, image_size=8, **fields)).num_classes == 7


@pytest.mark.parametrize("name", MODELS.list())
def test_every_registered_model_cuts_and_round_trips(name):
    if name == "wrn":
        kwargs = {"depth": 10, "widen_factor": 1}
    else:
        kwargs = {}
    torch.manual_seed(0)
    model = create_model(name, 7, **kwargs).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    cuts = allowed_cuts(model, example=x)
    segments = split(model, cuts, example=x)  # cut at every stage at once
    assert len(segments) == len(cuts) + 1
    with torch.no_grad():
        out = x
        for segment in segments:
            out = segment(out)
        torch.testing.assert_close(out, model(x), atol=1e-5, rtol=1e-5)
    held = [id(p) for segment in segments for p in segment.parameters()]
    assert sorted(held) == sorted(id(p) for p in model.parameters())  # every parameter in exactly one segment


# --- the schema follows the registries; user units from YAML -----------------------------------------
def test_a_kind_field_of_another_kind_says_whose_it_is(tmp_path, capsys):
    graph = tmp_path / "g.yaml"
    graph.write_text("networks: {a: {model: resnet8}, b: {model: resnet8}}\n"
                     "links:\n  - {kind: kl, source: a, target: b, loss: l1}\n")
    assert main(["validate", str(graph), "--no-build"]) == 2
    err = capsys.readouterr().err
    assert "g.yaml:3:" in err and "`loss` applies to the mimic link kind only, not `kl`" in err
    assert "hint: set `kind: mimic`, or leave `loss` out" in err


CUSTOM = ROOT / "examples" / "custom_kinds.yaml"
QUICK = ["data.limit_train=120", "data.limit_test=30", "data.image_size=8", "train.batch_size=32",
         "train.eval_batch_size=64"]


def test_user_kinds_need_the_opt_in(capsys):
    assert main(["validate", str(CUSTOM)]) == 2
    assert "imports Python code" in capsys.readouterr().err


def test_a_user_gate_and_aggregator_train_from_yaml(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(CUSTOM), "--allow-imports", "--out", str(out), "--no-progress", "train.epochs=2",
                 *QUICK]) == 0
    capsys.readouterr()
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["links"]["kl:teacher->net1"] == 0.0 and lines[1]["links"]["kl:teacher->net1"] > 0  # delayed
    assert "teacher" in lines[1]["test"]  # the user aggregator is evaluated like any node

    # Its held-out hook: the weights are the networks' shares of correct validation predictions,
    # recomputed here from the checkpoint (saved after the last epoch's hook ran).
    run = load_run(out, device="cpu", allow_imports=True)
    job = run.job
    correct = torch.zeros(2)
    with torch.no_grad():
        for images, labels in torch.utils.data.DataLoader(job.data.val, batch_size=64):
            for i, name in enumerate(["net1", "net2"]):
                correct[i] += (job.modules.networks[name](images).argmax(1) == labels).sum()
    torch.testing.assert_close(job.modules.aggregators["teacher"].weights, correct / correct.sum())


def test_a_user_gate_field_is_checked_like_a_built_in(tmp_path, capsys):
    graph = tmp_path / "typo.yaml"
    text = CUSTOM.read_text().replace("after: 1", "afterr: 1").replace("[custom_kinds.py]",
                                                                         f"[{ROOT / 'examples/custom_kinds.py'}]")
    graph.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # importing the same file again registers nothing twice
        assert main(["validate", str(graph), "--allow-imports", "--no-build"]) == 2
    err = capsys.readouterr().err
    assert "did you mean `after`?" in err and "typo.yaml:" in err


def test_list_shows_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for heading in ("models:", "datasets:", "links:", "gates:", "aggregators:", "adapters:"):
        assert heading in out
    assert "ramp" in out and "exp(-5" in out
    assert main(["list", "gates", "r*"]) == 0
    assert capsys.readouterr().out.split()[0] == "ramp"


def test_list_help_names_every_registry():
    """The parser names the registries without importing them (it loads no torch); the two lists agree."""
    assert REGISTRY_NAMES == tuple(REGISTRIES)
