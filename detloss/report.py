"""``detloss-report PATH [--out DIR]``: tables and plots of one training run or of a Hydra sweep.

PATH is either a *run directory* (it holds ``metrics.json``) or a *sweep directory* (a Hydra multirun directory
whose job subdirectories ``0/``, ``1/``, ... are run directories; any depth-1 or depth-2 subdirectory holding a
``metrics.json`` counts, ``report/`` is skipped). The report goes to ``PATH/report/`` unless ``--out`` says where.

Inputs, as ``detloss-train`` writes them into a run directory:

``metrics.json``
    ``{"status": "ok" | "failed", "task", "optimized_metric": "val/map_50", "mode": "max" | "min",
    "value": float | null, "overrides": [Hydra command-line overrides], "seed", "metrics": {"val/...": float},
    "train": {"train/loss...": float}, "epochs", "steps", "seconds" (wall time), "best_checkpoint",
    "error" (failed runs only)}``. Only ``status`` is relied on; older records without ``overrides`` / ``seed``
    fall back to ``.hydra/overrides.yaml`` (a YAML list of strings) and the top-level ``seed`` of ``config.yaml``;
    ``mode`` defaults to ``max``. A numbered job directory without ``metrics.json`` counts as a failed job.
``csv/metrics.csv``
    Lightning's CSVLogger file: columns ``epoch``, ``step`` and one per logged key, rows sparse (a row holds
    only the keys logged at that step). Keys read: ``train/loss``, ``train/loss/<term>`` (per step),
    ``val/loss``, ``val/loss/<term>``, ``val/<metric>`` (per validation epoch), ``train/weight/<term>``,
    ``diag/grad_norm/<term>``, ``diag/grad_share/<term>``, ``diag/grad_cos/<a>__<b>``. Any may be absent.

Outputs. A sweep: ``report.md`` and ``report.csv`` with one row per sweep point (a job's overrides without
``seed=``; the jobs of one point differ only in seed and are aggregated as mean and sample std over seeds),
sorted by the optimised metric, plus ``sweep_<key>.png`` per swept key (metric against the value, lines for
numeric keys, bars for categorical ones) and the best run's report in ``best_run/``. A run: ``report.md`` with
the final numbers and ``loss_terms.png``, ``loss_share.png``, ``metrics.png``, ``weights.png``,
``grad_norm.png``, ``grad_share.png``, ``grad_cos.png`` where their data exists.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["Run", "Point", "load_run", "find_runs", "group_points", "read_series", "write_run_report",
           "write_sweep_report", "report", "main"]

Series = dict[str, tuple[list[float], list[float]]]
STEP = "optimizer step"
NONE = "—"


# ------------------------------------------------------------------------------------------------- loading


@dataclass
class Run:
    """One training job: its directory, its ``metrics.json`` record, overrides and seed."""

    dir: Path
    record: dict[str, Any]
    overrides: list[str] = field(default_factory=list)
    seed: int | None = None

    @property
    def ok(self) -> bool:
        return self.record.get("status") == "ok"

    @property
    def error(self) -> str:
        return str(self.record.get("error") or self.record.get("status") or "unknown error")

    @property
    def metric(self) -> str | None:
        return self.record.get("optimized_metric")

    @property
    def mode(self) -> str:
        return self.record.get("mode") or "max"

    def final_values(self) -> dict[str, float]:
        """The final validation metrics, train loss terms, ``seconds`` and the optimised metric, as floats."""
        values: dict[str, float] = {}
        for key, value in {**(self.record.get("metrics") or {}), **(self.record.get("train") or {})}.items():
            add_number(values, key, value)
        add_number(values, "seconds", self.record.get("seconds"))
        if self.metric and self.record.get("value") is not None:
            add_number(values, self.metric, self.record["value"])
        return values


def add_number(values: dict[str, float], key: str, value: Any) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        values[key] = float(value)


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return None


def load_run(run_dir: Path) -> Run:
    """The run in ``run_dir``; a directory without ``metrics.json`` is a failed run."""
    path = run_dir / "metrics.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        record = {"status": "failed", "error": "no metrics.json (job still running or crashed)"}
    except (OSError, json.JSONDecodeError) as err:
        record = {"status": "failed", "error": f"unreadable metrics.json: {err}"}
    if not isinstance(record, dict):
        record = {"status": "failed", "error": "metrics.json is not a JSON object"}
    overrides = record.get("overrides")
    if overrides is None:
        overrides = read_yaml(run_dir / ".hydra" / "overrides.yaml") or []
    seed = record.get("seed")
    if seed is None:
        config = read_yaml(run_dir / "config.yaml")
        seed = config.get("seed") if isinstance(config, dict) else None
    if seed is None:
        seed = next((int(v) for k, v in map(split_override, overrides) if k == "seed" and v.lstrip("-").isdigit()),
                     None)
    return Run(run_dir, record, [str(o) for o in overrides], seed)


def natural_key(path: Path) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts)


def find_runs(sweep_dir: Path, skip: Sequence[Path] = ()) -> list[Run]:
    """The runs of a sweep: subdirectories (depth 1 or 2) with ``metrics.json``, and numbered job directories."""
    skipped = {p.resolve() for p in skip} | {(sweep_dir / "report").resolve()}
    found: set[Path] = set()
    for child in sweep_dir.iterdir():
        if not child.is_dir() or child.resolve() in skipped:
            continue
        if (child / "metrics.json").is_file() or (child.name.isdigit() and (child / ".hydra").is_dir()):
            found.add(child)
            continue
        found.update(g for g in child.iterdir() if g.is_dir() and (g / "metrics.json").is_file()
                     and g.resolve() not in skipped)
    return [load_run(d) for d in sorted(found, key=lambda d: natural_key(d.relative_to(sweep_dir)))]


# ------------------------------------------------------------------------------------------------ sweeping


def split_override(override: str) -> tuple[str, str]:
    """``"+loss.terms.box.weight=2.5"`` -> ``("loss.terms.box.weight", "2.5")``."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


