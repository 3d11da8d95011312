"""The Xross table (every path's accuracy and costs) and `ktgraph pick` (export a path under a budget)."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from conftest import ROOT
from ktgraph.app.cli import main
from ktgraph.app.load import load_run
from ktgraph.graph import load_graph
from ktgraph.app.pick import pareto_front, pick_path
from ktgraph.app.tables import format_tables
from ktgraph.app.xross import best_epochs
from ktgraph.errors import GraphError, UntrainedModuleWarning
from ktgraph.graph import SegmentId
from ktgraph.runtime import Executor, Job, RunDir, prepare
from ktgraph.runtime.calibrate import calibrate_job
from ktgraph.runtime.export import export_module, path_module
from ktgraph.runtime.measure import Row, node_macs, node_params, node_plan
from ktgraph.runtime.rundir import XROSS_COLUMNS

QUICK = ["data.limit_train=96", "data.limit_test=40", "data.image_size=16", "train.epochs=1",
         "train.batch_size=32", "train.eval_batch_size=16"]
MULTI_PATHS = {"net1", "net2", "net1-net1-net2", "net1-net2-net1", "net1-net2-net2", "net2-net1-net1",
               "net2-net1-net2", "net2-net2-net1"}


def numel(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def untrained(graph_file: Path | str, *overrides: str) -> Job:
    """A graph's job without data (digits: 10 classes) and untrained modules, at 16x16."""
    job = prepare(load_graph(graph_file, ["data.image_size=16", *overrides]), with_data=False)
    job.modules.eval()
    return job


def read_csv(path: Path) -> list[Row]:
    return RunDir(path.parent).read_xross()


def path_params(job: Job, node: str) -> int:
    return node_params(job.modules, node_plan(job.program.eval, job.graph, node))


def path_macs(job: Job, node: str) -> int:
    return node_macs(job.modules, node_plan(job.program.eval, job.graph, node), job.input_shape)




@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One tiny multi-Xross run (two networks, three parts), evaluated once with `ktgraph eval`."""
    out = tmp_path_factory.mktemp("xross") / "run"
    assert main(["run", str(ROOT / "graphs/multi_xross.yaml"), "--out", str(out), "--no-progress", *QUICK]) == 0
    assert main(["eval", str(out), "--no-progress", "--repeats", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def loaded(run_dir):
    """The run's graph, data and last-checkpoint model, loaded independently of the CLI."""
    return load_run(run_dir, device="cpu")


@pytest.fixture(scope="module")
def xml():
    """xml.yaml's graph and an untrained model (parameter and MAC counts do not need training)."""
    return untrained(ROOT / "graphs/xml.yaml")


# --- costs, without training --------------------------------------------------------------------
def test_params_of_a_cross_path_equal_a_count_by_hand(xml):
    model = xml.modules
    net1, net2 = model.networks["net1"], model.networks["net2"]
    # net1-net2 = net1.up (stem + layer1 + layer2) > net2.down (layer3 + avgpool + fc); no adapter (32 channels both).
    by_hand = numel(net1.conv1, net1.bn1, net1.layer1, net1.layer2, net2.layer3, net2.avgpool, net2.fc)
    assert not xml.bound.adapters
    assert path_params(xml, "net1-net2") == by_hand
    for name, net in model.networks.items():
        assert path_params(xml, name) == numel(net)
    both = numel(net1) + numel(net2)
    assert path_params(xml, "mean(networks)") == both
    assert path_params(xml, "mean(paths)") == both  # every parameter once, though used twice


