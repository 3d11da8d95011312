"""The end of a search: the trials table, ``best.yaml`` (a plain graph file ``ktgraph run`` takes) drawn
as SVG, and Optuna's own plots; ``ktgraph search --report DIR`` writes them again from the storage."""
from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState
from tabulate import tabulate

from ...runtime import RunDir, prepare
from ..render import details_of, graph_dot, render
from ..run import optional
from .space import Search
from .study import ERROR_ATTR, StudyPlace, open_study
from .trial import EPOCHS_ATTR, OVERRIDES_ATTR, RUN_ATTR

BEST = "best.yaml"
BEST_SVG = "best.svg"
TRIALS_CSV = "trials.csv"
TRIALS_MD = "trials.md"


def trial_rows(search: Search, trials: list[FrozenTrial]) -> list[dict[str, Any]]:
    """One row per trial: state, objective, epochs trained, the chosen values, its run directory."""
    return [{"trial": t.number, "state": t.state.name.lower(),
             "objective": None if t.value is None else round(t.value, 2),
             "epochs": t.user_attrs.get(EPOCHS_ATTR),
             **{p.name: t.params.get(p.name) for p in search.parameters},
             "run_dir": t.user_attrs.get(RUN_ATTR, "")} for t in trials]


def summary_lines(search: Search, trials: list[FrozenTrial], best: FrozenTrial | None) -> list[str]:
    """Counts by state, epochs spent against a search without pruning, and the best trial."""
    states = {state: sum(t.state == state for t in trials) for state in TrialState}
    total = search.epochs
    ran = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    used = sum(t.user_attrs.get(EPOCHS_ATTR, 0) for t in ran)
    objective = search.spec.objective
    counts = (f"trials: {states[TrialState.COMPLETE]} complete, {states[TrialState.PRUNED]} pruned, "
              f"{states[TrialState.FAIL]} failed ({sum(ERROR_ATTR in t.user_attrs for t in trials)} by their graph), "
              f"{states[TrialState.RUNNING]} running")
    lines = [counts, (f"objective: {objective.node} top-1 on the validation split ({objective.at} epoch), "
                      "never the test split")]
    if ran:
        lines.append(f"epochs: {used} trained of {len(ran) * total} without pruning ({used / (len(ran) * total):.2f})")
    if best is not None:
        lines.append(f"best: trial {best.number}, {best.value:.2f} ({', '.join(best.user_attrs[OVERRIDES_ATTR])})")
    return lines


def write_report(search: Search, place: StudyPlace, echo: Callable[[str], object] = print) -> Path | None:
    """Write the table, the best graph and the plots into the search folder; the best graph's path."""
    study = open_study(place, search)
    trials = study.get_trials(deepcopy=False)
    folder, files = place.folder, RunDir(place.folder)  # files written whole: a reader never sees half of one
    rows = trial_rows(search, trials)
    if rows:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        files.write_text(TRIALS_CSV, text.getvalue())
    best = _best(trials)
    lines = summary_lines(search, trials, best)
    table = tabulate(rows, headers="keys", tablefmt="github", missingval="") if rows else "(no trials yet)"
    files.write_text(TRIALS_MD, f"# Search `{place.name}`\n\n" + "".join(f"- {line}\n" for line in lines)
                     + "\n" + table + "\n")
    echo(table)
    for line in lines:
        echo(line)
    _plots(study, search, folder)
    if best is None:
        return None
    path = write_best(search, best, folder / BEST)
    optional("draw the best graph", lambda: _draw(search, best, folder / BEST_SVG))
    echo(f"best graph: {path} (ktgraph run {path})")
    return path


def write_best(search: Search, best: FrozenTrial, path: Path) -> Path:
    """The base graph with the best trial's values, ``search:`` left out: a graph file like any other."""
    document = search.base.overridden(best.user_attrs[OVERRIDES_ATTR]).raw
    header = (f"# The best trial ({best.number}) of a ktgraph search: {search.spec.objective.node} top-1 "
              f"{best.value:.2f} on the validation split.\n# Its values: "
              + ", ".join(best.user_attrs[OVERRIDES_ATTR]) + "\n")
    return RunDir(path.parent).write_text(path.name, header + yaml.safe_dump(document, sort_keys=False,
                                                                             allow_unicode=True))


def _best(trials: list[FrozenTrial]) -> FrozenTrial | None:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def _draw(search: Search, best: FrozenTrial, path: Path) -> None:
    graph = search.graph_with(best.user_attrs[OVERRIDES_ATTR])
    render(graph_dot(graph, details_of(prepare(graph, with_data=False, device="cpu").bound)), path, "svg")


def _plots(study: optuna.Study, search: Search, folder: Path) -> None:
    """Optuna's figures: history, intermediate values (pruned trials visible), importances, gate choices."""
    plots = optuna.visualization.matplotlib
    gates = [p.name for p in search.parameters if p.name.startswith("gate ")]
    figures: dict[str, Callable[[], Any]] = {
        "history.png": lambda: plots.plot_optimization_history(study),
        "intermediate.png": lambda: plots.plot_intermediate_values(study),
        "importance.png": lambda: plots.plot_param_importances(study)}
    if gates:
        figures["gates.png"] = lambda: plots.plot_slice(study, params=gates)
    for name, plot in figures.items():
        optional(f"plot {name}", lambda plot=plot, name=name: _save(plot, folder / name))


def _save(plot: Callable[[], Any], path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's "experimental" notices and matplotlib's axis remarks
        axes = plot()
    figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)