@dataclass
class Point:
    """The jobs of one sweep point: same overrides apart from the seed."""

    overrides: tuple[str, ...]
    runs: list[Run]

    @property
    def settings(self) -> dict[str, str]:
        return dict(split_override(o) for o in self.overrides)

    @property
    def ok_runs(self) -> list[Run]:
        return [r for r in self.runs if r.ok]

    @property
    def failed(self) -> int:
        return len(self.runs) - len(self.ok_runs)

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.runs]

    def stats(self, key: str) -> tuple[float | None, float | None]:
        """Mean and sample std (ddof=1; ``None`` below two values) of ``key`` over the successful seeds."""
        values = [v[key] for v in (r.final_values() for r in self.ok_runs) if key in v]
        if not values:
            return None, None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None

    def best_run(self, metric: str, mode: str) -> Run | None:
        scored = [(r.final_values().get(metric), r) for r in self.ok_runs]
        scored = [(v, r) for v, r in scored if v is not None]
        if not scored:
            return self.ok_runs[0] if self.ok_runs else None
        return (max if mode == "max" else min)(scored, key=lambda vr: vr[0])[1]


def point_key(run: Run) -> tuple[str, ...]:
    return tuple(sorted(o for o in run.overrides if split_override(o)[0] not in ("seed", "") and
                        not split_override(o)[0].startswith("hydra.")))


def group_points(runs: Sequence[Run]) -> list[Point]:
    """Runs grouped by their overrides without ``seed=``, in order of first appearance."""
    points: dict[tuple[str, ...], Point] = {}
    for run in runs:
        points.setdefault(point_key(run), Point(point_key(run), [])).runs.append(run)
    return list(points.values())


def swept_keys(points: Sequence[Point]) -> list[str]:
    """The override keys whose value differs between points, in the order they first appear."""
    keys: list[str] = []
    for point in points:
        keys += [k for k in point.settings if k not in keys]
    return [k for k in keys if len({p.settings.get(k, "") for p in points}) > 1]


def sort_points(points: Sequence[Point], metric: str, mode: str) -> list[Point]:
    """Best point first by the optimised metric's mean; points without a value (all jobs failed) last."""
    sign = -1.0 if mode == "max" else 1.0

    def key(point: Point) -> tuple[int, float]:
        mean, _ = point.stats(metric)
        return (1, 0.0) if mean is None else (0, sign * mean)

    return sorted(points, key=key)


