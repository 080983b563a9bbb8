"""The Optuna study behind a sweep, read through Optuna's public API (``optuna.load_study``): each objective's
parameter importances (``optuna.importance.get_param_importances`` with Optuna's default evaluator, fANOVA,
seeded) and the optimisation history (every trial's state, values and parameters, the best value so far), as
``optuna_history.csv``, ``optuna_history.png`` and a section of ``report.md``.

Where the study lives, in order: ``storage`` of the sweep's ``optimization_results.yaml``, ``hydra.sweeper.storage``
of its ``multirun.yaml`` (any form of :func:`parse_storage`; a relative file is looked for where the report runs,
then in the sweep directory), ``optuna.db`` (SQLite) in the sweep directory, then ``*.journal``, ``optuna.log`` and
``optuna_journal.log`` there (Optuna's journal file storage). The study is the ``study_name`` given beside the
storage, or every study in it. Without a storage this part is a one-line note; one that cannot be read is a note
too, never an error of the report.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detloss.report.plots import _new_figure, _safe_name, _save
from detloss.report.tables import NA, fmt, table

IMPORTANCE_SEED = 0
"""Seed of Optuna's fANOVA evaluator (its random forest), so that a report's importances do not change between
two runs of the report."""

JOURNAL_NAMES = ("optuna.log", "optuna_journal.log")
"""Journal file names looked for in the sweep directory, beside ``*.journal``."""

RESULTS = "optimization_results.yaml"
"""What the detloss Optuna sweeper writes into the sweep directory at the end; its ``storage`` and ``study_name``
are read."""


@dataclass
class StudySummary:
    """What the report says of one study: its trials, importances per objective (or why there are none)."""

    name: str
    storage: str
    directions: list[str]
    trials: list[Any]
    objectives: list[str] = field(default_factory=list)
    importances: dict[str, dict[str, float]] = field(default_factory=dict)
    importance_error: str | None = None
    best: list[Any] = field(default_factory=list)


def _yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _sweeper_config(sweep_dir: Path) -> dict[str, Any]:
    """``hydra.sweeper`` of the sweep's ``multirun.yaml``; ``{}`` when there is none."""
    sweeper = (_yaml(sweep_dir / "multirun.yaml").get("hydra") or {}).get("sweeper")
    return sweeper if isinstance(sweeper, dict) else {}


def _existing(path: str, sweep_dir: Path) -> Path | None:
    """``path`` as it stands (absolute, or relative to the current directory), else relative to the sweep; the
    first that is a file."""
    candidates = [Path(path).expanduser()] + ([] if Path(path).is_absolute() else [sweep_dir / path])
    return next((c.resolve() for c in candidates if c.is_file()), None)


def parse_storage(spec: Any, sweep_dir: Path) -> tuple[str, str] | None:
    """A storage spec as the sweeper takes it, as ``("url", url)`` or ``("journal", path)``; ``None`` when it names
    a file that does not exist (opening a missing SQLite file would create an empty one) or is of no known form.

    Forms: a database URL (``sqlite:///relative.db``, ``sqlite:////absolute.db``, ``postgresql://...``),
    ``journal://PATH[?lock=...]`` (everything after ``journal://`` is the path), ``{journal: PATH, ...}``, or a
    plain journal file path."""
    if isinstance(spec, dict):
        spec = f"journal://{spec['journal']}" if spec.get("journal") else None
    if not isinstance(spec, str) or not spec:
        return None
    if spec.startswith("journal://"):
        path = _existing(spec.removeprefix("journal://").partition("?")[0], sweep_dir)
        return ("journal", str(path)) if path else None
    if spec.startswith("sqlite:///"):
        name = spec.removeprefix("sqlite:///").partition("?")[0]
        path = _existing(name, sweep_dir) if name and name != ":memory:" else None
        return ("url", f"sqlite:///{path}") if path else None
    if "://" in spec:
        return ("url", spec)
    path = _existing(spec, sweep_dir)
    return ("journal", str(path)) if path else None


