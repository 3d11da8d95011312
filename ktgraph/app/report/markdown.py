"""``report.md``: one page that says what a run was and what came out of it.

It links only to files in the run directory, by relative paths, so the directory can
be moved, copied or opened from a repository browser and the report still works.
"""
from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ...runtime.measure import Row
from ...runtime.rundir import (CHECKPOINT, CONFIG, CURVES, ENV, GRAPH_IMAGES, HEATMAP, METRICS, PARETO, REPORT,
                               SUMMARY, TENSORBOARD, XROSS_CSV, XROSS_MD, RunDir)
from ..tables import human_count
from .plots import write_plots


_PLOTS = ((CURVES, "Training curves", "each node's training loss and test top-1 per epoch"),
          (HEATMAP, "Xross heatmap", "test top-1 of each up part x down part combination"),
          (PARETO, "Accuracy vs cost", "every path's test top-1 against #params and MACs, Pareto front in red"))


def write_report(run_dir: str | Path, *, plots: bool = True) -> Path:
    """Write ``run_dir/report.md`` (and, with ``plots``, the SVG figures first); return its path.

    Everything is optional but the directory: a run still training, or one without
    ``xross.csv``, gets a report of what is there.
    """
    run_dir = Path(run_dir)
    RunDir(run_dir).require()
    if plots:
        write_plots(run_dir)
    return RunDir(run_dir).write_text(REPORT, render_report(run_dir))


def render_report(run_dir: str | Path) -> str:
    """The report's Markdown, from the files present in ``run_dir`` (draws no figures)."""
    run_dir = Path(run_dir)
    files = RunDir(run_dir)
    env = files.read_json(ENV) or {}
    summary = files.read_json(SUMMARY)
    config = files.read_config() or {}
    metrics = files.read_metrics()
    xross = files.read_xross()
    sections = [
        _header(run_dir, env, summary, config, metrics),
        _graph(run_dir),
        _accuracy(summary, metrics),
        _xross(run_dir, xross),
        _plots(run_dir),
        _links(metrics),
        _files(run_dir),
    ]
    return "\n\n".join(s.strip("\n") for s in sections if s) + "\n"


# --- sections --------------------------------------------------------------------------
def _header(run_dir: Path, env: dict[str, Any], summary: dict[str, Any] | None, config: dict[str, Any],
            metrics: list[dict[str, Any]]) -> str:
    name = (summary or {}).get("graph") or config.get("name") or run_dir.name
    lines = [f"# Run report: {name}", ""]
    if config.get("description"):
        lines += [f"> {_one_line(config['description'])}", ""]
    train = config.get("train") or {}
    rows: list[tuple[str, str]] = [("graph", f"`{name}`")]
    if env.get("started"):
        rows.append(("started", str(env["started"])))
    rows.append(("epochs", _epochs(config, metrics, summary)))
    seed = env.get("seed", train.get("seed"))
    if seed is not None:
        rows.append(("seed", str(seed)))
    device = env.get("device") or train.get("device")
    if device is not None:
        text = str(device) + ("" if env.get("device") else " (train.device)")
        if env.get("cuda"):
            text += f"; torch built with CUDA {env['cuda']}"
        rows.append(("device", text))
    if train.get("amp") not in (None, "off"):
        rows.append(("mixed precision", str(train["amp"])))
    versions = [f"{pkg} {env[pkg]}" for pkg in ("ktgraph", "torch", "torchvision", "timm", "python") if env.get(pkg)]
    if versions:
        rows.append(("versions", ", ".join(versions)))
    if env.get("platform"):
        rows.append(("platform", str(env["platform"])))
    if env.get("command"):
        rows.append(("command", f"`{_command(env['command'])}`"))
    lines += ["| | |", "| --- | --- |", *(f"| {k} | {_cell(v)} |" for k, v in rows)]
    return "\n".join(lines)


def _epochs(config: dict[str, Any], metrics: list[dict[str, Any]], summary: dict[str, Any] | None) -> str:
    stages = [s for s in config.get("stages") or [] if isinstance(s, dict)]
    default = (config.get("train") or {}).get("epochs")
    try:  # a stage without `epochs` runs train.epochs
        planned = sum(int(s.get("epochs") or default) for s in stages) if stages else default
    except (TypeError, ValueError):
        planned = None
    done: dict[str, int] = {}
    for line in metrics:
        done[str(line.get("stage", "?"))] = done.get(str(line.get("stage", "?")), 0) + 1
    text = f"{len(metrics)}" + (f" of {planned}" if planned else "")
    if len(done) > 1 or stages:
        text += " (" + ", ".join(f"stage {s}: {n}" for s, n in done.items()) + ")"
    seconds = sum(float(line.get("seconds") or 0) for line in metrics)
    if seconds:
        text += f", {_duration(seconds)} of training"
    if summary is None:
        text += "; **no summary.json: the run has not finished**"
    return text


