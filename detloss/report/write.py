"""``report.md`` of a run or of a sweep, put together from the tables and plots, and :func:`report`, which tells
a run directory from a sweep directory. Errors are exceptions here; only the CLI turns them into an exit."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from detloss.report.aggregate import Point, group_points, sort_points, sweep_metric, swept_keys, value_columns
from detloss.report.correlation import (
    CSV_NAME,
    correlation_section,
    point_correlations,
    run_correlations,
    write_correlation_csv,
)
from detloss.report.load import Run, find_runs, last_values, load_run, read_series
from detloss.report.plots import run_plots, sweep_plots
from detloss.report.stats import find_baseline, point_label
from detloss.report.study import load_studies, study_section
from detloss.report.tables import (
    NONE,
    baseline_notes,
    baseline_table,
    failed_table,
    fmt,
    interval_table,
    link,
    loss_table,
    metrics_table,
    pruned_table,
    results_table,
    run_summary,
    write_sweep_csv,
)


def write_run_report(run: Run, out: Path, title: str | None = None) -> Path:
    """``report.md`` and the curve plots of one run into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    series = read_series(run.dir / "csv" / "metrics.csv")
    values = run.final_values() or last_values(series)
    lines = [f"# {title or 'Run report'}: `{run.dir.name}`", ""]
    lines += run_summary(run)
    lines += ["", "## Final metrics", ""]
    lines += metrics_table(values, run.metric, run.mode) or ["No validation metrics."]
    lines += ["", "## Loss terms (weighted values)", ""]
    lines += loss_table(values) or ["No loss values."]
    plots = run_plots(series, out, run.metric)
    lines += ["", "## Plots", ""]
    if not plots:
        lines.append(f"No curves: `{run.dir / 'csv' / 'metrics.csv'}` is missing or empty.")
    for caption, path in plots.items():
        lines += [f"### {caption}", "", f"![{caption}]({link(path, out)})", ""]
    correlations = run_correlations(run, series)
    if correlations:
        write_correlation_csv(correlations, out / CSV_NAME)
    lines += ["", *correlation_section(correlations, [], label_runs=False)]
    report_path = out / "report.md"
    report_path.write_text("\n".join(lines).rstrip() + "\n")
    return report_path


def write_sweep_report(runs: Sequence[Run], sweep_dir: Path, out: Path, baseline: Sequence[str] | None = None) -> Path:
    """``report.md``, ``report.csv``, ``loss_metric_correlation.csv``, the sweep plots, the Optuna study's history
    and ``best_run/`` of a sweep into ``out``; with ``baseline`` (overrides naming a point, see
    :func:`~detloss.report.stats.find_baseline`) the paired differences of every point to it. A ``baseline`` that
    names no point or several raises ``ValueError`` before anything is written."""
    metric, mode = sweep_metric(runs)
    points = sort_points(group_points(runs), metric, mode)
    base = find_baseline(points, baseline) if baseline is not None else None
    out.mkdir(parents=True, exist_ok=True)
    keys = swept_keys(points)
    columns = value_columns(points, metric)
    write_sweep_csv(points, keys, columns, out / "report.csv", base)
    failed = [r for r in runs if not r.ok and not r.pruned]
    pruned = [r for r in runs if r.pruned]
    lines = [
        f"# Sweep report: `{sweep_dir.name}`",
        "",
        f"`{sweep_dir}`: {len(runs)} jobs, {len(points)} sweep points, {len(failed)} failed"
        + (f", {len(pruned)} pruned" if pruned else "")
        + f". Optimised metric: `{metric}` ({mode}imised; best first).",
        "",
        "## Results",
        "",
    ]
    lines += results_table(points, keys, columns, metric)
    lines += [
        "",
        f"Mean ± sample std (ddof=1) over seeds; {NONE}: missing, or a single seed. Full precision, "
        "the std and interval of every column and per-class metrics: [report.csv](report.csv).",
        "",
        "### 95 % confidence intervals of the means",
        "",
    ]
    lines += interval_table(points, keys, columns)
    lines += ["", "Student t over seeds (`scipy.stats.ttest_1samp(...).confidence_interval()`); n/a below 2 seeds."]
    if base is not None:
        lines += ["", *_baseline_section(points, base, columns, keys)]
    plots = sweep_plots(points, keys, metric, out)
    if plots:
        lines += ["", "## Plots"]
        for caption, path in plots.items():
            lines += ["", f"![{caption}]({link(path, out)})"]
    epochs = [c for r in runs if r.ok for c in run_correlations(r, subject=link(r.dir, sweep_dir))]
    across = point_correlations(points, metric) if len(points) > 1 else []
    if epochs or across:
        write_correlation_csv([*epochs, *across], out / CSV_NAME)
    lines += ["", *correlation_section(epochs, across, label_runs=True, keys=keys)]
    lines += ["", *study_section(*load_studies(sweep_dir), out)]
    lines += _best_run_section(points, metric, mode, sweep_dir, out)
    if pruned:
        lines += ["", "## Pruned trials", ""]
        lines += pruned_table(pruned, sweep_dir)
    if failed:
        lines += ["", "## Failed jobs", ""]
        lines += failed_table(failed, sweep_dir)
    report_path = out / "report.md"
    report_path.write_text("\n".join(lines).rstrip() + "\n")
    return report_path