def find_storages(sweep_dir: Path) -> list[tuple[str, str, str | None]]:
    """The sweep's storages as ``(kind, where, study name or None)``, in the order of the module docstring,
    without repeats."""
    found: list[tuple[str, str, str | None]] = []
    for config in (_yaml(sweep_dir / RESULTS), _sweeper_config(sweep_dir)):
        parsed = parse_storage(config.get("storage"), sweep_dir)
        name = config.get("study_name")
        if parsed:
            found.append((*parsed, name if isinstance(name, str) and name else None))
    if (sweep_dir / "optuna.db").is_file():
        found.append(("url", f"sqlite:///{(sweep_dir / 'optuna.db').resolve()}", None))
    journals = sorted(sweep_dir.glob("*.journal")) + [sweep_dir / n for n in JOURNAL_NAMES if (sweep_dir / n).is_file()]
    found += [("journal", str(p.resolve()), None) for p in journals]
    unique: dict[tuple[str, str], str | None] = {}
    for kind, where, name in found:
        unique[(kind, where)] = unique.get((kind, where)) or name
    return [(kind, where, name) for (kind, where), name in unique.items()]


def _open_storage(optuna: Any, kind: str, where: str) -> Any:
    if kind == "url":
        return where
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(where))


def _objectives(sweep_dir: Path, name: str, n: int) -> list[str]:
    """The objectives' names that ``optimization_results.yaml`` gives for study ``name`` (such as ``val/map_50``),
    else ``value`` (one objective) or ``value_<i>``."""
    results = _yaml(sweep_dir / RESULTS)
    named = results.get("objectives")
    if results.get("study_name") == name and isinstance(named, list) and len(named) == n:
        return [str(o) for o in named]
    return ["value"] if n == 1 else [f"value_{i}" for i in range(n)]


def _importances(optuna: Any, study: Any, objectives: Sequence[str]) -> tuple[dict[str, dict[str, float]], str | None]:
    """Importances per objective (named by ``objectives``), or the error that Optuna gave (too few trials...)."""
    result: dict[str, dict[str, float]] = {}
    try:
        for i, name in enumerate(objectives):
            target = None if len(objectives) == 1 else (lambda t, i=i: t.values[i])
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=IMPORTANCE_SEED)
            result[name] = dict(optuna.importance.get_param_importances(study, evaluator=evaluator, target=target))
    except (ValueError, RuntimeError, ImportError) as err:
        return {}, f"{type(err).__name__}: {err}"
    return result, None


def load_studies(sweep_dir: Path) -> tuple[list[StudySummary], list[str]]:
    """The studies in the sweep's storages, and notes (no storage, Optuna missing, a storage that cannot be read)."""
    storages = find_storages(sweep_dir)
    if not storages:
        return [], [
            "No Optuna storage in the sweep directory (no `optuna.db`, journal file or `storage` in "
            "`multirun.yaml`): no study to report."
        ]
    try:
        import optuna
    except ImportError:
        return [], ["An Optuna storage is present but Optuna is not installed (`pip install -e .[sweep]`)."]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies, notes = [], []
    for kind, where, wanted in storages:
        try:
            storage = _open_storage(optuna, kind, where)
            names = [wanted] if wanted else optuna.get_all_study_names(storage=storage)
            for name in names:
                study = optuna.load_study(study_name=name, storage=storage)
                directions = [d.name.lower() for d in study.directions]
                objectives = _objectives(sweep_dir, name, len(directions))
                summary = StudySummary(name, where, directions, study.get_trials(deepcopy=False), objectives)
                summary.importances, summary.importance_error = _importances(optuna, study, objectives)
                complete = [t for t in summary.trials if t.state.name == "COMPLETE"]
                summary.best = list(study.best_trials) if complete else []
                studies.append(summary)
        except Exception as err:  # a storage the report cannot read is a note, not a failed report
            notes.append(f"The Optuna storage `{where}` could not be read: {type(err).__name__}: {err}")
    return studies, notes


# ------------------------------------------------------------------------------------------------- output


def _values(trial: Any, n: int) -> list[float]:
    values = trial.values if trial.values is not None else [math.nan] * n
    return [float(v) for v in values]


def best_so_far(study: StudySummary) -> list[float]:
    """Per trial, the best complete value up to it (one objective; NaN before the first complete trial)."""
    better = max if study.directions[0] == "maximize" else min
    best, out = math.nan, []
    for trial in study.trials:
        value = _values(trial, 1)[0] if trial.state.name == "COMPLETE" else math.nan
        best = value if math.isnan(best) else (best if math.isnan(value) else better(best, value))
        out.append(best)
    return out