def _graph(run_dir: Path) -> str:
    lines = ["## Graph", ""]
    image = next((name for name in GRAPH_IMAGES if (run_dir / name).is_file()), None)
    if image:
        lines.append(f"![the knowledge-transfer graph]({image})")
    else:
        lines.append("_No rendered graph in this directory (graph.svg)._")
    lines += ["", f"The fully resolved graph file is [{CONFIG}]({CONFIG})."]
    return "\n".join(lines)


def _accuracy(summary: dict[str, Any] | None, metrics: list[dict[str, Any]]) -> str:
    lines = ["## Final accuracy", ""]
    rows = (summary or {}).get("rows") or []
    if not rows:
        if not metrics:
            return "\n".join(lines + ["_No epoch finished yet._"])
        last = metrics[-1]
        lines += [f"_No {SUMMARY} yet: test accuracy at the last finished epoch "
                  f"(stage {last.get('stage')}, epoch {int(last.get('epoch', 0))})._", "",
                  "| node | test top-1 (%) | test top-5 (%) |", "| --- | ---: | ---: |"]
        for node, acc in (last.get("test") or {}).items():
            lines.append(f"| `{_cell(node)}` | {_pct(acc.get('top1'))} | {_pct(acc.get('top5'))} |")
        return "\n".join(lines)
    chosen = {r.get("best_chosen_on") for r in rows}
    lines += ["Test accuracy of every node, in %. **last**: at the final epoch. "
              "**at best**: test top-1 at the epoch where the node's top-1 on the selection split "
              "(the `chosen on` split) was highest."]
    if "test" in chosen:
        lines[-1] += (" Chosen on *test* means the best value is optimistic; "
                      "set `data.val_split` to choose on a validation split.")
    lines.append("")
    has_top5 = any("top5_last" in r for r in rows)
    header = "| node | kind | route | top-1 last (epoch) | top-1 at best (epoch, chosen on) |"
    rule = "| --- | --- | --- | ---: | ---: |"
    if has_top5:
        header += " top-5 last |"
        rule += " ---: |"
    lines += [header, rule]
    # With several stages an epoch number alone is ambiguous: name the stage too.
    staged = len(({line.get("stage") for line in metrics} | {r.get("last_stage") for r in rows}) - {None}) > 1
    for r in rows:
        last = _when(r.get("last_stage"), r.get("last_epoch"), staged)
        best = _when(r.get("best_stage"), r.get("best_epoch"), staged)
        line = (f"| `{_cell(r.get('node'))}` | {_cell(r.get('kind', ''))} | {_cell(r.get('route', ''))} "
                f"| {_pct(r.get('top1_last'))}{'*' if r.get('calibrated') else ''} ({last}) "
                f"| {_pct(r.get('top1_at_best'))} ({best}, {r.get('best_chosen_on', '?')}) |")
        if has_top5:
            line += f" {_pct(r.get('top5_last'))} |"
        lines.append(line)
    if any(r.get("calibrated") for r in rows):
        lines += ["", "\\* BatchNorm statistics calibrated for the node's cross paths on training batches "
                      "(`train.calibrate`)."]
    return "\n".join(lines)


