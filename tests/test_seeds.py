"""Seed groups: the summary over seeds, resuming an interrupted group, seeds side by side, threads."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import ROOT
from ktgraph.app import seeds as seeds_module
from ktgraph.app.cli import main
from ktgraph.graph import load_graph
from ktgraph.runtime.trainer import Trainer

QUICK = ["data.limit_train=64", "data.limit_test=40", "data.image_size=16", "train.batch_size=32",
         "train.eval_batch_size=64"]
DML = str(ROOT / "graphs/dml.yaml")


def read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def group(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("group") / "dml"
    assert main(["run", DML, "--seeds", "1,2", "--out", str(out), "--no-progress", "train.epochs=1", *QUICK]) == 0
    return out


def test_group_summary_is_mean_and_sample_std_of_the_seed_summaries(group):
    summary = read(group / "group-summary.json")
    assert summary["seeds"] == [1, 2]
    per_seed = {s: {r["node"]: r for r in read(group / f"seed-{s}/summary.json")["rows"]} for s in (1, 2)}
    assert [r["node"] for r in summary["rows"]] == ["net1", "net2", "mean(networks)"]
    for row in summary["rows"]:
        for metric in ("top1_last", "top1_at_best"):
            a, b = per_seed[1][row["node"]][metric], per_seed[2][row["node"]][metric]
            # By hand: the mean of two, and the sample standard deviation of two, |a - b| / sqrt(2).
            assert row[metric]["mean"] == pytest.approx((a + b) / 2)
            assert row[metric]["std"] == pytest.approx(abs(a - b) / math.sqrt(2))
            assert row[metric]["values"] == {"1": a, "2": b}
        assert row["n"] == 2
    assert read(group / "seed-2/env.json")["seed"] == 2
    assert load_graph(group / "seed-2/config.yaml").train.seeds is None
    text = (group / "group-summary.md").read_text()
    assert "± " in text and "chosen on test" in text


def test_seeds_side_by_side_give_the_same_numbers(group, tmp_path, capsys):
    out = tmp_path / "parallel"
    assert main(["run", DML, "--seeds", "1,2", "--jobs", "2", "--out", str(out), "--no-progress",
                 "train.epochs=1", *QUICK]) == 0
    assert read(out / "group-summary.json")["rows"] == read(group / "group-summary.json")["rows"]
    assert (out / "logs/seed-1.log").is_file() and "2 at a time" in capsys.readouterr().out
    env = read(out / "seed-1/env.json")
    assert env["threads"] == max(1, seeds_module.available_cores() // 2)


def test_interrupted_group_resumes_seed_by_seed(tmp_path, monkeypatch, capsys):
    out = tmp_path / "group"
    real_epoch = Trainer._train_epoch
    calls = {"n": 0}

    def interrupted(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 4:  # seed 2's second epoch: seed 1 finished, seed 2 has one checkpoint
            raise KeyboardInterrupt
        return real_epoch(self, *a, **kw)

    monkeypatch.setattr(Trainer, "_train_epoch", interrupted)
    args = ["--no-progress", "train.epochs=2", *QUICK]
    assert main(["run", DML, "train.seeds=[1,2]", "--out", str(out), *args]) == 130
    assert f"continue with: ktgraph run --resume {out}" in capsys.readouterr().err
    assert not (out / "group-summary.json").exists() and (out / "seed-2/checkpoints/last.pt").is_file()
    finished = (out / "seed-1/summary.json").stat().st_mtime_ns
    monkeypatch.setattr(Trainer, "_train_epoch", real_epoch)

    assert main(["run", DML, "--seeds", "1,2", "--out", str(out), *args]) == 2  # a new group may not take it
    assert "run --resume" in capsys.readouterr().err
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    assert "seeds 1, 2 (1 finished)" in capsys.readouterr().out
    assert (out / "seed-1/summary.json").stat().st_mtime_ns == finished  # the finished seed is not run again
    epochs = [json.loads(line)["epoch"] for line in (out / "seed-2/metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    assert read(out / "group-summary.json")["rows"][0]["n"] == 2


@pytest.mark.parametrize("args, message", [
    (["--seeds", "1,x"], "--seeds `1,x` is not a list of seeds"),
    (["train.seeds=[1,1]"], "names a seed twice"),
    (["--jobs", "2"], "--jobs runs the seeds of a group side by side"),
    (["--seeds", "1", "--jobs", "0"], "--jobs 0 is out of range"),
])
def test_bad_seed_options_are_located_errors(tmp_path, capsys, args, message):
    assert main(["run", DML, "--out", str(tmp_path / "g"), "--no-progress", *args, *QUICK]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "g").exists()


def test_seeds_side_by_side_divide_the_cores(monkeypatch):
    monkeypatch.setattr(seeds_module, "available_cores", lambda: 16)
    graph = load_graph(DML)
    assert [seeds_module.threads_per_run(graph, k) for k in (1, 2, 3, 32)] == [None, 8, 5, 1]
    assert seeds_module.threads_per_run(load_graph(DML, ["train.threads=2"]), 4) == 2  # told otherwise


def test_a_group_is_not_a_run_and_says_which_is(group, capsys):
    assert main(["eval", str(group)]) == 2
    assert f"it is a seed group: give one seed's run, e.g. {group / 'seed-1'}" in capsys.readouterr().err
