"""detloss-report's statistics on hand-made sweeps with known numbers: 95 % intervals over seeds, paired differences
to a ``--baseline`` point, the loss-metric rank correlations and the Optuna study section, each checked against
scipy / Optuna computed here on the same numbers."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from scipy import stats

matplotlib.use("Agg")

from detloss.report import main, report  # noqa: E402

METRIC = "val/map_50"


def write_log(run_dir: Path, metric: list[float], losses: dict[str, list[float]], steps_per_epoch: int = 5) -> None:
    """``csv/metrics.csv`` as Lightning's CSVLogger writes it: one header of every key, sparse rows (train rows
    per step, one validation row per epoch with ``val/loss/<term>``, ``val/loss`` and the metric)."""
    rows: list[dict[str, float]] = []
    for epoch, value in enumerate(metric):
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i
            rows.append({"epoch": epoch, "step": step, "train/loss": 1.0 / (1 + step)})
        val = {f"val/loss/{term}": values[epoch] for term, values in losses.items()}
        val["val/loss"] = sum(val.values())
        rows.append({"epoch": epoch, "step": (epoch + 1) * steps_per_epoch - 1, **val, METRIC: value})
    (run_dir / "csv").mkdir(parents=True, exist_ok=True)
    with (run_dir / "csv" / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
        writer.writeheader()
        writer.writerows(rows)


def make_run(
    run_dir: Path, overrides: list[str], seed: int, metrics: dict[str, float], log: tuple | None = None
) -> Path:
    """A finished run's ``metrics.json`` with the keys of ``detloss.runs.write_metrics``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "status": "ok",
        "task": "detection",
        "optimized_metric": METRIC,
        "mode": "max",
        "overrides": [*overrides, f"seed={seed}"],
        "seed": seed,
        "seconds": 10.0,
        "value": metrics[METRIC],
        "metrics": metrics,
        "train": {"train/loss": 1.0},
        "epochs": 3,
        "steps": 15,
        "best_checkpoint": None,
    }
    (run_dir / "metrics.json").write_text(json.dumps(record, indent=2))
    if log is not None:
        write_log(run_dir, *log)
    return run_dir


def make_sweep(root: Path, points: dict[str, dict[int, tuple[float, float]]]) -> Path:
    """One job per (point, seed): ``points[override][seed] = (val/map_50, val/loss/box)``."""
    job = 0
    for override, seeds in points.items():
        for seed, (value, box) in seeds.items():
            make_run(root / str(job), override.split(), seed, {METRIC: value, "val/loss/box": box, "val/loss": box})
            job += 1
    return root


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {row["overrides"]: row for row in csv.DictReader(f)}


def number(text: str) -> float:
    return math.nan if text == "" else float(text)


def t_interval(x: np.ndarray) -> tuple[float, float]:
    """The Student-t 95 % interval of the mean of ``x`` from ``scipy.stats.t``; ``[mean, mean]`` for equal values
    (zero spread, where ``t.interval`` with scale 0 gives NaN)."""
    if np.ptp(x) == 0:
        return float(x.mean()), float(x.mean())
    return stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))


# The baseline has seeds 0, 1, 2. "good" beats it by 0.10 ± 0.01 on every seed (resolved), "noisy" by nothing
# clear; "two" and "one" have 2 and 1 of the baseline's seeds; "apart" has none; "more" has a fourth seed.
BASE = {0: (0.50, 1.0), 1: (0.55, 1.1), 2: (0.60, 0.9)}
POINTS = {
    "loss=yolo": BASE,
    "loss=good": {0: (0.61, 0.5), 1: (0.64, 0.6), 2: (0.70, 0.7)},
    "loss=noisy": {0: (0.58, 1.0), 1: (0.45, 1.3), 2: (0.66, 0.8)},
    "loss=two": {0: (0.52, 1.0), 1: (0.60, 1.0)},
    "loss=one": {2: (0.65, 1.0)},
    "loss=apart": {7: (0.70, 1.0), 8: (0.72, 1.0)},
    "loss=more": {0: (0.51, 1.0), 1: (0.57, 1.2), 2: (0.59, 0.9), 3: (0.99, 0.1)},
}


