"""The Optuna sweeper (``hydra/sweeper=detloss_optuna``): its search space, storage specs, and whole searches of a
toy Hydra application that starts in a second (no training): pruning told by the job, several objectives and
their Pareto front, failures, a study shared by two processes through a journal file, a killed search that
resumes, and jobs in other processes (submitit's local launcher). Real training runs are in ``test_sweeps.py``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402

from hydra_plugins.detloss_optuna_sweeper.search_space import format_override, grid_of, search_space  # noqa: E402
from hydra_plugins.detloss_optuna_sweeper.storage import TrialIdentity, normalise_storage, open_storage  # noqa: E402
from hydra_plugins.detloss_optuna_sweeper.sweeper import DetlossOptunaSweeper  # noqa: E402

# -- the search space ----------------------------------------------------------------------------------------------


def test_hydra_sweep_syntax_becomes_optuna_distributions():
    space = search_space(
        {
            "a": "choice(1, 2, x)",
            "b": "interval(0.5, 2)",
            "c": "int(interval(1, 8))",
            "d": "tag(log, interval(0.1, 4.0))",
            "e": "range(1, 10, 3)",
            "f": "range(0.1, 0.5, 0.1)",
            "g": [16, 32],
            "h": "adamw",
            "i": "a,b",
            "j": "tag(log, int(interval(1, 100)))",
        }
    )
    d = space.distributions
    assert d["a"] == CategoricalDistribution([1, 2, "x"])
    assert d["b"] == FloatDistribution(0.5, 2.0)
    assert d["c"] == IntDistribution(1, 8)
    assert d["d"] == FloatDistribution(0.1, 4.0, log=True)
    assert d["e"] == IntDistribution(1, 7, step=3)  # Python's range: 1, 4, 7
    assert d["f"].step == pytest.approx(0.1) and d["f"].high == pytest.approx(0.4)
    assert d["g"] == CategoricalDistribution([16, 32])
    assert d["i"] == CategoricalDistribution(["a", "b"])
    assert d["j"] == IntDistribution(1, 100, log=True)
    assert space.fixed == ["h=adamw"]
    assert grid_of({"e": d["e"], "g": d["g"]}) == {"e": [1, 4, 7], "g": [16, 32]}


def test_the_command_line_joins_the_space_and_wins():
    space = search_space({"a": "interval(0, 1)", "b": "choice(1, 2)"}, ["a=0.5", "c=range(1, 3)", "seed=3"])
    assert set(space.distributions) == {"b", "c"} and space.fixed == ["a=0.5", "seed=3"]
    assert space.overrides({"b": 2, "c": 1}) == ["a=0.5", "seed=3", "b=2", "c=1"]
    space = search_space({}, ["~logger", "+trainer.x=1", "data@d=y", "+z=choice(1, 2)"])
    assert space.fixed == ["~logger", "+trainer.x=1", "data@d=y"] and list(space.distributions) == ["+z"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("interval(2, 1)", "needs a < b"),
        ("tag(log, interval(0, 1))", "needs a > 0"),
        ("range(1, 10, 0)", "step > 0"),
        ("range(5, 1)", "holds no value"),
        ("tag(log, range(1, 10, 2))", "needs step 1"),
        ("tag(log, choice(1, 2))", "not to choice"),
    ],
)
def test_a_bad_param_names_its_key(value, message):
    with pytest.raises(ValueError, match=rf"hydra\.sweeper\.params\.lr: .*{message}"):
        search_space({"lr": value})


def test_grid_needs_a_discrete_space():
    with pytest.raises(ValueError, match=r"hydra.sweeper.params.lr: the grid sampler needs"):
        grid_of(search_space({"lr": "interval(0, 1)"}).distributions)


@pytest.mark.parametrize("value", [0.001, 3, True, None, "adamw", "a b", "true", "x,y", "1e3", "path/to:x"])
def test_a_sampled_value_reads_back_as_itself(value):
    override = OverridesParser.create().parse_override(format_override("k", value))
    assert override.value() == value and type(override.value()) is type(value)


def test_storage_specs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normalise_storage(None, "sweep") == f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}"
    assert normalise_storage("sqlite:///x.db", "s") == f"sqlite:///{tmp_path / 'x.db'}"
    assert normalise_storage("postgresql://u@h/db", "s") == "postgresql://u@h/db"
    assert normalise_storage("journal://j/o.log", "s") == f"journal://{tmp_path / 'j' / 'o.log'}"
    assert normalise_storage({"journal": "o.log", "lock": "open"}, "s") == f"journal://{tmp_path / 'o.log'}?lock=open"
    for bad in ("optuna.db", {"journal": "x", "lox": 1}, {"journal": "x", "lock": "flock"}, "journal://x?y=1"):
        with pytest.raises(ValueError, match="hydra.sweeper.storage"):
            normalise_storage(bad, "s")
    for spec in (normalise_storage(None, "sweep"), normalise_storage({"journal": "j/o.log", "lock": "open"}, "s")):
        storage = open_storage(spec)
        optuna.create_study(storage=storage, study_name="s")
        assert [s.study_name for s in storage.get_all_studies()] == ["s"]


def test_trial_identity_travels_as_job_overrides():
    identity = TrialIdentity("journal:///a b/o.log", "study", 7)
    env = {}
    for override in OverridesParser.create().parse_overrides(identity.overrides()):
        env[override.key_or_group.removeprefix("hydra.job.env_set.")] = override.value()
    assert TrialIdentity.from_env(env) == identity
    assert TrialIdentity.from_env({}) is None


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"direction": ["minimize", "maximize"], "pruner": "median"}, "hydra.sweeper.pruner: Optuna prunes single"),
        ({"direction": ["minimize", "maximize"], "objectives": ["val/a"]}, "hydra.sweeper.objectives: one metric per"),
        ({"direction": "up"}, "hydra.sweeper.direction: minimize, maximize"),
        ({"n_jobs": 0}, "hydra.sweeper.n_jobs: an integer >= 1"),
        ({"max_failure_rate": 2}, "hydra.sweeper.max_failure_rate: between 0 and 1"),
    ],
)
def test_bad_sweeper_keys_are_named(keys, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        DetlossOptunaSweeper(**keys)


def test_several_directions_of_a_detloss_job_need_objectives():
    sweeper = DetlossOptunaSweeper(direction=["maximize", "minimize"])
    with pytest.raises(ValueError, match=r"hydra.sweeper.objectives: 2 directions need as many metric names"):
        sweeper.setup(hydra_context=None, task_function=None, config=OmegaConf.create({"optimized_metric": "val/x"}))


def test_a_sampler_that_cannot_be_built_is_named():
    sweeper = DetlossOptunaSweeper(sampler={"_target_": "optuna.samplers.RandomSampler", "n_startup_trials": 3})
    with pytest.raises(ValueError, match=r"hydra.sweeper.sampler: optuna.samplers.RandomSampler cannot be built"):
        sweeper.build_sampler(search_space({}))


# -- whole searches of a toy application -----------------------------------------------------------------------------

#: a Hydra app whose "training" reports epochs to its trial as detloss's callback does: the value at epoch e is
#: x * (e + 1); it stops when the pruner says so (user attr pruned_epoch); ``die_at`` ends the process (a kill)
#: when that trial number starts; ``fail_at`` makes a job raise; every run stores its "metrics" val/a = x and
#: val/b = y in its trial; ``multi`` returns [x, y]
TOY_APP = """
import os, sys, time
import hydra
from hydra_plugins.detloss_optuna_sweeper.storage import TrialIdentity

