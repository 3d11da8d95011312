"""Channel mapping in runs: applied once before the stage's first step, function-preserving, stored in the
checkpoint and not recomputed on resume; adapters between widths; ``weights: {run, network}``; ``ktgraph map``."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ktgraph.app.cli import main
from ktgraph.app.run import fit, train
from ktgraph.errors import GraphError
from ktgraph.graph import SegmentId, load_graph
from ktgraph.runtime import RunDir, prepare
from ktgraph.runtime import mapping as mapping_module
from ktgraph.runtime.events import AfterEvaluation, Callback, EpochStart, StageStart, StopRun
from ktgraph.runtime.mapping import map_channels

from conftest import ROOT

GRAPH = ROOT / "graphs" / "xml_mapped.yaml"
QUICK = ["data.limit_train=64", "data.limit_test=32", "data.image_size=16", "train.batch_size=32",
         "train.eval_batch_size=32", "train.calibrate=false", "stages.0.epochs=1", "stages.1.epochs=2",
         "crosses.0.mapping.batches=2"]


class Logits(Callback):
    """net2's eval logits on a fixed batch when each stage starts (before mapping) and at each epoch start."""

    def __init__(self) -> None:
        self.x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        self.seen: list[tuple[str, torch.Tensor]] = []
        self.modules = None

    def _logits(self) -> torch.Tensor:
        net = self.modules.networks["net2"]
        was = net.training
        net.eval()
        with torch.no_grad():
            out = net(self.x)
        net.train(was)
        return out

    def on_stage_start(self, event: StageStart) -> None:
        self.modules = event.modules
        self.seen.append((f"stage {event.index}", self._logits()))

    def on_epoch_start(self, event: EpochStart) -> None:
        self.seen.append((f"epoch {event.epoch.stage_index}.{event.epoch.epoch}", self._logits()))


class StopInXml(Callback):
    def after_evaluation(self, event: AfterEvaluation) -> None:
        if event.metrics["stage"] == "xml":
            raise StopRun("one XML epoch is enough")


def test_mapping_runs_before_the_stage_and_preserves_the_network(tmp_path: Path) -> None:
    logits = Logits()
    fit(load_graph(GRAPH, QUICK), tmp_path / "run", progress_bar=False, callbacks=[logits])
    seen = dict(logits.seen)
    # Stage 1's start is before mapping (the callback runs first), its first epoch after: same function.
    assert (seen["stage 1"] - seen["epoch 1.0"]).abs().max() <= 1e-5
    saved = torch.load(RunDir(tmp_path / "run").checkpoint, weights_only=False)["mapping"]
    assert list(saved) == ["0"] and saved["0"]["stage"] == 1
    cut = saved["0"]["cuts"][0]
    assert (cut["network"], cut["reference"], cut["part"]) == ("net2", "net1", "up")
    assert sorted(cut["order"]) == list(range(32)) and cut["order"] != list(range(32))
    assert cut["scores"]["mapped"] >= max(cut["scores"]["identity"], cut["scores"]["random"])
    written = json.loads((tmp_path / "run" / "mapping.json").read_text())
    assert written == saved["0"]["cuts"] and (tmp_path / "run" / "mapping" / "net1-net2-up.svg").is_file()


def test_resume_reads_the_mapping_from_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    graph = load_graph(GRAPH, QUICK)
    assert train(graph, tmp_path / "stopped", progress_bar=False, callbacks=[StopInXml()], echo=lambda t: None) is None
    stopped = torch.load(RunDir(tmp_path / "stopped").checkpoint, weights_only=False)["mapping"]

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("mapping recomputed on resume")

    with monkeypatch.context() as patch:
        patch.setattr(mapping_module, "map_channels", never)
        train(graph, tmp_path / "stopped", resume=True, progress_bar=False, echo=lambda t: None)
    whole = train(graph, tmp_path / "whole", progress_bar=False, echo=lambda t: None)
    a = torch.load(RunDir(tmp_path / "stopped").checkpoint, weights_only=False)
    b = torch.load(RunDir(whole["run_dir"]).checkpoint, weights_only=False)
    assert a["mapping"] == b["mapping"] == stopped
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])


def test_weights_from_an_earlier_run(tmp_path: Path) -> None:
    overrides = [*QUICK, "stages=[{name: apart, epochs: 1, links: [alone:net1, alone:net2]}]"]
    fitted = fit(load_graph(GRAPH, overrides), tmp_path / "apart", progress_bar=False)
    trained = fitted.trainer.modules.networks["net2"].state_dict()
    graph = load_graph(GRAPH, [*QUICK, f"networks.net1.weights={{run: {tmp_path / 'apart'}, network: net2}}"])
    loaded = prepare(graph, with_data=False, device="cpu").modules.networks["net1"].state_dict()
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)
    wrong = load_graph(GRAPH, [*QUICK, f"networks.net1.weights={{run: {tmp_path / 'apart'}, network: net3}}"])
    with pytest.raises(GraphError, match="has no network `net3`") as caught:
        prepare(wrong, with_data=False, device="cpu")
    assert caught.value.where == ("networks", "net1", "weights")


