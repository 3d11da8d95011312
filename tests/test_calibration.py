"""BatchNorm calibration of the paths that read another network's features (``train.calibrate``).

Checked against computations that do not use ktgraph's calibration: ``torch.optim.swa_utils.update_bn``
on a copy of the down-half, the cumulative mean of one BatchNorm's batch statistics by hand, and the
exported path evaluated by plain PyTorch.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader

from conftest import ROOT
from ktgraph.app.cli import main
from ktgraph.app.load import load_run
from ktgraph.app.xross import best_epochs
from ktgraph.compile import Call, compile_plan
from ktgraph.compile.fusion import FusedCall
from ktgraph.graph import SegmentId, load_graph
from ktgraph.runtime import Executor, RunDir, evaluate, make_loader, prepare
from ktgraph.runtime.calibrate import calibrate_job
from ktgraph.runtime.export import export_module, path_module
from ktgraph.runtime.fusion import norms, scope_of

XML = ROOT / "graphs/xml.yaml"
QUICK = ["data.limit_train=96", "data.limit_test=40", "data.image_size=16", "train.epochs=2",
         "train.batch_size=32", "train.eval_batch_size=16", "train.calibrate.batches=2"]
CROSS = "net2.down(net1.up(x))"  # the value of the cross path net1-net2


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny two-epoch XML run (calibrated on 2 of its 3 training batches), evaluated by `ktgraph eval`."""
    out = tmp_path_factory.mktemp("calibration") / "run"
    assert main(["run", str(XML), "--out", str(out), "--no-progress", *QUICK]) == 0
    assert main(["eval", str(out), "--no-progress", "--repeats", "0"]) == 0
    return out


@pytest.fixture(scope="module")
def loaded(run_dir):
    return load_run(run_dir, device="cpu")


def rows_of(run_dir: Path) -> dict:
    return {r.node: r for r in RunDir(run_dir).read_xross()}


def test_the_eval_plan_marks_exactly_the_calls_off_their_own_path():
    for name in ("xml.yaml", "multi_xross.yaml", "dml.yaml"):
        plan = prepare(load_graph(ROOT / "graphs" / name, ["data.image_size=16"]), with_data=False).program.eval
        calls = [s for s in plan.steps if isinstance(s, Call) and isinstance(s.module, SegmentId)]
        own = plan.own_path()
        assert {c.out for c in calls if c.stats == "calibrated"} == {c.out for c in calls if c.out not in own}
    plan = prepare(load_graph(XML, ["data.image_size=16"]), with_data=False).program.eval
    assert sum(s.stats == "calibrated" for s in plan.steps if isinstance(s, Call)) == 2  # net1-net2, net2-net1
    every = prepare(load_graph(XML, ["data.image_size=16", "train.calibrate.paths=all"]), with_data=False)
    assert all(s.stats == "calibrated" for s in every.program.eval.steps if isinstance(s, Call))
    for off in ("train.calibrate.paths=none", "train.calibrate=false"):
        job = prepare(load_graph(XML, ["data.image_size=16", off]), with_data=False)
        assert not any(isinstance(s, Call) and s.stats == "calibrated" for s in job.program.eval.steps)
    assert all(isinstance(s, Call) and s.stats == "update" for s in job.program.stages[0].steps
               if isinstance(s, Call) and isinstance(s.module, SegmentId) and s.out in job.program.stages[0].own_path())


def test_batching_never_fuses_a_calibrated_call():
    def eval_plan(*overrides: str):
        graph = load_graph(ROOT / "graphs/multi_xross.yaml", ["data.image_size=16", "train.batching=all", *overrides])
        return compile_plan(prepare(graph, with_data=False).bound)

    raw = eval_plan("train.calibrate.paths=none")  # the down-halves' calls on several inputs fuse
    assert sum(len(s.unfused) for s in raw.steps if isinstance(s, FusedCall)) >= 4
    plan = eval_plan()
    assert not any(isinstance(s, FusedCall) for s in plan.steps)  # each has statistics of its own
    assert sum(isinstance(s, Call) and s.stats == "calibrated" for s in plan.steps) == 8


def test_calibration_leaves_the_trained_models_own_statistics_unchanged(loaded):
    job = loaded.job
    before = copy.deepcopy(job.modules.state_dict())
    calibration = calibrate_job(job)
    loader = make_loader(job.data.test, 16)
    evaluate(Executor(job.program.eval, job.modules, calibration), loader, job.device, job.data.num_classes)
    after = job.modules.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    own = job.modules.networks["net2"].layer3[0].bn1.running_mean
    assert not torch.allclose(calibration.buffers[CROSS]["root.layer3.0.bn1.running_mean"], own)
    assert all(m.momentum == 0.1 and not m.training for m in job.modules.modules()
               if isinstance(m, torch.nn.BatchNorm2d))


