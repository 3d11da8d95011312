"""docs/reading-a-run.md quotes a real run of the default job: its tables are checked against one fresh run."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from ktgraph.app.cli import main

PAGE = ROOT / "docs" / "reading-a-run.md"
REDO = "rerun `ktgraph run graphs/multi_xross.yaml --out DIR --no-progress` and update docs/reading-a-run.md from it"


# The page's run had torch's default of one intra-op thread per core, on 2 cores, with torch 2.14.1's
# AVX-512 kernels. Another thread count or other kernels sum in another order and end a few test
# images apart: the run here takes the page's thread count, and is compared only where torch and its
# CPU kernels are the page's (elsewhere the numbers are not expected to repeat, so the test skips).
THREADS = 2
TORCH, CPU_KERNELS = "2.14.1", "AVX512"
pytestmark = pytest.mark.skipif(
    torch.__version__.split("+")[0] != TORCH or torch.backends.cpu.get_cpu_capability() != CPU_KERNELS,
    reason=f"the page's run used torch {TORCH} with {CPU_KERNELS} kernels; its accuracies repeat only there")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("default-run") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(ROOT)
            assert main(["run", "graphs/multi_xross.yaml", "--out", str(out), "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert json.loads((out / "env.json").read_text())["threads"] == THREADS
    return out


def section(title: str) -> str:
    """The text of the page's `## title` section, up to the next `## ` heading."""
    text = PAGE.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else len(text)]


def rows(text: str, columns: int) -> list[list[str]]:
    """The cells of the markdown table rows in `text` whose first cell is a `node`, with that many cells."""
    found = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == columns:
            found.append([cells[0].strip("`"), *cells[1:]])
    return found


def test_the_final_accuracy_table_is_the_runs_summary(run_dir: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())["rows"]
    expected = [[row["node"], row["kind"], row["route"],
                 f"{row['top1_last']:.2f}{'*' if row['calibrated'] else ''} ({row['last_epoch']})",
                 f"{row['top1_at_best']:.2f} ({row['best_epoch']}, {row['best_chosen_on']})"] for row in summary]
    shown = rows(section("The final accuracy table"), 5)
    assert shown == expected, f"the page's final accuracy table is not the run's summary.json; {REDO}"
    networks = [f"{row['top1_last']:.2f}" for row in summary if row["kind"] == "network"]
    claim = re.search(r"the networks reach (\S+) and (\S+) %", section("The final accuracy table"))
    assert claim and list(claim.groups()) == networks, f"the text quotes other network accuracies; {REDO}"


def test_the_calibrated_column_is_the_runs_xross_table(run_dir: Path) -> None:
    with open(run_dir / "xross.csv", newline="") as f:
        xross = {row["node"]: row for row in csv.DictReader(f)}
    shown = rows(section("Why cross paths are calibrated"), 3)
    assert [node for node, _, _ in shown] == [node for node, row in xross.items() if row["calibrated"] == "yes"]
    assert [calibrated for _, _, calibrated in shown] == \
        [f"{float(xross[node]['top1_last']):.2f}" for node, _, _ in shown], \
        f"the page's calibrated column is not the run's xross.csv; {REDO}"
