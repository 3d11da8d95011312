"""`ktgraph plan --costs`: exact #params and MACs of every segment and path from the file alone, and
figure axes that fit their data."""
from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from conftest import ROOT
from ktgraph.app.cli import main
from ktgraph.app.report import pareto, plots
from ktgraph.runtime import measure
from ktgraph.runtime.measure import Row
from ktgraph.zoo import MODELS

XML = str(ROOT / "graphs/xml.yaml")  # net1: resnet8, net2: resnet14, both cut after layer2; digits: 16x16


# --- helpers -----------------------------------------------------------------------------------------


def costs(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, tuple[int, int]]:
    """Run `ktgraph plan --costs` and read its tables: name -> (#params, MACs/image)."""
    assert main(["plan", *args, "--costs"]) == 0
    out = capsys.readouterr().out
    found = {}
    for line in out.split("\ncosts of ", 1)[1].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and cells[-1].replace(",", "").isdigit():
            found[cells[0]] = (int(cells[-2].replace(",", "")), int(cells[-1].replace(",", "")))
    return found


def numel(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


@torch.no_grad()
def macs(fn: Callable[[torch.Tensor], torch.Tensor], size: int = 16, channels: int = 3) -> int:
    """MACs of one image (or feature map) through ``fn``, counted outside ktgraph's executor."""
    with FlopCounterMode(display=False) as counter:
        fn(torch.zeros(1, channels, size, size))
    return counter.get_total_flops() // 2


def up(net: nn.Module) -> nn.Module:
    """A CIFAR ResNet's stem, layer1 and layer2: what `cuts: [layer2]` puts in the up-half."""
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.layer1, net.layer2)


def down(net: nn.Module) -> nn.Module:
    return nn.Sequential(net.layer3, net.avgpool, nn.Flatten(), net.fc)


def built(name: str, classes: int) -> nn.Module:
    return MODELS[name](classes).eval()


# --- item 1: costs without training or data -------------------------------------------------------------
@pytest.mark.usefixtures("no_loading")
def test_costs_equal_an_independent_count(capsys, monkeypatch):
    monkeypatch.setattr(measure, "node_latency", lambda *a, **k: pytest.fail("plan measured latency"))
    table = costs(capsys, XML, "data.num_classes=100")
    net1, net2 = built("resnet8", 100), built("resnet14", 100)
    assert table["net1"] == (numel(net1), macs(net1))
    assert table["net2"] == (numel(net2), macs(net2))
    for name, net in (("net1", net1), ("net2", net2)):
        assert table[f"{name}.up"] == (numel(up(net)), macs(up(net)))
        assert table[f"{name}.down"] == (numel(down(net)), macs(down(net), 8, 32))  # on the up-half's 32x8x8
    # A cross path: net1's up-half into net2's down-half (32 channels both: no adapter).
    assert table["net1-net2"] == (numel(up(net1), down(net2)), macs(lambda x: down(net2)(up(net1)(x))))
    assert table["net2-net1"] == (numel(up(net2), down(net1)), macs(lambda x: down(net1)(up(net2)(x))))
    for path, (first, second) in {"net1-net2": ("net1.up", "net2.down"), "net2-net1": ("net2.up", "net1.down")}.items():
        assert table[path] == tuple(a + b for a, b in zip(table[first], table[second]))
    # Ensembles: every parameter once; every distinct call once (the 4 paths share their up-halves).
    assert table["mean(networks)"] == (numel(net1, net2), macs(net1) + macs(net2))
    assert table["mean(paths)"][0] == numel(net1, net2)
    assert table["mean(paths)"][1] == sum(table[s][1] for s in ("net1.up", "net2.up")) + 2 * sum(
        table[s][1] for s in ("net1.down", "net2.down"))


def test_num_classes_and_image_size_change_the_costs_exactly(capsys):
    ten, hundred = costs(capsys, XML), costs(capsys, XML, "data.num_classes=100")
    in_features = built("resnet8", 10).fc.in_features
    assert in_features == 64
    for node in ("net1", "net2", "net1.down", "net2.down", "net1-net2", "net2-net1"):
        assert hundred[node][0] - ten[node][0] == (100 - 10) * (in_features + 1)  # the fc head's weight and bias
        assert hundred[node][1] - ten[node][1] == (100 - 10) * in_features
    for node in ("net1.up", "net2.up"):
        assert hundred[node] == ten[node]
    # Twice the side: 4x the convolutions' MACs, the same head and parameters.
    big = costs(capsys, XML, "data.num_classes=100", "data.image_size=32")
    head = 100 * in_features
    for node in ("net1", "net2", "net1-net2"):
        assert big[node] == (hundred[node][0], 4 * (hundred[node][1] - head) + head)
    assert big["net1"][1] == macs(built("resnet8", 100), 32)