@pytest.fixture
def sweep(tmp_path) -> Path:
    return make_sweep(tmp_path / "sweep", POINTS)


def test_intervals_over_seeds_match_scipy(sweep):
    report(sweep)
    rows = read_rows(sweep / "report" / "report.csv")
    for override, seeds in POINTS.items():
        row = rows[override]
        for column, index in ((METRIC, 0), ("val/loss/box", 1)):
            x = np.array([v[index] for v in seeds.values()])
            assert number(row[f"{column}_mean"]) == pytest.approx(x.mean())
            if len(x) == 1:  # one seed: no std, no interval
                assert row[f"{column}_std"] == row[f"{column}_ci95_low"] == row[f"{column}_ci95_high"] == ""
                continue
            low, high = t_interval(x)
            assert number(row[f"{column}_std"]) == pytest.approx(np.std(x, ddof=1))
            assert number(row[f"{column}_ci95_low"]) == pytest.approx(low)
            assert number(row[f"{column}_ci95_high"]) == pytest.approx(high)
    assert "baseline" not in next(iter(rows.values()))  # no baseline, no difference columns
    text = (sweep / "report" / "report.md").read_text()
    x = np.array([v[0] for v in POINTS["loss=good"].values()])
    low, high = t_interval(x)
    assert f"[{low:.4g}, {high:.4g}]" in text.split("### 95 % confidence intervals")[1]
    assert "Against the baseline" not in text


def test_paired_difference_to_the_baseline_matches_scipy(sweep):
    assert main([str(sweep), "--baseline", "loss=yolo"]) == 0
    rows = read_rows(sweep / "report" / "report.csv")
    base = rows["loss=yolo"]
    assert base["baseline"] == "True" and base[f"{METRIC}_diff"] == base[f"{METRIC}_p"] == ""
    for override in ("loss=good", "loss=noisy", "loss=two", "loss=more"):
        row, seeds = rows[override], sorted(set(POINTS[override]) & set(BASE))
        assert row["baseline"] == "" and row["paired_seeds"] == str(len(seeds))
        for column, index in ((METRIC, 0), ("val/loss/box", 1)):
            a = np.array([POINTS[override][s][index] for s in seeds])
            b = np.array([BASE[s][index] for s in seeds])
            d = a - b
            low, high = t_interval(d)
            assert number(row[f"{column}_diff"]) == pytest.approx(d.mean())
            assert number(row[f"{column}_diff_ci95_low"]) == pytest.approx(low)
            assert number(row[f"{column}_diff_ci95_high"]) == pytest.approx(high)
            assert number(row[f"{column}_p"]) == pytest.approx(stats.ttest_rel(a, b).pvalue)
            assert row[f"{column}_resolved"] == str(bool(low > 0 or high < 0))
    assert rows["loss=good"][f"{METRIC}_resolved"] == "True"  # the numbers are chosen so that both cases occur
    assert rows["loss=noisy"][f"{METRIC}_resolved"] == "False"
    # seed 3 of "more" has no partner: 0.99 would make the difference large if it were used
    assert number(rows["loss=more"][f"{METRIC}_diff"]) == pytest.approx((0.01 + 0.02 - 0.01) / 3)


