"""Dice over time of recipes kept in several side-by-side JSON files, in one plot and one table.

    python tools/plot_runs.py docs/benchmarks/img/unseen_mr4_thick.png \
        "detloss, planned=docs/benchmarks/data/mr4_thick_min_steps_1000.json:detloss" \
        "MONAI, SGD=docs/benchmarks/data/mr4_thick.json:monai" \
        "MONAI, Adam=docs/benchmarks/data/mr4_thick_monai_adam.json:monai"

Each argument after the PNG is ``NAME=FILE:RECIPE``: the runs of ``RECIPE`` (``detloss`` or ``monai``) in ``FILE``,
a JSON written by ``tools/compare_monai.py`` (or another tool of ``tools/side_by_side.py``), drawn under ``NAME``.
The files must hold runs of the same data and budget. Prints, for each recipe and seed, its final Dice (and each
label's) and the time it needs to reach each other recipe's final Dice of the same seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from side_by_side import plot, spread, time_to_reach  # noqa: E402

__all__ = ["read_runs", "reach_table", "main"]


def read_runs(specs: list[str]) -> tuple[dict[str, dict], str]:
    """``{name: {seed: run}}`` of the ``NAME=FILE:RECIPE`` specs, and the data set's name.

    Raises:
        SystemExit: a spec not of that form, a recipe its file does not hold, or files of other data or budgets.
    """
    results, seen = {}, set()
    for spec in specs:
        name, sep, rest = spec.partition("=")
        path, colon, recipe = rest.rpartition(":")
        if not (sep and colon and name and path and recipe):
            raise SystemExit(f"{spec!r}: expected NAME=FILE:RECIPE")
        record = json.loads(Path(path).read_text())
        if recipe not in record.get("results", {}):
            raise SystemExit(f"{path}: holds no runs of {recipe!r} (it holds {sorted(record.get('results', {}))})")
        seen.add((Path(record["data"]).name, record["minutes"]))
        results[name] = record["results"][recipe]
    if len(seen) > 1:
        raise SystemExit(f"the files hold runs of different data or budgets: {sorted(seen)}")
    return results, next(iter(seen))[0]


def reach_table(results: dict[str, dict]) -> str:
    """A Markdown table: per recipe and seed, the final Dice and each label's, the steps, and the seconds to reach
    each other recipe's final Dice of the same seed ("not reached" where it never does)."""
    names = list(results)
    labels = sorted({k for runs in results.values() for run in runs.values() for k in run["curve"][-1][2]})
    header = ["recipe", "seed", "final Dice", *labels, "steps", *[f"time to {o}'s final" for o in names]]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    for name in names:
        for seed, run in sorted(results[name].items(), key=lambda kv: int(kv[0])):
            final = run["curve"][-1]
            per_label = [f"{final[2][k]:.3f}" if k in final[2] else "–" for k in labels]
            cells = [name, seed, f"{final[1]:.3f}", *per_label, f"{run['steps']:,}" if "steps" in run else "–"]
            for other in names:
                theirs = results[other].get(seed)
                if other == name or theirs is None:
                    cells.append("–")
                    continue
                target = theirs["curve"][-1][1]
                t = time_to_reach(run["curve"], target)
                cells.append(f"{t:.0f} s to {target:.3f}" if t is not None else f"not reached ({target:.3f})")
            lines.append("| " + " | ".join(cells) + " |")
    for name in names:
        finals = [run["curve"][-1][1] for run in results[name].values()]
        lines.append(f"\n{name}: {spread(finals)} over {len(finals)} seeds")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("png", type=Path, help="the plot to write")
    parser.add_argument("runs", nargs="+", help="NAME=FILE:RECIPE, at most three")
    args = parser.parse_args(argv)
    if len(args.runs) > 3:
        parser.error(f"at most three recipes in one plot, got {len(args.runs)}")
    results, data = read_runs(args.runs)
    print(reach_table(results))
    plot(results, args.png, data)
    print(f"plot: {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