def test_params_count_the_adapters_at_junctions(tmp_path):
    spec = tmp_path / "adapted.yaml"
    spec.write_text("""
data: {name: digits}
networks:
  net1: {model: resnet8, cuts: [layer2], parts: [up, down]}
  net2: {model: wrn16_2, cuts: [layer2], parts: [up, down]}
crosses:
  - {kind: xml, networks: [net1, net2]}
aggregators:
  avg: {kind: mean, inputs: [net1, net1-net2]}
links:
  - {kind: ce, each: {i: [net1, net2]}, target: "{i}"}
""")
    with pytest.warns(UntrainedModuleWarning, match="net1.up>net2.down"):  # no link reads a cross path here
        job = untrained(spec)
    net1, net2 = job.modules.networks["net1"], job.modules.networks["net2"]
    assert {str(a) for a in job.bound.adapters} == {"net1.up>net2.down", "net2.up>net1.down"}
    adapter_32_to_64 = 32 * 64 + 64  # 1x1 conv with bias: resnet8 gives 32 channels, wrn16_2's layer3 takes 64
    up1 = numel(net1.conv1, net1.bn1, net1.layer1, net1.layer2)
    down2 = numel(net2.layer3, net2.bn, net2.fc)
    assert path_params(job, "net1-net2") == up1 + adapter_32_to_64 + down2
    assert path_params(job, "mean(paths)") == numel(net1) + numel(net2) + 32 * 64 + 64 + 64 * 32 + 32
    assert job.graph.node_kind("avg") == "aggregate"
    assert path_params(job, "avg") == numel(net1) + adapter_32_to_64 + down2  # net1.up counted once
    module = path_module(job.bound, "net1-net2")
    assert len(module) == 3 and numel(module) == up1 + adapter_32_to_64 + down2


def test_macs_of_own_paths_equal_the_flop_counter_on_the_network(xml):
    model = xml.modules
    x = torch.zeros(1, 3, 16, 16)

    def macs(fn) -> int:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn(x)
        return counter.get_total_flops() // 2

    whole = {name: macs(net) for name, net in model.networks.items()}
    ups = {name: macs(model.segments[SegmentId(name, "up")]) for name in model.networks}
    for name in model.networks:
        assert path_macs(xml, name) == whole[name] > 0
    assert path_macs(xml, "mean(networks)") == whole["net1"] + whole["net2"]
    # Each distinct segment call once: the cross paths reuse the networks' up-halves.
    crosses = path_macs(xml, "net1-net2") + path_macs(xml, "net2-net1")
    assert path_macs(xml, "mean(paths)") == whole["net1"] + whole["net2"] + crosses - ups["net1"] - ups["net2"]


def test_a_node_plan_runs_only_what_the_node_needs(loaded):
    graph, model = loaded.job.graph, loaded.job.modules
    plan = loaded.job.program.eval
    sub = node_plan(plan, graph, "net1-net2-net2")
    assert [str(s.module) for s in sub.steps] == ["net1.p1", "net2.p2", "net2.p3"]
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        full = Executor(plan, model).outputs(Executor(plan, model).forward(x))["net1-net2-net2"]
        alone = Executor(sub, model).outputs(Executor(sub, model).forward(x))["net1-net2-net2"]
    torch.testing.assert_close(alone, full)


# --- the table of a trained run ------------------------------------------------------------------
def test_every_path_and_ensemble_has_a_row(run_dir):
    rows = read_csv(run_dir / "xross.csv")
    assert [r.node for r in rows][:2] == ["net1", "net2"]
    assert {r.node for r in rows} == MULTI_PATHS | {"mean(networks)", "mean(paths)"}
    kinds = {r.node: r.kind for r in rows}
    assert kinds["net1"] == "network" and kinds["net2-net1-net2"] == "cross path" and kinds["mean(paths)"] == "ensemble"
    parts = {r.node: r.parts for r in rows}
    assert parts["net2-net1-net2"] == ("net2", "net1", "net2") and parts["mean(paths)"] == ()
    assert all(r.params > 0 and r.macs > 0 and r.latency_ms > 0 and r.batch_size == 16 for r in rows)
    assert all(r.top5_last is None for r in rows)  # digits has 10 classes


def test_top1_of_an_own_path_equals_a_plain_evaluation(run_dir, loaded):
    rows = {r.node: r for r in read_csv(run_dir / "xross.csv")}
    network = loaded.job.modules.networks["net2"].eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in DataLoader(loaded.job.data.test, batch_size=7):
            correct += (network(images).argmax(1) == labels).sum().item()
            total += len(labels)
    assert total == 40
    assert rows["net2"].top1_last == pytest.approx(100 * correct / total, abs=1e-4)
    # Same weights as the run's last epoch, so the same accuracies as its metrics; one epoch: best = last.
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["test"]
    for node, row in rows.items():
        assert row.top1_last == pytest.approx(last[node]["top1"], abs=1e-4)
        assert (row.best_epoch, row.top1_best) == (1, pytest.approx(last[node]["top1"], abs=1e-4))


