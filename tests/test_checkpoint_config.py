"""Checkpoints carry their run's config and what the model knows of its data; ``detloss-eval`` rebuilds the run from
the checkpoint alone, and the command line wins over it."""

import json
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import compose_config
from omegaconf import OmegaConf
from test_data import make_masks

from detloss.config import CHECKPOINT_CONFIG, CHECKPOINT_DATA, checkpoint_arguments
from detloss.launch import VALUE_FLAGS
from detloss.runs import resolved_config
from detloss.train import train

#: a run on a tiny mask folder, 24 x 32 images letterboxed to 32, which no default of the shipped configs names
MASKS = ["task=segmentation", "data=masks", "data.num_classes=3", "data.image_size=32", "data.batch_size=2",
         "data.num_workers=0", "trainer.max_epochs=1", "logger=none", "loss=dice_focal"]  # fmt: skip


@pytest.fixture(scope="module")
def masks_run(tmp_path_factory):
    """A finished one-epoch segmentation run: its directory and its last checkpoint."""
    tmp = tmp_path_factory.mktemp("masks_run")
    root = make_masks(tmp / "data")
    cfg = compose_config(f"paths.output_dir={tmp / 'run'}", f"data.root={root}", *MASKS)
    train(cfg)
    return tmp / "run", tmp / "run" / "checkpoints" / "last.ckpt"


def test_every_checkpoint_carries_the_resolved_config_and_what_the_model_knows_of_its_data(masks_run):
    run_dir, last = masks_run
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert checkpoint[CHECKPOINT_CONFIG] == yaml.safe_load((run_dir / "config.yaml").read_text())
    data = dict(checkpoint[CHECKPOINT_DATA])
    plan = data.pop("plan")  # the U-Net's width and depth were planned (model=unet leaves them null)
    model = checkpoint[CHECKPOINT_CONFIG]["model"]
    assert (plan["base_channels"], plan["depth"]) == (model["base_channels"], model["depth"])
    assert data == {
        "kind": "segmentation",
        "class_names": ["class_0", "class_1", "class_2"],
        "category_ids": [0, 1, 2],
        "in_channels": 3,
        "image_size": 32,
        "resize": "letterbox",
        "fill": 0.0,
        "ignore_index": 255,
    }
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert best[CHECKPOINT_CONFIG]["loss"]["terms"].keys() == {"dice", "focal"}


