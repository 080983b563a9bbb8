"""A sweep's runs as sweep points: jobs with the same overrides apart from ``seed=``, their mean, sample std and
95 % interval over seeds (:mod:`detloss.report.stats`), the order best first, and which logged keys become columns."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from detloss.report.load import Run, split_override, to_float
from detloss.report.stats import Summary, summarise


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
        """Runs that neither finished nor were pruned."""
        return sum(not r.ok and not r.pruned for r in self.runs)

    @property
    def pruned(self) -> int:
        """Runs that an Optuna pruner stopped early (not in the statistics)."""
        return sum(r.pruned for r in self.runs)

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.runs]

    def values(self, key: str) -> list[float]:
        """``key``'s final value in each successful run that has it."""
        return [v[key] for v in (r.final_values() for r in self.ok_runs) if key in v]

    def summary(self, key: str) -> Summary:
        """Mean, sample std and 95 % interval of ``key`` over the successful seeds (:func:`~.stats.summarise`)."""
        return summarise(self.values(key))

    def stats(self, key: str) -> tuple[float | None, float | None]:
        """Mean and sample std (ddof=1; ``None`` below two values) of ``key`` over the successful seeds."""
        s = self.summary(key)
        return (None if math.isnan(s.mean) else s.mean), (None if math.isnan(s.std) else s.std)

    def best_run(self, metric: str, mode: str) -> Run | None:
        scored = [(r.final_values().get(metric), r) for r in self.ok_runs]
        scored = [(v, r) for v, r in scored if v is not None]
        if not scored:
            return self.ok_runs[0] if self.ok_runs else None
        return (max if mode == "max" else min)(scored, key=lambda vr: vr[0])[1]


def point_key(run: Run) -> tuple[str, ...]:
    """A run's overrides without ``seed=`` and ``hydra.*``, sorted: what identifies its sweep point."""
    return tuple(
        sorted(
            o
            for o in run.overrides
            if split_override(o)[0] not in ("seed", "") and not split_override(o)[0].startswith("hydra.")
        )
    )


def group_points(runs: Sequence[Run]) -> list[Point]:
    """Runs grouped by their overrides without ``seed=``, in order of first appearance."""
    points: dict[tuple[str, ...], Point] = {}
    for run in runs:
        points.setdefault(point_key(run), Point(point_key(run), [])).runs.append(run)
    return list(points.values())


def sweep_metric(runs: Sequence[Run]) -> tuple[str, str]:
    """The optimised metric and its mode, from the first record that names them."""
    metric = next((r.metric for r in runs if r.metric), None) or "value"
    mode = next((r.record["mode"] for r in runs if r.record.get("mode")), "max")
    return metric, mode


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


def value_order(values: Sequence[str]) -> tuple:
    """Sort key of override values: numbers by value (``2`` before ``10``), before text."""
    return tuple((0, number, "") if (number := to_float(v)) is not None else (1, 0.0, v) for v in values)


def by_others(points: Sequence[Point], key: str, keys: Sequence[str]) -> list[tuple[str, list[Point]]]:
    """Points grouped by the values of the swept keys other than ``key``, labelled ``k=v, ...``, in value order."""
    others = [k for k in keys if k != key]
    groups: dict[tuple[str, ...], list[Point]] = {}
    for point in points:
        groups.setdefault(tuple(point.settings.get(k, "") for k in others), []).append(point)
    return [
        (", ".join(f"{k}={v}" for k, v in zip(others, values)), groups[values])
        for values in sorted(groups, key=value_order)
    ]


# ------------------------------------------------------------------------------------------- which columns


def is_loss(key: str) -> bool:
    """Whether ``key`` is the validation loss or one of its terms."""
    return key == "val/loss" or key.startswith("val/loss/")


def headline(key: str) -> bool:
    """Whether a column goes into the Markdown table (per-class metrics such as ``val/map/<class>`` do not)."""
    return not key.startswith("val/") or is_loss(key) or key.count("/") == 1


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
