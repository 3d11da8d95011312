"""Whole runs through the CLI: the default job, resume, and a diverging run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from ktgraph.app.cli import main
from ktgraph.graph import load_graph
from ktgraph.runtime import prepare
from ktgraph.runtime.trainer import Trainer

QUICK = ["data.limit_train=96", "data.limit_test=40", "data.image_size=16", "train.batch_size=32",
         "train.eval_batch_size=64"]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_default_job_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", str(ROOT / "graphs/multi_xross.yaml"), "--out", str(out), "--no-progress",
                 "train.epochs=1", *QUICK])
    assert code == 0
    printed = capsys.readouterr().out
    # Every row once: each path as its line of the Xross table (the network of each part), then the ensembles.
    lines = [" ".join(line.split()) for line in printed.splitlines()]
    for path in ["net1-net1-net1", "net2-net2-net2", "net1-net2-net1", "net2-net1-net2", "net2-net2-net1"]:
        assert sum(line.startswith("| " + " | ".join(path.split("-")) + " | ") for line in lines) == 1, path
    for node in ["mean(networks)", "mean(paths)"]:
        assert sum(line.startswith(f"| {node} ") for line in lines) == 1, node
    assert "All rows" not in printed and printed.count("Xross table") == 1
    assert {"config.yaml", "env.json", "metrics.jsonl", "summary.json", "checkpoints"} <= {p.name for p in out.iterdir()}
    env = json.loads((out / "env.json").read_text())
    assert env["seed"] == 0 and env["torch"] == torch.__version__
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["rows"]) == 10  # 2 networks, 6 cross paths, 2 ensembles
    assert "train:\n" in (out / "config.yaml").read_text()  # the fully resolved config


# A network optimizer in each stage (the teacher's in the first, the student's in the second, where the default
# group is empty: the teacher is frozen) and a stage that changes the optimizer and the schedule.
GROUPS = ["networks.teacher.optimizer={lr: 0.05}", "networks.student.optimizer={lr: 0.02, weight_decay: 0.001}",
          "stages.1.optimizer={lr: 0.05, momentum: 0.8}", "stages.1.schedule={name: multistep, milestones: [1]}"]


@pytest.mark.parametrize("groups", [[], GROUPS], ids=["train-optimizer", "stage-and-network-optimizers"])
def test_resume_equals_uninterrupted(tmp_path, monkeypatch, groups):
    graph = str(ROOT / "graphs/kd.yaml")
    args = ["--no-progress", "stages.0.epochs=1", "stages.1.epochs=2", *QUICK, *groups]
    whole = tmp_path / "whole"
    assert main(["run", graph, "--out", str(whole), *args]) == 0

    broken = tmp_path / "broken"
    real_epoch = Trainer._train_epoch
    calls = {"n": 0}

    def interrupted(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # Ctrl-C in the middle of the last epoch
            raise KeyboardInterrupt
        return real_epoch(self, *a, **kw)

    monkeypatch.setattr(Trainer, "_train_epoch", interrupted)
    assert main(["run", graph, "--out", str(broken), *args]) == 130
    monkeypatch.setattr(Trainer, "_train_epoch", real_epoch)
    assert len(metrics(broken)) == 2
    assert main(["run", "--resume", str(broken), "--no-progress"]) == 0

    for a, b in zip(metrics(whole), metrics(broken), strict=True):
        assert (a["stage"], a["epoch"]) == (b["stage"], b["epoch"])
        assert a["links"] == b["links"] and a["test"] == b["test"]
    end_a = torch.load(whole / "checkpoints/last.pt", weights_only=True)["model"]
    end_b = torch.load(broken / "checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(end_a[k], end_b[k]) for k in end_a)
    # The student's rate: 0.02 scaled by the stage's 0.05 over train's 0.1, times gamma after the milestone.
    assert [m.get("lrs") for m in metrics(broken)] == ([None] * 3 if not groups else
                                                       [{"teacher": 0.0}] + [{"student": pytest.approx(1e-3)}] * 2)
    # config.yaml re-run is the same graph: the same stages, optimizers and groups.
    assert load_graph(broken / "config.yaml").stages == load_graph(graph, args[1:]).stages


def test_non_finite_loss_stops_and_names_the_link(tmp_path, capsys):
    out = tmp_path / "nan"
    code = main(["run", str(ROOT / "graphs/dml.yaml"), "--out", str(out), "--no-progress", "train.epochs=2",
                 "train.schedule.name=multistep", "train.schedule.milestones=[1]", "train.schedule.gamma=1e30",
                 *QUICK])
    assert code == 3
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "link `" in err and "last good checkpoint" in err
    assert len(metrics(out)) == 1 and (out / "checkpoints/last.pt").exists()


def test_network_with_all_links_cut_off_is_a_fixed_teacher(tmp_path):
    graph = tmp_path / "dcl.yaml"
    graph.write_text("""