@hydra.main(version_base="1.3", config_path=".", config_name="toy")
def main(cfg):
    identity = TrialIdentity.from_env()
    if identity.number == cfg.die_at:
        os._exit(3)
    if identity.number == cfg.fail_at:
        raise RuntimeError("this job fails")
    time.sleep(cfg.sleep)
    trial = identity.open()
    trial.set_user_attr("metrics", {"val/a": cfg.x, "val/b": cfg.y})
    if cfg.multi:
        return [cfg.x, cfg.y]
    if len(trial.study.directions) > 1:  # Optuna takes reports of single-objective trials only
        return cfg.x
    value = None
    for epoch in range(cfg.epochs):
        value = cfg.x * (epoch + 1)
        trial.report(value, epoch)
        if trial.should_prune():
            trial.set_user_attr("pruned_epoch", epoch)
            break
    return value

if __name__ == "__main__":
    main()
"""

TOY_CONFIG = """
defaults:
  - override hydra/sweeper: detloss_optuna
  - override hydra/sweeper/sampler: random
  - _self_
x: 1.0
y: 1.0
epochs: 3
die_at: -1
fail_at: -1
sleep: 0.0
multi: false
hydra:
  mode: MULTIRUN
  sweep: {dir: sweep, subdir: "${hydra.job.num}"}
  job: {chdir: false}
  sweeper:
    direction: minimize
    study_name: toy
    n_trials: 3
    sampler: {seed: 0}
    params:
      x: interval(1.0, 2.0)