@pytest.mark.usefixtures("no_loading")
def test_a_tiny_imagenet_table_before_the_data(capsys):
    """No root, no files: the class count and image size come from the command line."""
    table = costs(capsys, XML, "data.name=image_folder", "data.num_classes=200", "data.image_size=64")
    net1 = built("resnet8", 200)
    assert table["net1"] == (numel(net1), macs(net1, 64))


def test_adapters_get_a_row_and_count_in_their_paths(capsys):
    table = costs(capsys, XML, "networks.net2.model=wrn16_2")
    adapter = 32 * 64 + 64  # 1x1 conv with bias: resnet8 gives 32 channels, wrn16_2's layer3 takes 64
    assert table["net1.up>net2.down"] == (adapter, 32 * 64 * 8 * 8)
    assert table["net1-net2"] == tuple(map(sum, zip(table["net1.up"], table["net1.up>net2.down"],
                                                    table["net2.down"])))


def test_costs_is_opt_in(capsys):
    assert main(["plan", XML]) == 0
    assert "costs of" not in capsys.readouterr().out


# --- item 2: axes that fit their data ---------------------------------------------------------------------
def saved_figures(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    figures: list[Figure] = []
    for module in (plots, pareto):  # each figure module saves through figure.save_svg, imported by name
        monkeypatch.setattr(module, "save_svg", lambda fig, out: figures.append(fig) or out)
    return figures


def all_axes(fig) -> list:
    return [*fig.axes, *(ax for sub in fig.subfigs for ax in all_axes(sub))]


def path_row(node: str, parts: str, top1: float, params: int) -> Row:
    kind = "network" if len(set(parts.split())) == 1 else "cross path"
    return Row(node=node, kind=kind, route="", params=params, macs=10 * params, latency_ms=None, batch_size=None,
               top1_last=top1, parts=tuple(parts.split()), part_names=("p1", "p2", "p3"))


SPREAD = [("net1", "net1 net1 net1", 90.0), ("net2", "net2 net2 net2", 70.0),
          ("net1-net2-net1", "net1 net2 net1", 20.0), ("net2-net1-net2", "net2 net1 net2", 55.0)]


@pytest.mark.parametrize("accs", [[90.0, 70.0, 20.0, 55.0], [99.9, 99.2, 99.5, 99.7], [0.0, 3.0, 100.0, 50.0]])
def test_every_path_bar_chart_fits_its_labels_within_100(accs, tmp_path, monkeypatch):
    figures = saved_figures(monkeypatch)
    rows = [path_row(node, parts, acc, 1_000_000 + i) for i, ((node, parts, _), acc) in enumerate(zip(SPREAD, accs))]
    plots.plot_xross_heatmap(rows, tmp_path / "h.svg")
    fig = figures.pop()
    ax = next(a for a in all_axes(fig) if a.get_title().startswith("Every path"))
    left, right = ax.get_xlim()
    assert 0 <= left <= min(accs) and max(accs) <= right <= 100
    assert right - max(accs) <= 0.05 * max(max(accs) - min(accs), 0.5) + 1e-9  # just past the best path
    fig.canvas.draw()
    box = ax.get_window_extent()
    labels = [t for t in ax.texts if t.get_text().strip().endswith("params)")]
    assert len(labels) == len(rows)
    for text in labels:  # every label inside the axes
        extent = text.get_window_extent()
        assert box.x0 - 0.5 <= extent.x0 and extent.x1 <= box.x1 + 0.5, text.get_text()


def test_accuracy_axes_of_curves_and_pareto_stay_within_0_and_100(tmp_path, monkeypatch):
    figures = saved_figures(monkeypatch)
    lines = [{"stage": "main", "stage_index": 0, "epoch": e + 1, "node_loss": {"a": 2.0 / (e + 1), "b": 1.0},
              "test": {"a": {"top1": 10.0 * e}, "b": {"top1": 100.0 - e}}} for e in range(5)]
    plots.plot_curves(lines, tmp_path / "c.svg")
    loss_ax, acc_ax = figures.pop().axes
    assert acc_ax.get_ylim() == (0.0, 100.0)
    assert loss_ax.get_ylim()[0] == 0.0 and loss_ax.get_ylim()[1] >= 2.0
    assert acc_ax.get_xlim() == (0.5, 5.5)
    close = [{**line, "test": {"a": {"top1": 50.0 + e}}} for e, line in enumerate(lines)]
    plots.plot_curves(close, tmp_path / "c.svg")
    low, high = figures.pop().axes[1].get_ylim()
    assert 49 < low < 50 and 54 < high < 55

    rows = [path_row(node, parts, acc, 10 ** (i + 4)) for i, (node, parts, acc) in enumerate(SPREAD)]
    rows[0].top1_last = 99.5
    plots.plot_pareto(rows, tmp_path / "p.svg")
    for ax in figures.pop().axes:
        low, high = ax.get_ylim()
        assert 0 <= low <= 20.0 and 99.5 <= high <= 100