def write_history_csv(studies: Sequence[StudySummary], path: Path) -> Path:
    """``optuna_history.csv``: ``study, trial, state, value`` (``value_<i>`` per objective when several),
    ``best_so_far`` (one objective), ``param_<name>`` per parameter; one row per trial."""
    params = sorted({p for s in studies for t in s.trials for p in t.params})
    width = max(len(s.directions) for s in studies)
    values = ["value"] if width == 1 else [f"value_{i}" for i in range(width)]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["study", "trial", "state", *values, "best_so_far", *(f"param_{p}" for p in params)])
        for study in studies:
            best = best_so_far(study) if len(study.directions) == 1 else [math.nan] * len(study.trials)
            for trial, b in zip(study.trials, best):
                numbers = _values(trial, len(study.directions)) + [math.nan] * (width - len(study.directions))
                writer.writerow(
                    [study.name, trial.number, trial.state.name, *("" if math.isnan(v) else repr(v) for v in numbers)]
                    + ["" if math.isnan(b) else repr(b)]
                    + [trial.params.get(p, "") for p in params]
                )
    return path


def plot_history(study: StudySummary, path: Path) -> Path:
    """Each complete trial's value (one panel per objective) and, for one objective, the best so far."""
    n = len(study.directions)
    fig, axes = _new_figure(1, n, width=6.0, height=3.5)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    for i, ax in enumerate(axes):
        ax.plot([t.number for t in complete], [_values(t, n)[i] for t in complete], "o", color="C0", label="trial")
        if n == 1:
            ax.step([t.number for t in study.trials], best_so_far(study), where="post", color="C3", label="best so far")
        ax.set(title=f"{study.name} ({study.directions[i]}d)", xlabel="trial", ylabel=study.objectives[i])
        ax.legend(loc="best", fontsize="small")
    return _save(fig, path)


def study_section(studies: Sequence[StudySummary], notes: Sequence[str], out: Path) -> list[str]:
    """``## Optuna study``: per study its trial counts, best trial(s), importances and history plot; the notes.
    Writes ``optuna_history.csv`` and ``optuna_history[_<study>].png`` into ``out`` when there is a study."""
    lines = ["## Optuna study", ""]
    if not studies:
        return lines + list(notes)
    write_history_csv(studies, out / "optuna_history.csv")
    for study in studies:
        states: dict[str, int] = {}
        for trial in study.trials:
            states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
        counts = ", ".join(f"{v} {k}" for k, v in states.items()) or "no trials"
        aims = ", ".join(f"`{o}` ({d})" for o, d in zip(study.objectives, study.directions))
        lines += [f"### `{study.name}`", "", f"Storage `{study.storage}`; {aims}; {counts}.", ""]
        if study.best:
            rows = [[t.number, *(fmt(v) for v in t.values), _params(t.params)] for t in study.best]
            lines += ["Best trial" + ("s (Pareto front)" if len(study.directions) > 1 else "") + ":", ""]
            lines += table(["trial", *study.objectives, "parameters"], rows) + [""]
        if study.importances:
            names = sorted({p for imp in study.importances.values() for p in imp})
            rows = [[p, *(fmt(imp.get(p, math.nan)) for imp in study.importances.values())] for p in names]
            lines += ["Parameter importances (`optuna.importance.get_param_importances`, fANOVA; sum 1 per objective):"]
            lines += [""]
            lines += table(["parameter", *study.importances], rows) + [""]
        else:
            lines += [f"Parameter importances: {NA} ({study.importance_error or 'no parameters'}).", ""]
        name = "optuna_history.png" if len(studies) == 1 else f"optuna_history_{_safe_name(study.name)}.png"
        if any(t.state.name == "COMPLETE" for t in study.trials):
            plot_history(study, out / name)
            lines += [f"![optimisation history of {study.name}]({name})", ""]
    lines += ["Every trial, its state, values and parameters: [optuna_history.csv](optuna_history.csv).", *notes]
    return lines


def _params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={fmt(v) if isinstance(v, float) else v}" for k, v in sorted(params.items()))
