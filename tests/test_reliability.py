"""Nothing lost, nothing leaked, never a traceback: the run directory, checkpoints, signals, hostile files.

Each case asserts the exit status (2: bad input, 3: the run cannot go on), the message's key words,
that no traceback was printed and that the user's files are as they were. Signals and the lock are
exercised with a real second process; a full disk and a read-only file system are simulated in-process.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from PIL import Image

from conftest import ROOT
from ktgraph.app.cli import main
from ktgraph.app.run import default_run_dir
from ktgraph.data import build_data
from ktgraph.data.image_folder import BadImage
from ktgraph.errors import GraphError, TrainingError
from ktgraph.runtime import RunDir, checkpoint
from ktgraph.runtime.executor import Executor
from ktgraph.runtime.trainer import Trainer, epoch_seed
from ktgraph.settings import MAX_SEED, DataSettings
from ktgraph.spec.safe_yaml import SIZE_VARIABLE
from test_data import write_cifar

DML = str(ROOT / "graphs" / "dml.yaml")
QUICK = ["data.limit_train=32", "data.limit_test=16", "data.image_size=8", "train.batch_size=16",
         "train.eval_batch_size=16", "--no-progress"]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert "Traceback" not in output, output
    return code, output


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: what "the user's files are unchanged" compares."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(checkpoint.TEMP_SUFFIX) or p.name.startswith(".last.pt.")]


def epochs_in(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished 1-epoch DML run; tests that change it work on a copy."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["run", DML, "--out", str(out), "train.epochs=1", *QUICK]) == 0
    return out


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "copy"))


# --- the run directory is owned and protected ------------------------------------------------------------

def test_fresh_run_files_follow_the_umask_and_leave_no_temporary(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    previous = os.umask(0o027)
    try:
        code, _ = cli(capsys, "run", DML, "--out", str(out), "train.epochs=1", *QUICK)
    finally:
        os.umask(previous)
    assert code == 0
    for name in ("checkpoints/last.pt", "config.yaml", "metrics.jsonl", "xross.csv", "summary.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o640, name
    assert temporaries(out) == [] and (out / ".lock").read_text() == ""  # the lock released, its PID cleared


def test_non_empty_folder_is_refused_and_overwrite_keeps_other_files(tmp_path: Path, capsys) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "metrics.jsonl").write_text("not a run's metrics\n")
    before = snapshot(out)
    code, output = cli(capsys, "run", DML, "--out", str(out), "train.epochs=1", *QUICK)
    assert code == 2 and "not empty" in output and "2 entries" in output and "--overwrite" in output
    assert snapshot(out) == before and not (out / ".lock").exists()
    code, output = cli(capsys, "run", DML, "--out", str(out), "--overwrite", "train.epochs=1", *QUICK)
    assert code == 0, output
    assert (out / "notes.txt").read_text() == "my notes" and epochs_in(out) == [1]  # the old metrics are gone


def test_own_interrupted_run_says_resume_and_other_runs_are_refused(finished: Path, tmp_path: Path, capsys) -> None:
    run_dir = copy_of(finished, tmp_path)
    (run_dir / "summary.json").unlink()  # as if stopped after its checkpoint
    before = snapshot(run_dir)
    code, output = cli(capsys, "run", DML, "--out", str(run_dir), "train.epochs=1", *QUICK)
    assert code == 2 and "interrupted run of this graph" in output and f"--resume {run_dir}" in output
    code, output = cli(capsys, "run", DML, "--out", str(run_dir), "train.epochs=3", *QUICK)
    assert code == 2 and "another graph or other settings" in output and "`train.epochs` is 3" in output
    code, output = cli(capsys, "run", DML, "--out", str(finished), "train.epochs=1", *QUICK)
    assert code == 2 and "a finished run of this graph" in output
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("name", ["../../escape", "/etc/passwd", "..", "a b/c:*?", "-rf", "", "ok_name"])
def test_default_run_dir_stays_inside_runs(name: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda _: "20250101-000000")
    path = default_run_dir(SimpleNamespace(name=name), "graphs/my graph.yaml")
    assert path.parent == Path("runs") and not path.name.startswith((".", "-"))
    assert (tmp_path / path).resolve().parent == (tmp_path / "runs").resolve()
    path.mkdir(parents=True)
    assert default_run_dir(SimpleNamespace(name=name), "graphs/my graph.yaml").name == f"{path.name}-2"


def test_out_that_is_a_file_or_cannot_be_created(tmp_path: Path, capsys, monkeypatch) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    code, output = cli(capsys, "run", DML, "--out", str(a_file), *QUICK)
    assert code == 2 and "a_file: the run directory is a file" in output
    code, output = cli(capsys, "run", DML, "--out", str(a_file / "sub"), *QUICK)
    assert code == 2 and "cannot create the run directory: Not a directory" in output and "a_file/sub" in output
    assert a_file.read_text() == "keep me"

    def read_only(self: Path, *args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    code, output = cli(capsys, "run", DML, "--out", str(tmp_path / "ro"), *QUICK)
    assert code == 2 and "Read-only file system" in output and "ro:" in output


def test_a_held_lock_refuses_eval_and_pick_naming_the_pid(finished: Path, capsys) -> None:
    with RunDir(finished).lock("test"):
        for argv in (["eval", str(finished), "--repeats", "0"], ["pick", str(finished), "--max-params", "1M"]):
            code, output = cli(capsys, *argv, "--no-progress")
            assert code == 2 and "in use by another ktgraph process" in output and f"PID {os.getpid()}" in output
    assert (finished / ".lock").read_text() == ""


def test_sigterm_stops_like_ctrl_c_and_the_lock_guards_the_run(tmp_path: Path, capsys) -> None:
    """A real run in a second process: it holds the lock, SIGTERM stops it cleanly, --resume finishes it."""
    out = tmp_path / "run"
    # The second epoch waits before training, so the signal surely arrives mid-run (exactly as it would in a long one).
    script = ("import sys, time\nfrom ktgraph.runtime.trainer import Trainer\nreal = Trainer._train_epoch\n"
              "def slow(self, *a, **k):\n    if a[5] >= 1:\n        time.sleep(120)\n    return real(self, *a, **k)\n"
              "Trainer._train_epoch = slow\nfrom ktgraph.app.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", script, "run", DML, "--out", str(out), "train.epochs=2", *QUICK],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 90
        while not (out / "checkpoints" / "last.pt").exists():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.1)
        for argv in (["eval", str(out)], ["run", "--resume", str(out)]):
            code, output = cli(capsys, *argv, "--no-progress")
            assert code == 2 and f"PID {process.pid}" in output and "`ktgraph run`" in output
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, err
    assert "stopped by SIGTERM" in err and f"ktgraph run --resume {out}" in err and "Traceback" not in err
    assert temporaries(out) == [] and epochs_in(out) == [1]
    code, output = cli(capsys, "run", "--resume", str(out), "--no-progress")
    assert code == 0, output
    assert epochs_in(out) == [1, 2]


# --- checkpoints and resume --------------------------------------------------------------------------------

def test_full_disk_keeps_the_last_checkpoint_and_resume_cleans_up(tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "run"
    real_save = torch.save
    saves = {"n": 0}

    def full_disk(obj: object, handle: object) -> None:
        saves["n"] += 1
        if saves["n"] == 2:  # the second epoch's checkpoint: half written, then the disk is full
            handle.write(b"PK half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, handle)

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    code, output = cli(capsys, "run", DML, "--out", str(out), "train.epochs=3", *QUICK)
    assert code == 3 and "the disk is full" in output and str(out / "checkpoints") in output
    assert temporaries(out) == []
    assert torch.load(out / "checkpoints/last.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    # What a crash would leave: a temporary checkpoint, and a metrics line torn by the full disk.
    stale = out / "checkpoints" / ".last.pt.x1y2z3.tmp"
    stale.write_bytes(b"partial")
    with (out / "metrics.jsonl").open("a") as handle:
        handle.write('{"stage": "main", "stage_in')
    code, output = cli(capsys, "run", "--resume", str(out), "--no-progress")
    assert code == 0, output
    assert not stale.exists() and temporaries(out) == []
    assert epochs_in(out) == [1, 2, 3]  # epoch 2's line (no checkpoint held it) and the torn line were dropped


def test_full_disk_on_any_run_file_says_so_and_leaves_no_temporary(tmp_path: Path, monkeypatch) -> None:
    run = RunDir(tmp_path / "run")
    run.write_text("report.md", "the old report")

    def no_space(*args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.os, "fsync", no_space)
    with pytest.raises(TrainingError, match=r"the disk is full .*/run\): could not write report.md"):
        run.write_text("report.md", "the new report")
    assert (run / "report.md").read_text() == "the old report" and temporaries(run.path) == []
    monkeypatch.setattr(Path, "open", lambda *a, **k: no_space())
    with pytest.raises(TrainingError, match=r"the disk is full .*metrics.jsonl"):
        run.append_metrics({"epoch": 1})


def test_atomic_write_syncs_the_folder_after_the_rename(tmp_path: Path, monkeypatch) -> None:
    events: list[str] = []
    real_replace = os.replace
    monkeypatch.setattr(checkpoint.os, "replace", lambda a, b: (events.append("rename"), real_replace(a, b))[1])
    monkeypatch.setattr(checkpoint, "sync_folder", lambda folder: events.append(f"sync {folder.name}"))
    checkpoint.save_atomic({"x": torch.ones(2)}, tmp_path / "box" / "last.pt")
    assert events == ["rename", "sync box"]


def _damage(kind: str, path: Path) -> None:
    good = torch.load(path, weights_only=True)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "refused_pickle":
        torch.save({**good, "extra": SimpleNamespace(a=1)}, path)
    elif kind == "a_list":
        torch.save([good["model"]], path)
    elif kind == "no_optimizer":
        torch.save({k: v for k, v in good.items() if k != "optimizer"}, path)
    elif kind == "model_not_tensors":
        torch.save({**good, "model": {"networks.net1.conv1.weight": "text"}}, path)


@pytest.mark.parametrize(("kind", "said"), [
    ("empty", "it is empty"), ("truncated", "not a PyTorch file"), ("random", "not a PyTorch file"),
    ("refused_pickle", "weights_only loading refused it"), ("a_list", "holds a list"),
    ("no_optimizer", "`optimizer` entry is missing"), ("model_not_tensors", "not a state dict of tensors"),
])
def test_unusable_checkpoint_is_one_line_for_resume_eval_and_pick(kind: str, said: str, finished: Path,
                                                                  tmp_path: Path, capsys) -> None:
    run_dir = copy_of(finished, tmp_path)
    (run_dir / "xross.csv").unlink()  # so that pick has to read the checkpoint
    _damage(kind, run_dir / "checkpoints/last.pt")
    files = snapshot(run_dir)
    commands = [(["run", "--resume"], []), (["eval"], []), (["pick"], ["--max-params", "1M"])]
    for before_dir, after_dir in commands[:1] if kind == "no_optimizer" else commands:  # eval, pick: the model only
        code, output = cli(capsys, *before_dir, str(run_dir), *after_dir, "--no-progress")
        message = [line for line in output.splitlines() if line.startswith("run stopped:")]
        assert code == 3 and len(message) == 1, output
        assert f"{run_dir}/checkpoints/last.pt is not a usable checkpoint" in message[0] and said in message[0]
        assert "train.keep_checkpoints" in message[0]
    assert snapshot(run_dir) == files


def test_kept_checkpoints_give_an_earlier_one_to_resume_from(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code, output = cli(capsys, "run", DML, "--out", str(out), "train.epochs=3", "train.keep_checkpoints=2", *QUICK)
    assert code == 0, output
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["last.pt", "stage0-epoch0002.pt", "stage0-epoch0003.pt"]
    (out / "checkpoints/last.pt").unlink()  # a new file, not the kept one (which is a second name of the old)
    (out / "checkpoints/last.pt").write_bytes(b"damaged")
    code, output = cli(capsys, "run", "--resume", str(out), "--no-progress")
    earlier = out / "checkpoints" / "stage0-epoch0003.pt"
    assert code == 3 and f"cp {earlier} {out / 'checkpoints/last.pt'}" in output
    shutil.copyfile(out / "checkpoints/stage0-epoch0002.pt", out / "checkpoints/last.pt")  # one epoch back
    code, output = cli(capsys, "run", "--resume", str(out), "--no-progress")
    assert code == 0, output
    assert epochs_in(out) == [1, 2, 3]


@pytest.mark.parametrize(("change", "said"), [
    (lambda config: config["networks"]["net1"].update(frozen=True), "`networks.net1.frozen` is true in config.yaml"),
    (lambda config: config["links"].append({"kind": "ce", "target": "net1", "name": "extra"}), "`links` has 3 entries"),
])
def test_resume_refuses_a_config_that_changed_what_is_trained(change, said: str, finished: Path, tmp_path: Path,
                                                              capsys) -> None:
    run_dir = copy_of(finished, tmp_path)
    (run_dir / "summary.json").unlink()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    change(config)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    before = snapshot(run_dir)
    code, output = cli(capsys, "run", "--resume", str(run_dir), "--no-progress")
    assert code == 3 and "was trained with another config" in output and said in output, output
    assert snapshot(run_dir) == before


def test_a_non_finite_gradient_stops_the_run_naming_stage_epoch_and_batch(tmp_path: Path, capsys,
                                                                         monkeypatch) -> None:
    real_backward = Executor.backward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        real_backward(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:  # epoch 2, batch 2 (two batches per epoch)
            parameter = next(p for n, p in self.modules.named_parameters() if n.endswith("conv1.weight"))
            parameter.grad.fill_(float("nan"))

    monkeypatch.setattr(Executor, "backward", poisoned)
    out = tmp_path / "run"
    code, output = cli(capsys, "run", DML, "--out", str(out), "train.epochs=2", *QUICK)
    assert code == 3, output
    assert "the gradient of `networks.net1.conv1.weight` became non-finite" in output
    assert "stage `main`, epoch 2, batch 2" in output and "last good checkpoint" in output
    assert torch.load(out / "checkpoints/last.pt", weights_only=True)["epoch"] == 1


def test_exploded_weights_never_reach_a_checkpoint(tmp_path: Path, capsys, monkeypatch) -> None:
    real_epoch = Trainer._train_epoch

    def exploding(self, *args, **kwargs):
        stats = real_epoch(self, *args, **kwargs)
        if args[5] == 1:  # after the second epoch's last step, a running statistic overflows
            next(b for n, b in self.modules.named_buffers() if n.endswith("running_var")).fill_(float("inf"))
        return stats

    monkeypatch.setattr(Trainer, "_train_epoch", exploding)
    out = tmp_path / "run"
    code, output = cli(capsys, "run", DML, "--out", str(out), "train.epochs=2", *QUICK)
    assert code == 3 and "running_var` holds non-finite values at the end of stage `main`, epoch 2" in output
    saved = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert saved["epoch"] == 1 and all(torch.isfinite(t).all() for t in saved["model"].values()
                                       if t.is_floating_point())


# --- hostile and odd graph files -------------------------------------------------------------------------------

def test_billion_laughs_fails_fast(capsys) -> None:
    started = time.perf_counter()
    code, output = cli(capsys, "validate", str(ROOT / "tests/broken/yaml_billion_laughs.yaml"))
    assert code == 2 and "aliases are expanded" in output and time.perf_counter() - started < 0.5


def test_file_size_limit_and_its_override(tmp_path: Path, capsys, monkeypatch) -> None:
    graph = tmp_path / "big.yaml"
    graph.write_text(Path(DML).read_text() + "# padding\n" * 120_000)
    shutil.copytree(Path(DML).parent / "recipes", tmp_path / "recipes")  # the file's `base:`
    code, output = cli(capsys, "validate", "--no-build", str(graph))
    assert code == 2 and "over the limit of 1,000,000 bytes" in output and SIZE_VARIABLE in output
    monkeypatch.setenv(SIZE_VARIABLE, "2000000")
    assert cli(capsys, "validate", "--no-build", str(graph))[0] == 0
    monkeypatch.setenv(SIZE_VARIABLE, "lots")
    code, output = cli(capsys, "validate", "--no-build", str(graph))
    assert code == 2 and f"environment variable {SIZE_VARIABLE}" in output


@pytest.mark.parametrize(("override", "said"), [
    ("train." + ".".join(["a"] * 100) + "=1", "more than 64 parts"),
    ("networks.net1.kwargs={x: " + "[" * 500 + "]" * 500 + "}", "nested more than 64 levels deep"),
])
def test_overrides_cannot_nest_without_limit(override: str, said: str, capsys) -> None:
    code, output = cli(capsys, "validate", "--no-build", DML, override)
    assert code == 2 and said in output and "RecursionError" not in output


def test_the_largest_seed_works() -> None:
    torch.manual_seed(epoch_seed(MAX_SEED, 9, 10_000))
    bundle = build_data(DataSettings(limit_train=20, val_split=0.5), MAX_SEED)
    assert bundle.val is not None and len(bundle.val) == 10


def test_negative_weight_allowed_when_meant(capsys) -> None:
    code, output = cli(capsys, "validate", "--no-build", DML, "links.1.weight=-0.5", "links.1.allow_negative=true")
    assert code == 0, output


def test_eval_counts_out_of_range(finished: Path, capsys) -> None:
    for flag, value in (("--batch-size", "0"), ("--repeats", "-1")):
        code, output = cli(capsys, "eval", str(finished), flag, value)
        assert code == 2 and f"{flag} {value} is out of range" in output


# --- data files ---------------------------------------------------------------------------------------------------

def _image_folder(root: Path) -> Path:
    for split in ("train", "val"):
        for label, colour in (("cat", (200, 10, 10)), ("dog", (10, 200, 10))):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), colour).save(folder / f"{i}.png")
    return root


def test_a_corrupt_image_is_named_or_skipped(tmp_path: Path, capsys) -> None:
    root = _image_folder(tmp_path / "images")
    bad = root / "train" / "dog" / "2.png"
    bad.write_bytes(os.urandom(300))
    data = ["data.name=image_folder", f"data.root={root}", "data.limit_test=4"]
    code, output = cli(capsys, "run", DML, "--out", str(tmp_path / "run"), "train.epochs=1", *data, *QUICK[2:])
    assert code == 2 and f"`{bad}` cannot be read as an image" in output and "on_bad_image: skip" in output
    assert not (tmp_path / "run").exists()
    with pytest.warns(UserWarning, match=r"left out 1 of 8 train images"):
        bundle = build_data(DataSettings(name="image_folder", root=str(root), on_bad_image="skip"), 0)
    assert len(bundle.train) == 7 and bad.read_bytes()  # left out, not deleted


def test_damaged_pixels_found_when_read_even_in_a_worker(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "images")
    bad = root / "train" / "cat" / "1.png"
    Image.effect_noise((8, 8), 60).convert("RGB").save(bad)
    bad.write_bytes(bad.read_bytes()[:-60])  # a valid header, pixel data cut short
    bundle = build_data(DataSettings(name="image_folder", root=str(root)), 0)
    loader = torch.utils.data.DataLoader(bundle.train, batch_size=8, num_workers=1)
    with pytest.raises(BadImage) as caught:
        next(iter(loader))
    assert f"`{bad}` cannot be read as an image" in str(caught.value) and "Traceback" not in str(caught.value)
    with pytest.warns(UserWarning, match="left out 1 of 8"):  # skip decodes every image at start-up
        assert len(build_data(DataSettings(name="image_folder", root=str(root), on_bad_image="skip"), 0).train) == 7


class _RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["KTGRAPH_TEST_MARKER"]),))


def test_a_tampered_cifar_pickle_runs_no_code(tmp_path: Path, capsys, monkeypatch) -> None:
    write_cifar(tmp_path, "cifar10")
    marker = tmp_path / "code-ran"
    monkeypatch.setenv("KTGRAPH_TEST_MARKER", str(marker))
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(pickle.dumps({b"label_names": [b"a"] * 10, b"x": _RunsCode()}))
    with pytest.raises(GraphError, match=r"names `pathlib.*\.touch`, which no CIFAR file holds"):
        build_data(DataSettings(name="cifar10", root=str(tmp_path)), 0)
    assert not marker.exists()
