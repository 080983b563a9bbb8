"""The job's side of an Optuna search (``detloss.sweeps.OptunaTrial``) with a stand-in trainer and a real study: it
reports the optimised metric per epoch, stops a trial that the median pruner prunes, stores the final metrics and
the step time in the trial, and ``metrics.json`` then says ``pruned`` and the epoch."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

optuna = pytest.importorskip("optuna")

from detloss.runs import write_metrics  # noqa: E402
from detloss.sweeps import OptunaTrial, trial_callbacks  # noqa: E402
from hydra_plugins.detloss_optuna_sweeper.storage import PRUNER_ATTR, TrialIdentity, open_storage  # noqa: E402


def fake_trainer(**kw) -> SimpleNamespace:
    strategy = SimpleNamespace(broadcast=lambda obj, src=0: obj)
    return SimpleNamespace(
        sanity_checking=False,
        is_global_zero=True,
        world_size=1,
        current_epoch=0,
        callback_metrics={},
        should_stop=False,
        strategy=strategy,
        callbacks=[],
        checkpoint_callback=None,
        **kw,
    )


@pytest.fixture
def study(tmp_path):
    """A minimised study with one finished trial that reported 1.0 at epochs 0 and 1, and a median pruner that
    prunes from the second trial on."""
    url = f"journal://{tmp_path / 'optuna.log'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url), direction="minimize")
    first = study.ask()
    first.report(1.0, 0)
    first.report(1.0, 1)
    study.tell(first, 1.0)
    study.url = url
    return study


def new_trial(study) -> TrialIdentity:
    trial = study.ask()
    pruner = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 1, "n_warmup_steps": 0}
    study._storage.set_trial_system_attr(trial._trial_id, PRUNER_ATTR, pruner)
    return TrialIdentity(study.url, "s", trial.number)


def test_a_clearly_worse_trial_is_pruned_and_its_metrics_json_says_so(study, tmp_path):
    callback = OptunaTrial(new_trial(study), "val/loss")
    trainer = fake_trainer()
    trainer.callbacks = [callback]
    callback.on_fit_start(trainer, None)
    trainer.sanity_checking, trainer.callback_metrics = True, {"val/loss": torch.tensor(9.0)}
    callback.on_validation_end(trainer, None)  # the sanity check is not reported
    trainer.sanity_checking, trainer.callback_metrics = False, {"val/loss": torch.tensor(5.0)}
    callback.on_validation_end(trainer, None)
    assert trainer.should_stop and callback.pruned_epoch == 0
    trial = study.trials[1]
    assert trial.intermediate_values == {0: 5.0} and trial.user_attrs["pruned_epoch"] == 0

    cfg = OmegaConf.create({"optimized_metric": "val/loss", "task_name": "segmentation", "seed": 0})
    write_metrics(tmp_path, cfg, {"val/loss": 5.0}, trainer, (1, 2), seconds=1.0)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert (record["status"], record["pruned_epoch"], record["epochs"], record["value"]) == ("pruned", 0, 1, 5.0)


def test_a_good_trial_goes_on_and_stores_its_metrics_and_step_time(study, tmp_path):
    callback = OptunaTrial(new_trial(study), "val/loss")
    trainer = fake_trainer()
    callback.on_fit_start(trainer, None)
    for epoch in range(2):
        trainer.current_epoch = epoch
        for _ in range(3):
            callback.on_train_batch_start(trainer, None, None, 0)
            callback.on_train_batch_end(trainer, None, None, None, 0)
        trainer.callback_metrics = {"val/loss": torch.tensor(0.5), "val/dice": torch.tensor(0.7)}
        callback.on_validation_end(trainer, None)
    callback.on_fit_end(trainer, None)
    assert not trainer.should_stop and callback.pruned_epoch is None
    trial = study.trials[1]
    assert trial.intermediate_values == {0: 0.5, 1: 0.5} and "pruned_epoch" not in trial.user_attrs
    metrics = trial.user_attrs["metrics"]
    assert metrics["val/dice"] == pytest.approx(0.7) and 0 <= metrics["time/step"] < 1

    cfg = OmegaConf.create({"optimized_metric": "val/loss", "task_name": "segmentation", "seed": 0})
    write_metrics(tmp_path, cfg, {"val/loss": 0.5}, trainer, (2, 6), seconds=1.0)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "ok" and "pruned_epoch" not in record


def test_a_trial_finished_elsewhere_is_left_alone(study):
    identity = new_trial(study)
    callback = OptunaTrial(identity, "val/loss")
    trainer = fake_trainer()
    callback.on_fit_start(trainer, None)
    study.tell(identity.number, state=optuna.trial.TrialState.FAIL)  # e.g. failed as stale by another process
    trainer.callback_metrics = {"val/loss": torch.tensor(5.0)}
    callback.on_validation_end(trainer, None)
    assert not trainer.should_stop and callback.trial is None
    callback.on_fit_end(trainer, None)  # nothing more is sent


def test_only_a_job_of_the_sweeper_gets_the_callback(study, monkeypatch):
    cfg = OmegaConf.create({"optimized_metric": "val/map_50"})
    monkeypatch.delenv("DETLOSS_OPTUNA_TRIAL", raising=False)
    assert trial_callbacks(cfg) == []
    identity = new_trial(study)
    monkeypatch.setenv("DETLOSS_OPTUNA_STORAGE", identity.storage)
    monkeypatch.setenv("DETLOSS_OPTUNA_STUDY", identity.study_name)
    monkeypatch.setenv("DETLOSS_OPTUNA_TRIAL", str(identity.number))
    (callback,) = trial_callbacks(cfg)
    assert callback.identity == identity and callback.monitor == "val/map_50"


def test_every_rank_stops_when_rank_0_prunes(study):
    # a rank other than 0 opens no trial and reports nothing; it takes rank 0's answer from the broadcast
    callback = OptunaTrial(new_trial(study), "val/loss")
    said = []
    trainer = fake_trainer()
    trainer.is_global_zero, trainer.world_size = False, 2
    trainer.strategy.broadcast = lambda obj, src=0: said.append((obj, src)) or True
    callback.on_fit_start(trainer, None)
    trainer.callback_metrics = {"val/loss": torch.tensor(0.1)}
    callback.on_validation_end(trainer, None)
    assert callback.trial is None and said == [(False, 0)]
    assert trainer.should_stop and callback.pruned_epoch == 0
    assert study.trials[1].intermediate_values == {}


def test_the_launching_copy_under_ddp_spawn_learns_the_pruning_from_the_trial(study):
    # under ddp_spawn the ranks ran copies of the callback; rank 0's copy recorded the pruning in the trial
    identity = new_trial(study)
    study._storage.set_trial_user_attr(study.trials[1]._trial_id, "pruned_epoch", 1)
    assert OptunaTrial(identity, "val/loss").pruned_epoch == 1
    assert OptunaTrial(new_trial(study), "val/loss").pruned_epoch is None
