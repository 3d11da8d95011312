"""``python -m ktgraph.report RUN_DIR [RUN_DIR ...]``: (re)write each run's figures and report.md."""
from __future__ import annotations

import argparse
import sys

from ..errors import GraphError
from .markdown import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ktgraph.report", description=__doc__)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--no-plots", action="store_true", help="write report.md only, keep existing figures")
    args = parser.parse_args(argv)
    try:
        for run_dir in args.run_dirs:
            print(write_report(run_dir, plots=not args.no_plots))
    except GraphError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
