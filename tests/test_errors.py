"""Bad input gets a clear, located error and exit status 2, never a traceback.

Every file in ``tests/broken/`` is one realistic mistake. Its header says what is wrong
and what the message must contain::

    # wrong: <the mistake, in words>
    # expect: <a fragment the error message must contain>
    # line: <the line the error must point at>   (left out where no line can exist)

The zero-byte ``empty.yaml`` has no header; its expectation is in ``NO_HEADER`` below.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ktgraph.app.cli import main

ROOT = Path(__file__).resolve().parents[1]
BROKEN = ROOT / "tests" / "broken"
BROKEN_FILES = sorted(BROKEN.glob("*.yaml"))
NO_HEADER = {"empty.yaml": "the graph file is empty"}




def header(path: Path) -> dict[str, str]:
    """The `# key: value` comment lines at the top of a broken file."""
    fields: dict[str, str] = {}
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        match = re.match(r"#\s*(wrong|expect|line):\s?(.*)$", line)
        if not match:
            break
        fields[match.group(1)] = match.group(2).strip()
    return fields


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def assert_clean(output: str) -> None:
    assert "Traceback" not in output, output
    assert "<graph>" not in output, f"error without a file:\n{output}"


def test_enough_broken_files() -> None:
    assert len(BROKEN_FILES) >= 35


@pytest.mark.parametrize("path", BROKEN_FILES, ids=[p.name for p in BROKEN_FILES])
def test_broken_file(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fields = header(path)
    if path.name in NO_HEADER:
        expect, line = NO_HEADER[path.name], None
    else:
        assert "wrong" in fields and "expect" in fields, f"{path.name} needs `# wrong:` and `# expect:` lines"
        expect, line = fields["expect"], fields.get("line")
    code, output = run_cli(capsys, "validate", str(path))
    assert code == 2, output
    assert_clean(output)
    assert expect in output, output
    if line is None:
        # Nothing in the file to point at: the file name alone.
        assert f"{path}:" in output or f"{path.name}:" in output, output
        assert not re.search(re.escape(path.name) + r":\d", output), output
    else:
        assert re.search(re.escape(path.name) + r":\d+", output), f"no line number:\n{output}"
        assert f"{path.name}:{line}:" in output or f"{path.name}:{line}\n" in output or (
            re.search(re.escape(path.name) + f":{line}\\b", output)), f"expected line {line}:\n{output}"


def test_several_files_each_reported(capsys: pytest.CaptureFixture[str]) -> None:
    """Several files at once: each is reported, the run goes on, and the status is 2."""
    files = [str(BROKEN / "kind_kll.yaml"), str(ROOT / "graphs" / "dml.yaml"), str(BROKEN / "cut_layr2.yaml")]
    code, output = run_cli(capsys, "validate", *files)
    assert code == 2
    assert_clean(output)
    assert "kind_kll.yaml:" in output and "cut_layr2.yaml:" in output and "dml.yaml: ok" in output


# --- command-line overrides -----------------------------------------------------------------

@pytest.mark.parametrize(("override", "expect"), [
    ("train.epochs=abc", "a whole number"),
    ("train.epochz=3", "did you mean `epochs`?"),
    ("data.val_split=1.5", "less than 1"),
    ("networks.net1.model=resnet19", "did you mean `resnet18`?"),  # found only when the model is built
    ("networks.net1.cuts=[layr2]", "did you mean `layer2`?"),
])
def test_override_error_names_the_override(override: str, expect: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, output = run_cli(capsys, "validate", str(ROOT / "graphs" / "dml.yaml"), override)
    assert code == 2, output
    assert_clean(output)
    assert f"override `{override}`" in output, output
    assert expect in output, output


@pytest.mark.parametrize(("override", "expect"), [
    ("links.9.T=3", "`links` has 2 entries"),
    ("name.x=3", "cannot set `x` here"),
    ("=3", "has an empty key part"),
])
def test_override_that_cannot_be_applied(override: str, expect: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, output = run_cli(capsys, "validate", str(ROOT / "graphs" / "dml.yaml"), override)
    assert code == 2, output
    assert_clean(output)
    assert f"`{override}`" in output and expect in output, output


# --- files and the command line itself --------------------------------------------------------

def test_run_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "no_such_graph.yaml"
    code, output = run_cli(capsys, "run", str(missing), "--out", str(tmp_path / "run"))
    assert code == 2, output
    assert_clean(output)
    assert "no such graph file" in output and "no_such_graph.yaml" in output
    assert not (tmp_path / "run").exists()


def test_run_build_error_is_located(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """An error found while `run` builds the modules points at the file and line, like validate."""
    path = BROKEN / "model_resnet19.yaml"
    code, output = run_cli(capsys, "run", str(path), "--out", str(tmp_path / "run"), "--no-progress")
    assert code == 2, output
    assert_clean(output)
    assert f"model_resnet19.yaml:{header(path)['line']}:" in output and "did you mean `resnet18`?" in output


def test_plan_broken_file(capsys: pytest.CaptureFixture[str]) -> None:
    path = BROKEN / "shape_cross_spatial.yaml"
    code, output = run_cli(capsys, "plan", str(path))
    assert code == 2, output
    assert_clean(output)
    assert f"shape_cross_spatial.yaml:{header(path)['line']}:" in output


def test_folder_instead_of_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, output = run_cli(capsys, "validate", str(ROOT / "graphs"))
    assert code == 2, output
    assert_clean(output)
    assert "is a folder, not a graph file" in output and "dml.yaml" in output


@pytest.mark.parametrize("argv", [
    ["run"],
    ["plan", str(ROOT / "graphs" / "dml.yaml"), str(ROOT / "graphs" / "kd.yaml")],
    ["run", "--resume", str(ROOT / "graphs")],
])
def test_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, output = run_cli(capsys, *argv)
    assert code == 2, output
    assert_clean(output)


@pytest.mark.parametrize("argv", [
    ["frobnicate", "graphs/dml.yaml"],
    ["validate", "--bogus", "graphs/dml.yaml"],
    ["validate"],
    [],
])
def test_argparse_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    output = capsys.readouterr().err
    assert "usage: ktgraph" in output and "Traceback" not in output


def test_an_epochs_override_that_stages_ignore_names_their_fields(capsys: pytest.CaptureFixture[str]) -> None:
    code, output = run_cli(capsys, "validate", str(ROOT / "graphs" / "dcl.yaml"), "train.epochs=1", "--no-build")
    assert code == 0
    assert ("warning: override `train.epochs=1` is the default of stages without their own `epochs`; these keep "
            "theirs: `stages.0.epochs` (pretrain: 3), `stages.1.epochs` (dcl: 5)") in output
    assert "hint: override them instead, e.g. stages.0.epochs=1 stages.1.epochs=1" in output
    code, output = run_cli(capsys, "validate", str(ROOT / "graphs" / "dml.yaml"), "train.epochs=1", "--no-build")
    assert code == 0 and "warning" not in output  # no stages: the override applies


def test_an_optimizer_override_that_a_stage_replaces_names_its_field(capsys: pytest.CaptureFixture[str]) -> None:
    code, output = run_cli(capsys, "validate", str(ROOT / "graphs" / "fitnet.yaml"), "train.optimizer.lr=0.05",
                           "--no-build")
    assert code == 0
    assert ("warning: override `train.optimizer.lr=0.05` is the default of stages without their own `lr`; these "
            "keep theirs: `stages.1.optimizer.lr` (hint: 0.2)") in output
    assert "hint: override them instead, e.g. stages.1.optimizer.lr=0.05" in output
    code, output = run_cli(capsys, "validate", str(ROOT / "graphs" / "fitnet.yaml"), "train.optimizer.momentum=0.8",
                           "--no-build")
    assert code == 0 and "warning" not in output  # no stage sets momentum: the override reaches every stage


def test_warnings_print_as_messages_without_ktgraph_s_source(capsys: pytest.CaptureFixture[str]) -> None:
    code, output = run_cli(capsys, "validate", str(ROOT / "graphs" / "kd.yaml"), "stages.0.links=[ce:student]")
    assert code == 0
    lines = output.splitlines()
    assert "warning: graphs/kd.yaml: trained by no link of any stage" in output.replace(str(ROOT) + "/", "")
    assert not [line for line in lines if ".py:" in line or "warnings.warn" in line], output


def test_help_and_usage_errors_load_no_torch_or_matplotlib() -> None:
    """``ktgraph --help`` answers without the seconds torch, timm and matplotlib take to import."""
    script = ("import sys\nfrom ktgraph.app.cli import main\n"
              "for argv in (['--help'], ['run', '--help'], ['list', '--help'], ['frobnicate'], ['run', '--jobs']):\n"
              "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
              "print(sorted(m for m in ('torch', 'torchvision', 'timm', 'matplotlib', 'optuna') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.splitlines()[-1] == "[]", done.stdout + done.stderr
