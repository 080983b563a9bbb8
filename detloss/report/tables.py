"""Numbers as text, and the tables of a report: Markdown lines for ``report.md`` (results, 95 % intervals, the
comparison with a baseline), the full-precision ``report.csv`` of a sweep."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detloss.report.aggregate import Point, headline, is_loss
from detloss.report.load import Run
from detloss.report.stats import duplicate_seeds, paired, paired_seeds, point_label, seed_values

NONE = "—"
"""What a missing value reads as."""

NA = "n/a"
"""What an undefined statistic reads as (an interval from one seed, a p-value without a spread)."""


# ---------------------------------------------------------------------------------------------- formatting


def fmt(value: float | None) -> str:
    """4 significant digits; ``—`` for a missing value."""
    return NONE if value is None or not math.isfinite(value) else f"{value:.4g}"


def fmt_stats(mean: float | None, std: float | None, always_std: bool = False) -> str:
    """``mean ± std``; without a std, the mean alone (or ``mean ± —`` when ``always_std``)."""
    if mean is None:
        return NONE
    if std is None:
        return f"{fmt(mean)} ± {NONE}" if always_std else fmt(mean)
    return f"{fmt(mean)} ± {fmt(std)}"


def link(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` where it lies under it, for a Markdown link."""
    try:
        return path.relative_to(start).as_posix()
    except ValueError:
        return path.as_posix()


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table, one line per row."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


# ------------------------------------------------------------------------------------------------- one run


def run_summary(run: Run) -> list[str]:
    """The run's record as a Markdown list: directory, status, metric, seed, overrides, time, pruning, error."""
    rec = run.record
    items = [
        ("directory", f"`{run.dir}`"),
        ("status", rec.get("status", "?")),
        ("task", rec.get("task")),
        (
            "optimised metric",
            f"`{run.metric}` ({run.mode}) = {fmt(run.final_values().get(run.metric or ''))}" if run.metric else None,
        ),
        ("seed", run.seed),
        ("overrides", " ".join(f"`{o}`" for o in run.overrides) or None),
        ("epochs", rec.get("epochs")),
        ("steps", rec.get("steps")),
        ("wall time", f"{fmt(rec['seconds'])} s" if isinstance(rec.get("seconds"), (int, float)) else None),
        ("best checkpoint", f"`{rec['best_checkpoint']}`" if rec.get("best_checkpoint") else None),
        ("pruned after epoch", rec.get("pruned_epoch") if run.pruned else None),
        ("error", f"`{run.error}`" if not run.ok and not run.pruned else None),
    ]
    return [f"- {name}: {value}" for name, value in items if value is not None]


def metrics_table(values: dict[str, float], metric: str | None, mode: str) -> list[str]:
    """The final validation metrics, the optimised one in bold; no lines when there are none."""
    rows = [
        (f"**{k}** (optimised, {mode})" if k == metric else k, fmt(v))
        for k, v in sorted(values.items())
        if k.startswith("val/") and not is_loss(k)
    ]
    return table(["metric", "value"], rows) if rows else []


def loss_table(values: dict[str, float]) -> list[str]:
    """Each loss term's last train and validation value, and the total; no lines when there are none."""
    names = sorted({k.split("/", 2)[2] for k in values if k.startswith(("train/loss/", "val/loss/"))})
    rows = [(n, fmt(values.get(f"train/loss/{n}")), fmt(values.get(f"val/loss/{n}"))) for n in names]
    if "train/loss" in values or "val/loss" in values:
        rows.append(("**total**", fmt(values.get("train/loss")), fmt(values.get("val/loss"))))
    return table(["term", "train (last step)", "validation (last epoch)"], rows) if rows else []


# -------------------------------------------------------------------------------------------------- sweeps


def _seeds_cell(point: Point) -> str:
    n = len(point.runs)
    notes = [f"{name}: {k}/{n}" for name, k in (("failed", point.failed), ("pruned", point.pruned)) if k]
    return f"{n} ({', '.join(notes)})" if notes else str(n)