def test_one_seed_and_no_common_seed_give_no_interval(sweep):
    report(sweep, baseline=["loss=yolo"])
    rows = read_rows(sweep / "report" / "report.csv")
    one = rows["loss=one"]
    assert one["paired_seeds"] == "1"
    assert number(one[f"{METRIC}_diff"]) == pytest.approx(0.65 - 0.60)
    assert one[f"{METRIC}_diff_ci95_low"] == one[f"{METRIC}_diff_ci95_high"] == one[f"{METRIC}_p"] == ""
    assert one[f"{METRIC}_resolved"] == ""
    apart = rows["loss=apart"]
    assert apart["paired_seeds"] == "0"
    assert all(apart[f"{METRIC}_{s}"] == "" for s in ("diff", "diff_ci95_low", "diff_ci95_high", "p", "resolved"))
    text = (sweep / "report" / "report.md").read_text().split("## Against the baseline")[1].split("\n## ")[0]
    assert "Baseline `loss=yolo` (seeds 0, 1, 2)" in text
    assert "`loss=one`: 1 paired seed (2): a difference, but no interval or p-value (n/a)" in text
    assert "`loss=two`: 2 paired seeds (0, 1): the interval has 1 degree(s) of freedom and is wide" in text
    assert "`loss=apart`: no seed in common with the baseline (its seeds: 7, 8; the baseline's: 0, 1, 2)" in text
    assert "`loss=good`:" not in text and "`loss=more`:" not in text  # 3 paired seeds: no note
    table_rows = {tuple(c.strip() for c in line.strip("|").split("|")[:3]): line for line in text.splitlines()}
    assert "| 0.05 | n/a | n/a | n/a |" in table_rows[("loss=one", "1", METRIC)]
    assert "| n/a | n/a | n/a | n/a |" in table_rows[("loss=apart", "0", METRIC)]
    assert table_rows[("loss=good", "3", METRIC)].rstrip().endswith("| yes |")
    assert table_rows[("loss=noisy", "3", METRIC)].rstrip().endswith("| no |")


