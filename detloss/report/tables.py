"""Numbers as text, and the tables of a report: Markdown lines for ``report.md``, the full-precision
``report.csv`` of a sweep."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detloss.report.aggregate import Point, headline, is_loss
from detloss.report.load import Run

NONE = "—"
"""What a missing value reads as."""


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
    """The run's record as a Markdown list: directory, status, metric, seed, overrides, time, error."""
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
        ("error", f"`{run.error}`" if not run.ok else None),
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
    return f"{n} (failed: {point.failed}/{n})" if point.failed else str(n)


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


def failed_table(failed: Sequence[Run], sweep_dir: Path) -> list[str]:
    """The failed jobs: directory, overrides, error."""
    return table(
        ["job", "overrides", "error"], [(f"`{link(r.dir, sweep_dir)}`", " ".join(r.overrides), r.error) for r in failed]
    )


def _csv_number(value: float | None) -> str:
    return "" if value is None else repr(value)


def write_sweep_csv(points: Sequence[Point], keys: Sequence[str], columns: Sequence[str], path: Path) -> None:
    """``report.csv``: per point the swept values, seeds, failures, full-precision mean and std of every column."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                *keys,
                "seeds",
                "seed_list",
                "failed",
                *(f"{c}_{s}" for c in columns for s in ("mean", "std")),
                "overrides",
            ]
        )
        for point in points:
            stats = [_csv_number(x) for c in columns for x in point.stats(c)]
            seeds = ";".join("" if s is None else str(s) for s in point.seeds)
            writer.writerow(
                [
                    *(point.settings.get(k, "") for k in keys),
                    len(point.runs),
                    seeds,
                    point.failed,
                    *stats,
                    " ".join(point.overrides),
                ]
            )
