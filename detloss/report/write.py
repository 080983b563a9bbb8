"""``report.md`` of a run or of a sweep, put together from the tables and plots, and :func:`report`, which tells
a run directory from a sweep directory. Errors are exceptions here; only the CLI turns them into an exit."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from detloss.report.aggregate import Point, group_points, sort_points, sweep_metric, swept_keys, value_columns
from detloss.report.load import Run, find_runs, last_values, load_run, read_series
from detloss.report.plots import run_plots, sweep_plots
from detloss.report.tables import (
    NONE,
    failed_table,
    fmt,
    link,
    loss_table,
    metrics_table,
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
    report_path = out / "report.md"
    report_path.write_text("\n".join(lines).rstrip() + "\n")
    return report_path


def write_sweep_report(runs: Sequence[Run], sweep_dir: Path, out: Path) -> Path:
    """``report.md``, ``report.csv``, the sweep plots and ``best_run/`` of a sweep into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    metric, mode = sweep_metric(runs)
    points = sort_points(group_points(runs), metric, mode)
    keys = swept_keys(points)
    columns = value_columns(points, metric)
    write_sweep_csv(points, keys, columns, out / "report.csv")
    failed = [r for r in runs if not r.ok]
    lines = [
        f"# Sweep report: `{sweep_dir.name}`",
        "",
        f"`{sweep_dir}`: {len(runs)} jobs, {len(points)} sweep points, {len(failed)} failed. "
        f"Optimised metric: `{metric}` ({mode}imised; best first).",
        "",
        "## Results",
        "",
    ]
    lines += results_table(points, keys, columns, metric)
    lines += [
        "",
        f"Mean ± sample std (ddof=1) over seeds; {NONE}: missing, or a single seed. Full precision, "
        "the std of every column and per-class metrics: [report.csv](report.csv).",
    ]
    plots = sweep_plots(points, keys, metric, out)
    if plots:
        lines += ["", "## Plots"]
        for caption, path in plots.items():
            lines += ["", f"![{caption}]({link(path, out)})"]
    lines += _best_run_section(points, metric, mode, sweep_dir, out)
    if failed:
        lines += ["", "## Failed jobs", ""]
        lines += failed_table(failed, sweep_dir)
    report_path = out / "report.md"
    report_path.write_text("\n".join(lines).rstrip() + "\n")
    return report_path


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


def report(path: Path | str, out: Path | str | None = None) -> Path:
    """Write the report of the run or sweep in ``path``; return the path of its ``report.md``.

    Raises ``FileNotFoundError`` when ``path`` does not exist, ``ValueError`` when it is not a directory or holds
    no run (no ``metrics.json`` in it, in a subdirectory or in a subdirectory's subdirectory).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory (expected a run directory with metrics.json or a sweep directory)")
    out = Path(out) if out is not None else path / "report"
    if (path / "metrics.json").is_file():
        return write_run_report(load_run(path), out)
    runs = find_runs(path, skip=[out])
    if not runs:
        raise ValueError(f"no run in {path} (no metrics.json in it or in its job subdirectories)")
    return write_sweep_report(runs, path, out)
