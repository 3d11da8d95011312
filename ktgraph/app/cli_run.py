"""``ktgraph run``: one graph, a seed group, or a run or group to resume; under torchrun, one rank of it."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import GraphError
from ..graph import load_graph
from ..runtime import RunDir
from ..runtime.groupdir import GROUP_CONFIG, GroupDir
from ..runtime.rundir import CONFIG
from .cli_base import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated
from .run import default_run_dir, run_one
from .seeds import check_jobs, parse_seeds, run_group, seeds_override
from .targets import split_targets


def cmd_run(args: argparse.Namespace) -> int:
    files, overrides = split_targets(args.targets)
    if args.resume:
        if files or overrides or args.out or args.overwrite or args.seeds:
            raise GraphError("--resume continues a run in place with its saved config: give no graph file, "
                             "overrides, --seeds, --out or --overwrite", file="command line",
                             suggestion="ktgraph run --resume RUN_DIR")
        run_dir, grouped = Path(args.resume), GroupDir(args.resume).is_group()
        config = run_dir / (GROUP_CONFIG if grouped else CONFIG)
        if not config.is_file():
            raise GraphError(f"{run_dir} is not a run directory (no {CONFIG}) nor a seed group (no {GROUP_CONFIG})",
                             file=str(run_dir))
        graph = load_graph(config, allow_imports=args.allow_imports)
    else:
        if len(files) != 1:
            raise GraphError("ktgraph run takes one graph file", file="command line",
                             expected="ktgraph run FILE [key=value ...]")
        grouping = [seeds_override(parse_seeds(args.seeds))] if args.seeds else []
        graph = load_graph(files[0], overrides + grouping, allow_imports=args.allow_imports)
        grouped = graph.train.seeds is not None
        run_dir = Path(args.out) if args.out else default_run_dir(graph, files[0])
        if graph.document.get("search"):
            print("note: the file has a `search:` section; `run` trains its base graph (`ktgraph search` searches "
                  "it)", file=sys.stderr)
    check_jobs(args.jobs, grouped)
    try:
        if grouped:
            print(f"seed group: {run_dir}", file=sys.stderr)
            run_group(graph, run_dir, resume=bool(args.resume), overwrite=args.overwrite,
                      jobs=1 if args.jobs is None else args.jobs, progress_bar=not args.no_progress,
                      allow_imports=args.allow_imports, argv=sys.argv)
        else:
            run_one(graph, run_dir, resume=bool(args.resume), overwrite=args.overwrite,
                    progress_bar=not args.no_progress)
    except GraphError as err:
        raise graph.locate(err) from None
    except (KeyboardInterrupt, Terminated) as stop:
        how = "stopped by SIGTERM" if isinstance(stop, Terminated) else "interrupted"
        resumable = GroupDir(run_dir).is_group() if grouped else RunDir(run_dir).checkpoint.is_file()
        print(f"\n{how}; continue with: ktgraph run --resume {run_dir}" if resumable else
              f"\n{how} before the first epoch ended: nothing to resume; run the same command again", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(stop, Terminated) else EXIT_INTERRUPTED
    return 0
