"""Does the loss track the metric? Spearman rank correlations (``scipy.stats.spearmanr``) between the validation
loss terms and the optimised metric:

* per run, over its validation epochs: each ``val/loss/<term>`` (and the total ``val/loss``) of the run's CSV log
  against the run's ``optimized_metric`` (e.g. ``val/map_50``, ``val/dice``), paired by the step they were logged
  at;
* per sweep, over its points: each final loss term's mean over seeds against the final metric's mean over seeds
  (from ``metrics.json``).

A loss that tracks a metric to be maximised has ρ near −1 (the loss falls as the metric rises); near +1 for a
metric to be minimised. ρ is undefined (NaN, written ``n/a``) with fewer than :data:`MIN_POINTS` pairs or a
constant column.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scipy import stats as sps

from detloss.report.aggregate import Point, is_loss
from detloss.report.load import Run, Series, read_series, split_override
from detloss.report.tables import NA, table

MIN_POINTS = 3
"""Fewest pairs a correlation is computed from (two points are always ranked ±1)."""

CSV_NAME = "loss_metric_correlation.csv"


@dataclass(frozen=True)
class Correlation:
    """ρ and its two-sided p-value between ``term`` and ``metric`` over ``n`` pairs; ``scope`` is ``"epochs"``
    (one run, ``subject`` its directory) or ``"points"`` (a sweep, ``subject`` ``"sweep"``)."""

    scope: str
    subject: str
    seed: int | None
    overrides: str
    term: str
    metric: str
    n: int
    rho: float
    p: float


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """``scipy.stats.spearmanr(x, y)`` as ``(rho, p)``; NaN for fewer than :data:`MIN_POINTS` pairs or a constant
    column."""
    if len(x) < MIN_POINTS or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sps.spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)


def loss_keys(keys: Sequence[str]) -> list[str]:
    """The validation loss terms among ``keys``, sorted, then the total ``val/loss``."""
    terms = sorted(k for k in keys if k.startswith("val/loss/"))
    return terms + (["val/loss"] if "val/loss" in keys else [])


def _by_step(curve: tuple[list[float], list[float]]) -> dict[float, float]:
    """A curve as step → value; a step logged twice keeps its last value."""
    return dict(zip(*curve))


def run_correlations(run: Run, series: Series | None = None, subject: str | None = None) -> list[Correlation]:
    """One :class:`Correlation` per validation loss term of ``run``'s CSV log against its optimised metric, over
    the steps at which both were logged; none when the run names no metric or its log lacks it."""
    series = read_series(run.dir / "csv" / "metrics.csv") if series is None else series
    metric = run.metric
    if not metric or metric not in series:
        return []
    target = _by_step(series[metric])
    rows = []
    for term in loss_keys(list(series)):
        loss = _by_step(series[term])
        steps = sorted(set(loss) & set(target))
        rho, p = spearman([loss[s] for s in steps], [target[s] for s in steps])
        rows.append(
            Correlation(
                "epochs", subject or run.dir.name, run.seed, " ".join(run.overrides), term, metric, len(steps), rho, p
            )
        )
    return rows


def point_correlations(points: Sequence[Point], metric: str) -> list[Correlation]:
    """One :class:`Correlation` per validation loss term: over the points with a final value of both, the mean
    over seeds of the term against the mean over seeds of ``metric``."""
    keys = {k for p in points for r in p.ok_runs for k in r.final_values() if is_loss(k)}
    rows = []
    for term in loss_keys(sorted(keys)):
        pairs = [(p.stats(term)[0], p.stats(metric)[0]) for p in points]
        pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
        rho, p = spearman([x for x, _ in pairs], [y for _, y in pairs])
        rows.append(Correlation("points", "sweep", None, "", term, metric, len(pairs), rho, p))
    return rows


# ------------------------------------------------------------------------------------------------- output


def fmt_rho(value: float) -> str:
    """ρ with 2 decimals (``−`` as a minus sign), ``n/a`` when undefined."""
    return NA if math.isnan(value) else f"{value:+.2f}".replace("-", "−")


def write_correlation_csv(rows: Sequence[Correlation], path: Path) -> Path:
    """``loss_metric_correlation.csv``: ``scope, subject, seed, overrides, term, metric, n, rho, p``, full
    precision, undefined values empty."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["scope", "subject", "seed", "overrides", "term", "metric", "n", "rho", "p"])
        for r in rows:
            numbers = ["" if math.isnan(v) else repr(v) for v in (r.rho, r.p)]
            seed = "" if r.seed is None else r.seed
            writer.writerow([r.scope, r.subject, seed, r.overrides, r.term, r.metric, r.n, *numbers])
    return path


def _run_table(rows: Sequence[Correlation], label_runs: bool, keys: Sequence[str] = ()) -> list[str]:
    """One row per run (when ``label_runs``, with its directory, seed and its values of the swept ``keys`` where
    there are any), one column per term."""
    terms = loss_keys(sorted({r.term for r in rows}))
    runs: dict[str, dict[str, Correlation]] = {}
    for r in rows:
        runs.setdefault(r.subject, {})[r.term] = r
    header = (["run", "seed", *(["point"] if keys else [])] if label_runs else []) + ["epochs", *terms]
    body = []
    for subject, by_term in runs.items():
        first = next(iter(by_term.values()))
        seed = "" if first.seed is None else first.seed
        label = [f"`{subject}`", seed, *([_label(first.overrides, keys)] if keys else [])] if label_runs else []
        n = max(c.n for c in by_term.values())
        body.append([*label, n, *(fmt_rho(by_term[t].rho) if t in by_term else NA for t in terms)])
    return table(header, body)


def _label(overrides: str, keys: Sequence[str]) -> str:
    """A run's values of the swept ``keys``, ``k=v k=v``."""
    settings = dict(split_override(o) for o in overrides.split())
    return " ".join(f"{k}={settings.get(k, '')}" for k in keys)


def correlation_section(
    epochs: Sequence[Correlation], points: Sequence[Correlation], label_runs: bool, keys: Sequence[str] = ()
) -> list[str]:
    """The Markdown section ``## Does the loss track the metric?``: the per-run table (runs labelled by the swept
    ``keys``) and, for a sweep, the one over points; a line saying why when there is nothing to correlate."""
    lines = ["## Does the loss track the metric?", ""]
    metric = next((r.metric for r in [*epochs, *points]), None)
    if metric is None:
        return lines + ["No validation loss terms and optimised metric logged together: nothing to correlate."]
    lines += [
        f"Spearman ρ between each validation loss term and `{metric}`. A loss that tracks a metric to be maximised"
        f" has ρ near −1. {NA}: fewer than {MIN_POINTS} values or a constant column. Full precision and p-values:"
        f" [{CSV_NAME}]({CSV_NAME}).",
        "",
    ]
    if epochs:
        lines += ["Per run, over its validation epochs:", ""] + _run_table(epochs, label_runs, keys)
    if points:
        body = [[r.term, r.n, fmt_rho(r.rho)] for r in points]
        lines += ["", "Across the sweep's points (final values, mean over seeds):", ""]
        lines += table(["term", "points", "ρ"], body)
    return lines