def test_baseline_of_several_overrides_and_numeric_values(tmp_path):
    points = {
        f"loss={loss} loss.terms.box.weight={w}": {s: (0.5 + 0.1 * s + (w == "7.5") * 0.01, 1.0) for s in range(3)}
        for loss in ("yolo", "yolo_vfl")
        for w in ("2.5", "7.5")
    }
    sweep = make_sweep(tmp_path / "sweep", points)
    assert main([str(sweep), "--baseline", "loss=yolo", "loss.terms.box.weight=7.50"]) == 0
    rows = read_rows(sweep / "report" / "report.csv")
    assert rows["loss.terms.box.weight=7.5 loss=yolo"]["baseline"] == "True"  # the column is sorted
    assert number(rows["loss.terms.box.weight=2.5 loss=yolo"][f"{METRIC}_diff"]) == pytest.approx(-0.01)
    assert number(rows["loss.terms.box.weight=7.5 loss=yolo_vfl"][f"{METRIC}_diff"]) == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("baseline", "message"),
    [
        (["loss=nope"], "--baseline loss=nope matches no sweep point; the points are: loss=apart; loss=more"),
        (["loss.terms.box.weight=1"], "--baseline loss.terms.box.weight=1 matches no sweep point"),
        (["seed=0"], "--baseline: 'seed=0' names a seed"),
        (["loss"], "--baseline: 'loss' is not a KEY=VALUE override"),
        (["loss=yolo", "loss=good"], "--baseline: loss is given twice"),
    ],
)
def test_a_bad_baseline_is_one_line_naming_the_argument(sweep, capsys, baseline, message):
    assert main([str(sweep), "--baseline", *baseline]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("detloss-report: error: --baseline")
    assert message in captured.err and captured.err.count("\n") == 1
    if "matches no sweep point" in message:  # every point listed, best first
        assert captured.err.rstrip().endswith("loss=good; loss=one; loss=noisy; loss=two; loss=yolo")
    assert not (sweep / "report").exists()  # nothing written


def test_a_baseline_matching_several_points_lists_them(tmp_path, capsys):
    points = {f"loss=yolo loss.terms.box.weight={w}": {0: (0.5, 1.0)} for w in ("2.5", "7.5")}
    sweep = make_sweep(tmp_path / "sweep", points)
    assert main([str(sweep), "--baseline", "loss=yolo"]) == 1
    err = capsys.readouterr().err
    assert "--baseline loss=yolo matches 2 sweep points" in err
    assert "loss.terms.box.weight=2.5 loss=yolo" in err and "loss.terms.box.weight=7.5 loss=yolo" in err
    run = make_run(tmp_path / "run", [], 0, {METRIC: 0.5})
    with pytest.raises(ValueError, match="--baseline compares the points of a sweep"):
        report(run, baseline=["loss=yolo"])


def test_loss_falling_while_the_metric_rises_has_rho_minus_one(tmp_path):
    metric = [0.1, 0.3, 0.35, 0.5, 0.7]
    wiggly = [2.0, 1.0, 1.5, 0.5, 0.8]
    log = (metric, {"box": [5.0, 4.0, 3.5, 2.0, 1.0], "cls": wiggly, "dfl": [1.0] * 5})
    run = make_run(tmp_path / "run", [], 0, {METRIC: 0.7}, log=log)
    text = report(run).read_text().split("## Does the loss track the metric?")[1]
    with (run / "report" / "loss_metric_correlation.csv").open(newline="") as f:
        rows = {r["term"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"val/loss/box", "val/loss/cls", "val/loss/dfl", "val/loss"}
    assert float(rows["val/loss/box"]["rho"]) == pytest.approx(-1.0) and rows["val/loss/box"]["n"] == "5"
    expected = stats.spearmanr(wiggly, metric)
    assert float(rows["val/loss/cls"]["rho"]) == pytest.approx(expected.statistic)
    assert float(rows["val/loss/cls"]["p"]) == pytest.approx(expected.pvalue)
    assert rows["val/loss/dfl"]["rho"] == rows["val/loss/dfl"]["p"] == ""  # a constant term: undefined
    total = [a + b + c for a, b, c in zip(*log[1].values())]
    assert float(rows["val/loss"]["rho"]) == pytest.approx(stats.spearmanr(total, metric).statistic)
    header = next(line for line in text.splitlines() if line.startswith("| epochs"))
    assert header == "| epochs | val/loss/box | val/loss/cls | val/loss/dfl | val/loss |"
    assert f"| 5 | −1.00 | {expected.statistic:+.2f} | n/a |".replace("-", "−") in text


def test_correlation_needs_three_epochs_and_three_points(tmp_path):
    short = make_run(tmp_path / "short", [], 0, {METRIC: 0.5}, log=([0.1, 0.5], {"box": [2.0, 1.0]}))
    text = report(short).read_text()
    assert "| 2 | n/a | n/a |" in text
    finals = {"loss=a": (0.5, 3.0), "loss=b": (0.7, 2.0), "loss=c": (0.6, 1.0), "loss=d": (0.9, 0.5)}
    sweep = tmp_path / "sweep"
    for job, (override, (value, box)) in enumerate(finals.items()):
        make_run(sweep / str(job), [override], 0, {METRIC: value, "val/loss/box": box})
    text = report(sweep).read_text()
    with (sweep / "report" / "loss_metric_correlation.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["scope"] == "points"]
    expected = stats.spearmanr([b for _, b in finals.values()], [v for v, _ in finals.values()]).statistic
    assert [(r["term"], r["n"]) for r in rows] == [("val/loss/box", "4")]
    assert float(rows[0]["rho"]) == pytest.approx(expected)
    assert f"| val/loss/box | 4 | {expected:+.2f} |".replace("-", "−") in text
    two = make_sweep(tmp_path / "two", {"loss=a": {0: (0.5, 1.0)}, "loss=b": {0: (0.6, 0.9)}})
    assert "| val/loss/box | 2 | n/a |" in report(two).read_text()


def test_no_optuna_storage_is_a_one_line_note(sweep):
    text = report(sweep).read_text().split("## Optuna study")[1].split("\n## ")[0]
    assert text.strip() == (
        "No Optuna storage in the sweep directory (no `optuna.db`, journal file or `storage` in `multirun.yaml`): "
        "no study to report."
    )
    assert not (sweep / "report" / "optuna_history.csv").exists()


def _fill_study(optuna, storage, name: str, trials: int = 12):
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0)
    )

    def objective(trial):
        box = trial.suggest_float("loss.terms.box.weight", 1.0, 20.0, log=True)
        cls = trial.suggest_float("loss.terms.cls.weight", 0.1, 4.0)
        if trial.number == 3:
            raise optuna.TrialPruned()
        return -((math.log(box) - 2.0) ** 2) - 0.01 * cls

    study.optimize(objective, n_trials=trials)
    return study


def test_optuna_study_importances_and_history(sweep):
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _fill_study(optuna, f"sqlite:///{sweep / 'optuna.db'}", "detection_loss_weights")
    text = report(sweep).read_text().split("## Optuna study")[1].split("\n## ")[0]
    assert "### `detection_loss_weights`" in text and "11 complete, 1 pruned" in text
    expected = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
    )
    for name, value in expected.items():
        assert f"| {name} | {value:.4g} |" in text
    assert f"| {study.best_trial.number} | {study.best_value:.4g} |" in text
    assert (sweep / "report" / "optuna_history.png").read_bytes()[:4] == b"\x89PNG"
    with (sweep / "report" / "optuna_history.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["trial"]) for r in rows] == list(range(12))
    assert rows[3]["state"] == "PRUNED" and rows[3]["value"] == ""
    values = [t.value if t.value is not None else -math.inf for t in study.trials]
    assert [float(r["best_so_far"]) for r in rows] == pytest.approx(list(np.maximum.accumulate(values)))
    box = study.trials[5].params["loss.terms.box.weight"]
    assert float(rows[5]["param_loss.terms.box.weight"]) == pytest.approx(box)


def test_optuna_journal_storage_named_in_multirun_yaml(sweep):
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    backend = optuna.storages.journal.JournalFileBackend(str(sweep / "study.log"))
    _fill_study(optuna, optuna.storages.JournalStorage(backend), "other", trials=4)
    _fill_study(optuna, optuna.storages.JournalStorage(backend), "mine", trials=5)
    (sweep / "multirun.yaml").write_text("hydra:\n  sweeper:\n    storage: study.log\n    study_name: mine\n")
    text = report(sweep).read_text().split("## Optuna study")[1].split("\n## ")[0]
    assert "### `mine`" in text and "4 complete, 1 pruned" in text and "`other`" not in text


def test_storage_named_by_optimization_results_with_objective_names(tmp_path, sweep):
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    elsewhere = tmp_path / "studies" / "shared.log"
    elsewhere.parent.mkdir()
    backend = optuna.storages.journal.JournalFileBackend(str(elsewhere))
    _fill_study(optuna, optuna.storages.JournalStorage(backend), "detection_loss_weights", trials=6)
    (sweep / "optimization_results.yaml").write_text(
        f"name: detloss_optuna\nstudy_name: detection_loss_weights\nstorage: journal://{elsewhere}?lock=open\n"
        "directions: [maximize]\nobjectives: [val/map_50]\n"
    )
    text = report(sweep).read_text().split("## Optuna study")[1].split("\n## ")[0]
    assert f"Storage `{elsewhere.resolve()}`; `val/map_50` (maximize); 5 complete, 1 pruned." in text
    assert "| trial | val/map_50 | parameters |" in text and "| parameter | val/map_50 |" in text


def test_pruned_trials_are_neither_results_nor_failures(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", {"loss=a": {0: (0.5, 1.0), 1: (0.6, 1.0)}})
    pruned = make_run(sweep / "2", ["loss=a"], 2, {METRIC: 0.1, "val/loss/box": 3.0})
    record = json.loads((pruned / "metrics.json").read_text()) | {"status": "pruned", "pruned_epoch": 3}
    (pruned / "metrics.json").write_text(json.dumps(record))
    text = report(sweep).read_text()
    row = read_rows(sweep / "report" / "report.csv")["loss=a"]
    assert row["failed"] == "0" and row["pruned"] == "1" and row["seeds"] == "3"
    assert number(row[f"{METRIC}_mean"]) == pytest.approx(0.55)  # the pruned run's 0.1 is not a result
    assert "1 failed" not in text and "0 failed, 1 pruned" in text and "3 (pruned: 1/3)" in text
    assert "## Failed jobs" not in text
    assert "| `2` | loss=a seed=2 | 3 | 0.1 |" in text.split("## Pruned trials")[1]
    assert "pruned after epoch: 3" in report(pruned, tmp_path / "one").read_text()
