"""Run reports: figures, report.md and TensorBoard logging, from hand-written run directories."""
from __future__ import annotations

import itertools
import json
import random
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import ROOT
from svg_text import figure_texts
from ktgraph.errors import GraphError
from ktgraph.app.cli import main
from ktgraph.app.report.plots import colour_range
from ktgraph.app.report import (TensorBoardLogger, plot_curves, plot_pareto, plot_xross_heatmap, write_plots,
                                write_report)
from ktgraph.app.report.markdown import links_in
from ktgraph.app.tables import pareto_indices as pareto_front
from ktgraph.runtime import RunDir


def read_xross(run_dir):
    return RunDir(run_dir).read_xross()

NODES = ["net1", "net2", "net1-net2", "net2-net1", "mean(networks)"]
HEADER = "node,kind,parts,segments,params,macs,latency_ms,batch_size,top1_last,top5_last,top1_best,best_epoch\n"

# The seed's single-Xross table (ResNet34 / ResNet18 halves on Tiny ImageNet), in %.
XROSS_2 = HEADER + """\
net1,network,net1 net1,net1.up > net1.down,21320000,3600000000,4.1,256,37.177,61.2,37.5,180
net2,network,net2 net2,net2.up > net2.down,11220000,1800000000,2.2,256,36.835,60.1,36.9,170
net1-net2,cross path,net1 net2,net1.up > net2.down,11880000,2500000000,3.0,256,37.089,,37.2,150
net2-net1,cross path,net2 net1,net2.up > net1.down,20660000,3200000000,3.8,256,37.604,,37.7,160
mean(networks),ensemble,,,32540000,5400000000,6.3,256,39.3,,39.5,190
"""

# The seed's multi-Xross "Result Table": 2 networks x 3 parts, all 8 paths with #params.
MULTI = [("net1 net1 net1", 36.572, 21.32), ("net1 net1 net2", 36.044, 11.88), ("net1 net2 net1", 36.181, 20.73),
         ("net1 net2 net2", 35.986, 11.29), ("net2 net1 net1", 35.654, 21.25), ("net2 net1 net2", 36.201, 11.80),
         ("net2 net2 net1", 35.820, 20.66), ("net2 net2 net2", 35.966, 11.22)]


def multi_name(parts: str) -> str:
    nets = parts.split()
    return nets[0] if len(set(nets)) == 1 else "-".join(nets)


XROSS_3 = HEADER + "".join(
    f"{multi_name(p)},{'network' if len(set(p.split())) == 1 else 'cross path'},{p},,{int(m * 1e6)},,,,"
    f"{acc},,{acc},9\n" for p, acc, m in MULTI)


def metrics_lines() -> list[dict]:
    """2 stages x 2 epochs; ``epoch`` is 1-based within the stage."""
    lines = []
    for stage_index, stage in enumerate(["warmup", "main"]):
        for epoch in range(2):
            step = 2 * stage_index + epoch
            lines.append({
                "stage": stage, "stage_index": stage_index, "epoch": epoch + 1, "lr": 0.1 / (step + 1), "seconds": 1.5,
                "links": {"ce:net1": 2.0 - 0.3 * step, "ce:net2": 2.1 - 0.3 * step,
                          **({"kl:net2->net1": 0.4 - 0.05 * step} if stage == "main" else {"mimic:up": 0.9})},
                "node_loss": {"net1": 2.4 - 0.3 * step, "net2": 2.1 - 0.3 * step, "net1-net2": 2.5 - 0.2 * step},
                "test": {n: {"top1": 20.0 + 10 * step + i, "top5": 60.0 + step} for i, n in enumerate(NODES)},
                "val": {n: {"top1": 19.0 + 10 * step + i} for i, n in enumerate(NODES)},
            })
    return lines


