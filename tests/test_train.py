"""The entry points through the real Hydra configs: composition, instantiation and fast_dev_run of both tasks."""

import json
import logging
import math
import re

import lightning as L
import pytest
import torch
from conftest import compose_config, config_names
from hydra.utils import instantiate

from detloss.composite import CompositeLoss
from detloss.runs import failure_line
from detloss.train import build, make_trainer, train

#: the package that a logger config needs
LOGGER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
SMALL = ["data.num_train=32", "data.num_val=16", "data.batch_size=8", "data.num_workers=0"]


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_fast_dev_run(tmp_path, task, compose):
    cfg = compose(f"task={task}", *SMALL, "+trainer.fast_dev_run=2", "callbacks=none", "logger=none")
    metrics = train(cfg)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "ok" and record["optimized_metric"] == cfg.optimized_metric
    assert cfg.optimized_metric in record["metrics"]
    assert any(k.startswith("val/loss/") for k in record["metrics"])
    assert (tmp_path / "config.yaml").is_file()
    assert (tmp_path / "previews").is_dir() and list((tmp_path / "previews").glob("*.png"))
    assert metrics[cfg.optimized_metric] == record["value"]


class _OutputDtypes(L.Callback):
    """Records the dtype of the model's output in every training step (to see mixed precision really ran)."""

    def __init__(self):
        self.dtypes = []

    def setup(self, trainer, module, stage):
        def hook(model, inputs, output):
            if model.training:
                self.dtypes.append((output[0] if isinstance(output, (list, tuple)) else output).dtype)

        module.model.register_forward_hook(hook)


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_bf16_mixed_trains_without_nan(tmp_path, task, compose):
    # CPU autocast in bfloat16 through the shipped configs: the losses compute in float32 (and EMA, for detection,
    # keeps float32 weights); every recorded metric and loss term must be finite
    cfg = compose(
        f"task={task}",
        *SMALL,
        "trainer.precision=bf16-mixed",
        "+trainer.max_steps=4",
        "+trainer.limit_val_batches=1",
        "callbacks=none",
        "logger=none",
    )
    probe = _OutputDtypes()
    metrics = train(cfg, callbacks=[probe])  # the final metrics, train/ and val/
    assert probe.dtypes and set(probe.dtypes) == {torch.bfloat16}, probe.dtypes
    for term in cfg.loss.terms:
        assert f"train/loss/{term}" in metrics and f"val/loss/{term}" in metrics, sorted(metrics)
    record = json.loads((tmp_path / "metrics.json").read_text())  # what the run directory keeps
    assert record["status"] == "ok" and cfg.optimized_metric in record["metrics"], record
    for values in (metrics, record["metrics"]):
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        assert not bad, bad


def test_a_short_run_logs_every_term_to_csv_and_checkpoints(tmp_path, compose):
    cfg = compose(*SMALL, "trainer.max_epochs=1", "trainer.log_every_n_steps=1", "loss=yolo_l1_ciou")
    train(cfg)
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for name in (
        "train/loss",
        "train/loss/box",
        "train/loss/cls",
        "train/loss/dfl",
        "train/loss/l1",
        "val/loss/l1",
        "val/map_50",
    ):
        assert name in header
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()


def test_task_switches_model_loss_data_and_metric(tmp_path, compose):
    det, seg = compose(), compose("task=segmentation")
    assert det.model._target_.endswith("YOLODetector") and seg.model._target_.endswith("UNet")
    assert det.optimized_metric == "val/map_50" and seg.optimized_metric == "val/dice"
    assert "dice" in seg.loss.terms and "box" in det.loss.terms
    assert seg.data._target_.endswith("LesionsDataModule")
    # the command line still wins over the task's choices
    assert "focal" in compose("task=segmentation", "loss=dice_focal").loss.terms
    assert compose("loss.terms.box.weight=5").loss.terms.box.weight == 5


@pytest.mark.parametrize("loss", config_names("loss"))
def test_every_loss_config(tmp_path, loss, compose):
    task = "detection" if loss.startswith("yolo") else "segmentation"
    model = ["model=yolo26_nano"] if loss.startswith("yolo26") else []  # an end-to-end loss needs the two heads
    cfg = compose(f"task={task}", f"loss={loss}", *model, *SMALL)
    if loss == "dice_bce_regions":  # sigmoid terms, one channel per region: volumes with regions, at one scale
        small = ["data.num_cases=5", "data.shape=[16,32,32]", "data.patch_size=[16,32,32]", "data.batch_size=2"]
        small += ["data.patches_per_epoch=2", "trainer.max_epochs=1", "model.base_channels=4", "model.depth=3"]
        one_scale = ["model.deep_supervision=false", "criterion.deep_supervision=null"]
        cfg = compose("task=brats", f"data.cache_dir={tmp_path}", *small, *one_scale)
    datamodule, module = build(cfg)
    assert isinstance(module.criterion.loss, CompositeLoss)
    images, targets = next(iter(datamodule.train_dataloader()))
    out = module.criterion(module.model(images), targets)
    assert set(out.terms) == set(module.criterion.loss.names) and torch.isfinite(out.total)
    assert {name.split("/")[0] for name in out.terms} == set(cfg.loss.terms)


