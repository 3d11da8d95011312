"""Training events: their order and records, a callback that stops the run, fit and finish, and sharded batches."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from ktgraph.app.run import check_run_dir, finish, fit, train
from ktgraph.errors import GraphError
from ktgraph.graph import load_graph
from ktgraph.runtime import RunDir
from ktgraph.runtime.events import EVENTS, AfterBackward, AfterEvaluation, BeforeCheckpoint, Callback, StopRun
from ktgraph.runtime.strategy import ShardedBatches

from conftest import ROOT

DML = ROOT / "graphs" / "dml.yaml"
QUICK = ["data.limit_train=64", "data.limit_test=32", "data.image_size=16", "train.batch_size=32",
         "train.eval_batch_size=32", "train.calibrate=false"]


class Recorder(Callback):
    """Every event, in order, with its record; checks what must hold at the moment an event is emitted."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []
        for name in EVENTS:
            setattr(self, name, lambda event, name=name: self._record(name, event))

    def _record(self, name: str, event: object) -> None:
        if isinstance(event, AfterBackward):  # the gradients are there, the step not taken yet
            assert all(p.grad is not None for p in event.modules.parameters() if p.requires_grad)
        if isinstance(event, BeforeCheckpoint):
            event.payload["recorder"] = len(self.seen)
        self.seen.append((name, event))


class StopAfter(Callback):
    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def after_evaluation(self, event: AfterEvaluation) -> None:
        if event.metrics["epoch"] >= self.epochs:
            raise StopRun(f"enough after epoch {self.epochs}")


def test_events_come_in_order_with_their_records(tmp_path: Path) -> None:
    recorder = Recorder()
    fitted = fit(load_graph(DML, [*QUICK, "train.epochs=2"]), tmp_path / "run", progress_bar=False,
                 callbacks=[recorder])
    names = [name for name, _ in recorder.seen]
    epoch = ["on_epoch_start", "after_backward", "after_backward", "on_epoch_end", "after_evaluation",
             "before_checkpoint"]
    assert names == ["on_run_start", "on_stage_start", *epoch, *epoch, "on_run_end"]
    records = dict(recorder.seen)
    assert records["on_run_start"].resumed is False
    stage = records["on_stage_start"]
    assert stage.index == 0 and stage.data.num_classes == 10 and stage.modules is fitted.trainer.modules
    backward = [r for n, r in recorder.seen if n == "after_backward"]
    assert [(b.epoch.epoch, b.batch, b.iteration) for b in backward] == [(0, 0, 1), (0, 1, 2), (1, 0, 3), (1, 1, 4)]
    assert set(backward[0].losses) == {"ce:net1", "ce:net2", "kl:net2->net1", "kl:net1->net2"}
    lines = RunDir(tmp_path / "run").read_metrics()
    evaluations = [r.metrics for n, r in recorder.seen if n == "after_evaluation"]
    assert json.loads(json.dumps(evaluations)) == lines
    payload = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert payload["recorder"] == names.index("before_checkpoint", 8)  # what the callback added is saved
    assert records["on_run_end"].stopped is None and fitted.stopped is None
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "trained"


def test_a_callback_stops_the_run_cleanly_and_resume_ends_as_uninterrupted(tmp_path: Path) -> None:
    graph = load_graph(DML, [*QUICK, "train.epochs=3"])
    summary = train(graph, tmp_path / "stopped", progress_bar=False, callbacks=[StopAfter(2)], echo=lambda t: None)
    assert summary is None
    run = RunDir(tmp_path / "stopped")
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "stopped" and "enough after epoch 2" in status["reason"] and "StopAfter" in status["reason"]
    assert len(run.read_metrics()) == 2 and run.checkpoint.exists() and not (run / "summary.json").exists()
    with pytest.raises(GraphError, match="that a callback stopped .enough after epoch 2") as refused:
        check_run_dir(graph, run)  # resumable, not overwritten by accident
    assert "ktgraph run --resume" in str(refused.value)

    resumed = train(graph, run.path, resume=True, progress_bar=False, echo=lambda t: None)
    whole = train(graph, tmp_path / "whole", progress_bar=False, echo=lambda t: None)
    assert resumed is not None and whole is not None
    assert [line["test"] for line in run.read_metrics()] == [line["test"] for line in RunDir(whole["run_dir"]).read_metrics()]
    a = torch.load(run.checkpoint, weights_only=False)["model"]
    b = torch.load(RunDir(whole["run_dir"]).checkpoint, weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert json.loads((run / "status.json").read_text())["state"] == "trained"


def test_fit_then_finish_is_run(tmp_path: Path) -> None:
    graph = load_graph(DML, [*QUICK, "train.epochs=1"])
    fitted = fit(graph, tmp_path / "run", progress_bar=False)
    assert not (tmp_path / "run" / "xross.csv").exists()
    printed: list[str] = []
    summary = finish(fitted, progress_bar=False, echo=printed.append)
    assert {row["node"] for row in summary["rows"]} >= {"net1", "net2"}
    assert (tmp_path / "run" / "xross.csv").exists() and (tmp_path / "run" / "report.md").exists()
    assert any("report:" in text for text in printed)


@pytest.mark.parametrize(("size", "batch", "world"), [(96, 35, 2), (100, 32, 3), (7, 4, 4), (64, 32, 1)])
def test_shards_of_every_global_batch_are_the_single_process_batches(size: int, batch: int, world: int) -> None:
    whole = list(DataLoader(range(size), batch_size=batch, shuffle=True,
                            generator=torch.Generator().manual_seed(11)))
    shards = [list(ShardedBatches(size, batch, rank=r, world=world, shuffle=True, seed=11)) for r in range(world)]
    kept = [b for b in whole if len(b) >= world]  # a last batch with fewer images than processes is left out
    assert all(len(s) == len(kept) for s in shards)
    for number, expected in enumerate(kept):
        parts = [s[number] for s in shards]
        assert sorted(i for p in parts for i in p) == sorted(expected.tolist())
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert ShardedBatches(size, batch, world=world).global_batches() == [len(b) for b in kept]


def test_augmentation_follows_the_image_not_the_process() -> None:
    batches = ShardedBatches(10, 4, shuffle=True, seed=3, augment_seed=5)
    again = ShardedBatches(10, 4, rank=1, world=2, shuffle=True, seed=3, augment_seed=5)
    seeds = {index: seed for batch in batches for index, seed in batch}
    assert all(seeds[index] == seed for batch in again for index, seed in batch)
