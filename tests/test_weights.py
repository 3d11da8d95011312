"""Initial weights from a file or from an earlier run, and runs that no longer need them once checkpointed."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT
from ktgraph.app.cli import main
from ktgraph.app.run import fit
from ktgraph.bind import bind
from ktgraph.errors import GraphError
from ktgraph.graph import load_graph
from ktgraph.runtime import RunDir, prepare
from ktgraph.runtime.events import AfterEvaluation, Callback, StopRun

QUICK = ["data.limit_train=64", "data.limit_test=32", "data.image_size=16", "train.batch_size=32",
         "train.eval_batch_size=64"]
STUDENT = """\
data: {{name: digits, limit_train: 64, limit_test: 32, image_size: 16}}
networks:
  student: {{model: resnet14, weights: {weights}}}
links:
  - {{kind: ce, target: student}}
train: {{epochs: 2, batch_size: 32, eval_batch_size: 64}}
"""


class StopAfterFirst(Callback):
    def after_evaluation(self, event: AfterEvaluation) -> None:
        raise StopRun("one epoch is enough")


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DML run of 3 epochs that keeps every checkpoint (net2 is a resnet14)."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    assert main(["run", str(ROOT / "graphs/dml.yaml"), "--out", str(out), "--no-progress", "train.epochs=3",
                 "train.keep_checkpoints=3", "train.optimizer.lr=0.05", *QUICK]) == 0
    return out


def student_weights(tmp_path: Path, weights: str) -> dict[str, torch.Tensor]:
    (tmp_path / "student.yaml").write_text(STUDENT.format(weights=weights))
    job = prepare(load_graph(tmp_path / "student.yaml"), with_data=False, device="cpu")
    return job.modules.networks["student"].state_dict()


@pytest.mark.parametrize("checkpoint", ["last", "best"])
def test_weights_from_a_run_are_its_network_s_state(teacher_run: Path, tmp_path: Path, checkpoint: str) -> None:
    saved = torch.load(teacher_run / "checkpoints/last.pt", weights_only=True)
    if checkpoint == "best":
        stage, epoch = 0, saved["best"]["net2"]["epoch"]
        saved = torch.load(teacher_run / f"checkpoints/stage{stage}-epoch{epoch:04d}.pt", weights_only=True)
    state = student_weights(tmp_path, f"{{run: {teacher_run}, network: net2, checkpoint: {checkpoint}}}")
    prefix = "networks.net2."
    expected = {k.removeprefix(prefix): v for k, v in saved["model"].items() if k.startswith(prefix)}
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in state)


def test_weights_from_a_run_name_what_is_wrong(teacher_run: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "student.yaml").write_text(STUDENT.format(weights=f"{{run: {teacher_run}, network: teacher}}"))
    assert main(["validate", str(tmp_path / "student.yaml")]) == 2
    err = capsys.readouterr().err
    assert "student.yaml:3:" in err and f"run {teacher_run} has no network `teacher`" in err
    assert "expected: one of: net1, net2" in err
    (tmp_path / "student.yaml").write_text(STUDENT.format(weights=f"{{run: {teacher_run}, network: net1}}"))
    assert main(["validate", str(tmp_path / "student.yaml")]) == 2  # a resnet8 into a resnet14
    assert f"network `net1` of run {teacher_run} does not fit model `resnet14`" in capsys.readouterr().err


def test_a_checkpointed_run_needs_its_weights_file_no_more(teacher_run: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    saved = torch.load(teacher_run / "checkpoints/last.pt", weights_only=True)["model"]
    work = tmp_path / "work"
    work.mkdir()
    torch.save({k.removeprefix("networks.net2."): v for k, v in saved.items() if k.startswith("networks.net2.")},
               work / "teacher.pt")
    (work / "student.yaml").write_text(STUDENT.format(weights="teacher.pt"))
    monkeypatch.chdir(work)
    graph = load_graph("student.yaml")
    assert fit(graph, "run", progress_bar=False, callbacks=[StopAfterFirst()]).stopped
    config = yaml.safe_load((work / "run/config.yaml").read_text())
    assert config["networks"]["student"]["weights"] == str(work / "teacher.pt")  # stored resolved
    (work / "teacher.pt").unlink()
    monkeypatch.chdir(tmp_path)  # another directory, and the file is gone
    assert main(["run", "--resume", "work/run", "--no-progress"]) == 0
    assert main(["eval", "work/run", "--repeats", "0", "--no-progress"]) == 0
    assert len(RunDir(work / "run").read_metrics()) == 2


def test_bind_never_initialises_a_network_whose_run_weights_were_not_read(teacher_run: Path, tmp_path: Path) -> None:
    (tmp_path / "student.yaml").write_text(STUDENT.format(weights=f"{{run: {teacher_run}, network: net2}}"))
    graph = load_graph(tmp_path / "student.yaml")
    with pytest.raises(GraphError, match="were not read") as caught:
        bind(graph, 10, (3, 16, 16))  # prepare() reads run weights; bind alone is not given them
    assert caught.value.where == ("networks", "student", "weights")