@pytest.mark.parametrize("model", config_names("model"))
def test_every_model_config(tmp_path, model, compose):
    if model.startswith("unet3d"):  # a 3D model takes its spacing and patch size from volumetric data
        patch = [128, 128, 128] if model == "unet3d_large" else [32, 64, 64]  # 5 poolings need 128 voxels
        data = [f"data.patch_size=[{','.join(map(str, patch))}]", "data.shape=[16,32,32]", "data.num_cases=5"]
        # the recipe given whole, so that nothing is measured (the planner's own tests measure)
        data += ["data.batch_size=2", "data.patches_per_epoch=4", "trainer.max_epochs=1"]
        data += ["model.base_channels=4"] if model == "unet3d" else []
        cfg = compose("task=volumetric", f"model={model}", f"data.cache_dir={tmp_path}", *data)
        _, module = build(cfg)
        side = [2 * m for m in module.model.size_multiple]  # instance norm needs 2 voxels at the bottleneck
        assert module.model.eval()(torch.zeros(1, 2, *side)).shape == (1, 4, *side)
        return
    task = "segmentation" if model.startswith("unet") else "detection"
    loss = ["loss=yolo26"] if model.startswith("yolo26") else []  # the two heads need the end-to-end criterion
    cfg = compose(f"task={task}", f"model={model}", *loss, *SMALL)
    _, module = build(cfg)
    size = 64 if task == "detection" else 64
    out = module.model(torch.zeros(1, 3 if task == "detection" else 1, size, size))
    assert out is not None


@pytest.mark.parametrize("group", ["optimizer", "scheduler", "callbacks", "logger"])
def test_every_option_of_the_small_groups(tmp_path, group, compose):
    for option in config_names(group):
        cfg = compose(f"{group}={option}", *SMALL)
        if group in ("callbacks", "logger"):
            if option in LOGGER_PACKAGES:
                pytest.importorskip(LOGGER_PACKAGES[option], reason=f"logger={option} needs its package")
            make_trainer(cfg)
        else:
            assert instantiate(cfg.optimizer) is not None
            if cfg.get("scheduler"):
                opt = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
                instantiate(cfg.scheduler)(opt, total_steps=10, steps_per_epoch=5)


@pytest.mark.parametrize(
    "overrides, multiple, nearest",
    [
        (["data.image_size=100"], 32, "96 or 128"),
        (["model=yolo_small", "data.image_size=20"], 32, "32"),
        (["task=segmentation", "model.depth=4", "data.image_size=72"], 16, "64 or 80"),
        (["task=segmentation", "model=unet_large", "data.image_size=80"], 32, "64 or 96"),
    ],
)
def test_an_image_size_the_model_cannot_take_fails_when_the_run_is_built(compose, overrides, multiple, nearest):
    cfg = compose(*overrides, *SMALL)
    size = cfg.data.image_size
    with pytest.raises(ValueError, match=rf"data\.image_size must be a multiple of {multiple} .* got {size}; "):
        build(cfg)
    with pytest.raises(ValueError, match=rf"e\.g\. data\.image_size={nearest}$"):
        build(cfg)


def test_the_failure_line_names_the_error_of_an_instantiated_target_and_where(tmp_path, compose):
    paths = [f"data.train_images={tmp_path}", "data.train_annotations=nope.json"]
    cfg = compose("data=coco", *paths, f"data.val_images={tmp_path}", "data.val_annotations=nope.json")
    with pytest.raises(Exception) as raised:  # Hydra's InstantiationException around the dataset's error
        build(cfg)
    line = failure_line(raised.value, tmp_path)
    assert line.startswith("detloss: error: FileNotFoundError: COCO annotation file not found: nope.json (")
    assert re.search(r" \(detloss/data/coco\.py:\d+\); full traceback in ", line) and "\n" not in line
    assert line.endswith(str(tmp_path / "error.txt"))


