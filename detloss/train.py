"""``python -m detloss.train`` / ``detloss-train``: compose the config, build the parts, fit, record.

Hydra composes ``configs/train.yaml`` (:mod:`detloss.config` says where the configs are) with the command line;
:func:`build` instantiates the data, then :func:`build_task` model, loss, criterion and task in that order (the
model and criterion need the number of classes, which the data knows); :func:`train` fits and records the run
(:mod:`detloss.runs`; every checkpoint carries the resolved config) and returns the final metrics; :func:`main`
returns the optimised metric for sweepers. The DDP re-launch plumbing is in :mod:`detloss.launch`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import DeviceStatsMonitor, LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from .config import CONFIG_DIR, CONFIG_SOURCE
from .data.class_weights import resolve_class_weights
from .launch import fresh_distributed_state, in_multirun, relaunch_this_job_only
from .planning import plan_run
from .runs import (
    ConfigInCheckpoint,
    failure_line,
    final_metrics,
    progress,
    resolved_config,
    save_config,
    summarise,
    write_failure,
    write_metrics,
)
from .sweeps import trial_callbacks

__all__ = [
    "build",
    "plan_run",
    "adapt_to_data",
    "task_for_data",
    "build_task",
    "compile_model",
    "geometry",
    "check_image_size",
    "make_trainer",
    "check_run_length",
    "train",
    "main",
]


log = logging.getLogger(__name__)


def build(cfg: DictConfig, pretrained: bool = True) -> tuple[L.LightningDataModule, L.LightningModule]:
    """The DataModule and the task that ``cfg`` describes (the same steps for every task); see :func:`build_task`.

    Raises:
        ValueError: ``data.image_size`` is not a multiple of the model's ``size_multiple`` (see
            :func:`check_image_size`), besides what the parts themselves raise.
    """
    datamodule = instantiate(cfg.data)
    adapt_to_data(cfg, datamodule)
    plan_run(cfg, datamodule)
    task = build_task(cfg, datamodule.describe(), pretrained)
    if cfg.get("compile"):
        compile_model(task, {} if cfg.compile is True else OmegaConf.to_container(cfg.compile))
    return datamodule, task


def adapt_to_data(cfg: DictConfig, datamodule) -> None:
    """What the run takes from its data before anything is planned or built from ``cfg.loss`` (training and
    ``detloss-plan`` alike): the region recipe where the data has regions (:func:`choose_region_loss`), and the loss
    terms' ``class_weights: inverse_frequency`` and the like as lists of the training split's weights, so that the
    resolved config (run directory, checkpoints) keeps them (:mod:`detloss.data.class_weights`)."""
    check_task_fits_data(cfg, type(datamodule))
    choose_region_loss(cfg, datamodule.describe())
    resolve_class_weights(cfg.loss, datamodule.class_names, datamodule.class_counts)


def task_for_data(datamodule_class: type) -> str:
    """The task that trains data of ``datamodule_class``: ``"detection"`` (a :class:`~detloss.data.base.
    DetectionDataModule`), ``"segmentation"`` (2D masks) or ``"volumetric"`` (volumes, nnU-Net and Decathlon
    layouts); ``""`` for another class."""
    from .data.base import DetectionDataModule, SegmentationDataModule
    from .data.nnunet import NnUNetDataModule

    kinds = (
        (DetectionDataModule, "detection"),
        (SegmentationDataModule, "segmentation"),
        (NnUNetDataModule, "volumetric"),
    )
    return next((kind for cls, kind in kinds if issubclass(datamodule_class, cls)), "")


def check_task_fits_data(cfg: DictConfig, datamodule_class: type) -> None:
    """Refuse data of ``datamodule_class`` where the configured task is built for another kind of data
    (``data=nnunet`` under the default ``task=detection``), before a model of the wrong kind meets it; a task class
    of the user's own passes.

    Raises:
        ValueError: naming the data, its kind and the ``task=`` to give.
    """
    from . import tasks

    built_in = {
        "detection": tasks.DetectionTask,
        "segmentation": tasks.SegmentationTask,
        "volumetric": tasks.VolumetricTask,
    }
    kind, target = task_for_data(datamodule_class), OmegaConf.select(cfg, "task._target_")
    if kind not in built_in or target is None:
        return
    task_class = hydra.utils.get_class(target)
    others = tuple(cls for name, cls in built_in.items() if name != kind)
    if issubclass(task_class, others) and not issubclass(task_class, built_in[kind]):
        raise ValueError(
            f"data ({datamodule_class.__name__}) is {kind} data, but the task is {cfg.get('task_name')!r} "
            f"({task_class.__name__}); give task={kind}"
            + (" (or task=brats for overlapping regions)" if kind == "volumetric" else "")
        )


def choose_region_loss(cfg: DictConfig, data: Mapping[str, Any]) -> None:
    """With regions (``data``: the DataModule's facts; :mod:`detloss.data.regions`), the one place a run adapts to
    them: ``cfg.data.regions`` and ``cfg.data.regions_class_order`` record them (a ``dataset.json`` of region labels
    gives them without being asked), and a loss with softmax terms that the command line did not choose or change
    (``loss=...``, ``loss.terms...=...``) becomes the region recipe, ``configs/loss/dice_bce_regions.yaml``; a chosen
    one stays, and the criterion refuses its softmax terms by name."""
    from .segmentation.criterion import exclusive_terms

    if not data.get("regions"):
        return
    with open_dict(cfg):
        cfg.data.regions, cfg.data.regions_class_order = data["regions"], data["regions_class_order"]
        overrides = OmegaConf.select(cfg, "hydra.overrides.task")
        if overrides is None:
            overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
        if any(re.fullmatch(r"[+~]*loss([@.]\S*)?=.*", str(o)) for o in overrides):  # loss=..., loss.terms...
            return
        if exclusive_terms(instantiate(cfg.loss)):
            loss = OmegaConf.load(Path(CONFIG_DIR) / "loss" / "dice_bce_regions.yaml")
            loss.pop("defaults", None)
            cfg.loss = loss
            log.info("detloss: the data has regions %s, so the loss is loss=dice_bce_regions", list(data["regions"]))


def compile_model(task: L.LightningModule, options: dict | None = None) -> None:
    """``compile=true``: ``torch.compile`` the training model's forward, in place (``nn.Module.compile``);
    ``compile={backend: aot_eager, mode: ...}`` passes those options to ``torch.compile``.

    In place, so the module keeps its class and its parameters their names: checkpoints carry no ``_orig_mod.``
    prefix and load into an uncompiled model, fine-tuning from any checkpoint works as without it, and the EMA copy
    (made when the task was built, before this) stays an ordinary module that follows the same parameters. The
    first steps pay for the compilation, and a validation in eval mode and a last batch of another size compile once
    more each. The criterion is not compiled: it did not run faster compiled on the CPU (the compilation's cost and
    what it gains: docs/benchmarks/training_step.md).
    """
    task.model.compile(**(options or {}))


def build_task(cfg: DictConfig, data: Mapping[str, Any], pretrained: bool = True) -> L.LightningModule:
    """Model, loss, criterion and task of ``cfg`` for data that ``data`` describes (a DataModule's ``describe()``,
    or what a checkpoint keeps of it: ``class_names``, ``in_channels``, ``image_size``), without the data itself.

    ``pretrained=False`` leaves out the model's ``pretrained`` weights (``model.pretrained``), for a model whose
    weights come from a checkpoint next (evaluation, prediction).
    """
    num_classes = len(data["class_names"])
    weights = {} if pretrained or cfg.model.get("pretrained") is None else {"pretrained": None}
    model = instantiate(
        cfg.model, num_classes=num_classes, in_channels=data["in_channels"], **weights, **geometry(cfg, data)
    )
    check_image_size(data.get("image_size"), model)
    regions = {"regions": list(data["regions"].values())} if data.get("regions") else {}  # one sigmoid each
    criterion = instantiate(cfg.criterion, num_classes=num_classes, loss=instantiate(cfg.loss), **regions)
    check_loss_with_facts(criterion.loss, num_classes, bool(regions))
    return instantiate(
        cfg.task,
        model=model,
        criterion=criterion,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        class_names=list(data["class_names"]),
    )


def check_loss_with_facts(loss, num_classes: int, regions: bool) -> None:
    """The loss-config check (:func:`detloss.composite.check_loss`) with what the run knows beyond the composite
    (the head's classes, whether they are regions): an error raises ``LossConfigError`` naming the term, a warning
    is issued once (the composite warned its own findings when it was built). ``detloss-check`` adds the schedules
    over the run's length and one batch."""
    from .composite.checks import check_loss, report

    alone = check_loss(loss)
    report([f for f in check_loss(loss, num_classes=num_classes, regions=regions) if f not in alone])


def geometry(cfg: DictConfig, data: Mapping[str, Any]) -> dict:
    """What a 3D model learns from volumetric data (``data``: a DataModule's ``describe()``): its ``spacing`` (the
    data's median, which the pooling is planned for) and ``patch_size``, where the model config leaves them ``null``.
    Volumes with a model that takes neither fail here, naming the model."""
    if data.get("spacing") is None:
        return {}
    if "spacing" not in cfg.model or "patch_size" not in cfg.model:
        raise ValueError(
            f"data of kind {data.get('kind')!r} holds volumes; its model must take spacing and patch_size (e.g. "
            f"model=unet3d), got {cfg.model.get('_target_')}"
        )
    given = {"spacing": list(data["spacing"]), "patch_size": list(data["patch_size"])}
    return {key: value for key, value in given.items() if cfg.model.get(key) is None}


def check_image_size(size: int | None, model: nn.Module) -> None:
    """Refuse a ``data.image_size`` that ``model`` cannot take, when the run is built rather than in the first
    forward: a model that needs image sides of a multiple says so with ``size_multiple`` (the YOLO detector: its
    largest stride; the U-Net: ``2**depth``), the data gives its ``image_size``; either missing, no check."""
    multiple = getattr(model, "size_multiple", None)
    if size is None or multiple is None or size % multiple == 0:
        return
    lower, upper = size // multiple * multiple, (size // multiple + 1) * multiple
    nearest = f"{lower} or {upper}" if lower > 0 else str(upper)
    raise ValueError(
        f"data.image_size must be a multiple of {multiple} for {type(model).__name__} (its size_multiple), got "
        f"{size}; e.g. data.image_size={nearest}"
    )


def needs_a_logger(callback: L.Callback) -> bool:
    """Whether ``callback`` works only with a logger: Lightning's ``LearningRateMonitor`` and
    ``DeviceStatsMonitor`` refuse to start without one; a callback of ours says so with ``needs_logger = True``."""
    return isinstance(callback, (LearningRateMonitor, DeviceStatsMonitor)) or getattr(callback, "needs_logger", False)


def make_trainer(cfg: DictConfig, extra_callbacks: Sequence[L.Callback] = (), **overrides) -> L.Trainer:
    """The configured Trainer, with the configured callbacks and loggers (``overrides`` win over the config).

    Without a logger (``logger=none``) the configured callbacks that need one (:func:`needs_a_logger`) are left
    out, which the log says once: every ``logger`` works with every ``callbacks`` option.
    """
    if "logger" not in overrides:
        loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
        overrides["logger"] = loggers or False
    if "callbacks" not in overrides:
        callbacks = {k: instantiate(c) for k, c in (cfg.get("callbacks") or {}).items() if c is not None}
        if not overrides["logger"]:
            unused = sorted(name for name, callback in callbacks.items() if needs_a_logger(callback))
            if unused and rank_zero_only.rank == 0:
                log.info("detloss: no logger, so these callbacks, which need one, are left out: %s", unused)
            callbacks = {name: c for name, c in callbacks.items() if name not in unused}
        overrides["callbacks"] = [*callbacks.values(), *extra_callbacks]
    return instantiate(cfg.trainer, **overrides)


def train(cfg: DictConfig, callbacks: Sequence[L.Callback] = ()) -> dict[str, float]:
    """Fit the configured task (with ``callbacks`` besides the configured ones); return the final metrics."""
    start = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    relaunch_this_job_only(out_dir)
    datamodule, task = build(cfg)
    check_run_length(cfg.trainer)
    record = ConfigInCheckpoint(resolved_config(cfg), datamodule.describe())
    trainer = make_trainer(cfg, [*callbacks, *getattr(datamodule, "callbacks", []), record])
    save_config(cfg, out_dir)
    if getattr(datamodule, "plan", None) is not None and rank_zero_only.rank == 0:
        (out_dir / "plan.json").write_text(json.dumps(datamodule.plan.to_dict(), indent=1))
    trainer.fit(task, datamodule=datamodule, ckpt_path=checkpoint_to_resume(cfg))
    metrics, done = final_metrics(trainer), progress(trainer)
    write_metrics(out_dir, cfg, metrics, trainer, done, seconds=time.perf_counter() - start)
    summarise(cfg, metrics, done)
    return metrics


def check_run_length(trainer: DictConfig) -> None:
    """Refuse a run without a length. ``trainer.max_epochs: null`` (``trainer=cpu``) is filled by the planner where
    the data is planned (``data.plan``); elsewhere it needs ``trainer.max_epochs`` or ``trainer.max_steps`` (Lightning
    would train 1000 epochs).

    Raises:
        ValueError: naming ``trainer.max_epochs``.
    """
    if trainer.get("max_epochs") is None and trainer.get("max_steps", -1) in (None, -1):
        raise ValueError(
            "trainer.max_epochs is null and this run's data is not planned (data.plan); give trainer.max_epochs=N "
            "(or trainer.max_steps=N), or choose a trainer that sets it (trainer=cpu_detection for detection; "
            "trainer=gpu)"
        )


def checkpoint_to_resume(cfg: DictConfig) -> str | None:
    """``ckpt_path``, or with ``resume=RUN_DIR`` that run's ``checkpoints/last.ckpt`` (the run then continues in
    RUN_DIR: ``configs/hydra/default.yaml`` points ``hydra.run.dir`` there)."""
    path = cfg.get("ckpt_path")
    if path is None and cfg.get("resume"):
        path = Path(cfg.resume) / "checkpoints" / "last.ckpt"
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint to resume from not found: {path} (from ckpt_path / resume)")
    return None if path is None else str(path)


@hydra.main(version_base="1.3", config_path=CONFIG_SOURCE, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train and return the optimised metric.

    A failure is recorded in the run directory (``metrics.json`` with ``status: failed``, the traceback in
    ``error.txt``). A job of a sweep that fails then returns ``None``, so that the other jobs go on: the basic
    sweeper only collects it, and the Optuna sweeper (``hydra/sweeper=detloss_optuna``) tells the trial as failed,
    as it does a non-finite value. A single run ends with one line on stderr (:func:`~detloss.runs.failure_line`)
    and exit status 1; with ``HYDRA_FULL_ERROR=1``, and on the ranks other than 0, the error is raised as it is.
    In a job of that sweeper, :func:`detloss.sweeps.trial_callbacks` adds the callback that reports each epoch to
    the job's trial and stops a pruned run.
    """
    start = time.perf_counter()
    out_dir = Path(cfg.paths.output_dir)
    try:
        with fresh_distributed_state():
            metrics = train(cfg, trial_callbacks(cfg))  # an Optuna trial's reports and pruning (detloss.sweeps)
    except Exception as error:
        write_failure(out_dir, cfg, error, time.perf_counter() - start)
        if in_multirun():
            log.exception("detloss: this sweep job failed (recorded in %s/metrics.json)", out_dir)
            return None
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or rank_zero_only.rank != 0:
            raise
        print(failure_line(error, out_dir), file=sys.stderr, flush=True)
        sys.exit(1)
    value = metrics.get(cfg.optimized_metric)
    return value if value is not None and math.isfinite(value) else None


if __name__ == "__main__":
    main()