def test_tables_are_written_in_the_seed_layout(run_dir):
    with (run_dir / "xross.csv").open() as handle:
        assert tuple(next(csv.reader(handle))) == XROSS_COLUMNS
    md = (run_dir / "xross.md").read_text()
    assert "| Part1 (p1)" in md and "Part3 (p3)" in md and "Ensembles and aggregates" in md
    assert re.sub(r" +", " ", md).count("| net2 | net1 | net2 |") == 1  # one line per path
    assert "latency ms (batch 16)" in md


def test_best_epoch_is_chosen_on_val_when_the_run_has_one(tmp_path):
    lines = [{"stage_index": 0, "epoch": 1, "test": {"a": {"top1": 50.0}}, "val": {"a": {"top1": 40.0}}},
             {"stage_index": 0, "epoch": 2, "test": {"a": {"top1": 45.0}}, "val": {"a": {"top1": 60.0}}},
             {"stage_index": 0, "epoch": 3, "test": {"a": {"top1": 70.0}}, "val": {"a": {"top1": 60.0}}},
             {"stage_index": 0, "epoch": 4, "test": {"a": {"top1": 90.0}}, "val": {"a": {"top1": 99.0}}}]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (tmp_path / "metrics.jsonl").write_text(text + '{"stage_index": 0, "ep')  # with a torn last line
    assert best_epochs(tmp_path) == {"a": (4, 90.0)}
    # Only what the checkpoint (3 epochs done) has seen; a tie on val keeps the earlier epoch 2.
    assert best_epochs(tmp_path, upto=(0, 3)) == {"a": (2, 45.0)}
    assert best_epochs(tmp_path, "val", upto=(0, 3)) == {"a": (2, 60.0)}
    assert best_epochs(tmp_path / "nowhere") == {}


def test_two_part_runs_get_an_up_by_down_matrix():
    def row(node: str, parts: tuple[str, ...], top1: float, params: int) -> Row:
        return Row(node, "network" if len(set(parts)) == 1 else "cross path", " > ".join(parts), params, 1, 1.0, 8,
                   top1, parts=parts, part_names=("up", "down"))

    rows = [row("a", ("a", "a"), 70.0, 100), row("b", ("b", "b"), 60.0, 50), row("a-b", ("a", "b"), 65.5, 80),
            row("b-a", ("b", "a"), 66.0, 70)]
    text = re.sub(r" +", " ", format_tables(rows, markdown=True))
    assert "## Xross table: up-half `up` (rows) x down-half `down` (columns)" in text
    assert "| up \\ down | a | b |" in text
    assert "| a | 70.00 (100) | 65.50 (80) |" in text
    assert "| b | 66.00 (70) | 60.00 (50) |" in text


# --- Pareto front and pick ------------------------------------------------------------------------
def test_pareto_front_on_hand_made_rows():
    def row(node: str, params: int, top1: float, kind: str = "cross path") -> Row:
        return Row(node, kind, node, params, None, None, None, top1)

    rows = [row("small", 10, 50.0), row("mid", 20, 60.0), row("worse", 25, 55.0), row("same-cost", 20, 58.0),
            row("big", 40, 70.0), row("tie", 40, 70.0), row("useless", 50, 70.0), row("ens", 60, 75.0, "ensemble")]
    assert [r.node for r in pareto_front(rows, "params")] == ["small", "mid", "big", "tie", "ens"]
    assert pick_path(rows, "params", 39).node == "mid"
    assert pick_path(rows, "params", 100).node == "big"  # the ensemble is not a path; ties go to the first row
    with pytest.raises(GraphError, match=r"cheapest path is `small`"):
        pick_path(rows, "params", 9)


@pytest.fixture
def reuse_loaded(loaded, monkeypatch):
    """Commands load the run once per process; here they reuse the module's copy (saves building it again)."""
    import ktgraph.app.pick as pick
    import ktgraph.app.xross as xross

    monkeypatch.setattr(xross, "load_run", lambda *args, **kwargs: loaded)
    monkeypatch.setattr(pick, "load_run", lambda *args, **kwargs: loaded)
    return loaded