def value_columns(points: Sequence[Point], metric: str) -> list[str]:
    """Optimised metric, other ``val/`` metrics, ``train/loss*``, ``val/loss*``, ``seconds``: those present."""
    present: set[str] = set()
    for point in points:
        for run in point.ok_runs:
            present.update(run.final_values())
    others = sorted(k for k in present if k.startswith("val/") and not is_loss(k) and k != metric)
    train = sorted(k for k in present if k == "train/loss" or k.startswith("train/loss/"))
    val = sorted(k for k in present if is_loss(k))
    return [k for k in [metric, *others, *train, *val, "seconds"] if k in present]


def is_loss(key: str) -> bool:
    return key == "val/loss" or key.startswith("val/loss/")


def headline(key: str) -> bool:
    """Whether a column goes into the Markdown table (per-class metrics such as ``val/map/<class>`` do not)."""
    return not key.startswith("val/") or is_loss(key) or key.count("/") == 1


# ---------------------------------------------------------------------------------------------- formatting


def fmt(value: float | None) -> str:
    """4 significant digits; ``—`` for a missing value."""
    return NONE if value is None or not math.isfinite(value) else f"{value:.4g}"


def fmt_stats(mean: float | None, std: float | None, always_std: bool = False) -> str:
    if mean is None:
        return NONE
    if std is None:
        return f"{fmt(mean)} ± {NONE}" if always_std else fmt(mean)
    return f"{fmt(mean)} ± {fmt(std)}"


def cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]


def seeds_cell(point: Point) -> str:
    n = len(point.runs)
    return f"{n} (failed: {point.failed}/{n})" if point.failed else str(n)


def csv_number(value: float | None) -> str:
    return "" if value is None else repr(value)


# ----------------------------------------------------------------------------------------------- CSV log


def read_series(csv_path: Path) -> Series:
    """Each logged key of a Lightning ``metrics.csv`` as ``(steps, values)``, skipping empty cells."""
    series: Series = {}
    if not csv_path.is_file():
        return series
    with csv_path.open(newline="") as f:
        for index, row in enumerate(csv.DictReader(f)):
            step = to_float(row.get("step"))
            step = float(index) if step is None else step
            for key, text in row.items():
                value = to_float(text) if isinstance(text, str) else None
                if key in (None, "epoch", "step") or value is None:
                    continue
                steps, values = series.setdefault(key, ([], []))
                steps.append(step)
                values.append(value)
    return series


