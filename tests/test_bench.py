"""``ktgraph bench``: a suite of method files as seed groups, continued where it stopped, then compared."""
from __future__ import annotations

import json
import textwrap

import pytest

from conftest import ROOT
from ktgraph.graph.suite import load_suite
from ktgraph.app.cli import main
from ktgraph.graph import load_graph

TINY = f"""\
name: tiny
methods: [{ROOT}/graphs/independent.yaml, {ROOT}/graphs/dml.yaml]
overrides: [data.limit_train=64, data.limit_test=40, data.image_size=16, train.batch_size=32, train.epochs=1]
seeds: [1, 2]
baseline: independent
"""


def test_suite_runs_every_method_as_a_group_and_continues(tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text(TINY)
    out = tmp_path / "bench"
    assert main(["bench", str(suite), "--out", str(out), "--no-progress"]) == 0
    assert "## Gain over `independent`, paired by seed" in capsys.readouterr().out
    record = json.loads((out / "bench.json").read_text())
    assert set(record["seconds"]) == {"independent", "dml"} and record["wall_seconds"] > 0
    assert {p.name for p in out.iterdir()} >= {"independent", "dml", "comparison.md", "comparison.csv"}
    assert load_graph(out / "dml/seed-2/config.yaml").train.epochs == 1  # the suite's overrides
    finished = (out / "dml/seed-1/summary.json").stat().st_mtime_ns

    assert main(["bench", str(suite), "--out", str(out), "--no-progress"]) == 0  # again: nothing is run again
    assert "(2 finished)" in capsys.readouterr().out
    assert (out / "dml/seed-1/summary.json").stat().st_mtime_ns == finished

    suite.write_text(TINY.replace("train.epochs=1", "train.epochs=2"))
    assert main(["bench", str(suite), "--out", str(out), "--no-progress"]) == 2
    assert "holds a group of other settings (`train.epochs` is 2 in this graph and 1 in" in capsys.readouterr().err


@pytest.mark.parametrize("text, message, line", [
    (TINY.replace("dml.yaml", "dlm.yaml"), "method file `", 2),
    (TINY.replace("baseline:", "basline:"), "basline", 5),
    (TINY.replace("[1, 2]", "[1, 1]"), "an entry appears twice", 4),
    ("- a\n", "a suite file is a mapping", None),
    (TINY.replace("baseline: independent", "baseline: indepndent"), "is none of the suite's methods", None),
    (TINY.replace(f"{ROOT}/graphs/independent.yaml", f"{ROOT}/graphs/recipes/../dml.yaml"),
     "would share the group folder `dml`", 2),
])
def test_bad_suite_is_a_located_error(tmp_path, capsys, text, message, line):
    suite = tmp_path / "suite.yaml"
    suite.write_text(text)
    assert main(["bench", str(suite), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    if line is not None:
        assert f"{suite}:{line}" in err
    assert not (tmp_path / "b").exists()


def test_bundled_suite_holds_the_method_files_in_one_regime():
    suite, files = load_suite(ROOT / "graphs/suites/low-data.yaml")
    assert suite.seeds == [1, 2, 3] and suite.baseline == "independent"
    graphs = [load_graph(f, suite.overrides) for f in files]
    assert {g.name for g in graphs} >= {"independent", "kd", "dml", "xml", "multi_xross", "okddip"}
    assert len({json.dumps([g.document["data"], g.document["train"]]) for g in graphs}) == 1
    assert graphs[0].data.limit_train == 100 and graphs[0].train.epochs == 30
    text = (ROOT / "graphs/suites/low-data.yaml").read_text()
    assert textwrap.dedent("  - ../okddip.yaml\n") in text  # one line per method


def test_methods_that_would_not_compare_are_refused_before_training(tmp_path, capsys):
    dml = (ROOT / "graphs/dml.yaml").read_text().replace("base: recipes/", f"base: {ROOT}/graphs/recipes/")
    (tmp_path / "wider.yaml").write_text(dml.replace("net2: {model: resnet14}", "net2: {model: wrn16_2}"))
    assert "wrn16_2" in (tmp_path / "wider.yaml").read_text()
    suite = tmp_path / "suite.yaml"
    suite.write_text(TINY.replace(f"{ROOT}/graphs/dml.yaml", str(tmp_path / "wider.yaml")))
    assert main(["bench", str(suite), "--out", str(tmp_path / "b"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "these runs do not compare methods" in err and "net2" in err and not (tmp_path / "b").exists()

