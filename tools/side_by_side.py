"""What every side-by-side of ``tools/`` shares (``compare_monai.py``, ``compare_monai_brats.py``,
``compare_smp.py``): the Dice of a baseline's validation cases as detloss computes ``val/dice``, detloss's run with
its validation curve read from its CSV log while it runs, a baseline's training clock, and the summary: the table of
final Dice and of the time each recipe needs to reach the other's, and the plot of Dice over time.

How the time is counted and what each side runs is in each comparison's own docstring.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # measure_training.py, when imported from elsewhere
from measure_training import run  # noqa: E402

__all__ = [
    "case_dice",
    "mean_dice",
    "max_time",
    "Clock",
    "read_curve",
    "run_detloss",
    "spread",
    "time_to_reach",
    "summarise",
    "plot",
    "compare",
]


# ------------------------------------------------------------------------------------------------------- metrics


def case_dice(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, num_classes: int) -> list[float]:
    """Dice of labels ``1 … num_classes − 1`` in one case (label maps of the same shape); ``nan`` where a label is
    in neither the prediction nor the target."""
    pred, target = torch.as_tensor(pred), torch.as_tensor(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    out = []
    for k in range(1, num_classes):
        p, t = pred == k, target == k
        total = int(p.sum()) + int(t.sum())
        out.append(math.nan if total == 0 else 2.0 * int((p & t).sum()) / total)
    return out


def mean_dice(per_case: Sequence[Sequence[float]], names: Sequence[str]) -> tuple[float, dict[str, float]]:
    """``(mean, {label: dice})`` from per-case Dice rows: each label's mean over its non-``nan`` cases (labels with
    none left out), then the mean over those labels (``nan`` if none)."""
    table = np.asarray(per_case, dtype=np.float64).reshape(-1, len(names))
    per_label = {}
    for j, name in enumerate(names):
        column = table[:, j][~np.isnan(table[:, j])]
        if column.size:
            per_label[name] = float(column.mean())
    return (float(np.mean(list(per_label.values()))) if per_label else math.nan), per_label


# ------------------------------------------------------------------------------------------------------ detloss


def max_time(seconds: float) -> str:
    """Lightning's ``max_time`` string ``DD:HH:MM:SS`` for ``seconds`` (rounded up to a whole second)."""
    total = int(math.ceil(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{secs:02d}"


class Clock:
    """A baseline's training clock: wall time since :meth:`begin` less the validations that do not count
    (``free_validation``), and the curve ``[seconds since start, dice, {label: dice}]`` of its validations (whose
    times count from ``start``, the job's own start, as detloss's curve does)."""

    def __init__(self, start: float, validate, free_validation: bool = False) -> None:
        self.start, self.validate, self.free_validation = start, validate, bool(free_validation)
        self.curve: list[list] = []
        self.val_seconds = self.free = 0.0
        self.began = time.perf_counter()

    def begin(self) -> None:
        self.began = time.perf_counter()

    def elapsed(self) -> float:
        """Training seconds since :meth:`begin`, validations that do not count left out."""
        return time.perf_counter() - self.began - self.free

    def checkpoint(self) -> None:
        """Validate once and add the point to :attr:`curve`."""
        begun = time.perf_counter()
        dice, scores = self.validate()
        spent = time.perf_counter() - begun
        self.val_seconds += spent
        self.free += spent if self.free_validation else 0.0
        self.curve.append([time.perf_counter() - self.start - self.free, dice, scores])


def read_curve(log: str | Path, metric: str = "val/dice") -> list[dict]:
    """The validation rows of a run's ``csv/metrics.csv``: ``{"epoch", "step", "dice", "per_label"}`` in file order,
    ``dice`` the column ``metric`` (rows without it skipped; ``per_label`` from the ``<metric>/<label>`` columns)."""
    rows = []
    with open(log, newline="") as file:
        for row in csv.DictReader(file):
            if not row.get(metric):
                continue
            prefix = f"{metric}/"
            per_label = {k[len(prefix) :]: float(v) for k, v in row.items() if k.startswith(prefix) and v}
            epoch = int(float(row["epoch"])) if row.get("epoch") else None
            step = int(float(row["step"])) if row.get("step") else None
            rows.append({"epoch": epoch, "step": step, "dice": float(row[metric]), "per_label": per_label})
    return rows


def run_detloss(
    task: str,
    overrides: Sequence[str],
    seconds: float,
    seed: int,
    out_root: str | Path,
    poll: float = 1.0,
    time_limit: bool = True,
    metric: str = "val/dice",
) -> dict:
    """``python -m detloss.train task=<task> <overrides> seed=<seed> ++trainer.max_time=<seconds>`` through
    :func:`measure_training.run` (its run directory under ``out_root/seed<seed>/<task>/``), with the validation
    points of its CSV log timed as they appear (polled every ``poll`` seconds; rows that appear only after the process
    ends get its end time). ``time_limit=False`` leaves ``max_time`` out (``overrides`` then bound the run);
    ``metric``: the logged Dice that makes the curve (:func:`read_curve`).

    Returns: ``{"curve": [[seconds, dice, {label: dice}], ...], "seconds", "command", "dir", "metrics",
    "epochs", "steps"}``.
    """
    out_root = Path(out_root) / f"seed{seed}"
    parent = out_root / task
    before = set(parent.iterdir()) if parent.is_dir() else set()
    stop = threading.Event()
    seen: list[tuple[float, dict]] = []
    lock = threading.Lock()
    start = time.perf_counter()

    def watch() -> None:
        while True:
            finished = stop.wait(poll)
            new = [p for p in parent.iterdir() if p not in before] if parent.is_dir() else []
            logs = [p / "csv" / "metrics.csv" for p in new if (p / "csv" / "metrics.csv").is_file()]
            if logs:
                try:
                    rows = read_curve(logs[0], metric)
                except (OSError, ValueError, KeyError):  # a row being written; read it next time
                    rows = []
                with lock:
                    now = time.perf_counter() - start
                    seen.extend((now, row) for row in rows[len(seen) :])
            if finished:
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    command = [f"task={task}", *overrides, f"seed={seed}"]
    command += [f"++trainer.max_time={max_time(seconds)}"] if time_limit else []
    try:
        result = run(task, command[1:], out_root)
    finally:
        stop.set()
        watcher.join()
    end = time.perf_counter() - start
    rows = read_curve(result["dir"] / "csv" / "metrics.csv", metric)
    with lock:
        seen.extend((end, row) for row in rows[len(seen) :])
        curve = [[t, row["dice"], row["per_label"]] for t, row in seen]
    record = result["record"]
    return {
        "curve": curve,
        "seconds": result["seconds"],
        "command": result["command"],
        "dir": str(result["dir"]),
        "metrics": record.get("metrics", {}),
        "epochs": record.get("epochs"),
        "steps": record.get("steps"),
    }


# ------------------------------------------------------------------------------------------------------ summary


def spread(values: Sequence[float]) -> str:
    """``mean ± sample std`` of ``values`` to three decimals (NaN and ``None`` left out; one value alone; "–" none)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def time_to_reach(curve: Sequence[Sequence], target: float) -> float | None:
    """Seconds of the first point of ``curve`` whose Dice is at least ``target`` (``None``: never)."""
    return next((float(t) for t, dice, *_ in curve if not math.isnan(dice) and dice >= target), None)


def summarise(results: dict[str, dict], title: str = "") -> str:
    """The Markdown table of ``results`` (``{recipe: {seed: run}}``, each run holding a ``curve``): final Dice
    (mean ± sample std over seeds), per label, wall time, and the time to reach the other recipe's mean final Dice
    (mean over the seeds that reach it; "not reached" or "k of n seeds")."""
    recipes = [r for r in results if results[r]]
    finals = {r: [run["curve"][-1][1] for run in results[r].values() if run["curve"]] for r in recipes}
    labels = sorted({k for r in recipes for run in results[r].values() if run["curve"] for k in run["curve"][-1][2]})
    lines = [title] if title else []
    other = {r: next((o for o in recipes if o != r), None) for r in recipes}
    header = ["recipe", "seeds", "final Dice", *labels, "wall time (s)", "points", "time to the other's final Dice"]
    lines += ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    for r in recipes:
        runs = list(results[r].values())
        per_label = [spread([run["curve"][-1][2].get(k, math.nan) for run in runs if run["curve"]]) for k in labels]
        walls = [run["seconds"] for run in runs]
        wall = f"{statistics.mean(walls):.0f}" + (f" ± {statistics.stdev(walls):.0f}" if len(walls) > 1 else "")
        reach = "–"
        o = other[r]
        if o is not None and finals[o]:
            target = statistics.mean(finals[o])
            times = [time_to_reach(run["curve"], target) for run in runs]
            hit = [t for t in times if t is not None]
            if not hit:
                reach = f"not reached ({target:.3f})"
            else:
                reach = f"{statistics.mean(hit):.0f} s to {target:.3f}"
                if len(hit) < len(times):
                    reach += f" ({len(hit)} of {len(times)} seeds)"
        points = statistics.mean(len(run["curve"]) for run in runs)
        cells = [r, str(len(runs)), spread(finals[r]), *per_label, wall, f"{points:.0f}", reach]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(
    results: dict[str, dict],
    path: str | Path,
    title: str = "",
    xlabel: str = "minutes from the start of the job",
    ylabel: str = "validation Dice (mean over labels)",
) -> None:
    """Dice over minutes, one line per recipe and seed, saved to ``path`` (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    lowest = 1.0
    for colour, (recipe, runs) in zip(["C0", "C1", "C2"], results.items()):
        for i, one in enumerate(runs.values()):
            t = [p[0] / 60 for p in one["curve"]]
            dice = [p[1] for p in one["curve"]]
            lowest = min([lowest, *dice])
            ax.plot(t, dice, "-o", ms=3, lw=1, color=colour, label=recipe if i == 0 else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(left=0)
    ax.set_ylim(max(0.0, math.floor((lowest - 0.02) * 20) / 20), 1)  # down to the lowest point, in steps of 0.05
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _resumed(args, out: Path) -> dict[str, dict]:
    """The runs already in ``out`` (empty where it does not exist), checked to be runs of the same comparison."""
    if not out.is_file():
        return {}
    previous = json.loads(out.read_text())
    theirs = (Path(previous.get("data", "")).name, previous.get("minutes"), previous.get("detloss_overrides"))
    ours = (args.data.name, args.minutes, args.overrides)
    if theirs != ours:
        raise SystemExit(
            f"--resume: {out} holds runs of data {theirs[0]!r}, {theirs[1]} min, detloss overrides {theirs[2]}; "
            f"this comparison is {ours[0]!r}, {ours[1]} min, overrides {ours[2]} (give another --out)"
        )
    if previous.get("options", _options(args)) != _options(args):
        raise SystemExit(
            f"--resume: {out} holds runs with the baseline options {previous['options']}, this comparison has "
            f"{_options(args)} (give another --out)"
        )
    return previous.get("results", {})


def _options(args) -> dict[str, str]:
    """The baseline's options of a comparison (its arguments but the data, budget, seeds and where to write)."""
    skip = {"data", "minutes", "seeds", "only", "out", "runs", "plot", "resume", "overrides", "csv"}
    return {k: str(v) for k, v in sorted(vars(args).items()) if k not in skip}


def compare(args, task: str, base: list[str], name: str, baseline, detloss=None) -> int:
    """The side-by-side run of both tools: for each of ``args.seeds``, detloss's ``task`` with the overrides
    ``base`` and the baseline ``name`` (``baseline(seed, seconds)``, a run's record with its ``curve``), each for
    ``args.minutes`` (``args.only``: one side); writes ``args.out`` (JSON) after every run, prints the table and
    draws ``args.plot``. ``detloss(seed, seconds)`` runs detloss's side (default :func:`run_detloss` of ``task``
    and ``base``). With ``args.resume`` the runs already in ``args.out`` (same data, minutes and detloss overrides)
    are kept and not run again, so that the seeds of one comparison can be run at different times; each run records
    the machine and the time it ran on.

    Raises:
        SystemExit: ``args.resume`` and an ``args.out`` of another data set, budget or detloss overrides.
    """
    seconds = args.minutes * 60
    out = args.out or Path("outputs/compare") / f"{args.data.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    machine = f"{os.cpu_count()} CPUs, load {load:.1f}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    print(f"machine: {machine}; data: {args.data}; {args.minutes:g} min per run; seeds {args.seeds}", flush=True)
    results: dict[str, dict] = _resumed(args, out) if getattr(args, "resume", False) else {}
    done = sorted({int(s) for runs in results.values() for s in runs})
    record = {"data": str(args.data), "minutes": args.minutes, "seeds": sorted({*done, *args.seeds})}
    record |= {"machine": machine, "detloss_overrides": args.overrides, "options": _options(args), "results": results}
    when = {"machine": machine}
    for seed in args.seeds:
        if args.only in (None, "detloss") and str(seed) not in results.get("detloss", {}):
            if detloss is None:
                r = run_detloss(task, base, seconds, seed, args.runs / args.data.name)
            else:
                r = detloss(seed, seconds)
            results.setdefault("detloss", {})[str(seed)] = r | when | {"date": time.strftime("%Y-%m-%d")}
            print(f"detloss seed {seed}: {r['seconds']:.0f} s, final Dice {r['curve'][-1][1]:.3f}", flush=True)
            out.write_text(json.dumps(record, indent=2))
        if args.only in (None, name) and str(seed) not in results.get(name, {}):
            r = baseline(seed, seconds)
            results.setdefault(name, {})[str(seed)] = r | when | {"date": time.strftime("%Y-%m-%d")}
            out.write_text(json.dumps(record, indent=2))
    table = summarise(results, f"{args.data.name}, {args.minutes:g} min of training per run ({machine})")
    record["table"] = table
    out.write_text(json.dumps(record, indent=2))
    print()
    print(table)
    print(f"\nwritten: {out}")
    if args.plot:
        plot(results, args.plot, args.data.name)
        print(f"plot: {args.plot}")
    return 0