def results_table(points: Sequence[Point], keys: Sequence[str], columns: Sequence[str], metric: str) -> list[str]:
    """One row per point: swept values, seeds, mean ± std of the headline columns (per-class metrics left out)."""
    shown = [c for c in columns if headline(c)]
    rows = [
        [
            *(p.settings.get(k, "") for k in keys),
            _seeds_cell(p),
            *(fmt_stats(*p.stats(c), always_std=c == metric) for c in shown),
        ]
        for p in points
    ]
    return table([*keys, "seeds", *shown], rows)


def pruned_table(pruned: Sequence[Run], sweep_dir: Path) -> list[str]:
    """The pruned jobs: directory, overrides, the epoch (0-based) the pruner stopped them after, their value then."""
    rows = [
        (f"`{link(r.dir, sweep_dir)}`", " ".join(r.overrides), r.record.get("pruned_epoch", NONE), fmt(value))
        for r in pruned
        for value in [r.record.get("value") if isinstance(r.record.get("value"), (int, float)) else None]
    ]
    return table(["job", "overrides", "pruned after epoch", "value then"], rows)


def failed_table(failed: Sequence[Run], sweep_dir: Path) -> list[str]:
    """The failed jobs: directory, overrides, error."""
    return table(
        ["job", "overrides", "error"], [(f"`{link(r.dir, sweep_dir)}`", " ".join(r.overrides), r.error) for r in failed]
    )