"""


@pytest.fixture
def toy(tmp_path):
    (tmp_path / "toy.py").write_text(TOY_APP)
    (tmp_path / "toy.yaml").write_text(TOY_CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETLOSS_OPTUNA_")}

    def start(*args: str) -> subprocess.Popen:
        cmd = [sys.executable, str(tmp_path / "toy.py"), *args]
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def run(*args: str, expect: int = 0) -> str:
        proc = start(*args)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == expect, out[-4000:]
        return out

    run.start = start
    run.dir = tmp_path
    return run


def study_of(url: str, name: str = "toy") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


def results(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_a_toy_search_writes_its_results_and_numbers_jobs_by_trial(toy):
    toy("hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=2")  # one batch of 2 trials
    toy("hydra.sweeper.max_trials=3")  # run again on the same study: it continues, up to 3 trials in all
    study = study_of(f"sqlite:///{toy.dir / 'sweep' / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert sorted(p.name for p in (toy.dir / "sweep").iterdir() if p.is_dir()) == ["0", "1", "2"]
    found = results(toy.dir / "sweep" / "optimization_results.yaml")
    assert found["best_value"] == pytest.approx(study.best_value) and found["trials"]["complete"] == 3
    assert found["best_params"] == {"x": pytest.approx(study.best_params["x"])}
    assert found["objectives"] is None  # the toy has no optimized_metric


def test_a_trial_whose_reports_are_worse_than_the_median_is_pruned(toy):
    # trial 0 (x=1) completes; trial 1 (x=5: five times worse at every epoch) is pruned after its first epoch
    journal = toy.dir / "o.log"
    common = [
        f"hydra.sweeper.storage=journal://{journal}",
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=1",
        "hydra.sweeper.n_trials=1",
    ]
    toy(*common, "x=1.0")
    toy(*common, "x=5.0")
    trials = study_of(f"journal://{journal}").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED"]
    assert trials[1].user_attrs["pruned_epoch"] == 0 and trials[1].intermediate_values == {0: 5.0}
    assert trials[0].intermediate_values == {0: 1.0, 1: 2.0, 2: 3.0}


def test_several_objectives_give_a_pareto_front(toy):
    # objectives named: read from the metrics the run stored in its trial (as detloss's callback does)
    toy(
        "hydra.sweeper.direction=[minimize,maximize]",
        "hydra.sweeper.objectives=[val/a,val/b]",
        "hydra/sweeper/sampler=nsgaii",
        "y=interval(1.0,2.0)",
        "hydra.sweeper.n_trials=4",
    )
    found = results(toy.dir / "sweep" / "optimization_results.yaml")
    study = study_of(f"sqlite:///{toy.dir / 'sweep' / 'optuna.db'}")
    assert sorted(t["number"] for t in found["best_trials"]) == sorted(t.number for t in study.best_trials)
    assert all(t["values"] == [t["params"]["x"], t["params"]["y"]] for t in found["best_trials"])
    assert found["objectives"] == ["val/a", "val/b"]
    # no objectives named: the job returns one value per direction
    toy("multi=true", "hydra.sweeper.direction=[minimize,minimize]", "hydra.sweeper.n_trials=2", "hydra.sweep.dir=s2")
    front = results(toy.dir / "s2" / "optimization_results.yaml")["best_trials"]
    assert front and all(t["values"] == [t["params"]["x"], 1.0] for t in front)


def test_failed_jobs_are_told_and_max_failure_rate_stops_the_search(toy):
    toy("fail_at=1", "hydra.sweeper.max_failure_rate=0.5")
    study = study_of(f"sqlite:///{toy.dir / 'sweep' / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    out = toy("fail_at=3", "hydra.sweeper.max_failure_rate=0.0", expect=1)
    assert "more than hydra.sweeper.max_failure_rate=0.0 allows" in out
    assert len(study_of(f"sqlite:///{toy.dir / 'sweep' / 'optuna.db'}").trials) == 4  # the second run stopped


def test_a_job_that_cannot_be_composed_stops_the_search_and_its_trial_is_told_failed(toy):
    out = toy("nokey=choice(1,2)", expect=1)
    assert "Could not override 'nokey'" in out
    assert [t.state.name for t in study_of(f"sqlite:///{toy.dir / 'sweep' / 'optuna.db'}").trials] == ["FAIL"]


def test_a_grid_search_stops_when_the_grid_is_done(toy):
    toy("hydra/sweeper/sampler=grid", "x=choice(1.0,2.0)", "hydra.sweeper.n_trials=5")
    trials = study_of(f"sqlite:///{toy.dir / 'sweep' / 'optuna.db'}").trials
    assert sorted(t.params["x"] for t in trials) == [1.0, 2.0]


def test_two_processes_share_one_study_through_a_journal_file(toy):
    journal = toy.dir / "shared" / "optuna.log"
    procs = [
        toy.start(
            f"hydra.sweeper.storage=journal://{journal}",
            f"hydra.sweep.dir=sweep{i}",
            f"hydra.sweeper.sampler.seed={i}",
            "sleep=0.3",
        )
        for i in (0, 1)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out[-4000:]
    trials = study_of(f"journal://{journal}").trials
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    assert sorted(t.number for t in trials) == list(range(6))
    # each process ran three trials, and its job directories are named by the study's trial numbers
    jobs = [sorted(int(p.name) for p in (toy.dir / f"sweep{i}").iterdir() if p.is_dir()) for i in (0, 1)]
    assert sorted(jobs[0] + jobs[1]) == list(range(6)) and [len(j) for j in jobs] == [3, 3]


def test_a_killed_search_resumes_and_reruns_the_trial_it_lost(toy):
    # the process dies while trial 1 runs (as under kill -9 or a lost SLURM node): trial 1 stays RUNNING, with the
    # heartbeat of a process that is gone
    toy("die_at=1", expect=3)
    db = f"sqlite:///{toy.dir / 'sweep' / 'optuna.db'}"
    assert [t.state.name for t in study_of(db).trials] == ["COMPLETE", "RUNNING"]
    time.sleep(0.2)
    out = toy("hydra.sweeper.grace_period=0.1", "hydra.sweeper.n_trials=2")
    assert "trial 1 had no heartbeat" in out
    assert "the study holds 2 trials: sampler seed 2" in out  # not the first run's random draws again
    trials = study_of(db).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[2].user_attrs["retry_of"] == 1 and trials[2].params == trials[1].params  # re-run once
    found = results(toy.dir / "sweep" / "optimization_results.yaml")["trials"]
    assert (found["complete"], found["fail"]) == (3, 1)


def test_jobs_in_other_processes_report_and_are_pruned(toy):
    # submitit's local launcher runs each job in a process of its own: the trial identity reaches it through
    # hydra.job.env_set, and its reports and pruning reach the study through the storage
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    journal = toy.dir / "o.log"
    common = [
        "hydra/launcher=submitit_local",
        f"hydra.sweeper.storage=journal://{journal}",
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=1",
        "hydra.sweeper.n_trials=1",
    ]
    toy(*common, "x=1.0")
    toy(*common, "x=5.0")
    assert [t.state.name for t in study_of(f"journal://{journal}").trials] == ["COMPLETE", "PRUNED"]


@pytest.mark.slow
def test_a_lost_job_fails_its_trial_and_the_search_goes_on(toy):
    # a job whose process dies (a lost SLURM job): submitit's launcher raises (after waiting some 15 s for the
    # job's result), the trial fails, and the next trial runs
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    out = toy(
        "hydra/launcher=submitit_local",
        "die_at=0",
        "hydra.sweeper.max_failure_rate=1",
        "hydra.sweeper.n_trials=2",
    )
    assert "the launcher failed for trials 0-0" in out
    trials = study_of(f"sqlite:///{toy.dir / 'sweep' / 'optuna.db'}").trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
