"""``ktgraph search``: a tiny search end to end, ASHA pruning through the training events, workers sharing
one study under a global cap, resuming after a dead worker, best.yaml reproducing its trial, and a bad
search section failing before any trial."""
from __future__ import annotations

import json
import multiprocessing
import socket
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from ktgraph.app.cli import main
from ktgraph.app.run import fit
from ktgraph.app.search import run_search
from ktgraph.app.search.folder import open_folder
from ktgraph.app.search.study import WORKER_ATTR, open_study
from ktgraph.app.search.worker import Budget, run_workers
from ktgraph.errors import GraphError
from ktgraph.graph import load_graph
from ktgraph.runtime import RunDir

SEARCH = """\
name: tiny_search
data: {name: digits, val_split: 0.25, limit_train: 64, limit_test: 32, image_size: 16}
networks:
  net1: {model: resnet8}
  net2: {model: resnet8}
links:
  - {kind: ce, each: {i: [net1, net2]}, target: "{i}"}
  - {kind: kl, each: {i: [net1, net2], j: [net1, net2]}, source: "{j}", target: "{i}", T: 1}
train: {epochs: 2, batch_size: 32, eval_batch_size: 32, calibrate: false}
search:
  objective: {node: net1}
  trials: 6
  sampler: {name: random, seed: 0}
  pruner: {name: asha, min_epochs: 1, reduction_factor: 100}
  space:
    train.optimizer.lr: {float: [0.0001, 0.2], log: true}
  gates: {links: ["kl:*"], choices: [through, cutoff, correct]}
"""


def write(tmp_path: Path, text: str = SEARCH) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def trials_of(folder: Path) -> list[optuna.trial.FrozenTrial]:
    search, place = open_folder(folder / "search.yaml", [], out=str(folder))
    return open_study(place, search).get_trials()


def test_a_tiny_search_prunes_at_the_first_rung_and_best_yaml_reproduces_its_trial(tmp_path: Path) -> None:
    folder = tmp_path / "search"
    best = run_search(str(write(tmp_path)), [], out=str(folder), echo=lambda text: None)
    trials = trials_of(folder)
    assert len(trials) == 6 and {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.user_attrs["epochs"] == 1 for t in pruned)
    for trial in pruned:  # stopped cleanly by the callback; the weights of a pruned trial are not kept
        run = RunDir(trial.user_attrs["run_dir"])
        status = json.loads((run / "status.json").read_text())
        assert status["state"] == "stopped" and "pruned by the search" in status["reason"]
        assert not run.checkpoint.exists() and len(run.read_metrics()) == 1
    assert {"trials.csv", "trials.md", "history.png", "intermediate.png", "best.svg"} <= {
        p.name for p in folder.iterdir()}
    (folder / "trials.md").unlink()
    assert main(["search", "--report", str(folder)]) == 0 and "pruned" in (folder / "trials.md").read_text()

    assert best is not None and "\nsearch:" not in best.read_text()
    winner = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: (t.value, -t.number))
    graph = load_graph(best)
    assert load_graph(best, winner.user_attrs["overrides"]).document == graph.document  # the values are in it
    fit(graph, tmp_path / "again", progress_bar=False)
    assert max(line["val"]["net1"]["top1"] for line in RunDir(tmp_path / "again").read_metrics()) == winner.value


def test_two_workers_share_one_study_and_its_cap(tmp_path: Path) -> None:
    folder = tmp_path / "search"
    open_folder(write(tmp_path), [], out=str(folder))
    ended = run_workers(folder, Budget(trials=3), workers=2)
    trials = trials_of(folder)
    assert sum(ended.values()) == 3 and len(trials) == 3  # no trial lost, none past the cap
    assert sorted(t.number for t in trials) == [0, 1, 2]
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert len({t.user_attrs[WORKER_ATTR]["pid"] for t in trials}) <= 2
    assert sorted(p.name for p in (folder / "trials").iterdir()) == ["0000", "0001", "0002"]


