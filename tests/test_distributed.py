"""Several processes (gloo on CPU): a distributed run equals the single-process run on the same global batch.

The runs train in float64 (``train.dtype``) with ``train.sync_bn``, so the mathematics of both are
the same and float32 rounding (whose differences a few SGD steps amplify) cannot hide a wrong
reduction: per-epoch accuracies must be equal and parameters equal to 1e-9. ``batch_size=35`` on
96 images gives global batches of 35, 35 and 26, so the shards are uneven (18/17, 13/13) and the
gradient weighting by shard size is exercised.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ktgraph.app.run import train
from ktgraph.graph import load_graph
from ktgraph.runtime import RunDir
from ktgraph.runtime.strategy import available_cores

from conftest import ROOT

QUICK = ["data.limit_train=96", "data.limit_test=40", "data.image_size=16", "train.batch_size=35",
         "train.eval_batch_size=16", "train.calibrate.batches=2", "train.sync_bn=true", "train.dtype=float64"]
EPOCHS = "train.epochs=2"
TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(rank: int | None = None, world: int = 2, port: int = 0) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    if rank is not None:
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
    return env


def torchrun(args: list[str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "ktgraph", "run", "--no-progress", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=env_for(), cwd=ROOT)


def ranks(args: list[str]) -> list[subprocess.Popen[str]]:
    """Two ranks started by hand (as torchrun would), so that a test knows each one's process."""
    port = free_port()
    return [subprocess.Popen([sys.executable, "-m", "ktgraph", "run", "--no-progress", *args], text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_for(rank, port=port), cwd=ROOT)
            for rank in range(2)]


def state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["model"]


def accuracies(run: Path) -> list[dict[str, float]]:
    return [{node: acc["top1"] for node, acc in line["test"].items()} for line in RunDir(run).read_metrics()]


def assert_same_training(run: Path, reference: Path) -> None:
    assert accuracies(run) == accuracies(reference)
    got, want = state(run), state(reference)
    assert got.keys() == want.keys()
    for key, value in want.items():
        if value.is_floating_point():
            scale = value.abs().max().clamp(min=1e-6)
            assert (got[key] - value).abs().max() / scale < 1e-9, key
        else:
            assert torch.equal(got[key], value), key


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Single-process runs of DML and XML, the references."""
    out = {}
    for name in ("dml", "xml"):
        out[name] = tmp_path_factory.mktemp("single") / name
        train(load_graph(ROOT / "graphs" / f"{name}.yaml", [*QUICK, EPOCHS]), out[name], progress_bar=False,
              echo=lambda text: None)
    return out


@pytest.fixture(scope="module")
def distributed_xml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("torchrun") / "xml"
    done = torchrun([str(ROOT / "graphs" / "xml.yaml"), "--out", str(run), *QUICK, EPOCHS])
    assert done.returncode == 0, done.stderr[-3000:]
    return run


def test_torchrun_xml_equals_one_process(distributed_xml: Path, single: dict[str, Path]) -> None:
    """Cross paths, calibrated BatchNorm, non-detached targets: all equal, and the folder written once."""
    assert_same_training(distributed_xml, single["xml"])
    assert len(RunDir(distributed_xml).read_metrics()) == 2  # one writer: one line per epoch
    assert sorted(p.name for p in distributed_xml.iterdir()) == sorted(p.name for p in single["xml"].iterdir())
    env = json.loads((distributed_xml / "env.json").read_text())
    assert env["processes"] == 2 and env["threads"] == max(1, available_cores() // 2)  # the ranks divide the cores
    assert json.loads((distributed_xml / "status.json").read_text())["state"] == "trained"


def test_torchrun_dml_equals_one_process(tmp_path: Path, single: dict[str, Path]) -> None:
    done = torchrun([str(ROOT / "graphs" / "dml.yaml"), "--out", str(tmp_path / "dml"), *QUICK, EPOCHS])
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_training(tmp_path / "dml", single["dml"])
    assert done.stdout.count("Xross table") <= 1  # rank 0 alone prints the tables


def test_a_killed_rank_stops_the_job_and_resume_ends_as_uninterrupted(tmp_path: Path, distributed_xml: Path) -> None:
    run = tmp_path / "xml"
    processes = ranks([str(ROOT / "graphs" / "xml.yaml"), "--out", str(run), *QUICK, EPOCHS])
    started = time.monotonic()
    while not (run / "checkpoints" / "last.pt").exists():  # the first epoch is saved: kill rank 1 in the second
        assert time.monotonic() - started < TIMEOUT and processes[0].poll() is None, processes[0].stderr.read()
        time.sleep(0.05)
    processes[1].send_signal(signal.SIGKILL)
    _, err = processes[0].communicate(timeout=TIMEOUT)
    processes[1].communicate(timeout=TIMEOUT)
    assert processes[0].returncode == 3
    assert "another process of the job stopped" in err and f"ktgraph run --resume {run}" in err
    assert "Traceback" not in err
    assert len(RunDir(run).read_metrics()) == 1

    again = ranks(["--resume", str(run)])
    for process in again:
        _, err = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0, err[-3000:]
    assert_same_training(run, distributed_xml)