def to_float(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def with_prefix(series: Series, prefix: str) -> dict[str, tuple[list[float], list[float]]]:
    """The series under ``prefix`` keyed by the rest of their name, sorted."""
    return {k[len(prefix):]: series[k] for k in sorted(series) if k.startswith(prefix) and len(k) > len(prefix)}


def ema(values: Sequence[float], fraction: float = 0.05) -> list[float]:
    """Bias-corrected exponential moving average over a span of ``fraction`` of the points."""
    span = max(1, round(len(values) * fraction))
    if span <= 1:
        return list(values)
    alpha, smoothed, weight, out = 2.0 / (span + 1), 0.0, 0.0, []
    for value in values:
        smoothed = (1 - alpha) * smoothed + alpha * value
        weight = (1 - alpha) * weight + alpha
        out.append(smoothed / weight)
    return out


# ------------------------------------------------------------------------------------------------ plotting


def new_figure(rows: int = 1, cols: int = 1, width: float = 7.0, height: float = 4.0) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * cols if cols > 1 else width, height * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    return path


def plot_smoothed(ax, steps: list[float], values: list[float], label: str, color: str) -> None:
    """A light raw line and its EMA on top."""
    ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
    ax.plot(steps, ema(values), color=color, linewidth=1.6, label=label)


def plot_loss_terms(series: Series, path: Path) -> Path | None:
    """One subplot per loss term plus the total: train (raw and smoothed) and validation per epoch."""
    names = sorted(set(with_prefix(series, "train/loss/")) | set(with_prefix(series, "val/loss/")))
    panels = [(f"{n}", f"train/loss/{n}", f"val/loss/{n}", "loss (weighted term value)") for n in names]
    if "train/loss" in series or "val/loss" in series:
        panels.append(("total", "train/loss", "val/loss", "loss (sum of weighted terms)"))
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = new_figure(rows, cols, width=5.0, height=3.5)
    for ax, (title, train_key, val_key, ylabel) in zip(axes, panels):
        if train_key in series:
            plot_smoothed(ax, *series[train_key], "train (EMA)", "C0")
        if val_key in series:
            ax.plot(*series[val_key], "o-", color="C3", markersize=4, label="validation")
        ax.set(title=title, xlabel=STEP, ylabel=ylabel)
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("Loss terms: train (light: raw, dark: smoothed) and validation")
    return save(fig, path)


def aligned(curves: dict[str, tuple[list[float], list[float]]]) -> tuple[list[float], dict[str, list[float]]]:
    """The steps at which every curve has a value, and each curve's values at those steps."""
    maps = {name: dict(zip(*curve)) for name, curve in curves.items()}
    steps = sorted(set.intersection(*(set(m) for m in maps.values()))) if maps else []
    return steps, {name: [m[s] for s in steps] for name, m in maps.items()}


def plot_stacked_share(curves: dict[str, tuple[list[float], list[float]]], path: Path, title: str,
                       ylabel: str, smooth: bool) -> Path | None:
    """Each curve's share of their sum at each step, stacked to 100 %."""
    steps, values = aligned(curves)
    if len(curves) < 2 or len(steps) < 2:
        return None
    if smooth:
        values = {k: ema(v) for k, v in values.items()}
    totals = [sum(max(0.0, values[k][i]) for k in values) for i in range(len(steps))]
    shares = [[100.0 * max(0.0, v[i]) / t if t > 0 else 0.0 for i, t in enumerate(totals)] for v in values.values()]
    fig, (ax,) = new_figure(width=8.0, height=4.5)
    ax.stackplot(steps, *shares, labels=list(values), alpha=0.85)
    ax.set(title=title, xlabel=STEP, ylabel=ylabel, ylim=(0, 100), xlim=(steps[0], steps[-1]))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    return save(fig, path)


def plot_metrics(series: Series, path: Path, metric: str | None) -> Path | None:
    """Validation metrics per epoch; per-class metrics (``val/<m>/<class>``) in a second panel."""
    curves = {k: v for k, v in series.items() if k.startswith("val/") and not is_loss(k)
              and any(x != -1.0 for x in v[1])}
    groups = [{k: v for k, v in curves.items() if headline(k)}, {k: v for k, v in curves.items() if not headline(k)}]
    groups = [g for g in groups if g]
    if not groups:
        return None
    fig, axes = new_figure(len(groups), 1, width=8.0, height=4.0)
    for ax, group, title in zip(axes, groups, ["Validation metrics", "Validation metrics per class"]):
        for i, (key, (steps, values)) in enumerate(sorted(group.items())):
            bold = key == metric
            ax.plot(steps, values, "o-", color=f"C{i % 10}", markersize=3, linewidth=2.5 if bold else 1.2,
                    label=f"{key} (optimised)" if bold else key)
        ax.set(title=title, xlabel=STEP, ylabel="metric value")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
        ax.grid(alpha=0.3)
    return save(fig, path)


def plot_lines(curves: dict[str, tuple[list[float], list[float]]], path: Path, title: str, ylabel: str,
               smooth: bool = True, zero_line: bool = False, log_y: bool = False) -> Path | None:
    """One line per curve over steps (raw and smoothed when ``smooth``)."""
    if not curves:
        return None
    fig, (ax,) = new_figure(width=8.0, height=4.5)
    for i, (name, (steps, values)) in enumerate(curves.items()):
        if smooth:
            plot_smoothed(ax, steps, values, name, f"C{i % 10}")
        else:
            ax.plot(steps, values, color=f"C{i % 10}", linewidth=1.6, label=name)
    if zero_line:
        ax.axhline(0.0, color="black", linewidth=0.8, linestyle="--")
    if log_y and all(v > 0 for _, values in curves.values() for v in values):
        ax.set_yscale("log")
    ax.set(title=title, xlabel=STEP, ylabel=ylabel)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.grid(alpha=0.3)
    return save(fig, path)


def run_plots(series: Series, out: Path, metric: str | None) -> dict[str, Path]:
    """Every single-run plot whose data exists, by a short description."""
    cos = {k.replace("__", " vs "): v for k, v in with_prefix(series, "diag/grad_cos/").items()}
    plots = {
        "Loss terms over training (train and validation)": plot_loss_terms(series, out / "loss_terms.png"),
        "Share of each term in the summed train loss": plot_stacked_share(
            with_prefix(series, "train/loss/"), out / "loss_share.png",
            "Share of each loss term in the summed train loss (smoothed)", "share of train loss (%)", smooth=True),
        "Validation metrics": plot_metrics(series, out / "metrics.png", metric),
        "Loss term weights": plot_lines(with_prefix(series, "train/weight/"), out / "weights.png",
                                        "Loss term weights", "term weight", smooth=False),
        "Gradient norm of each term": plot_lines(
            with_prefix(series, "diag/grad_norm/"), out / "grad_norm.png",
            "Gradient norm of each loss term (light: raw, dark: smoothed)", "gradient L2 norm", log_y=True),
        "Share of each term in the gradient": plot_stacked_share(
            with_prefix(series, "diag/grad_share/"), out / "grad_share.png",
            "Share of each loss term in the gradient norm (smoothed)", "share of gradient (%)", smooth=True),
        "Cosine between term gradients": plot_lines(
            cos, out / "grad_cos.png", "Cosine similarity between loss term gradients (below 0: conflict)",
            "cosine similarity", zero_line=True),
    }
    return {title: path for title, path in plots.items() if path is not None}


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "key"


def numeric(values: Sequence[str]) -> bool:
    return all(to_float(v) is not None for v in values)


def value_order(values: Sequence[str]) -> tuple:
    """Sort key of override values: numbers by value (``2`` before ``10``), before text."""
    return tuple((0, number, "") if (number := to_float(v)) is not None else (1, 0.0, v) for v in values)


def by_others(points: Sequence[Point], key: str, keys: Sequence[str]) -> list[tuple[str, list[Point]]]:
    """Points grouped by the values of the swept keys other than ``key``, labelled ``k=v, ...``, in value order."""
    others = [k for k in keys if k != key]
    groups: dict[tuple[str, ...], list[Point]] = {}
    for point in points:
        groups.setdefault(tuple(point.settings.get(k, "") for k in others), []).append(point)
    return [(", ".join(f"{k}={v}" for k, v in zip(others, values)), groups[values])
            for values in sorted(groups, key=value_order)]


def plot_sweep_numeric(points: Sequence[Point], key: str, keys: Sequence[str], metric: str, path: Path) -> Path:
    """The metric against a numeric swept value, mean ± std over seeds, one line per other setting."""
    fig, (ax,) = new_figure(width=7.5, height=4.5)
    xs_all: list[float] = []
    groups = by_others(points, key, keys)
    for i, (label, group) in enumerate(groups):
        rows = sorted((float(p.settings[key]), *p.stats(metric)) for p in group)
        xs_all += [x for x, _, _ in rows]
        ax.errorbar([x for x, _, _ in rows], [m for _, m, _ in rows], yerr=[s or 0.0 for _, _, s in rows],
                    fmt="o-", capsize=3, color=f"C{i % 10}", label=label or None)
    if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 100:
        ax.set_xscale("log")
    ax.set(title=f"{metric} against {key}", xlabel=key, ylabel=f"{metric} (mean ± std over seeds)")
    if len(groups) > 1:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return save(fig, path)


def plot_sweep_categorical(points: Sequence[Point], key: str, keys: Sequence[str], metric: str, path: Path) -> Path:
    """Bars of the metric per value of a categorical swept key, mean ± std over seeds, grouped by other settings."""
    categories = sorted({p.settings.get(key, "") for p in points}, key=lambda v: value_order([v]))
    groups = by_others(points, key, keys)
    width = 0.8 / len(groups)
    fig, (ax,) = new_figure(width=max(6.0, 1.2 * len(categories) * len(groups)), height=4.5)
    for i, (label, group) in enumerate(groups):
        stats = {p.settings.get(key, ""): p.stats(metric) for p in group}
        xs = [c + (i - (len(groups) - 1) / 2) * width for c in range(len(categories))]
        means = [stats.get(c, (None, None))[0] for c in categories]
        stds = [stats.get(c, (None, None))[1] or 0.0 for c in categories]
        ax.bar([x for x, m in zip(xs, means) if m is not None], [m for m in means if m is not None], width,
               yerr=[s for s, m in zip(stds, means) if m is not None], capsize=3, color=f"C{i % 10}",
               label=label or None)
    ax.set_xticks(range(len(categories)), [c or "(unset)" for c in categories])
    ax.set(title=f"{metric} per {key}", xlabel=key, ylabel=f"{metric} (mean ± std over seeds)")
    if len(groups) > 1:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3, axis="y")
    return save(fig, path)