def test_eval_rebuilds_the_run_from_the_checkpoint_alone(masks_run, tmp_path):
    _, last = masks_run
    cmd = [sys.executable, "-m", "detloss.eval", f"ckpt_path={last}", "hydra.run.dir=eval"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert record["optimized_metric"] == "val/dice"
    assert {"val/dice", "val/dice/class_1", "val/loss/focal"} <= record["metrics"].keys()


def test_the_eval_directory_is_named_after_the_checkpoints_task(masks_run):
    _, last = masks_run
    args = checkpoint_arguments([f"ckpt_path={last}", "paths.log_dir=logs"], VALUE_FLAGS)
    cfg = compose_config(*args, config_name="eval", return_hydra_config=True)
    assert OmegaConf.select(cfg, "hydra.run.dir").startswith("logs/segmentation/eval/")
    assert cfg.hydra.runtime.choices.data == "checkpoint"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint whose config is a segmentation run on masks at 32 px with Dice + focal, trained for 1 epoch."""
    out = tmp_path_factory.mktemp("saved")
    config = resolved_config(compose_config(f"paths.output_dir={out}", "data.root=/data/masks", *MASKS))
    torch.save({CHECKPOINT_CONFIG: config}, out / "saved.ckpt")
    return out / "saved.ckpt"


def rebuilt(checkpoint, *overrides: str, config_name: str = "eval"):
    """What ``detloss-eval ckpt_path=checkpoint overrides...`` composes."""
    args = checkpoint_arguments([f"ckpt_path={checkpoint}", *overrides], VALUE_FLAGS)
    return compose_config(*args, config_name=config_name)


def test_the_checkpoint_decides_model_data_loss_and_task(saved):
    cfg = rebuilt(saved)
    assert cfg.task_name == "segmentation" and cfg.optimized_metric == "val/dice"
    assert cfg.data._target_ == "detloss.data.MaskDataModule" and cfg.data.root == "/data/masks"
    assert cfg.data.image_size == 32 and set(cfg.loss.terms) == {"dice", "focal"}
    assert cfg.criterion._target_.endswith("SegmentationCriterion")
    assert cfg.model._target_ == "detloss.models.UNet" and cfg.task._target_.endswith("SegmentationTask")
    # the evaluation's own parts come from its config, not from the training run
    # (the training run's trainer.max_epochs was 1; the evaluation's trainer is train.yaml's cpu, epochs null)
    assert cfg.trainer.max_epochs is None and cfg.ckpt_path == str(saved) and cfg.logger is not None
    OmegaConf.to_container(OmegaConf.masked_copy(cfg, ["model", "data", "loss", "criterion", "task"]), resolve=True)


def test_values_on_the_command_line_win_over_the_checkpoint(saved):
    cfg = rebuilt(saved, "data.image_size=64", "data.batch_size=1", "+data.class_names=[a,b,c]", "~loss.terms.focal")
    assert (cfg.data.image_size, cfg.data.batch_size, list(cfg.data.class_names)) == (64, 1, ["a", "b", "c"])
    assert set(cfg.loss.terms) == {"dice"} and cfg.data.root == "/data/masks"
    assert rebuilt(saved, "data.root=/other").data.root == "/other"  # a key the default data (shapes) does not have


def test_a_group_chosen_on_the_command_line_replaces_the_checkpoints(saved):
    cfg = rebuilt(saved, "loss=dice_ce")
    assert set(cfg.loss.terms) == {"dice", "ce"} and cfg.data.root == "/data/masks"
    assert OmegaConf.to_container(cfg.loss, resolve=True)["terms"]["ce"]["loss"]["ignore_index"] == 255
    cfg = rebuilt(saved, "data=lesions", "data.num_val=4")
    assert cfg.data._target_ == "detloss.data.LesionsDataModule" and "root" not in cfg.data and cfg.data.num_val == 4
    assert cfg.model._target_ == "detloss.models.UNet"


def test_predict_composes_on_the_checkpoint_too_and_a_user_search_path_stays(saved, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("_target_: detloss.models.UNet\nbase_channels: 8\n")
    cfg = rebuilt(saved, "input=x", f"hydra.searchpath=[file://{tmp_path}]", "model=mine", config_name="predict")
    assert cfg.model.base_channels == 8 and cfg.data.root == "/data/masks" and cfg.input == "x"
    assert cfg.predict.conf_threshold == 0.25


def test_without_a_checkpoint_config_the_command_line_is_left_as_it_is(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "old.ckpt")
    for args in ([f"ckpt_path={tmp_path / 'old.ckpt'}", "task=segmentation"], ["ckpt_path=nope.ckpt"], ["--help"]):
        assert checkpoint_arguments(args, VALUE_FLAGS) == args


def test_last_ckpt_is_the_last_epoch_even_when_the_metric_did_not_improve(tmp_path):
    """``resume=RUN_DIR`` continues from ``last.ckpt``: it must hold the last epoch, not the best one. A detector
    trained for two epochs of one step scores mAP 0 twice, so ``best.ckpt`` stays at the first epoch."""
    cfg = compose_config(f"paths.output_dir={tmp_path / 'run'}", "task=detection", "data.num_train=4",
                         "data.num_val=4", "data.batch_size=4", "data.image_size=64", "trainer.max_epochs=2",
                         "logger=none", "task.num_previews=0")  # fmt: skip
    train(cfg)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    best = torch.load(checkpoints / "best.ckpt", map_location="cpu", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (1, 2)
    assert (best["epoch"], best["global_step"]) == (0, 1)  # mAP 0 in both epochs: the first stays the best
