"""Writing a comparison: the Markdown tables people read, the CSV scripts read, the error-bar plot.

The numbers come from :mod:`ktgraph.app.compare`; here they are only laid out. Last-epoch numbers
are the default because a best epoch chosen on the test split selects on the very numbers it
reports; the tables say which was used and why in one line.
"""
from __future__ import annotations

import csv
import io
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from tabulate import tabulate

from ..runtime.rundir import RunDir, make_folder
from .compare import AVERAGE, Cell, Method, cells, check_nodes, default_nodes, find_baseline, mismatch, open_methods
from .report.comparison import plot_comparison

MARKDOWN, CSV, PLOT = "comparison.md", "comparison.csv", "comparison.svg"
WITHIN = "≈"
GAIN_NOTE = ("Mean ± standard deviation of the per-seed difference (method − baseline, points), two-sided paired "
             f"t-test p. {WITHIN}: smaller than the seed-to-seed spread (the larger standard deviation of the two "
             "methods at that node): two single runs with different seeds could rank the methods either way; the "
             "paired ± and p say whether the same seeds do.\n")
AVERAGE_NOTE = (f"`{AVERAGE}`: the average of a method's networks' top-1, seed by seed (not an ensemble; "
                "`mean(networks)` is the ensemble of their mean logits).")
CSV_COLUMNS = ("method", "folder", "node", "metric", "n", "seeds", "mean", "std", "values", "baseline",
               "gain_mean", "gain_std", "gain_ci95_low", "gain_ci95_high", "gain_p", "gain_seeds", "within_spread")


def metric_line(methods: list[Method], metric: str) -> str:
    """Which number the tables hold, and why, in one line."""
    on_test = any("test" in m.chosen_on() for m in methods)
    if metric == "top1_last":
        why = ("the best epoch of these runs is chosen on the test split (no `data.val_split`), so it would select "
               "on the numbers it reports" if on_test else
               "the best epoch is one more choice per node; ask for it with --metric top1_best")
        return f"Numbers: test top-1 % at the last epoch (the default: {why})."
    where = ("the TEST split: optimistic, the epoch is selected on the numbers shown" if on_test
             else "the validation split")
    return f"Numbers: test top-1 % at each node's best epoch, chosen on {where}."


def _gain_text(cell: Cell) -> str:
    if cell.gain is None:
        return ""
    diff = cell.gain.difference
    text = f"{diff.mean:+.2f}" + (f" ± {diff.std:.2f}" if diff.std is not None else " (1 seed)")
    if cell.gain.p_value is not None:
        text += f" (p={cell.gain.p_value:.2f})"
    return text + (f" {WITHIN}" if cell.within_spread else "")


def format_comparison(methods: list[Method], nodes: list[str], found: list[Cell], metric: str,
                      baseline: Method | None) -> str:
    """The Markdown page: the table of methods × nodes, the paired gains, and what the marks mean."""
    at = {(c.method, c.node): c for c in found}
    body = [[m.label, str(len(m.summaries)), *[at[m.label, n].spread.text() if at[m.label, n].spread else ""
                                               for n in nodes]] for m in methods]
    parts = ["# Comparison of methods\n", metric_line(methods, metric) + " Mean ± sample standard deviation over "
             "seeds; n: seeds.\n", tabulate(body, headers=["method", "n", *nodes], tablefmt="github",
                                            disable_numparse=True) + "\n"]
    if baseline is not None:
        shared = [n for n in nodes if any(at[m.label, n].gain for m in methods)]
        gains = [[m.label, ", ".join(map(str, sorted(set(m.summaries) & set(baseline.summaries)))),
                  *[_gain_text(at[m.label, n]) for n in shared]] for m in methods if m is not baseline]
        parts += [f"## Gain over `{baseline.label}`, paired by seed\n", GAIN_NOTE,
                  tabulate(gains, headers=["method", "paired seeds", *shared], tablefmt="github",
                           disable_numparse=True) + "\n"]
    notes = [AVERAGE_NOTE]
    notes += [f"`{m.label}`: {m.source}, seeds {', '.join(map(str, sorted(m.summaries)))}"
              + (f" (unfinished, left out: {', '.join(map(str, m.unfinished))})" if m.unfinished else "")
              for m in methods]
    return "\n".join(parts) + "\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def comparison_csv(methods: list[Method], found: list[Cell], metric: str, baseline: Method | None) -> str:
    folders = {m.label: str(m.source) for m in methods}
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for cell in found:
        if cell.spread is None:
            continue
        row = {"method": cell.method, "folder": folders[cell.method], "node": cell.node, "metric": metric,
               "n": cell.spread.n, "seeds": " ".join(map(str, sorted(cell.values))), "mean": f"{cell.spread.mean:.4f}",
               "std": "" if cell.spread.std is None else f"{cell.spread.std:.4f}",
               "values": " ".join(f"{s}:{v:.4f}" for s, v in sorted(cell.values.items()))}
        if cell.gain is not None and baseline is not None:
            g = cell.gain
            row.update(baseline=baseline.label, gain_mean=f"{g.difference.mean:.4f}",
                       gain_std="" if g.difference.std is None else f"{g.difference.std:.4f}",
                       gain_ci95_low="" if g.low is None else f"{g.low:.4f}",
                       gain_ci95_high="" if g.high is None else f"{g.high:.4f}",
                       gain_p="" if g.p_value is None else f"{g.p_value:.4f}",
                       gain_seeds=" ".join(map(str, g.seeds)), within_spread=str(cell.within_spread).lower())
        writer.writerow(row)
    return out.getvalue()


def default_out() -> Path:
    return Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"


def compare(folders: list[str], *, metric: str = "top1_last", nodes: list[str] | None = None,
            baseline: str | None = None, out: str | Path | None = None, allow_mismatch: bool = False,
            echo: Callable[[str], object] = print) -> dict[str, Path]:
    """Compare seed groups or runs: print the Markdown, write it with the CSV and the plot under ``out``."""
    methods = open_methods(folders)
    problem = mismatch(methods)
    if problem is not None and not allow_mismatch:
        raise problem
    if problem is not None:
        warnings.warn(f"--allow-mismatch: {problem}", stacklevel=2)
    nodes = nodes or default_nodes(methods)
    check_nodes(methods, nodes)
    base = find_baseline(methods, baseline) if baseline else None
    found = cells(methods, nodes, metric, base)
    text = format_comparison(methods, nodes, found, metric, base)
    echo(text)
    folder = Path(out) if out is not None else default_out()
    make_folder(folder, "the output folder")
    files = RunDir(folder)  # atomic writes, as a run's files
    written = {"markdown": files.write_text(MARKDOWN, text),
               "csv": files.write_text(CSV, comparison_csv(methods, found, metric, base))}
    points = [(c.method, c.node, c.spread.mean, c.spread.std or 0.0) for c in found if c.spread is not None]
    label = "last epoch" if metric == "top1_last" else "best epoch"
    plot = plot_comparison(points, [m.label for m in methods], nodes, folder / PLOT, label)
    if plot is not None:
        written["plot"] = plot
    return written