def sweep_plots(points: Sequence[Point], keys: Sequence[str], metric: str, out: Path) -> dict[str, Path]:
    done = [p for p in points if p.stats(metric)[0] is not None]
    plots: dict[str, Path] = {}
    for key in keys:
        values = [p.settings.get(key, "") for p in done]
        if len(set(values)) < 2:
            continue
        path = out / f"sweep_{safe_name(key)}.png"
        plot = plot_sweep_numeric if numeric(values) else plot_sweep_categorical
        plots[f"{metric} against {key}"] = plot(done, key, keys, metric, path)
    return plots


# ------------------------------------------------------------------------------------------------- reports


def link(path: Path, start: Path) -> str:
    try:
        return path.relative_to(start).as_posix()
    except ValueError:
        return path.as_posix()


def write_run_report(run: Run, out: Path, title: str | None = None) -> Path:
    """``report.md`` and the curve plots of one run into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    series = read_series(run.dir / "csv" / "metrics.csv")
    values = run.final_values() or last_values(series)
    metric = run.metric
    lines = [f"# {title or 'Run report'}: `{run.dir.name}`", ""]
    lines += run_summary(run)
    lines += ["", "## Final metrics", ""]
    metrics = [(f"**{k}** (optimised, {run.mode})" if k == metric else k, fmt(v))
               for k, v in sorted(values.items()) if k.startswith("val/") and not is_loss(k)]
    lines += table(["metric", "value"], metrics) if metrics else ["No validation metrics."]
    lines += ["", "## Loss terms (weighted values)", ""]
    lines += loss_table(values) or ["No loss values."]
    plots = run_plots(series, out, metric)
    lines += ["", "## Plots", ""]
    if not plots:
        lines.append(f"No curves: `{run.dir / 'csv' / 'metrics.csv'}` is missing or empty.")
    for caption, path in plots.items():
        lines += [f"### {caption}", "", f"![{caption}]({link(path, out)})", ""]
    report_path = out / "report.md"
    report_path.write_text("\n".join(lines).rstrip() + "\n")
    return report_path


def run_summary(run: Run) -> list[str]:
    rec = run.record
    items = [("directory", f"`{run.dir}`"), ("status", rec.get("status", "?")), ("task", rec.get("task")),
             ("optimised metric", f"`{run.metric}` ({run.mode}) = {fmt(run.final_values().get(run.metric or ''))}"
              if run.metric else None),
             ("seed", run.seed), ("overrides", " ".join(f"`{o}`" for o in run.overrides) or None),
             ("epochs", rec.get("epochs")), ("steps", rec.get("steps")),
             ("wall time", f"{fmt(rec['seconds'])} s" if isinstance(rec.get("seconds"), (int, float)) else None),
             ("best checkpoint", f"`{rec['best_checkpoint']}`" if rec.get("best_checkpoint") else None),
             ("error", f"`{run.error}`" if not run.ok else None)]
    return [f"- {name}: {value}" for name, value in items if value is not None]


def last_values(series: Series) -> dict[str, float]:
    """The last logged value of each ``val/`` and ``train/loss`` key (when ``metrics.json`` has none)."""
    return {k: v[1][-1] for k, v in series.items() if (k.startswith("val/") or k.startswith("train/loss")) and v[1]}


def loss_table(values: dict[str, float]) -> list[str]:
    names = sorted({k.split("/", 2)[2] for k in values if k.startswith(("train/loss/", "val/loss/"))})
    rows = [(n, fmt(values.get(f"train/loss/{n}")), fmt(values.get(f"val/loss/{n}"))) for n in names]
    if "train/loss" in values or "val/loss" in values:
        rows.append(("**total**", fmt(values.get("train/loss")), fmt(values.get("val/loss"))))
    return table(["term", "train (last step)", "validation (last epoch)"], rows) if rows else []


def sweep_metric(runs: Sequence[Run]) -> tuple[str, str]:
    """The optimised metric and its mode, from the first record that names them."""
    metric = next((r.metric for r in runs if r.metric), None) or "value"
    mode = next((r.record["mode"] for r in runs if r.record.get("mode")), "max")
    return metric, mode


def write_sweep_csv(points: Sequence[Point], keys: Sequence[str], columns: Sequence[str], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*keys, "seeds", "seed_list", "failed", *(f"{c}_{s}" for c in columns for s in ("mean", "std")),
                         "overrides"])
        for point in points:
            stats = [csv_number(x) for c in columns for x in point.stats(c)]
            seeds = ";".join("" if s is None else str(s) for s in point.seeds)
            writer.writerow([*(point.settings.get(k, "") for k in keys), len(point.runs), seeds, point.failed,
                             *stats, " ".join(point.overrides)])


def write_sweep_report(runs: Sequence[Run], sweep_dir: Path, out: Path) -> Path:
    """``report.md``, ``report.csv``, the sweep plots and ``best_run/`` of a sweep into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    metric, mode = sweep_metric(runs)
    points = sort_points(group_points(runs), metric, mode)
    keys = swept_keys(points)
    columns = value_columns(points, metric)
    write_sweep_csv(points, keys, columns, out / "report.csv")
    failed = [r for r in runs if not r.ok]
    lines = [f"# Sweep report: `{sweep_dir.name}`", "",
             f"`{sweep_dir}`: {len(runs)} jobs, {len(points)} sweep points, {len(failed)} failed. "
             f"Optimised metric: `{metric}` ({mode}imised; best first).", "", "## Results", ""]
    shown = [c for c in columns if headline(c)]
    rows = [[*(p.settings.get(k, "") for k in keys), seeds_cell(p),
             *(fmt_stats(*p.stats(c), always_std=c == metric) for c in shown)] for p in points]
    lines += table([*keys, "seeds", *shown], rows)
    lines += ["", f"Mean ± sample std (ddof=1) over seeds; {NONE}: missing, or a single seed. Full precision, "
              "the std of every column and per-class metrics: [report.csv](report.csv)."]
    plots = sweep_plots(points, keys, metric, out)
    if plots:
        lines += ["", "## Plots"]
        for caption, path in plots.items():
            lines += ["", f"![{caption}]({link(path, out)})"]
    lines += best_run_section(points, metric, mode, sweep_dir, out)
    if failed:
        lines += ["", "## Failed jobs", ""]
        lines += table(["job", "overrides", "error"],
                       [(f"`{link(r.dir, sweep_dir)}`", " ".join(r.overrides), r.error) for r in failed])
    report_path = out / "report.md"
    report_path.write_text("\n".join(lines).rstrip() + "\n")
    return report_path