def test_different_widths_start_the_adapters_by_least_squares() -> None:
    graph = load_graph(GRAPH, [*QUICK, "networks.net2.model=wrn16_2"])
    job = prepare(graph, device="cpu")
    records = map_channels(graph, job.modules, graph.mappings[0], job.data, job.device)
    assert records[0].order is None and sorted(records[0].adapters) == ["net1:up>net2:down", "net2:up>net1:down"]
    # Independent: the least-squares fit of net2's features from net1's over the same batches.
    loader = torch.utils.data.DataLoader(job.data.train_plain, batch_size=32)
    job.modules.eval()
    with torch.no_grad():
        images = torch.cat([x for x, _ in loader])[:64]
        a, b = (job.modules.segments[SegmentId(n, "up")](images) for n in ("net1", "net2"))
    rows = lambda t: t.double().movedim(1, -1).reshape(-1, t.shape[1])  # noqa: E731
    ones = torch.cat([rows(a), torch.ones(rows(a).shape[0], 1, dtype=torch.float64)], 1)
    solution = torch.linalg.lstsq(ones, rows(b)).solution
    conv = job.modules.adapters["net1:up>net2:down"][0]
    torch.testing.assert_close(conv.weight[:, :, 0, 0].double(), solution[:-1].T, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(conv.bias.double(), solution[-1], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize(("mapping", "where", "message"), [
    ("{method: hungarain}", "crosses.0.mapping.method", "did you mean `hungarian`"),
    ("{cut: down}", "crosses.0.mapping.cut.0", "unknown cut of this cross `down`"),
    ("{split: val}", "crosses.0.mapping.split", "no validation split"),
    ("{batches: 0}", "crosses.0.mapping.batches", "greater than 0"),
    ("{metod: stable}", "crosses.0.mapping", "metod"),
])
def test_a_bad_mapping_is_a_located_error(tmp_path: Path, mapping: str, where: str, message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    text = GRAPH.read_text()
    line = next(n for n, t in enumerate(text.splitlines(), 1) if t.strip().startswith("mapping:"))
    file = tmp_path / "bad.yaml"
    file.write_text(text.replace("{method: hungarian, score: correlation, batches: 8, split: train}", mapping))
    shutil.copytree(GRAPH.parent / "recipes", tmp_path / "recipes")  # the shared recipe the file builds on
    assert main(["validate", str(file), "--no-build"]) == 2
    err = capsys.readouterr().err
    assert f"bad.yaml:{line}:" in err and where in err and message in err


def test_a_network_ktgraph_cannot_permute_is_a_located_error(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    overrides = [*QUICK, "networks.net1.model=mobilenet_v2", "networks.net2.model=mobilenet_v2",
                 "networks.net1.cuts=[features.3]", "networks.net2.cuts=[features.3]"]
    assert main(["map", str(GRAPH), *overrides]) == 2
    err = capsys.readouterr().err
    assert "crosses.0.mapping" in err and "cannot map the channels of model `MobileNetV2`" in err
    assert main(["validate", str(GRAPH), *overrides]) == 2  # found when the graph is built, before any stage
    err = capsys.readouterr().err
    assert "crosses.0.mapping" in err and "mapping `net2` to `net1` at `up`: cannot map the channels" in err
    wide = [*QUICK, "networks.net2.model=wrn16_2", "crosses.0.adapter=conv_bn_relu"]
    assert main(["validate", str(GRAPH), *wide]) == 2  # widths differ: the adapter must start with a 1x1 conv
    assert "needs a 1x1 conv with bias first" in capsys.readouterr().err
    # The error's advice holds: `method: none` keeps the order, so the pair is scored and nothing is permuted.
    assert main(["map", str(GRAPH), *overrides, "crosses.0.mapping.method=none"]) == 0
    out = capsys.readouterr().out
    assert "net2" in out and "cannot map" not in out


def test_map_prints_the_three_scores_and_draws_heatmaps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["map", str(GRAPH), *QUICK, "--cut", "up", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "net2 -> net1 at `up` (32 channels, correlation, hungarian)" in out
    assert "identity" in out and "random" in out and "mapped" in out and "order:" in out
    assert (tmp_path / "mapping" / "net1-net2-up.svg").is_file()
    assert main(["map", str(GRAPH), *QUICK, "--cut", "up", "--out", str(tmp_path)]) == 0  # again: not appended
    assert len(json.loads((tmp_path / "mapping.json").read_text())) == 1
    assert main(["map", str(GRAPH), *QUICK, "--cut", "down"]) == 2