def make_run(root: Path, xross: str | None = XROSS_2) -> Path:
    run = root / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in metrics_lines()))
    rows = [{"node": n, "kind": "network" if n.startswith("net") and "-" not in n else
             ("cross path" if "-" in n else "ensemble"), "route": "", "last_stage": "main", "last_epoch": 2,
             "top1_last": 50.0 + i + 0.25, "best_stage": "warmup", "best_epoch": 1, "top1_at_best": 40.0 + i + 0.75,
             "best_chosen_on": "val", "top5_last": 63.0}
            for i, n in enumerate(NODES)]
    (run / "summary.json").write_text(json.dumps({"graph": "fake_xml", "run_dir": str(run), "rows": rows}))
    (run / "env.json").write_text(json.dumps({
        "seed": 7, "command": ["/somewhere/bin/ktgraph", "run", "graphs/xml.yaml", "train.seed=7"],
        "python": "3.11.7", "platform": "Linux-test", "ktgraph": "0.1.0", "torch": "2.9.9", "torchvision": "0.1",
        "timm": "1.0", "cuda": None, "started": "2025-01-02T03:04:05"}))
    (run / "config.yaml").write_text("name: fake_xml\ndescription: Two halves, crossed.\n"
                                     "train: {epochs: 2, seed: 7, device: cpu}\n"
                                     "stages: [{name: warmup, epochs: 2}, {name: main}]\n")
    (run / "checkpoints").mkdir()
    (run / "checkpoints/last.pt").write_bytes(b"fake")
    if xross is not None:
        (run / "xross.csv").write_text(xross)
    return run


def svg_text(path: Path) -> str:
    """All text of an SVG, after checking it parses as XML."""
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    return " ".join(t for t in root.itertext())


# --- figures -----------------------------------------------------------------------------
def test_curves_svg_has_every_node_and_stage(tmp_path):
    run = make_run(tmp_path)
    out = plot_curves(run)
    assert out == run / "curves.svg"
    text = svg_text(out)
    for name in [*NODES, "stage warmup", "stage main", "val dashed"]:
        assert name in text
    # Data instead of a run directory, written where asked.
    assert plot_curves(metrics_lines(), tmp_path / "elsewhere.svg") == tmp_path / "elsewhere.svg"


def test_two_part_heatmap_is_up_by_down(tmp_path):
    out = plot_xross_heatmap(make_run(tmp_path))
    text = svg_text(out)
    assert "up-half network" in text and "down-half network" in text
    for value in ["37.18%", "36.84%", "37.09%", "37.60%", "21.32M params", "11.88M params"]:
        assert value in text
    assert "net1" in text and "net2" in text
    assert "Every path" not in text  # two parts: the heatmap shows every path, no bar chart


def test_heatmap_colours_span_ten_test_images_and_the_caption_says_what_one_is():
    # Two images apart on 360 test images: the colours span 10 images (2.78 points), kept within 100 %.
    assert colour_range([99.16, 99.72], 360) == pytest.approx((100 - 1000 / 360, 100))
    assert colour_range([40.0, 60.0], 360) == (40.0, 60.0)  # a wide spread stays as it is
    assert colour_range([50.0, 50.2], None) == pytest.approx((49.6, 50.6))  # unknown count: at least 1 point


def test_heatmap_caption_reads_the_run_s_number_of_test_images(tmp_path):
    run = make_run(tmp_path)
    lines = [{**line, "images": {"test": 360}} for line in metrics_lines()]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    text = svg_text(plot_xross_heatmap(run))
    assert "one test image = 0.28 points of top-1 (360 test images)" in text
    assert "the colour scale spans at least 10 images" in text


