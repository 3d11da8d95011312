"""``ktgraph compare``: the table against a hand computation, refusals that name the field, metrics.

Most tests write run folders as ``ktgraph run`` leaves them (a resolved config.yaml and a
summary.json) with chosen accuracies, so the expected numbers can be worked out by hand; the
last one compares two real seed groups.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from ktgraph.app.cli import main
from ktgraph.graph import load_graph

INDEPENDENT = ROOT / "graphs/independent.yaml"
DML = ROOT / "graphs/dml.yaml"
# net1's top-1 per seed: DML against independent, three seeds (net2 is 1 point below net1 each time).
DML_NET1 = {1: 80.0, 2: 84.0, 3: 79.0}
INDEPENDENT_NET1 = {1: 78.0, 2: 80.0, 3: 80.0}


def write_group(folder: Path, graph_file: Path, net1: dict[int, float], overrides: tuple[str, ...] = (),
                chosen_on: str = "test") -> Path:
    """A finished seed group as `ktgraph run --seeds` writes it, with the given accuracies."""
    folder.mkdir(parents=True)
    seeds = sorted(net1)
    group = load_graph(graph_file, [*overrides, f"train.seeds={seeds}"]).document
    (folder / "group.yaml").write_text(yaml.safe_dump(group))
    for seed, top1 in net1.items():
        run = folder / f"seed-{seed}"
        run.mkdir()
        (run / "config.yaml").write_text(yaml.safe_dump(load_graph(graph_file, [*overrides, f"train.seed={seed}"]).document))
        rows = [{"node": node, "kind": kind, "route": "", "last_stage": "main", "last_epoch": 10, "top1_last": value,
                 "best_stage": "main", "best_epoch": 9, "top1_at_best": value + 0.5, "best_chosen_on": chosen_on,
                 "calibrated": False}
                for node, kind, value in (("net1", "network", top1), ("net2", "network", top1 - 1),
                                          ("mean(networks)", "ensemble", top1 + 1))]
        (run / "summary.json").write_text(json.dumps({"graph": group["name"], "rows": rows}))
    return folder


def sample_std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def test_table_and_paired_gain_equal_the_hand_computation(tmp_path, capsys):
    dml = write_group(tmp_path / "dml", DML, DML_NET1)
    independent = write_group(tmp_path / "independent", INDEPENDENT, INDEPENDENT_NET1)
    out = tmp_path / "cmp"
    assert main(["compare", str(independent), str(dml), "--baseline", "independent", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "at the last epoch (the default: the best epoch of these runs is chosen on the test split" in printed
    # By hand. DML net1: 80, 84, 79 -> mean 81, sample std sqrt((1 + 9 + 4) / 2) = 2.65.
    # Paired differences 2, 4, -1 -> mean 5/3 = 1.67, sample std sqrt(((1/3)^2 + (7/3)^2 + (8/3)^2) / 2) = 2.52;
    # t = (5/3) / (2.52 / sqrt 3) = 1.147 with 2 degrees of freedom -> two-sided p = 0.37.
    # 1.67 is below the larger spread (2.65): flagged.
    assert "| dml         | 3   | 81.00 ± 2.65 | 80.00 ± 2.65 " in printed
    assert "+1.67 ± 2.52 (p=0.37) ≈" in printed
    rows = {(r["method"], r["node"]): r for r in csv.DictReader((out / "comparison.csv").open())}
    gain = rows["dml", "net1"]
    differences = [DML_NET1[s] - INDEPENDENT_NET1[s] for s in (1, 2, 3)]
    assert float(gain["gain_mean"]) == pytest.approx(sum(differences) / 3, abs=1e-4)
    assert float(gain["gain_std"]) == pytest.approx(sample_std(differences), abs=1e-4)
    assert float(gain["std"]) == pytest.approx(sample_std(list(DML_NET1.values())), abs=1e-4)
    assert gain["within_spread"] == "true" and gain["gain_seeds"] == "1 2 3"
    # avg(networks): net1 and net2 averaged per seed, so it is net1 - 0.5 and its gain is net1's.
    assert float(rows["dml", "avg(networks)"]["mean"]) == pytest.approx(80.5)
    assert float(rows["dml", "avg(networks)"]["gain_mean"]) == pytest.approx(5 / 3, abs=1e-4)
    assert (out / "comparison.md").read_text().strip() == printed.strip()
    assert (out / "comparison.svg").read_text().startswith("<?xml")


def test_gains_pair_only_the_common_seeds(tmp_path, capsys):
    dml = write_group(tmp_path / "dml", DML, {2: 84.0, 3: 79.0, 4: 90.0})
    independent = write_group(tmp_path / "independent", INDEPENDENT, INDEPENDENT_NET1)
    assert main(["compare", str(independent), str(dml), "--baseline", "independent", "--nodes", "net1",
                 "--out", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    assert "| dml      | 2, 3           | +1.50 ± 3.54 (p=0.66) ≈ |" in printed
    # By hand: differences 84 - 80 = 4 and 79 - 80 = -1: mean 1.5, std |4 + 1| / sqrt 2 = 3.54,
    # t = 1.5 / (3.54 / sqrt 2) = 0.6 with 1 degree of freedom -> p = 1 - 2 atan(0.6) / pi = 0.66.


@pytest.mark.parametrize("overrides, field", [
    (("train.epochs=12",), "`train.epochs` is 10 in"),
    (("data.limit_train=100",), "`data.limit_train`"),
    (("networks.net2.model=resnet20",), "`networks.net2.model`"),
    (("train.optimizer.weight_decay=0",), "`train.optimizer.weight_decay`"),
])
def test_mismatched_runs_are_refused_naming_the_field(tmp_path, capsys, overrides, field):
    independent = write_group(tmp_path / "independent", INDEPENDENT, INDEPENDENT_NET1)
    other = write_group(tmp_path / "dml", DML, DML_NET1, overrides)
    assert main(["compare", str(independent), str(other), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert f"error: {other}: these runs do not compare methods" in err and field in err
    assert "--allow-mismatch" in err and not (tmp_path / "cmp").exists()
    assert main(["compare", str(independent), str(other), "--allow-mismatch", "--out", str(tmp_path / "cmp")]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert any("--allow-mismatch" in line and field in line for line in warned)  # the CLI prints warnings as messages


def test_best_epoch_numbers_say_where_the_epoch_was_chosen(tmp_path, capsys):
    dml = write_group(tmp_path / "dml", DML, DML_NET1, chosen_on="val")
    assert main(["compare", str(dml), "--metric", "top1_best", "--out", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    assert "best epoch, chosen on the validation split" in printed and "81.50 ± 2.65" in printed


@pytest.mark.parametrize("args, message", [
    (["{tmp}"], "is neither a run directory (config.yaml) nor a seed group (group.yaml)"),
    (["{dml}", "--baseline", "indepndent"], "--baseline `indepndent` is none of the compared methods"),
    (["{dml}", "--nodes", "nett1"], "no compared run has a node `nett1`"),
    (["{dml}", "{dml}"], "`dml (dml)` is given twice"),
])
def test_bad_input_is_a_located_error(tmp_path, capsys, args, message):
    dml = write_group(tmp_path / "dml", DML, DML_NET1)
    argv = [a.format(tmp=tmp_path / "nothing", dml=dml) for a in args]
    (tmp_path / "nothing").mkdir()
    assert main(["compare", *argv, "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_compare_reads_real_groups_and_single_runs(tmp_path, capsys):
    quick = ["train.epochs=1", "data.limit_train=64", "data.limit_test=40", "data.image_size=16",
             "train.batch_size=32", "--no-progress"]
    assert main(["run", str(INDEPENDENT), "--seeds", "1,2", "--out", str(tmp_path / "ind"), *quick]) == 0
    assert main(["run", str(DML), "--out", str(tmp_path / "dml"), "train.seed=2", *quick]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "ind"), str(tmp_path / "dml"), "--baseline", "independent",
                 "--out", str(tmp_path / "cmp")]) == 0
    rows = {(r["method"], r["node"]): r for r in csv.DictReader((tmp_path / "cmp/comparison.csv").open())}
    single = json.loads((tmp_path / "dml/summary.json").read_text())["rows"]
    group = json.loads((tmp_path / "ind/group-summary.json").read_text())["rows"]
    net1 = next(r["top1_last"] for r in single if r["node"] == "net1")
    assert rows["dml", "net1"]["n"] == "1" and float(rows["dml", "net1"]["mean"]) == pytest.approx(net1, abs=1e-4)
    assert rows["dml", "net1"]["gain_seeds"] == "2"
    base = next(r["top1_last"]["values"]["2"] for r in group if r["node"] == "net1")
    assert float(rows["dml", "net1"]["gain_mean"]) == pytest.approx(net1 - base, abs=1e-4)
