"""Sweeps through the real command line: Hydra multiruns, a failing job, Optuna (the sweeper itself is tested on a
toy application in ``test_optuna_sweeper.py``), the SLURM launcher config, resuming a run, and the report written
from what the jobs leave behind."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_config

from detloss.report import main as report_main

#: jobs of a few steps on a few images: what is tested is the plumbing, not the learning
TINY = [
    "data.num_train=16",
    "data.num_val=8",
    "data.batch_size=8",
    "data.image_size=64",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "task.num_previews=1",
]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "detloss.train", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"detloss.train {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def records(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))}


def test_a_weight_sweep_runs_every_job_and_reports_it(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli("-m", "loss.terms.box.weight=2.5,5", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    jobs = records(sweep)
    assert sorted(jobs) == ["0", "1"]
    assert all(r["status"] == "ok" and r["optimized_metric"] == "val/map_50" for r in jobs.values())
    weights = [[o for o in r["overrides"] if o.startswith("loss.terms.box.weight=")] for r in jobs.values()]
    assert sorted(weights) == [["loss.terms.box.weight=2.5"], ["loss.terms.box.weight=5"]]
    assert not (tmp_path / "outputs").exists()  # nothing outside the sweep directory

    assert report_main([str(sweep)]) == 0
    rows = list(csv.DictReader((sweep / "report" / "report.csv").open()))
    assert len(rows) == 2 and {r["loss.terms.box.weight"] for r in rows} == {"2.5", "5"}
    assert (sweep / "report" / "report.md").read_text().count("\n|") >= 3
    plots = list((sweep / "report").rglob("*.png"))
    assert any(p.name.startswith("sweep_") for p in plots) and any(p.name == "loss_terms.png" for p in plots)


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli("-m", "optimizer.lr=-1,0.002", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    jobs = records(sweep)
    assert jobs["0"]["status"] == "failed" and "learning rate" in jobs["0"]["error"]
    assert "Traceback" in (sweep / "0" / "error.txt").read_text()
    assert jobs["1"]["status"] == "ok"
    assert report_main([str(sweep)]) == 0
    markdown = (sweep / "report" / "report.md").read_text()
    assert "Failed" in markdown and "learning rate" in markdown


def test_a_plain_run_writes_into_the_default_run_directory(tmp_path):
    run_cli(*TINY, cwd=tmp_path)
    (record,) = list((tmp_path / "outputs" / "detection" / "runs").glob("*/metrics.json"))
    assert json.loads(record.read_text())["status"] == "ok"


def test_a_single_failing_run_exits_with_the_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "detloss.train", "optimizer.lr=-1", *TINY, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "learning rate" in proc.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("full_error", [False, True])
def test_a_single_run_failing_during_fit_ends_with_one_line_naming_error_txt(tmp_path, full_error):
    # a learning rate of 1e30 turns every weight huge at the first step: at the second the criterion refuses the
    # non-finite head output it gets
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | (
        {"HYDRA_FULL_ERROR": "1"} if full_error else {}
    )
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "detloss.train", "optimizer.lr=1e30", *TINY, f"hydra.run.dir={run}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode != 0
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("ValueError: feats[")
    assert "contains NaN or inf" in record["error"]
    assert "Traceback" in (run / "error.txt").read_text()
    if full_error:
        assert "Traceback" in proc.stderr and "contains NaN or inf" in proc.stderr
        return
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("detloss: error: ValueError: feats[0] (the head output of stride 8) contains NaN"), last
    assert re.search(r"\(detloss/[a-z_/]+\.py:\d+\); full traceback in .*error\.txt$", last), last
    assert last.endswith(str(run / "error.txt")) and "Traceback" not in proc.stderr


def test_seeds_are_aggregated_in_the_report(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli("-m", "task=segmentation", "seed=0,1", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert report_main([str(sweep)]) == 0
    (row,) = list(csv.DictReader((sweep / "report" / "report.csv").open()))
    assert row["seeds"] == "2"
    values = [r["value"] for r in records(sweep).values()]
    assert float(row["val/dice_mean"]) == pytest.approx(sum(values) / 2, abs=1e-6)


def test_optuna_search_runs_two_trials(tmp_path):
    optuna = pytest.importorskip("optuna")
    sweep = tmp_path / "optuna"
    run_cli(
        "task=segmentation",
        "hparams_search=segmentation_loss_weights",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    jobs = records(sweep)
    assert sorted(jobs) == ["0", "1"] and all(r["status"] == "ok" for r in jobs.values())
    weights = [o for r in jobs.values() for o in r["overrides"] if o.startswith("loss.terms.dice.weight=")]
    assert len(weights) == 2  # the sampled values are the jobs' overrides
    results = (sweep / "optimization_results.yaml").read_text()
    assert "best_params" in results and "complete: 2" in results
    # the study is kept in the sweep directory; each trial got its epoch's val/dice, the run's metrics and step time
    study = optuna.load_study(study_name="segmentation_loss_weights", storage=f"sqlite:///{sweep / 'optuna.db'}")
    for trial, job in zip(study.trials, (jobs["0"], jobs["1"])):
        assert trial.intermediate_values == {0: job["value"]} and trial.value == job["value"]
        assert trial.user_attrs["metrics"]["val/dice"] == job["value"] and trial.user_attrs["metrics"]["time/step"] > 0


@pytest.mark.slow
def test_a_failing_optuna_trial_is_told_as_failed_and_the_search_goes_on(tmp_path):
    pytest.importorskip("optuna")
    extra = tmp_path / "configs" / "hparams_search"
    extra.mkdir(parents=True)
    # a learning rate of which one value fails: the grid tries both, in an order its seed fixes
    (extra / "failing_lr.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - override /hydra/sweeper: detloss_optuna\n  - override /hydra/sweeper/sampler: grid\n"
        "hydra:\n  mode: MULTIRUN\n  sweeper:\n    direction: maximize\n    n_trials: 2\n"
        "    max_failure_rate: 1.0\n    sampler:\n      seed: 0\n"
        "    params:\n      optimizer.lr: choice(-1, 0.002)\n"
    )
    sweep = tmp_path / "optuna"
    run_cli(
        f"--config-dir={tmp_path / 'configs'}",
        "task=segmentation",
        "hparams_search=failing_lr",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    jobs = records(sweep)
    assert sorted(jobs[k]["status"] for k in jobs) == ["failed", "ok"]
    results = (sweep / "optimization_results.yaml").read_text()
    assert "optimizer.lr: 0.002" in results and "fail: 1" in results


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["cpu", "ddp_sim"])
def test_a_real_run_that_the_median_pruner_stops_says_pruned(tmp_path, trainer):
    # two searches of one trial each on one journal: a run with the Dice term weighted 0.1, then one with 100,
    # whose val/loss is far above the first's at epoch 0, so the median pruner stops it there (on every rank of
    # two spawned processes with trainer=ddp_sim)
    pytest.importorskip("optuna")
    journal = tmp_path / "optuna.log"
    common = [
        "task=segmentation",
        "hparams_search=segmentation_loss_weights",
        "optimized_metric=val/loss",
        "hydra.sweeper.direction=minimize",
        f"hydra.sweeper.storage=journal://{journal}",
        "hydra.sweeper.n_trials=1",
        "hydra.sweeper.pruner.n_startup_trials=1",
        "hydra.sweeper.pruner.n_warmup_steps=0",
        "loss.terms.ce.weight=1.0",
        *TINY,
        "trainer.max_epochs=2",
    ]
    run_cli(*common, "loss.terms.dice.weight=0.1", f"hydra.sweep.dir={tmp_path / 'first'}", cwd=tmp_path)
    run_cli(*common, "loss.terms.dice.weight=100", f"trainer={trainer}", f"hydra.sweep.dir={tmp_path / 'second'}",
            cwd=tmp_path)  # fmt: skip
    assert records(tmp_path / "first")["0"]["status"] == "ok"
    record = records(tmp_path / "second")["1"]  # the job of trial 1
    assert (record["status"], record["pruned_epoch"], record["epochs"]) == ("pruned", 0, 1)
    assert "pruned: 1" in (tmp_path / "second" / "optimization_results.yaml").read_text()


def test_evaluate_a_checkpoint(tmp_path):
    run_cli(*TINY, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    proc = subprocess.run(
        [sys.executable, "-m", "detloss.eval", f"ckpt_path={ckpt}", *TINY, f"hydra.run.dir={tmp_path / 'eval'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["metrics"]["val/map_50"] == pytest.approx(trained["metrics"]["val/map_50"], abs=1e-6)


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_the_quick_experiment_composes(task):
    cfg = compose_config(f"task={task}", "experiment=quick")
    assert (cfg.data.num_train, cfg.trainer.max_epochs) == (400, 3)


@pytest.mark.parametrize("search", ["detection_loss_weights", "segmentation_loss_weights"])
def test_optuna_configs_compose(search):
    task = "segmentation" if search.startswith("segmentation") else "detection"
    cfg = compose_config(f"task={task}", f"hparams_search={search}", return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.detloss_optuna_sweeper.sweeper.DetlossOptunaSweeper"
    assert sweeper.direction == "maximize" and sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert sweeper.pruner._target_ == "optuna.pruners.MedianPruner" and sweeper.storage is None
    for key in cfg.hydra.sweeper.params:
        assert key.startswith("loss.terms.") and key.removeprefix("loss.terms.").split(".")[0] in cfg.loss.terms


def test_an_optuna_search_composes_with_the_slurm_launcher():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_config(
        "hparams_search=detection_loss_weights",
        "hydra/launcher=slurm",
        "hydra.sweeper.storage=journal:///shared/optuna.log",
        "hydra.sweeper.n_jobs=8",
        return_hydra_config=True,
    )
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.sweeper.n_jobs == 8


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_config(
        "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2", return_hydra_config=True
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)


def test_resume_continues_the_same_run(tmp_path):
    run = tmp_path / "run"
    run_cli(*TINY, f"hydra.run.dir={run}", cwd=tmp_path)
    first = json.loads((run / "metrics.json").read_text())
    run_cli(*TINY, "trainer.max_epochs=2", f"resume={run}", cwd=tmp_path)
    second = json.loads((run / "metrics.json").read_text())
    assert (first["epochs"], second["epochs"]) == (1, 2)
    assert second["steps"] == 2 * first["steps"]
    steps = [int(r["step"]) for r in csv.DictReader((run / "csv" / "metrics.csv").open()) if r["train/loss"]]
    assert min(steps) < first["steps"] <= max(steps)  # one log, both parts
    assert not (tmp_path / "outputs").exists()


def test_resume_from_a_run_without_checkpoint_names_it(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "detloss.train", f"resume={tmp_path / 'nothing'}", *TINY],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "checkpoint to resume from not found" in proc.stderr
