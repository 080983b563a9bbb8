"""Reading what a training job leaves in its directory: ``metrics.json`` (with Hydra's files as fallback) and
Lightning's ``csv/metrics.csv``. Nothing here raises on a broken job: it becomes a failed :class:`Run`."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Series = dict[str, tuple[list[float], list[float]]]
"""Logged curves by key: ``(steps, values)``."""


# ---------------------------------------------------------------------------------------------- metrics.json


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
    def pruned(self) -> bool:
        """Whether an Optuna pruner stopped the run early (``status: pruned``, ``pruned_epoch``): neither a
        result nor a failure."""
        return self.record.get("status") == "pruned"

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
            _add_number(values, key, value)
        _add_number(values, "seconds", self.record.get("seconds"))
        if self.metric and self.record.get("value") is not None:
            _add_number(values, self.metric, self.record["value"])
        return values


def _add_number(values: dict[str, float], key: str, value: Any) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        values[key] = float(value)


def split_override(override: str) -> tuple[str, str]:
    """``"+loss.terms.box.weight=2.5"`` -> ``("loss.terms.box.weight", "2.5")``."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def _read_yaml(path: Path) -> Any:
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
        overrides = _read_yaml(run_dir / ".hydra" / "overrides.yaml") or []
    seed = record.get("seed")
    if seed is None:
        config = _read_yaml(run_dir / "config.yaml")
        seed = config.get("seed") if isinstance(config, dict) else None
    if seed is None:
        seed = next(
            (int(v) for k, v in map(split_override, overrides) if k == "seed" and v.lstrip("-").isdigit()), None
        )
    return Run(run_dir, record, [str(o) for o in overrides], seed)


def _natural_key(path: Path) -> tuple:
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
        found.update(
            g for g in child.iterdir() if g.is_dir() and (g / "metrics.json").is_file() and g.resolve() not in skipped
        )
    return [load_run(d) for d in sorted(found, key=lambda d: _natural_key(d.relative_to(sweep_dir)))]


# ------------------------------------------------------------------------------------------------- CSV log


def to_float(text: str | None) -> float | None:
    """The finite number in ``text``, else ``None``."""
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


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


def last_values(series: Series) -> dict[str, float]:
    """The last logged value of each ``val/`` and ``train/loss`` key (when ``metrics.json`` has none)."""
    return {k: v[1][-1] for k, v in series.items() if (k.startswith("val/") or k.startswith("train/loss")) and v[1]}