@pytest.mark.parametrize("table", [XROSS_2, XROSS_3], ids=["two parts", "three parts"])
def test_heatmap_notes_sit_below_every_other_text(tmp_path, table):
    calibrated = table.replace("best_epoch\n", "best_epoch,calibrated\n")
    calibrated = re.sub(r"^((?!node,).*cross path.*)$", r"\1,yes", calibrated, flags=re.M)
    texts = figure_texts(plot_xross_heatmap(make_run(tmp_path, calibrated), test_images=360))
    note = ("one test image", "the colour scale", "* BatchNorm")
    notes = [box for text, box in texts if text.startswith(note)]
    others = [box for text, box in texts if not text.startswith(note)]
    assert len(notes) == 3  # the note on the colours (two lines) and the one on calibration
    assert min(box[1] for box in notes) >= max(box[3] for box in others)  # not over an axis label


def test_curves_mark_the_calibrated_nodes(tmp_path):
    run = make_run(tmp_path)
    lines = metrics_lines()
    lines[-1]["calibrated"] = ["net1-net2", "net2-net1"]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    text = svg_text(plot_curves(run))
    assert "net1-net2 (calibrated)" in text and "net2-net1 (calibrated)" in text
    assert not re.search(r"(?<![-\w])net1 \(calibrated\)", text) and "mean(networks) (calibrated)" not in text
    assert "with their own running statistics" in text


def test_three_part_heatmaps_per_cut_and_every_path(tmp_path):
    out = plot_xross_heatmap(make_run(tmp_path, XROSS_3))
    text = svg_text(out)
    assert "cut 1: part 1 (rows) x parts 2-3 (columns)" in text
    assert "cut 2: parts 1-2 (rows) x part 3 (columns)" in text
    for parts, acc, _ in MULTI:  # the paths switching twice (net1-net2-net1) are in the bar chart
        assert multi_name(parts) in text and f"{acc:.2f}%" in text


def test_bar_chart_when_no_heatmap_applies(tmp_path):
    only_networks = HEADER + "a,network,a a,,100,,,,50,,50,1\nb,network,b b b,,200,,,,60,,60,1\n"
    text = svg_text(plot_xross_heatmap(make_run(tmp_path, only_networks)))
    assert "no up x down heatmap applies" in text and "Every path" in text


def test_pareto_svg_labels_every_path(tmp_path):
    out = plot_pareto(make_run(tmp_path, XROSS_3))
    text = svg_text(out)
    for parts, _, _ in MULTI:
        assert multi_name(parts) in text
    assert "Pareto front" in text and "#params" in text
    assert "no MACs per image in xross.csv" in text  # the second panel says why it is empty


def test_pareto_has_one_legend_and_stacks_labels_of_one_cost(tmp_path):
    shared = XROSS_2.replace("3200000000", "2500000000")  # net2-net1 now costs net1-net2's MACs
    out = plot_pareto(make_run(tmp_path, shared))
    text = svg_text(out)
    assert text.count("aggregate / ensemble") == 1  # one legend, outside both panels (it hid points inside)
    root = ET.parse(out).getroot()
    labels: dict[str, list[str | None]] = {}
    # In each panel, the two labels at one cost must sit at different heights (in the MACs panel they share it).
    for group in root.iter("{http://www.w3.org/2000/svg}g"):
        for child in group:
            if child.tag.endswith("text") and child.text in ("net1-net2", "net2-net1"):
                labels.setdefault(child.text, []).append(child.get("y"))
    assert len(labels) == 2 and all(len(v) == 2 for v in labels.values())
    assert labels["net1-net2"][1] != labels["net2-net1"][1]