def _baseline_section(points: Sequence[Point], base: Point, columns: Sequence[str], keys: Sequence[str]) -> list[str]:
    """``## Against the baseline``: the paired differences of the headline metrics, and the notes."""
    seeds = ", ".join(str(r.seed) for r in base.ok_runs if r.seed is not None) or "none"
    lines = [
        "## Against the baseline",
        "",
        f"Baseline `{point_label(base, keys)}` (seeds {seeds}). Difference: point − baseline, paired by seed (only the "
        "seeds both have), mean over the pairs; its 95 % interval (Student t) and p-value from the paired t-test "
        "(`scipy.stats.ttest_rel`); resolved: the interval excludes 0. n/a: fewer than 2 paired seeds. Loss terms "
        "and per-class metrics: the `_diff`, `_p` and `_resolved` columns of [report.csv](report.csv).",
        "",
    ]
    lines += baseline_table(points, base, columns, keys)
    notes = baseline_notes(points, base, keys)
    return lines + (["", *notes] if notes else [])


def _best_run_section(points: Sequence[Point], metric: str, mode: str, sweep_dir: Path, out: Path) -> list[str]:
    """The best seed of the best point: its report in ``out/best_run``."""
    best = next((b for b in (p.best_run(metric, mode) for p in points) if b is not None), None)
    if best is None:
        return ["", "## Best run", "", "No job finished."]
    best_report = write_run_report(best, out / "best_run", title="Best run of the sweep")
    value = fmt(best.final_values().get(metric))
    return [
        "",
        "## Best run",
        "",
        f"`{link(best.dir, sweep_dir)}` (seed {best.seed}, `{metric}` = {value}): [report]({link(best_report, out)})",
    ]


def report(path: Path | str, out: Path | str | None = None, baseline: Sequence[str] | None = None) -> Path:
    """Write the report of the run or sweep in ``path``; return the path of its ``report.md``. ``baseline``: the
    overrides (``["loss=yolo"]``) naming the sweep point the others are compared with, paired by seed.

    Raises ``FileNotFoundError`` when ``path`` does not exist, ``ValueError`` when it is not a directory or holds
    no run (no ``metrics.json`` in it, in a subdirectory or in a subdirectory's subdirectory), or when
    ``baseline`` is given for a single run or names no sweep point or several.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory (expected a run directory with metrics.json or a sweep directory)")
    out = Path(out) if out is not None else path / "report"
    if (path / "metrics.json").is_file():
        if baseline is not None:
            raise ValueError(f"--baseline compares the points of a sweep; {path} is one run (it holds metrics.json)")
        return write_run_report(load_run(path), out)
    runs = find_runs(path, skip=[out])
    if not runs:
        raise ValueError(f"no run in {path} (no metrics.json in it or in its job subdirectories)")
    return write_sweep_report(runs, path, out, baseline)