networks:
  student: {model: resnet8}
  teacher: {model: resnet8}
links:
  - {kind: ce, target: student}
  - {kind: kl, source: teacher, target: student}
  - {kind: ce, target: teacher, gate: cutoff}
train: {epochs: 1}
""")
    out = tmp_path / "run"
    assert main(["run", str(graph), "--out", str(out), "--no-progress", *QUICK]) == 0
    fresh = prepare(load_graph(graph, QUICK)).modules.state_dict()
    trained = torch.load(out / "checkpoints/last.pt", weights_only=True)["model"]
    teacher = [k for k in fresh if k.startswith("networks.teacher.")]
    assert teacher and all(torch.equal(fresh[k], trained[k]) for k in teacher)  # BN statistics included
    assert not all(torch.equal(fresh[k], trained[k]) for k in fresh if k.startswith("networks.student."))


GRAPH_FILES = sorted((ROOT / "graphs").glob("*.yaml"))


@pytest.mark.parametrize("graph", GRAPH_FILES, ids=[g.stem for g in GRAPH_FILES])
def test_every_bundled_graph_trains(graph, tmp_path):
    short = ["stages.0.epochs=1", "stages.1.epochs=1"] if "stages:" in graph.read_text() else ["train.epochs=1"]
    assert main(["run", str(graph), "--out", str(tmp_path / "run"), "--no-progress", *short, *QUICK]) == 0
    rows = json.loads((tmp_path / "run" / "summary.json").read_text())["rows"]
    assert {r["node"] for r in rows} >= set(load_graph(graph).networks)


def test_resume_refuses_overrides(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path), "train.epochs=3"]) == 2
    assert "--resume continues a run" in capsys.readouterr().err


def test_each_epoch_prints_its_accuracies_and_a_finished_run_is_not_resumed(tmp_path, capsys):
    out = tmp_path / "kd"
    assert main(["run", str(ROOT / "graphs/kd.yaml"), "--out", str(out), "--no-progress", "stages.0.epochs=1",
                 "stages.1.epochs=2", *QUICK]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"run directory: {out}"
    lines = [line for line in err if " · " in line]
    expected = []
    best: dict[str, tuple[float, str, int]] = {}
    for line, epochs in zip(metrics(out), [1, 2, 2], strict=True):  # the line follows metrics.jsonl
        parts = [f"{line['stage']} {line['epoch']}/{epochs}"]
        for net in ["teacher", "student"]:
            top1 = line["test"][net]["top1"]
            if net not in best or top1 > best[net][0]:
                best[net] = (top1, line["stage"], line["epoch"])
            parts.append(f"{net} {top1:.2f} (best {best[net][0]:.2f}, {best[net][1]} ep {best[net][2]})")
        expected.append(" · ".join(parts + [f"{line['seconds']:.1f} s"]))
    assert lines == expected

    summary = (out / "summary.json").stat().st_mtime_ns
    assert main(["run", "--resume", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "the run is finished" in err and f"ktgraph eval {out}" in err and "run directory:" not in err
    assert (out / "summary.json").stat().st_mtime_ns == summary and len(metrics(out)) == 3


def test_a_refused_run_names_no_run_directory(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    assert main(["run", str(ROOT / "graphs/kd.yaml"), "--out", str(tmp_path / "taken"), "--no-progress",
                 *QUICK]) == 2
    err = capsys.readouterr().err
    assert "run directory is a file" in err and "run directory:" not in err