@pytest.mark.parametrize("callbacks", config_names("callbacks"))
@pytest.mark.parametrize("logger", [name for name in config_names("logger") if name not in ("mlflow", "wandb")])
def test_every_logger_with_every_callbacks_option(tmp_path, logger, callbacks, compose, caplog):
    # mlflow and wandb add to the CSV log as tensorboard does; their runs are tests/test_loggers.py's
    if logger == "tensorboard":
        pytest.importorskip("tensorboard", reason="TensorBoardLogger needs the tensorboard package")
    cfg = compose(f"logger={logger}", f"callbacks={callbacks}", *SMALL, "data.image_size=64", "+trainer.fast_dev_run=1")
    with caplog.at_level(logging.INFO, logger="detloss.train"):
        train(cfg)
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "ok"
    left_out = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    if logger == "none" and callbacks != "none":
        assert len(left_out) == 1 and "lr_monitor" in left_out[0], left_out
    else:
        assert not left_out


def test_without_a_logger_only_the_callbacks_that_need_one_are_left_out(tmp_path, compose):
    trainer = make_trainer(compose("logger=none", "callbacks=diagnostics"))
    kinds = {type(c).__name__ for c in trainer.callbacks}
    assert {"ModelCheckpoint", "EarlyStopping", "TQDMProgressBar"} <= kinds
    assert not kinds & {"LearningRateMonitor", "GradientDiagnostics"}
    with_csv = {type(c).__name__ for c in make_trainer(compose("callbacks=diagnostics")).callbacks}
    assert {"LearningRateMonitor", "GradientDiagnostics"} <= with_csv


@pytest.mark.parametrize("trainer", config_names("trainer"))
def test_every_trainer_config(tmp_path, trainer, compose):
    cfg = compose(f"trainer={trainer}")
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        assert cfg.trainer.devices >= 1  # composes; instantiating needs a GPU
        return
    make_trainer(cfg)


def test_data_configs_compose_and_need_their_paths(tmp_path, compose):
    for data in config_names("data"):
        cfg = compose(f"data={data}")
        assert cfg.data._target_.startswith("detloss.data.")
    with pytest.raises(Exception, match="train_images"):
        instantiate(compose("data=coco").data)


@pytest.mark.slow
def test_short_detection_run_learns(tmp_path, compose):
    # 4 epochs of 1000 images (250 steps): the default run is at mAP@0.5 0.27 after as many steps; untrained, 0.00
    cfg = compose(
        "data.num_train=1000",
        "data.num_val=64",
        "data.num_workers=0",
        "trainer.max_epochs=4",
        "callbacks=none",
        "logger=none",
    )
    metrics = train(cfg)
    assert metrics["val/map_50"] > 0.2, metrics


@pytest.mark.slow
def test_short_segmentation_run_learns(tmp_path, compose):
    cfg = compose(
        "task=segmentation",
        "data.num_train=320",
        "data.num_val=64",
        "data.num_workers=0",
        "trainer.max_epochs=3",
        "callbacks=none",
        "logger=none",
    )
    metrics = train(cfg)
    assert metrics["val/dice"] > 0.5, metrics


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_a_seed_reproduces_a_run_step_by_step(tmp_path, task):
    """Two runs of one seed on one machine: the same loss at every step and the same final metrics."""
    losses = []
    for i in range(2):
        cfg = compose_config(
            f"paths.output_dir={tmp_path / str(i)}", f"task={task}", *SMALL, "trainer.max_epochs=1",
            "trainer.log_every_n_steps=1", "callbacks=none", "seed=3",
        )  # fmt: skip
        metrics = train(cfg)
        rows = (tmp_path / str(i) / "csv" / "metrics.csv").read_text().splitlines()
        header = rows[0].split(",")
        column = header.index("train/loss")
        losses.append(([r.split(",")[column] for r in rows[1:] if r.split(",")[column]], metrics))
    (first, m1), (second, m2) = losses
    assert len(first) == 4 and first == second
    val = [{k: v for k, v in m.items() if k.startswith("val/")} for m in (m1, m2)]
    assert val[0] == val[1]


def test_the_yolo26_loss_brings_its_heads_and_a_mismatch_fails_when_built(compose):
    """`-m loss=yolo,yolo26` compares the formulations on one backbone: loss=yolo26 makes any YOLO model end to end
    with reg_max 1; a model whose heads the criterion does not train is refused by name when the run is built."""
    for model, width in (("yolo_nano", 0.25), ("yolo_small", 0.5)):
        cfg = compose(f"model={model}", "loss=yolo26", *SMALL)
        assert cfg.model.end2end and cfg.model.reg_max == 1 and cfg.model.width == width
        assert set(build(cfg)[1].model.heads()) == {"one2many", "one2one"}
    assert not compose("loss=yolo", *SMALL).model.get("end2end", False)
    with pytest.raises(Exception, match=r"heads \['one2many', 'one2one'\] but DetectionCriterion"):
        build(compose("model=yolo26_nano", *SMALL))
    with pytest.raises(Exception, match=r"model.reg_max \(16\) and criterion.reg_max \(1\) differ"):
        build(compose("loss=yolo26", "criterion.reg_max=1", "model.reg_max=16", *SMALL))