def _xross(run_dir: Path, xross: list[Row]) -> str:
    lines = ["## Xross: paths, cost and accuracy", ""]
    md = run_dir / XROSS_MD
    if md.is_file():
        lines += [_demote(md.read_text().strip(), 2)]
        if (run_dir / XROSS_CSV).is_file():
            lines += ["", f"The same numbers as CSV: [{XROSS_CSV}]({XROSS_CSV})."]
        return "\n".join(lines)
    if not xross:
        return "\n".join(lines + [f"_No {XROSS_CSV} in this directory._"])
    lines += [f"From [{XROSS_CSV}]({XROSS_CSV}); top-1 in %, last epoch.", "",
              "| node | kind | parts | #params | MACs | latency (ms) | top-1 last | top-5 last | top-1 best (epoch) |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in xross:
        latency = f"{r.latency_ms:.2f}" if r.latency_ms is not None else "n/a"
        lines.append(f"| `{_cell(r.node)}` | {_cell(r.kind)} | {_cell(' > '.join(r.parts))} | {human_count(r.params)} "
                     f"| {human_count(r.macs)} | {latency} | {_pct(r.top1_last)} | {_pct(r.top5_last)} "
                     f"| {_pct(r.top1_best)} ({r.best_epoch if r.best_epoch is not None else '?'}) |")
    return "\n".join(lines)


def _plots(run_dir: Path) -> str:
    present = [(f, title, what) for f, title, what in _PLOTS if (run_dir / f).is_file()]
    if not present:
        return ""
    lines = ["## Plots"]
    for name, title, what in present:
        lines += ["", f"### {title}", "", f"{what[0].upper()}{what[1:]} ([{name}]({name})).", "",
                  f"![{title}]({name})"]
    return "\n".join(lines)


def _links(metrics: list[dict[str, Any]]) -> str:
    lines = ["## Link losses", ""]
    if not metrics:
        return "\n".join(lines + ["_No epoch finished yet._"])
    last: dict[str, tuple[float, dict[str, Any]]] = {}
    for line in metrics:
        for name, value in (line.get("links") or {}).items():
            last[name] = (value, line)
    final = metrics[-1]
    lines += [f"Mean loss of each link over its last epoch (weighted and gated as trained). "
              f"The final epoch is stage `{final.get('stage')}`, epoch {int(final.get('epoch', 0))}; "
              "a link not active in it shows the last epoch it was.", "",
              "| link | loss | stage | epoch |", "| --- | ---: | --- | ---: |"]
    for name in sorted(last):
        value, line = last[name]
        lines.append(f"| `{_cell(name)}` | {_num(value)} | {_cell(line.get('stage', '?'))} "
                     f"| {int(line.get('epoch', 0))} |")
    return "\n".join(lines)


def _files(run_dir: Path) -> str:
    entries = [
        (CONFIG, "the fully resolved graph file; `ktgraph run config.yaml` runs it again"),
        (CHECKPOINT, "model, optimizer and scheduler after the last epoch; "
                     "`ktgraph run --resume <this directory>` continues the run"),
        (METRICS, "one JSON line per epoch: lr, time, link and node losses, test (and val) accuracy"),
        (SUMMARY, "the final accuracy table as JSON"),
        (ENV, "seed, command, versions, platform"),
        (XROSS_CSV, "every path's parts, #params, MACs, latency and accuracy"),
        (TENSORBOARD, "TensorBoard event files: `tensorboard --logdir <this directory>/tensorboard`"),
    ]
    lines = ["## Files", ""]
    for name, what in entries:
        if (run_dir / name).exists():
            link = name + ("/" if (run_dir / name).is_dir() else "")
            lines.append(f"- [{link}]({link}): {what}")
        elif name == CHECKPOINT:
            lines.append(f"- {CHECKPOINT}: _not present_ (no epoch finished, or checkpoints were removed)")
    return "\n".join(lines)


# --- formatting --------------------------------------------------------------------------
def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _when(stage: Any, epoch: Any, staged: bool) -> str:
    epoch = "?" if epoch is None else str(epoch)
    return f"{_cell(stage)} {epoch}" if staged and stage else epoch


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _pct(value: Any) -> str:
    return f"{float(value):.2f}" if isinstance(value, (int, float)) else "n/a"


def _num(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "n/a"
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:.1f}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _command(argv: Sequence[str] | str) -> str:
    if isinstance(argv, str):
        return argv
    argv = [str(a) for a in argv]
    if argv and Path(argv[0]).name in ("ktgraph", "ktgraph.exe", "__main__.py"):
        argv[0] = "ktgraph"
    return shlex.join(argv).replace("`", "'")


def _demote(text: str, levels: int) -> str:
    """Push Markdown headings down ``levels`` levels (outside code fences) to nest a document."""
    out: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            hashes = len(line) - len(line.lstrip("#"))
            if line[hashes:hashes + 1] in (" ", ""):
                line = "#" * min(6, hashes + levels) + line[hashes:]
        out.append(line)
    return "\n".join(out)


def links_in(markdown: str) -> Iterable[str]:
    """The targets of the Markdown links and images in a text (used to check they are relative)."""
    return re.findall(r"\]\(([^)\s]+)\)", markdown)