def _batches(job, count: int) -> list[torch.Tensor]:
    """The calibration batches, drawn by hand: a seeded shuffle of the unaugmented train split."""
    train = job.graph.train
    loader = DataLoader(job.data.train_plain, batch_size=train.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(train.seed))
    return [images for images, _ in list(loader)[:count]]


def test_calibrated_statistics_equal_a_cumulative_mean_over_the_same_batches(loaded):
    job = loaded.job
    calibration = calibrate_job(job)
    assert calibration.batches == 2
    images = _batches(job, 2)
    segments = job.modules.segments
    with torch.no_grad():
        features = [segments[SegmentId("net1", "up")](x) for x in images]  # own statistics: eval mode
    # Independent: torch's own BatchNorm re-estimation on a copy of net2's down-half.
    down = copy.deepcopy(segments[SegmentId("net2", "down")].as_module())
    update_bn(features, down)
    estimated = calibration.buffers[CROSS]
    reference = dict(down.named_buffers())
    assert estimated.keys() == {k.replace("net.", "root.", 1) for k in reference if ".layer3." in f".{k}"}
    for name, value in estimated.items():
        torch.testing.assert_close(value, reference[name.replace("root.", "net.", 1)], rtol=1e-5, atol=1e-6)
    # By hand, for the first BatchNorm: the mean of the batch means and of the unbiased batch variances.
    net2 = job.modules.networks["net2"]
    with torch.no_grad():
        inputs = [net2.layer3[0].conv1(f) for f in features]
    mean = torch.stack([i.mean((0, 2, 3)) for i in inputs]).mean(0)
    var = torch.stack([i.var((0, 2, 3), unbiased=True) for i in inputs]).mean(0)
    torch.testing.assert_close(estimated["root.layer3.0.bn1.running_mean"], mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(estimated["root.layer3.0.bn1.running_var"], var, rtol=1e-5, atol=1e-6)
    assert int(estimated["root.layer3.0.bn1.num_batches_tracked"]) == 2
    # Calibrating again draws the same batches: eval and pick reproduce the table.
    again = calibrate_job(job)
    assert all(torch.equal(again.buffers[CROSS][k], v) for k, v in estimated.items())


def test_rows_say_which_numbers_are_calibrated_and_equal_an_evaluation_with_the_estimates(run_dir, loaded):
    rows = rows_of(run_dir)
    assert {n for n, r in rows.items() if r.calibrated} == {"net1-net2", "net2-net1", "mean(paths)"}
    job = loaded.job
    module = path_module(job.bound, "net1-net2", (job.program.eval, calibrate_job(job)))
    correct = 0
    with torch.no_grad():
        for images, labels in DataLoader(job.data.test, batch_size=7):
            correct += (module(images).argmax(1) == labels).sum().item()
    assert rows["net1-net2"].top1_last == pytest.approx(100 * correct / len(job.data.test), abs=1e-4)
    assert "* BatchNorm statistics calibrated" in (run_dir / "xross.md").read_text()
    summary = {r["node"]: r for r in json.loads((run_dir / "summary.json").read_text())["rows"]}
    assert summary["net1-net2"]["calibrated"] and not summary["net1"]["calibrated"]
    metrics = RunDir(run_dir).read_metrics()
    assert all(line["calibrated"] == ["mean(paths)", "net1-net2", "net2-net1"] for line in metrics)
    assert all(line["calibration_seconds"] > 0 for line in metrics)


def test_the_exported_path_reproduces_its_row_without_ktgraph(run_dir, loaded, tmp_path):
    job = loaded.job
    rows = rows_of(run_dir)
    node = "net2-net1"
    module = path_module(job.bound, node, (job.program.eval, calibrate_job(job)))
    saved, how = export_module(module, torch.zeros(2, *job.input_shape), tmp_path / "path.pt2")
    assert how.startswith("torch.export")
    images, labels = map(torch.cat, zip(*DataLoader(job.data.test, batch_size=16)))
    torch.save((images, labels), tmp_path / "test.pt")
    script = ("import sys, torch\n"
              "module = torch.export.load(sys.argv[1]).module()\n"
              "images, labels = torch.load(sys.argv[2])\n"
              "with torch.no_grad():\n"
              "    hits = (module(images).argmax(1) == labels).sum().item()\n"
              "assert 'ktgraph' not in sys.modules\n"
              "print(100 * hits / len(labels))\n")
    done = subprocess.run([sys.executable, "-I", "-c", script, str(saved), str(tmp_path / "test.pt")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout) == pytest.approx(rows[node].top1_last, abs=1e-4)
    own = job.modules.networks["net1"].layer3[0].bn1
    raw = path_module(job.bound, node)  # the graph's own modules, with their own statistics
    assert raw[1].net.layer3[0].bn1 is own
    assert not torch.equal(module[1].net.layer3[0].bn1.running_mean, own.running_mean)


def test_pick_exports_the_calibrated_statistics_of_a_calibrated_row(run_dir, loaded, tmp_path, capsys, monkeypatch):
    import ktgraph.app.pick as pick

    monkeypatch.setattr(pick, "load_run", lambda *args, **kwargs: loaded)
    rows = rows_of(run_dir)
    chosen = pick.pick_path(list(rows.values()), "params", 10**9)
    out = tmp_path / "picked.pt2"
    assert main(["pick", str(run_dir), "--max-params", "1G", "-o", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert ("calibrated BatchNorm statistics, saved with it" in printed) == chosen.calibrated
    exported = torch.export.load(str(out)).module()
    x = torch.randn(4, *loaded.job.input_shape, generator=torch.Generator().manual_seed(1))
    calibrated = (loaded.job.program.eval, calibrate_job(loaded.job)) if chosen.calibrated else None
    with torch.no_grad():
        torch.testing.assert_close(exported(x), path_module(loaded.job.bound, chosen.node, calibrated)(x))


def test_eval_no_calibrate_prints_the_raw_numbers_and_keeps_the_tables(run_dir, loaded, capsys):
    before = {name: (run_dir / name).read_bytes() for name in ("xross.csv", "xross.md")}
    assert main(["eval", str(run_dir), "--no-progress", "--repeats", "0", "--no-calibrate"]) == 0
    captured = capsys.readouterr()
    assert "not calibrated" in captured.out and "left as they were" in captured.err
    assert {name: (run_dir / name).read_bytes() for name in before} == before
    job = loaded.job
    plain = evaluate(Executor(job.program.eval, job.modules), make_loader(job.data.test, 16), job.device, 10)
    line = next(line for line in captured.out.splitlines() if line.startswith("| net1-net2 "))  # every row
    assert f" {plain['net1-net2']['top1']:.2f} " in line and "*" not in line


def test_best_epochs_never_mix_calibrated_and_raw_numbers(tmp_path):
    lines = [{"stage_index": 0, "epoch": 1, "test": {"a": {"top1": 90.0}, "b": {"top1": 10.0}}},
             {"stage_index": 0, "epoch": 2, "calibrated": ["a"], "test": {"a": {"top1": 50.0}, "b": {"top1": 20.0}}},
             {"stage_index": 0, "epoch": 3, "calibrated": ["a"], "test": {"a": {"top1": 60.0}, "b": {"top1": 15.0}}}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert best_epochs(tmp_path) == {"a": (1, 90.0), "b": (2, 20.0)}
    assert best_epochs(tmp_path, calibrated={"a"}) == {"a": (3, 60.0), "b": (2, 20.0)}
    assert best_epochs(tmp_path, calibrated=set()) == {"a": (1, 90.0), "b": (2, 20.0)}


def test_calibrating_only_the_final_table_leaves_best_epochs_blank(tmp_path):
    out = tmp_path / "run"
    assert main(["run", str(XML), "--out", str(out), "--no-progress", *QUICK,
                 "train.calibrate.every_epoch=false"]) == 0
    assert all("calibrated" not in line for line in RunDir(out).read_metrics())
    rows = rows_of(out)
    assert rows["net1-net2"].calibrated and rows["net1-net2"].top1_best is None
    assert not rows["net1"].calibrated and rows["net1"].best_epoch is not None


def test_a_calibration_split_the_run_does_not_have_is_a_clear_error(tmp_path, capsys):
    code = main(["run", str(XML), "--out", str(tmp_path / "run"), "--no-progress", *QUICK,
                 "train.calibrate.split=val"])
    err = capsys.readouterr().err
    assert code == 2 and "train.calibrate.split" in err and "val_split" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_xml_on_the_bundled_data_has_every_cross_path_within_two_points_of_its_networks(tmp_path):
    """The issue's bar, on the bundled job as a user runs it: XML's halves are interchangeable."""
    out = tmp_path / "run"
    assert main(["run", str(XML), "--out", str(out), "--no-progress"]) == 0
    rows = rows_of(out)
    networks = (rows["net1"].top1_last + rows["net2"].top1_last) / 2
    for node in ("net1-net2", "net2-net1"):
        assert rows[node].calibrated and abs(rows[node].top1_last - networks) <= 2.0, (node, rows[node].top1_last)
