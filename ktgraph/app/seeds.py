"""Seed groups: a graph run once per seed, and the summary over seeds as mean ± std.

On small data one seed's spread is larger than the differences between methods, so a claim needs
several seeds. Each seed is an ordinary run directory (``GROUP/seed-S``) with ``train.seed: S``;
the group resumes seed by seed. Seeds run one after another in this process, or side by side
(``jobs`` > 1) as separate ``ktgraph run`` processes, each given ``cores // jobs`` intra-op
threads unless ``train.threads`` says otherwise: K processes that each take every core spin and
run many times slower than K processes that share them (benchmarks/threads.py).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import torch
from tabulate import tabulate

from ..errors import GraphError, TrainingError
from ..graph import KTGraph, load_graph
from ..runtime.checkpoint import config_difference, trained_config
from ..runtime.groupdir import GROUP_CONFIG, GROUP_SUMMARY, GROUP_TABLE, LOGS, GroupDir
from ..runtime.rundir import CONFIG, make_folder
from ..runtime.strategy import available_cores
from .run import train
from .stats import spread

METRICS = ("top1_last", "top1_at_best")
POLL_SECONDS = 0.5
MAX_JOBS = 1024


def parse_seeds(text: str) -> list[int]:
    """``--seeds 1,2,3``; the values are then checked like ``train.seeds`` in a file."""
    words = [w.strip() for w in text.split(",")]
    if not all(w.isdigit() for w in words):
        raise GraphError(f"--seeds `{text}` is not a list of seeds", file="command line",
                         expected="whole numbers separated by commas, e.g. --seeds 1,2,3")
    return [int(w) for w in words]


def seeds_override(seeds: list[int]) -> str:
    """Seeds as the override ``train.seeds=[1,2,3]`` (``--seeds 1,2,3``, a suite's seeds)."""
    return f"train.seeds=[{','.join(map(str, seeds))}]"


def check_jobs(jobs: int | None, grouped: bool) -> None:
    """``--jobs``: a count of seed processes, and only for a group."""
    if jobs is not None and not 1 <= jobs <= MAX_JOBS:
        raise GraphError(f"--jobs {jobs} is out of range", file="command line",
                         expected=f"a whole number from 1 to {MAX_JOBS}")
    if jobs is not None and not grouped:
        raise GraphError("--jobs runs the seeds of a group side by side, and this is one run", file="command line",
                         suggestion="give the seeds: --seeds 1,2,3 (or train.seeds: [1, 2, 3] in the file)")


def threads_per_run(graph: KTGraph, jobs: int) -> int | None:
    """``train.threads`` when set; else, seeds side by side share the cores; a lone run: torch's choice."""
    if graph.train.threads is not None or jobs == 1:
        return graph.train.threads
    return max(1, available_cores() // jobs)


def seed_overrides(seed: int, threads: int | None) -> list[str]:
    """What turns the group's config into one seed's run config."""
    return [f"train.seed={seed}", "train.seeds=null"] + ([f"train.threads={threads}"] if threads else [])


def run_group(graph: KTGraph, group_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
              jobs: int = 1, progress_bar: bool = True, allow_imports: bool = False, argv: list[str] | None = None,
              echo: Callable[[str], object] = print) -> dict[str, Any]:
    """Run (or continue) every seed of ``graph.train.seeds`` into ``group_dir``; return the group summary.

    A new group refuses a folder that holds anything unless ``overwrite``; a resumed group reads its
    own ``group.yaml``, skips finished seeds and continues interrupted ones from their checkpoints.
    """
    check_jobs(jobs, True)
    group = GroupDir(group_dir)
    if not resume:
        _check_new_group(graph, group, overwrite)
    seeds = list(graph.train.seeds or [])
    jobs = min(jobs, len(seeds))
    threads = threads_per_run(graph, jobs)
    make_folder(group.path, "the group folder")
    with group.lock("run --seeds"):
        if not resume:
            group.remove_group_files()
            group.write_group_config(graph.document)
        pending = [s for s in seeds if group.seed_summary(s) is None]
        each = f", {threads} threads each" if threads else ""
        echo(f"seed group {group}: seeds {', '.join(map(str, seeds))} ({len(seeds) - len(pending)} finished), "
             f"{jobs} at a time{each}")
        if jobs == 1:
            for seed in pending:
                _run_here(group, seed, threads, progress_bar=progress_bar, allow_imports=allow_imports,
                          argv=argv, echo=echo)
        else:
            _run_side_by_side(group, pending, jobs, threads, allow_imports=allow_imports, echo=echo)
        summary = write_group_summary(group, graph.name or group.name, seeds)
    echo(format_group_summary(summary))
    echo(f"group summary: {group / GROUP_TABLE}")
    return summary


def group_difference(graph: KTGraph, group: GroupDir) -> str | None:
    """How the group saved in ``group`` differs from a group of ``graph`` (seeds included), or None."""
    saved = group.read_group_config() or {}
    return config_difference({**trained_config(saved), "seeds": saved.get("train", {}).get("seeds")},
                             {**trained_config(graph.document), "seeds": graph.train.seeds},
                             here="in this graph", there=f"in {group / GROUP_CONFIG}")


def _check_new_group(graph: KTGraph, group: GroupDir, overwrite: bool) -> None:
    if group.path.exists() and not group.path.is_dir():
        raise GraphError("the group folder is a file, not a folder", file=str(group), suggestion="give --out a folder")
    contents = group.contents()
    if overwrite or not contents:
        return
    if group.is_group():
        difference = group_difference(graph, group)
        if difference is None:
            raise GraphError("the folder holds a seed group of this graph", file=str(group),
                             suggestion=f"continue it with `ktgraph run --resume {group}`, or start it again "
                                        "with --overwrite")
        raise GraphError(f"the folder holds a seed group of another graph or other settings ({difference})",
                         file=str(group), suggestion="give another --out, or pass --overwrite to replace it")
    raise GraphError(f"the folder is not empty: it holds {', '.join(contents[:3])}"
                     f"{', ...' if len(contents) > 3 else ''}; nothing in it was touched", file=str(group),
                     suggestion="give another --out (or leave it out for a new folder under runs/), or pass "
                                "--overwrite to replace the group files there")


def _run_here(group: GroupDir, seed: int, threads: int | None, *, progress_bar: bool, allow_imports: bool,
              argv: list[str] | None, echo: Callable[[str], object]) -> None:
    run = group.seed_run(seed)
    resume = run.checkpoint.is_file()
    echo(f"seed {seed}: {'continuing ' if resume else ''}{run}")
    graph = (load_graph(run / CONFIG, allow_imports=allow_imports) if resume else
             load_graph(group / GROUP_CONFIG, seed_overrides(seed, threads), allow_imports=allow_imports))
    before = torch.get_num_threads()
    try:
        train(graph, run.path, resume=resume, progress_bar=progress_bar, argv=argv, echo=echo)
    finally:  # a seed's train.threads is its own: the next seed starts from this process's count
        torch.set_num_threads(before)


def seed_command(group: GroupDir, seed: int, threads: int | None, allow_imports: bool) -> list[str]:
    """The ``ktgraph run`` that starts a seed, or continues it from its checkpoint."""
    run = group.seed_run(seed)
    if run.checkpoint.is_file():
        args = ["--resume", str(run)]
    else:
        args = [str(group / GROUP_CONFIG), *seed_overrides(seed, threads), "--out", str(run)]
    return [sys.executable, "-m", "ktgraph", "run", *args, "--no-progress"] + (["--allow-imports"] if allow_imports
                                                                              else [])


def _run_side_by_side(group: GroupDir, seeds: list[int], jobs: int, threads: int | None, *, allow_imports: bool,
                      echo: Callable[[str], object]) -> None:
    """At most ``jobs`` seed processes at a time, each writing to ``logs/seed-S.log``; stopping the
    group (Ctrl-C, SIGTERM) stops them, and each leaves its last checkpoint to continue from."""
    (group / LOGS).mkdir(exist_ok=True)
    environment = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    here = str(Path(__file__).resolve().parents[2])  # the seeds run this ktgraph, whichever is installed
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    waiting, failed = list(seeds), {}
    running: dict[int, tuple[subprocess.Popen[bytes], TextIO]] = {}
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                seed = waiting.pop(0)
                log = group.log(seed).open("a")
                running[seed] = (subprocess.Popen(seed_command(group, seed, threads, allow_imports), stdout=log,
                                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                  env=environment), log)
                echo(f"seed {seed}: started, output in {group.log(seed)}")
            time.sleep(POLL_SECONDS)
            for seed, (process, log) in list(running.items()):
                if process.poll() is not None:
                    log.close()
                    del running[seed]
                    if process.returncode:
                        failed[seed] = process.returncode
                    echo(f"seed {seed}: " + (f"failed (exit {process.returncode})" if process.returncode
                                             else "finished"))
    finally:
        for process, _ in running.values():
            process.terminate()  # SIGTERM: the run stops and says how to resume, its checkpoint kept
        for process, log in running.values():
            process.wait()
            log.close()
    if failed:
        said = ", ".join(f"seed {s} (exit {code}, see {group.log(s)})" for s, code in sorted(failed.items()))
        raise TrainingError(f"{said} failed; after fixing the cause, continue with `ktgraph run --resume {group}`")


def write_group_summary(group: GroupDir, name: str, seeds: list[int]) -> dict[str, Any]:
    """``group-summary.json`` and ``.md``: each node's top-1 (last, at best) as mean ± std over seeds."""
    summary = group_summary(name, seeds, {s: group.seed_summary(s) for s in seeds})
    summary["group_dir"] = str(group)
    group.write_json(GROUP_SUMMARY, summary)
    group.write_text(GROUP_TABLE, format_group_summary(summary))
    return summary


def group_summary(name: str, seeds: list[int], summaries: dict[int, dict[str, Any] | None]) -> dict[str, Any]:
    """Every node of the seeds' ``summary.json`` rows with each metric's per-seed values, mean, std and n."""
    missing = [s for s in seeds if summaries.get(s) is None]
    if missing:
        raise TrainingError(f"seed {missing[0]} has no summary.json: its run has not finished")
    by_seed = {s: {row["node"]: row for row in summaries[s]["rows"]} for s in seeds}  # type: ignore[index]
    rows = []
    for first in summaries[seeds[0]]["rows"]:  # type: ignore[index]
        node = first["node"]
        row = {key: first[key] for key in ("node", "kind", "route", "best_chosen_on", "calibrated")}
        row["n"] = len(seeds)
        for metric in METRICS:
            values = {str(s): by_seed[s][node][metric] for s in seeds}
            stats = spread(list(values.values()))
            row[metric] = {"mean": stats.mean, "std": stats.std, "values": values}
        rows.append(row)
    return {"graph": name, "seeds": seeds, "std": "sample standard deviation over seeds (n - 1)", "rows": rows}


def format_group_summary(summary: dict[str, Any]) -> str:
    """The group summary as a Markdown table (printed at the end of a group, and group-summary.md)."""
    def cell(entry: dict[str, Any]) -> str:
        return f"{entry['mean']:.2f}" + (f" ± {entry['std']:.2f}" if entry["std"] is not None else "")

    rows = summary["rows"]
    body = [[r["node"], r["kind"], cell(r["top1_last"]), cell(r["top1_at_best"]), r["n"]] for r in rows]
    on_test = any(r["best_chosen_on"] == "test" for r in rows)
    table = tabulate(body, headers=["node", "kind", "top-1 last", "top-1 at best" + (" (chosen on test)" if on_test
                                                                                     else ""), "n"],
                     tablefmt="github", disable_numparse=True)
    seeds = ", ".join(map(str, summary["seeds"]))
    return (f"# {summary['graph']}: seeds {seeds}\n\n{table}\n\nmean ± sample standard deviation over the seeds, "
            "test top-1 %." + (" The best epoch was chosen on the test split (no `data.val_split`): read "
                               "top-1 last." if on_test else "") + "\n")