def test_missing_inputs_are_skipped(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_plots(empty) == {"curves.svg": None, "xross_heatmap.svg": None, "pareto.svg": None}
    run = make_run(tmp_path, xross=None)
    plots = write_plots(run)
    assert plots["curves.svg"] is not None and plots["xross_heatmap.svg"] is None and plots["pareto.svg"] is None
    assert not (run / "xross_heatmap.svg").exists()


def test_plotting_leaves_matplotlib_global_state_alone(tmp_path):
    import matplotlib

    def state() -> dict:  # read without resolving the backend (reading rcParams["backend"] may import pyplot)
        return {k: dict.__getitem__(matplotlib.rcParams, k) for k in matplotlib.rcParams}

    pyplot_before = "matplotlib.pyplot" in sys.modules
    before = state()
    write_plots(make_run(tmp_path))
    assert state() == before
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_before  # figures never go through pyplot


# --- Pareto front --------------------------------------------------------------------------
def brute_force_front(points: list[tuple[float, float]]) -> set[int]:
    def dominates(j: int, i: int) -> bool:
        (cj, aj), (ci, ai) = points[j], points[i]
        return cj <= ci and aj >= ai and (cj < ci or aj > ai)

    return {i for i in range(len(points)) if not any(dominates(j, i) for j in range(len(points)) if j != i)}


def test_pareto_front_on_a_hand_made_table():
    points = [(10, 50.0), (20, 60.0), (20, 55.0), (15, 50.0), (30, 60.0), (40, 70.0), (40, 70.0), (5, 40.0)]
    # (15, 50) loses to (10, 50); (20, 55) to (20, 60); (30, 60) to (20, 60); the two (40, 70) tie and both stay.
    assert set(pareto_front(points)) == {7, 0, 1, 5, 6}
    assert pareto_front(points) == [7, 0, 1, 5, 6]  # cheapest first
    seed = [(p[2] * 1e6, p[1]) for p in MULTI]
    assert {multi_name(MULTI[i][0]) for i in pareto_front(seed)} == {"net2", "net1-net2-net2", "net2-net1-net2", "net1"}


def test_pareto_front_matches_brute_force():
    rng = random.Random(0)
    for _ in range(400):
        n = rng.randint(0, 12)
        points = [(rng.randint(1, 6), float(rng.randint(0, 5))) for _ in range(n)]  # many ties on purpose
        assert set(pareto_front(points)) == brute_force_front(points), points


# --- report.md ---------------------------------------------------------------------------
def test_report_ties_the_run_together(tmp_path):
    run = make_run(tmp_path)
    (run / "graph.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    (run / "xross.md").write_text("# Xross table\n\n| up | down | top-1 |\n| --- | --- | --- |\n"
                                  "| net1 | net2 | 37.09 |\n")
    out = write_report(run)
    assert out == run / "report.md"
    text = out.read_text()
    for section in ["# Run report: fake_xml", "## Graph", "## Final accuracy", "## Xross", "## Plots",
                    "## Link losses", "## Files"]:
        assert section in text
    assert "> Two halves, crossed." in text
    assert "| seed | 7 |" in text and "torch 2.9.9" in text and "`ktgraph run graphs/xml.yaml train.seed=7`" in text
    assert "4 of 4 (stage warmup: 2, stage main: 2)" in text
    assert "![the knowledge-transfer graph](graph.svg)" in text
    # Last and best, labelled, with the accuracies of summary.json.
    assert "top-1 last (epoch)" in text and "top-1 at best (epoch, chosen on)" in text
    assert "| `net2-net1` | cross path |  | 53.25 (main 2) | 43.75 (warmup 1, val) | 63.00 |" in text
    # xross.md nested under the Xross section, its heading demoted.
    assert "### Xross table" in text and "| net1 | net2 | 37.09 |" in text
    for figure in ["curves.svg", "xross_heatmap.svg", "pareto.svg"]:
        assert f"]({figure})" in text
    # The last value of every link, also of one active only in an earlier stage.
    assert re.search(r"\| `kl:net2->net1` \| 0\.25 \| main \| 2 \|", text)
    assert "| `ce:net1` | 1.1 | main | 2 |" in text
    assert "| `mimic:up` | 0.9 | warmup | 2 |" in text
    assert "[config.yaml](config.yaml)" in text and "[checkpoints/last.pt](checkpoints/last.pt)" in text
    # Relative links only, each to a file of the run directory: the directory can move.
    targets = list(links_in(text))
    assert targets
    for target in targets:
        assert not target.startswith("/") and "://" not in target and ".." not in target
        assert (run / target).exists(), target
    assert str(tmp_path) not in text


def test_report_of_an_unfinished_run_without_xross(tmp_path):
    run = make_run(tmp_path, xross=None)
    (run / "summary.json").unlink()
    text = write_report(run).read_text()
    assert "no summary.json: the run has not finished" in text
    assert "(stage main, epoch 2)" in text
    assert "| `mean(networks)` | 54.00 | 63.00 |" in text  # from the last line of metrics.jsonl
    assert "_No xross.csv in this directory._" in text and "xross_heatmap.svg" not in text


def test_report_without_xross_md_tabulates_the_csv(tmp_path):
    text = write_report(make_run(tmp_path), plots=False).read_text()
    assert "[xross.csv](xross.csv)" in text and "| `net2-net1` | cross path | net2 > net1 | 20.66M |" in text
    assert "## Plots" not in text  # plots=False draws none


def test_report_of_a_missing_directory_is_a_graph_error(tmp_path):
    with pytest.raises(GraphError, match="run directory does not exist"):
        write_report(tmp_path / "nope")
    assert main(["report", str(tmp_path / "nope")]) == 2


def test_report_of_a_folder_that_is_not_a_run_writes_nothing(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["report", str(tmp_path)]) == 2  # as `eval` does
    assert "not a run directory (no config.yaml)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_xross_rows_are_read_with_the_writer_s_reader(tmp_path):
    assert read_xross(tmp_path) == []  # no table yet
    (tmp_path / "xross.csv").write_text(XROSS_2)
    rows = read_xross(tmp_path)
    assert rows[0].parts == ("net1", "net1") and rows[2].top5_last is None and rows[4].parts == ()
    assert rows[4].is_path is False and rows[2].is_path


# --- TensorBoard ---------------------------------------------------------------------------
def test_tensorboard_logger_writes_scalars_per_epoch(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    lines = metrics_lines()
    with TensorBoardLogger(run) as logger:
        for line in lines:  # as the trainer does: write the line, then log it
            with (run / "metrics.jsonl").open("a") as handle:
                handle.write(json.dumps(line) + "\n")
            logger.log(line)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"lr", "link/ce_net1", "link/kl_net2-_net1", "node_loss/net1-net2", "test_top1/mean_networks_",
            "test_top5/net1", "val_top1/net2"} <= tags
    assert [e.step for e in events.Scalars("test_top1/net1")] == [1, 2, 3, 4]  # counted across stages
    assert [e.step for e in events.Scalars("link/kl_net2-_net1")] == [3, 4]
    assert events.Scalars("test_top1/net1")[-1].value == pytest.approx(50.0)


def test_tensorboard_missing_is_a_graph_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with pytest.raises(GraphError, match=r"pip install 'ktgraph\[tensorboard\]'"):
        TensorBoardLogger(tmp_path)


# --- end to end ----------------------------------------------------------------------------
def test_report_of_a_real_tiny_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(ROOT / "graphs/multi_xross.yaml"), "--out", str(out), "--no-progress",
                 "train.epochs=1", "data.limit_train=16", "data.limit_test=16", "data.image_size=16",
                 "train.batch_size=16", "train.eval_batch_size=64"]) == 0
    capsys.readouterr()
    report = write_report(out)
    text = report.read_text()
    assert "![Training curves](curves.svg)" in text and (out / "curves.svg").is_file()
    assert "# Run report: multi_xross" in text and "`net1-net2-net1`" in text
    assert "net1-net2-net1" in svg_text(out / "curves.svg")
    assert all((out / t).exists() for t in links_in(text))
    assert read_xross(out) == [] or (out / "xross_heatmap.svg").is_file()


def test_links_in_finds_images_and_links():
    assert list(links_in("![a](x.svg) and [b](c/d.pt), not (e)")) == ["x.svg", "c/d.pt"]
    assert not list(itertools.chain(links_in("plain text")))