def test_a_search_continues_after_a_dead_worker_and_a_second_command(tmp_path: Path) -> None:
    file, folder = write(tmp_path), tmp_path / "search"
    run_search(str(file), [], out=str(folder), trials=1, echo=lambda text: None)
    search, place = open_folder(file, [], out=str(folder))
    study = open_study(place, search)
    orphan = study.ask(search.distributions())  # a worker killed mid-trial leaves it running
    dead = multiprocessing.get_context("spawn").Process(target=int)
    dead.start()
    dead.join()
    orphan.set_user_attr(WORKER_ATTR, {"host": socket.gethostname(), "pid": dead.pid})
    run_search(str(file), [], out=str(folder), trials=2, echo=lambda text: None)
    states = [t.state for t in trials_of(folder)]
    assert states[orphan.number] == TrialState.FAIL  # failed, not counted: two trials ran besides it
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states) == 2 and len(states) == 3


@pytest.mark.parametrize(("change", "message", "line"), [
    (("  trials: 6", "  trails: 6"), "trails", 12),
    (("objective: {node: net1}", "objective: {node: net9}"), "not a node", 11),
    (("val_split: 0.25, ", ""), "validation split", 11),
    (("[through, cutoff, correct]", "[through, cutof]"), "unknown gate `cutof`", 17),
    (("{float: [0.0001, 0.2], log: true}", "{float: [0.2, 0.0001]}"), "empty", 16),
    (("train.optimizer.lr: {float: [0.0001, 0.2], log: true}", "networks.net2.model: [resnet8, resnet99]"),
     "makes no valid graph", 16),
    (("links: [\"kl:*\"]", "links: [\"mse:*\"]"), "matches no link", 17),
    (("net1: {model: resnet8}", "net1: {model: resnet99}"), "unknown model `resnet99`", 4),  # the graph's own
    ((SEARCH[SEARCH.index("  space:"):], ""), "empty", 10),
])
def test_a_bad_search_section_is_a_located_error_before_any_trial(tmp_path: Path, change: tuple[str, str],
                                                                   message: str, line: int) -> None:
    assert change[0] in SEARCH
    with pytest.raises(GraphError, match=message) as caught:
        run_search(str(write(tmp_path, SEARCH.replace(*change))), [], out=str(tmp_path / "search"),
                   echo=lambda text: None)
    assert caught.value.line == line and not (tmp_path / "search").exists()


def test_a_folder_of_another_search_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "search"
    open_folder(write(tmp_path), [], out=str(folder))
    with pytest.raises(GraphError, match="another search"):
        open_folder(write(tmp_path), ["train.epochs=3"], out=str(folder))


def test_a_folder_s_study_is_found_from_anywhere_and_a_broken_one_is_named(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    open_folder(write(tmp_path), [], out="search")  # a relative --out, as users type it
    place = json.loads((tmp_path / "search" / "search.json").read_text())
    assert place["storage"] == str(tmp_path / "search" / "study.journal")  # stored resolved
    open_folder(write(tmp_path), [], out=str(tmp_path / "search"))  # the same study, named another way
    (tmp_path / "search" / "search.json").write_text('{"storage": ')  # torn
    with pytest.raises(GraphError, match="search.json is missing or unreadable"):
        open_folder(write(tmp_path), [], out="search")


@pytest.mark.parametrize("argv, message", [
    (["--report", "DIR", "--storage", "sqlite:///x.db"], "give no graph file, overrides or --storage"),
    (["FILE", "--timeout", "0"], "--timeout 0.0 is out of range"),
])
def test_search_options_that_would_be_ignored_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          argv: list[str], message: str) -> None:
    file = write(tmp_path)
    argv = [str(file) if a == "FILE" else str(tmp_path) if a == "DIR" else a for a in argv]
    assert main(["search", *argv]) == 2
    assert message in capsys.readouterr().err