def test_pick_exports_a_module_that_runs_without_ktgraph(run_dir, reuse_loaded, tmp_path, capsys):
    loaded = reuse_loaded
    rows = read_csv(run_dir / "xross.csv")
    budget = sorted(r.params for r in rows if r.kind != "ensemble")[4]
    out = tmp_path / "picked.pt2"
    assert main(["pick", str(run_dir), "--max-params", str(budget), "-o", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    within = [r for r in rows if r.kind in ("network", "cross path") and r.params <= budget]
    best = max(r.top1_last for r in within)
    chosen = next(r for r in within if r.top1_last == best)
    assert f"picked `{chosen.node}`" in printed and "Pareto front" in printed and out.is_file()

    plan = node_plan(loaded.job.program.eval, loaded.job.graph, chosen.node)
    x = torch.randn(5, 3, 16, 16)
    # A cross path is exported with the calibrated statistics its row was evaluated with.
    calibration = calibrate_job(loaded.job) if chosen.calibrated else None
    with torch.no_grad():
        executor = Executor(plan, loaded.job.modules, calibration)
        expected = executor.outputs(executor.forward(x))[chosen.node]
    torch.save(x, tmp_path / "x.pt")
    script = ("import sys, torch\n"
              "module = torch.export.load(sys.argv[1]).module()\n"
              "with torch.no_grad():\n"
              "    y = module(torch.load(sys.argv[2]))\n"
              "assert 'ktgraph' not in sys.modules, 'the exported module needed ktgraph'\n"
              "torch.save(y, sys.argv[3])\n")
    command = [sys.executable, "-I", "-c", script, str(out), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected, atol=1e-5, rtol=0)


def test_eval_and_pick_errors(run_dir, xml, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(run_dir / "config.yaml", empty / "config.yaml")
    assert main(["eval", str(empty), "--no-progress"]) == 3
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["eval", str(run_dir), "--split", "val", "--no-progress"]) == 2
    assert "no validation split" in capsys.readouterr().err
    assert main(["pick", str(run_dir), "--max-macs", "lots"]) == 2
    assert "not a positive amount" in capsys.readouterr().err

    with pytest.raises(GraphError, match="not a path"):
        path_module(xml.bound, "mean(paths)")


def test_pick_evaluates_first_without_a_table_and_names_the_cheapest_path(run_dir, reuse_loaded, tmp_path, capsys,
                                                                           monkeypatch):
    import ktgraph.app.pick as pick

    quick = pick.xross_table
    monkeypatch.setattr(pick, "xross_table", lambda *a, **kw: quick(*a, **kw, repeats=1, warmup=0))
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "xross.csv").unlink()
    assert main(["pick", str(copy), "--max-params", "1000", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no path fits #params <= 1.0k" in err and "the cheapest path is `net1`" in err
    assert (copy / "xross.csv").is_file() and not list(copy.glob("picked-*"))


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_export_falls_back_to_torchscript(tmp_path, monkeypatch):
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                 torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()

    def refuse(*args, **kwargs):
        raise RuntimeError("cannot export this")

    monkeypatch.setattr(torch.export, "export", refuse)
    x = torch.randn(2, 3, 8, 8)
    saved, how = export_module(module, x, tmp_path / "m.pt2")
    assert saved == tmp_path / "m.pt" and how.startswith("torchscript") and "cannot export this" in how
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(saved))(x), module(x))


def test_tables_after_training_use_the_model_in_memory(run_dir, loaded, tmp_path):
    from ktgraph.app.xross import tables_after_training
    from ktgraph.runtime.trainer import Trainer

    trainer = Trainer(prepare(load_graph(run_dir / "config.yaml")), tmp_path, progress_bar=False)
    trainer.modules.load_state_dict(loaded.job.modules.state_dict())
    shown = []
    rows = tables_after_training(trainer, progress=False, echo=shown.append, repeats=1)
    assert (tmp_path / "xross.csv").is_file() and (tmp_path / "xross.md").is_file() and "Part1 (p1)" in shown[0]
    expected = {r.node: r.top1_last for r in read_csv(run_dir / "xross.csv")}
    assert {r.node: r.top1_last for r in rows} == pytest.approx(expected, abs=1e-4)
