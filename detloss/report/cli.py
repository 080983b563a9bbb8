"""``detloss-report PATH [--out DIR]``: the command line of the report."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import detloss.report
from detloss.report.write import report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="detloss-report", description=detloss.report.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="a run directory (with metrics.json) or a Hydra sweep directory")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: PATH/report)")
    args = parser.parse_args(argv)
    print(report(args.path, args.out))
    return 0
