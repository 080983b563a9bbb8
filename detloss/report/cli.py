"""``detloss-report PATH [--out DIR] [--baseline KEY=VALUE ...]``: the command line of the report, and the only
part of it that exits: a path that is missing, not a directory or without runs, or a ``--baseline`` that names no
sweep point or several, is one line on stderr and exit status 1."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import detloss.report
from detloss.report.write import report


def main(argv: Sequence[str] | None = None) -> int:
    """Write the report of ``argv``'s PATH, print the path of its ``report.md``; the exit status."""
    parser = argparse.ArgumentParser(
        prog="detloss-report", description=detloss.report.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", type=Path, help="a run directory (with metrics.json) or a Hydra sweep directory")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: PATH/report)")
    parser.add_argument(
        "--baseline",
        nargs="+",
        metavar="KEY=VALUE",
        default=None,
        help="(after PATH) the overrides, apart from seed=, naming the sweep point every other point is compared "
        "with, paired by seed, e.g. --baseline loss=yolo or --baseline loss=yolo loss.terms.box.weight=7.5",
    )
    args = parser.parse_args(argv)
    try:
        md = report(args.path, args.out, args.baseline)
    except (FileNotFoundError, ValueError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    print(md)
    return 0