def best_run_section(points: Sequence[Point], metric: str, mode: str, sweep_dir: Path, out: Path) -> list[str]:
    """The best seed of the best point: its report in ``out/best_run``."""
    best = next((b for b in (p.best_run(metric, mode) for p in points) if b is not None), None)
    if best is None:
        return ["", "## Best run", "", "No job finished."]
    best_report = write_run_report(best, out / "best_run", title="Best run of the sweep")
    value = fmt(best.final_values().get(metric))
    return ["", "## Best run", "", f"`{link(best.dir, sweep_dir)}` (seed {best.seed}, `{metric}` = {value}): "
            f"[report]({link(best_report, out)})"]


def report(path: Path | str, out: Path | str | None = None) -> Path:
    """Write the report of the run or sweep in ``path``; return the path of its ``report.md``."""
    path = Path(path)
    if not path.is_dir():
        raise SystemExit(f"detloss-report: {path} does not exist or is not a directory")
    out = Path(out) if out is not None else path / "report"
    if (path / "metrics.json").is_file():
        return write_run_report(load_run(path), out)
    runs = find_runs(path, skip=[out])
    if not runs:
        raise SystemExit(f"detloss-report: no run in {path} (no metrics.json in it or in its job subdirectories)")
    return write_sweep_report(runs, path, out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="detloss-report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="a run directory (with metrics.json) or a Hydra sweep directory")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: PATH/report)")
    args = parser.parse_args(argv)
    print(report(args.path, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