def _csv_number(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else repr(value)


def _csv_flag(value: bool | None) -> str:
    return "" if value is None else str(value)


def sweep_csv_header(keys: Sequence[str], columns: Sequence[str], compared: bool) -> list[str]:
    """The header of ``report.csv``: the swept keys, ``seeds``, ``seed_list``, ``failed``, ``pruned``, per column
    ``<c>_mean, <c>_std, <c>_ci95_low, <c>_ci95_high`` and, against a baseline, ``<c>_diff, <c>_diff_ci95_low,
    <c>_diff_ci95_high, <c>_p, <c>_resolved`` (with ``baseline`` and ``paired_seeds`` before them), then
    ``overrides``."""
    suffixes = ["mean", "std", "ci95_low", "ci95_high"]
    if compared:
        suffixes += ["diff", "diff_ci95_low", "diff_ci95_high", "p", "resolved"]
    extra = ["baseline", "paired_seeds"] if compared else []
    stats = [f"{c}_{s}" for c in columns for s in suffixes]
    return [*keys, "seeds", "seed_list", "failed", "pruned", *extra, *stats, "overrides"]


def write_sweep_csv(
    points: Sequence[Point], keys: Sequence[str], columns: Sequence[str], path: Path, baseline: Point | None = None
) -> None:
    """``report.csv`` (header: :func:`sweep_csv_header`), one row per point, full precision; an undefined number
    (one seed, no seed in common with the baseline) is an empty cell, and so are the baseline's own difference
    columns. ``<c>_resolved`` is ``True`` when the 95 % interval of the difference excludes 0."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(sweep_csv_header(keys, columns, baseline is not None))
        for point in points:
            cells: list[str] = []
            if baseline is not None:
                own = point is baseline
                cells += ["True" if own else "", "" if own else len(paired_seeds(point, baseline))]
            for c in columns:
                s = point.summary(c)
                cells += [_csv_number(x) for x in (s.mean, s.std, s.low, s.high)]
                if baseline is not None and point is baseline:
                    cells += [""] * 5
                elif baseline is not None:
                    d = paired(seed_values(point, c), seed_values(baseline, c))
                    cells += [*(_csv_number(x) for x in (d.diff, d.low, d.high, d.p)), _csv_flag(d.resolved)]
            seeds = ";".join("" if s is None else str(s) for s in point.seeds)
            writer.writerow(
                [
                    *(point.settings.get(k, "") for k in keys),
                    len(point.runs),
                    seeds,
                    point.failed,
                    point.pruned,
                    *cells,
                    " ".join(point.overrides),
                ]
            )


# --------------------------------------------------------------------------------- intervals and baseline


def fmt_interval(low: float, high: float) -> str:
    """``[low, high]`` with 4 significant digits; ``n/a`` when undefined."""
    return NA if math.isnan(low) or math.isnan(high) else f"[{fmt(low)}, {fmt(high)}]"


def interval_table(points: Sequence[Point], keys: Sequence[str], columns: Sequence[str]) -> list[str]:
    """One row per point: swept values, seeds, the 95 % interval of the mean of each headline column (``n/a``
    below two seeds)."""
    shown = [c for c in columns if headline(c)]
    rows = [
        [
            *(p.settings.get(k, "") for k in keys),
            _seeds_cell(p),
            *(fmt_interval(s.low, s.high) for s in (p.summary(c) for c in shown)),
        ]
        for p in points
    ]
    return table([*keys, "seeds", *shown], rows)


def compared_columns(columns: Sequence[str]) -> list[str]:
    """The columns compared in ``report.md``: headline validation metrics (not losses) and ``seconds``."""
    return [c for c in columns if (c.startswith("val/") and headline(c) and not is_loss(c)) or c == "seconds"]


def _flag(value: bool | None) -> str:
    return NA if value is None else ("yes" if value else "no")


def baseline_table(
    points: Sequence[Point], baseline: Point, columns: Sequence[str], keys: Sequence[str] = ()
) -> list[str]:
    """One row per point other than the baseline and compared column (:func:`compared_columns`): paired seeds,
    the mean difference point − baseline, its 95 % interval, the paired t-test's p and whether it is resolved."""
    rows = []
    for point in points:
        if point is baseline:
            continue
        for c in compared_columns(columns):
            d = paired(seed_values(point, c), seed_values(baseline, c))
            p_value, diff = (NA if math.isnan(x) else fmt(x) for x in (d.p, d.diff))
            label = point_label(point, keys)
            rows.append([label, d.n, c, diff, fmt_interval(d.low, d.high), p_value, _flag(d.resolved)])
    return table(["point", "paired seeds", "column", "difference", "95 % CI", "p", "resolved"], rows)


def baseline_notes(points: Sequence[Point], baseline: Point, keys: Sequence[str] = ()) -> list[str]:
    """Markdown list items for what limits the comparison: points with fewer than 3 paired seeds (2: wide
    interval; 1: none; 0: no difference at all) and seeds that several runs of one point share."""
    notes = []
    for point in points:
        dupes = duplicate_seeds(point)
        if dupes:
            notes.append(f"- `{point_label(point, keys)}`: seed(s) {_seeds(dupes)} in several runs; the first is used.")
        if point is baseline:
            continue
        common = paired_seeds(point, baseline)
        label = f"`{point_label(point, keys)}`"
        if not common:
            mine = sorted({int(r.seed) for r in point.ok_runs if r.seed is not None})
            theirs = sorted({int(r.seed) for r in baseline.ok_runs if r.seed is not None})
            notes.append(
                f"- {label}: no seed in common with the baseline (its seeds: {_seeds(mine) or 'none'}; the "
                f"baseline's: {_seeds(theirs) or 'none'}): no difference."
            )
        elif len(common) == 1:
            notes.append(f"- {label}: 1 paired seed ({common[0]}): a difference, but no interval or p-value ({NA}).")
        elif len(common) < 3:
            notes.append(
                f"- {label}: {len(common)} paired seeds ({_seeds(common)}): the interval has "
                f"{len(common) - 1} degree(s) of freedom and is wide; 3 or more seeds resolve smaller differences."
            )
    return notes


def _seeds(seeds: Sequence[int]) -> str:
    return ", ".join(str(s) for s in seeds)
