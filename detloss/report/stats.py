"""Statistics over seeds, all taken from scipy: a point's mean, sample std and Student-t 95 % confidence interval
(``scipy.stats.ttest_1samp(...).confidence_interval``), and a point's difference to a baseline point paired by seed,
with its 95 % interval and the paired t-test's p-value (``scipy.stats.ttest_rel``). A difference is *resolved*
when its interval excludes 0. Undefined numbers (one seed, no seed in common) are NaN, never a guess.

The baseline is named by overrides, ``--baseline KEY=VALUE [KEY=VALUE ...]``: the point whose overrides (apart from
``seed=``) contain every given ``KEY=VALUE``; when several do, the one whose overrides are exactly those given.
Values compare as numbers where both sides are numbers (``7.5`` matches ``7.50``), as text otherwise.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats as sps

from detloss.report.load import split_override, to_float

if TYPE_CHECKING:
    from detloss.report.aggregate import Point

CONFIDENCE = 0.95
"""The level of every interval in the report."""

NAN = math.nan


@dataclass(frozen=True)
class Summary:
    """``n`` values: their mean, sample std (ddof=1) and the Student-t interval of the mean at :data:`CONFIDENCE`.

    ``std``, ``low`` and ``high`` are NaN below two values; with two or more equal values the interval is
    ``[mean, mean]`` (zero spread, as scipy gives it)."""

    n: int
    mean: float
    std: float
    low: float
    high: float


@dataclass(frozen=True)
class Paired:
    """A point's difference to the baseline over the ``n`` seeds both have: the mean of ``point - baseline``, its
    Student-t interval at :data:`CONFIDENCE` (``scipy.stats.ttest_rel(point, baseline).confidence_interval``), the
    two-sided paired t-test's p-value, and whether the interval excludes 0 (``None`` when it is undefined).

    Below two paired seeds everything but ``diff`` (and below one, ``diff`` too) is NaN and ``resolved`` is
    ``None``. Seeds with exactly the same difference give a zero-width interval (resolved unless the difference
    is 0) and scipy's p-value for a zero spread (0, or NaN when the difference is 0)."""

    n: int
    seeds: tuple[int, ...]
    diff: float
    low: float
    high: float
    p: float
    resolved: bool | None


def summarise(values: Sequence[float]) -> Summary:
    """:class:`Summary` of ``values``; all NaN (``n = 0``) for none."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return Summary(0, NAN, NAN, NAN, NAN)
    if x.size == 1:
        return Summary(1, float(x[0]), NAN, NAN, NAN)
    with warnings.catch_warnings():  # scipy's precision warning for (nearly) equal values
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = sps.ttest_1samp(x, 0.0).confidence_interval(confidence_level=CONFIDENCE)
    return Summary(int(x.size), float(np.mean(x)), float(np.std(x, ddof=1)), float(low), float(high))


def paired(point: dict[int, float], baseline: dict[int, float]) -> Paired:
    """:class:`Paired` difference ``point - baseline`` over the seeds that are keys of both mappings."""
    seeds = tuple(sorted(set(point) & set(baseline)))
    a = np.array([point[s] for s in seeds], dtype=float)
    b = np.array([baseline[s] for s in seeds], dtype=float)
    if len(seeds) == 0:
        return Paired(0, seeds, NAN, NAN, NAN, NAN, None)
    if len(seeds) == 1:
        return Paired(1, seeds, float(a[0] - b[0]), NAN, NAN, NAN, None)
    with warnings.catch_warnings():  # scipy's warnings for equal differences (zero spread)
        warnings.simplefilter("ignore", RuntimeWarning)
        test = sps.ttest_rel(a, b)
        low, high = test.confidence_interval(confidence_level=CONFIDENCE)
    low, high = float(low), float(high)
    resolved = None if math.isnan(low) or math.isnan(high) else bool(low > 0 or high < 0)
    return Paired(len(seeds), seeds, float(np.mean(a - b)), low, high, float(test.pvalue), resolved)


def seed_values(point: Point, key: str) -> dict[int, float]:
    """``key``'s final value per seed over the point's successful runs that have a seed and the key; a seed that
    appears in several runs of the point keeps its first run (see :func:`duplicate_seeds`)."""
    values: dict[int, float] = {}
    for run in point.ok_runs:
        value = run.final_values().get(key)
        if run.seed is not None and value is not None:
            values.setdefault(int(run.seed), value)
    return values


def duplicate_seeds(point: Point) -> list[int]:
    """The seeds that more than one successful run of ``point`` has."""
    seen = [int(r.seed) for r in point.ok_runs if r.seed is not None]
    return sorted({s for s in seen if seen.count(s) > 1})


def paired_seeds(point: Point, baseline: Point) -> list[int]:
    """The seeds both points have a successful run of."""
    mine = {int(r.seed) for r in point.ok_runs if r.seed is not None}
    return sorted(mine & {int(r.seed) for r in baseline.ok_runs if r.seed is not None})


# ------------------------------------------------------------------------------------------------ baseline


def point_label(point: Point, keys: Sequence[str] = ()) -> str:
    """``k=v k=v`` of the point's values of the swept ``keys`` (of all its overrides when ``keys`` is empty), or
    ``(no overrides)``."""
    if keys:
        return " ".join(f"{k}={point.settings.get(k, '')}" for k in keys)
    return " ".join(point.overrides) or "(no overrides)"


def parse_baseline(overrides: Sequence[str]) -> list[tuple[str, str]]:
    """``["loss=yolo", "loss.terms.box.weight=7.5"]`` as ``(key, value)`` pairs; a ``ValueError`` naming
    ``--baseline`` for an empty list, an item without ``=``, a ``seed=`` (a point is named apart from its seed)
    or a key given twice."""
    if not overrides:
        raise ValueError("--baseline needs at least one KEY=VALUE override naming a sweep point")
    pairs: list[tuple[str, str]] = []
    for item in overrides:
        key, value = split_override(str(item))
        if "=" not in str(item) or not key:
            raise ValueError(f"--baseline: {item!r} is not a KEY=VALUE override (e.g. --baseline loss=yolo)")
        if key == "seed":
            raise ValueError(f"--baseline: {item!r} names a seed; a point is named by its overrides apart from seed=")
        if key in dict(pairs):
            raise ValueError(f"--baseline: {key} is given twice")
        pairs.append((key, value))
    return pairs


def _same(a: str, b: str) -> bool:
    x, y = to_float(a), to_float(b)
    return x == y if x is not None and y is not None else a == b


def find_baseline(points: Sequence[Point], overrides: Sequence[str]) -> Point:
    """The point named by ``overrides`` (module docstring). ``ValueError`` naming ``--baseline`` and listing the
    points when none or several match."""
    pairs = parse_baseline(overrides)
    matches = [p for p in points if all(k in p.settings and _same(p.settings[k], v) for k, v in pairs)]
    exact = [p for p in matches if len(p.settings) == len(pairs)]
    if len(matches) == 1 or len(exact) == 1:
        return matches[0] if len(matches) == 1 else exact[0]
    given = " ".join(f"{k}={v}" for k, v in pairs)
    listed = "; ".join(point_label(p) for p in (matches or points))
    if not matches:
        raise ValueError(f"--baseline {given} matches no sweep point; the points are: {listed}")
    raise ValueError(
        f"--baseline {given} matches {len(matches)} sweep points, give more overrides to name one: {listed}"
    )
