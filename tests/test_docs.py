"""Output shown in the docs is the program's: every `ktgraph plan` block in docs/ is checked against a real run."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import ROOT
from ktgraph.app.cli import main

BLOCK = re.compile(r"```text\n(plan for (graphs/\w+\.yaml)[^\n]*\n.*?)```", re.S)
SHOWN = [(page, match.group(2), match.group(1)) for page in sorted((ROOT / "docs").rglob("*.md"))
         for match in BLOCK.finditer(page.read_text())]


def test_the_docs_show_plans() -> None:
    assert len(SHOWN) >= 3


@pytest.mark.parametrize(("page", "graph", "shown"), SHOWN,
                         ids=[f"{p.relative_to(ROOT)}:{g}:{i}" for i, (p, g, _) in enumerate(SHOWN)])
def test_a_plan_shown_in_the_docs_is_what_ktgraph_plan_prints(page: Path, graph: str, shown: str, capsys,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["plan", graph, *(["--passes"] if ", after " in shown.splitlines()[0] else [])]) == 0
    printed = capsys.readouterr().out
    assert shown.strip() in printed, f"{page.relative_to(ROOT)} shows a plan of {graph} that `ktgraph plan` no " \
                                     "longer prints; paste the real output"


# Documents a user does not have: the internal seed documents by number and the notes file they came with.
INTERNAL = re.compile(r"\b[Ss]eeds? 0\d\d\b|\bMETHODS\.md\b|\bseed deck\b|\bthe seeds?'s? (?:pseudo-code|slides|table|layout)")


def test_user_facing_words_cite_papers_not_internal_documents(capsys: pytest.CaptureFixture[str]) -> None:
    files = [*sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "graphs").rglob("*.yaml")), ROOT / "README.md"]
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}" for path in files
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if INTERNAL.search(line)]
    assert main(["list", "adapters"]) == 0
    found += [line for line in capsys.readouterr().out.splitlines() if INTERNAL.search(line)]
    assert not found, "\n".join(found)
