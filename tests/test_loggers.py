"""``logger=mlflow`` (a local SQLite store in the run directory) and ``logger=wandb`` (offline): Lightning's own
loggers, each run for a few steps when its package is installed."""

import json

import pytest

from detloss.train import train

#: two steps and a validation (fast_dev_run would swap the loggers for a dummy)
TINY = ["data.num_train=8", "data.num_val=4", "data.batch_size=4", "data.image_size=64", "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1", "callbacks=none", "task.num_previews=0"]  # fmt: skip


def test_mlflow_writes_a_local_store_in_the_run_directory(tmp_path, compose):
    mlflow = pytest.importorskip("mlflow", reason="logger=mlflow needs the mlflow package")
    train(compose("logger=mlflow", *TINY))
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "ok"
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("detloss_detection").experiment_id])
    assert {"train/loss", "val/map_50", "val/loss/box"} <= set(run.data.metrics), run.data.metrics
    assert (tmp_path / "csv" / "metrics.csv").is_file()  # beside the CSV log, as tensorboard is


def test_wandb_writes_an_offline_run_in_the_run_directory(tmp_path, compose, monkeypatch):
    pytest.importorskip("wandb", reason="logger=wandb needs the wandb package")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    train(compose("logger=wandb", *TINY))
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "ok"
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), list((tmp_path / "wandb").iterdir())
