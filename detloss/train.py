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
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import DeviceStatsMonitor, LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from .config import CONFIG_DIR, CONFIG_SOURCE
from .launch import fresh_distributed_state, in_multirun, relaunch_this_job_only
from .plan import VolumePlan, cached_plan
from .plan.images import ImagePlan
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

#: the folder of the shipped configs (kept under this name for the callers of earlier versions)
CONFIG_PATH = str(CONFIG_DIR)

__all__ = [
    "build",
    "plan_run",
    "build_task",
    "compile_model",
    "geometry",
    "check_image_size",
    "make_trainer",
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
    plan_run(cfg, datamodule)
    task = build_task(cfg, datamodule.describe(), pretrained)
    if cfg.get("compile"):
        compile_model(task, {} if cfg.compile is True else OmegaConf.to_container(cfg.compile))
    return datamodule, task


def plan_run(cfg: DictConfig, datamodule: L.LightningDataModule) -> VolumePlan | ImagePlan | None:
    """Plan the recipe of a run on data that is planned from its fingerprint (:class:`~detloss.data.NnUNetDataModule`
    and the data built on it), fill what ``cfg`` leaves ``null`` with the plan, and configure ``datamodule``.

    Values the configuration gives win (``data.patch_size``, ``data.batch_size``, ``data.patches_per_epoch``,
    ``data.target_spacing``, ``data.normalization``, ``model.base_channels``, ``model.depth``,
    ``trainer.max_epochs``); the others are planned (:func:`detloss.plan.plan_volumes`) under
    ``data.plan.budget_minutes`` on a CPU or ``data.plan.memory_gib`` on a GPU, measuring candidate recipes with
    this run's own model, criterion and optimizer. ``cfg`` is filled in place, so the resolved config that the run
    directory and the checkpoints keep holds the planned values (evaluation and prediction then preprocess as
    training did). The plan is logged as a table. 2D masks (:class:`~detloss.data.MaskDataModule`) are planned by
    :func:`_plan_images`. Other data: ``None``, nothing changes.
    """
    from .data import MaskDataModule, NnUNetDataModule

    if isinstance(datamodule, MaskDataModule):
        return _plan_images(cfg, datamodule)
    if not isinstance(datamodule, NnUNetDataModule):
        return None
    options = dict(datamodule.plan_options)
    unknown = sorted(set(options) - {"budget_minutes", "memory_gib", "min_steps", "cache"})
    if unknown:
        raise ValueError(f"data.plan: unknown options {unknown} (known: budget_minutes, memory_gib, min_steps, cache)")
    given = dict(datamodule.given)
    given["spacing"], given["normalization"] = list(datamodule.spacing), datamodule.normalization
    given["base_channels"] = cfg.model.get("base_channels")
    given["epochs"] = cfg.trainer.get("max_epochs")
    on_gpu = str(cfg.trainer.get("accelerator")) in ("gpu", "cuda") and torch.cuda.is_available()
    planned = [
        k for k in ("patch_size", "batch_size", "patches_per_epoch", "base_channels", "epochs") if given[k] is None
    ]
    measure = _measure(cfg, datamodule, "cuda" if on_gpu else "cpu") if planned else None
    plan = cached_plan(
        datamodule.fingerprint,
        measure,
        budget_minutes=None if on_gpu else options.get("budget_minutes", 10.0),
        memory_gib=options.get("memory_gib", 8.0) if on_gpu else None,
        min_steps=options.get("min_steps", 1000),
        num_val_cases=len(datamodule.val_cases),
        given=given,
        key=[OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.loss), str(cfg.get("criterion"))],
        use_cache=options.get("cache", True),
    )
    if plan.epochs is None:
        raise ValueError("trainer.max_epochs: not given and not planned (a GPU plan leaves epochs to the trainer)")
    datamodule.configure(plan.patch_size, plan.batch_size, plan.patches_per_epoch, plan)
    with open_dict(cfg):
        cfg.data.patch_size, cfg.data.batch_size = list(plan.patch_size), plan.batch_size
        cfg.data.patches_per_epoch = plan.patches_per_epoch
        cfg.data.target_spacing = list(plan.spacing)
        cfg.data.normalization = [dict(n) for n in plan.normalization]
        if cfg.model.get("base_channels") is None:
            cfg.model.base_channels = plan.base_channels
        if "depth" in cfg.model and cfg.model.get("depth") is None:
            cfg.model.depth = plan.depth
        cfg.trainer.max_epochs = plan.epochs
    if rank_zero_only.rank == 0:
        log.info("detloss: the plan of this run (data.plan; values given on the command line win):\n%s", plan.table())
    return plan


def _measure(cfg: DictConfig, datamodule, device: str):
    """The planner's :data:`~detloss.plan.Measure` for this run: a few training steps of a candidate recipe with the
    run's own model, criterion and optimizer on real patches, and one validation window; the global random state
    is left as it was."""
    from .data import PatchDataset, volume_collate
    from .plan import topology

    def measure(patch, width, batch):
        trial = cfg.copy()
        with open_dict(trial):
            trial.data.patch_size, trial.data.batch_size = list(patch), int(batch)
            trial.model.base_channels = int(width)
            if "depth" in trial.model and cfg.model.get("depth") is None:
                trial.model.depth = topology(datamodule.spacing, patch)[0]
        data = datamodule.describe() | {"patch_size": list(patch)}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            task = build_task(trial, data, pretrained=False).to(device)
            patches = PatchDataset(
                datamodule.source, datamodule.train_cases, patch, batch, 1.0, False, datamodule.ignore_index
            )
            images, targets = volume_collate([patches[i] for i in range(batch)])
            images, targets = images.to(device), {k: v.to(device) for k, v in targets.items()}
            optimizer = task.optimizer_factory([{"params": [p for p in task.parameters() if p.requires_grad]}])
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(4):  # the first step pays for allocations; the fastest of the others is the step's time
                start = time.perf_counter()
                task.criterion(task.model(images), targets).total.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if device == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            memory = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
            task.model.eval()
            with torch.no_grad():
                start = time.perf_counter()
                task.model(images[:1])
                if device == "cuda":
                    torch.cuda.synchronize()
                window = time.perf_counter() - start
        log.info("detloss plan: patch %s, %d channels: %.3f s a step", list(patch), width, min(times[1:]))
        return {"step_seconds": min(times[1:]), "window_seconds": window, "memory_gib": memory}

    return measure


def _plan_images(cfg: DictConfig, datamodule) -> ImagePlan:
    """:func:`plan_run` for 2D masks: the image size and batch (``data.image_size``, ``data.batch_size``), the
    U-Net's ``model.depth`` and ``model.base_channels``, ``trainer.max_epochs`` and the loss terms'
    ``class_weights``, each planned (:func:`detloss.plan.images.plan_images`) only where the configuration leaves it
    ``null`` (a model without the key keeps its own); ``data.plan.class_weights=false`` proposes the weights in the
    plan without giving them to the loss. A plan that decided nothing (every value given, no class weights applied)
    is logged but not kept by the data module (no ``plan.json``, nothing added to the checkpoints)."""
    from .plan.images import cached_image_plan, weights_for_terms

    options = dict(datamodule.plan_options)
    known = {"budget_minutes", "min_steps", "class_weights", "cache"}
    if unknown := sorted(set(options) - known):
        raise ValueError(f"data.plan: unknown options {unknown} (known: {', '.join(sorted(known))})")
    terms = cfg.loss.get("terms") or {}
    set_weights = sorted(n for n, t in terms.items() if (t or {}).get("loss", {}).get("class_weights") is not None)
    given = dict(datamodule.given)
    for key in ("base_channels", "depth"):  # 0: the model has no such option, its own value stands
        given[key] = cfg.model.get(key) if key in cfg.model else 0
    given["epochs"] = cfg.trainer.get("max_epochs")
    given["class_weights"] = [0.0] if set_weights else None
    planned = [k for k in ("image_size", "batch_size", "base_channels", "depth", "epochs") if given[k] is None]
    device = "cuda" if str(cfg.trainer.get("accelerator")) in ("gpu", "cuda") and torch.cuda.is_available() else "cpu"
    plan = cached_image_plan(
        datamodule.fingerprint,
        _measure_2d(cfg, datamodule, device) if planned else None,
        budget_minutes=options.get("budget_minutes", 7.0),
        min_steps=options.get("min_steps", 500),
        num_val_images=len(datamodule.val_dataset),
        given={k: v for k, v in given.items() if k != "class_weights"},
        key=[OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.loss), str(cfg.get("criterion"))],
        use_cache=options.get("cache", True),
    )
    if plan.epochs is None:
        raise ValueError("trainer.max_epochs: not given and not planned")
    if set_weights:
        plan.given = sorted({*plan.given, "class_weights"})
    elif plan.class_weights is not None and options.get("class_weights", True):
        taken = weights_for_terms(OmegaConf.to_container(terms, resolve=False), plan.class_weights)
        plan.weighted_terms = sorted(taken)
        with open_dict(cfg):
            for name, weights in taken.items():
                cfg.loss.terms[name].loss.class_weights = weights
    # a plan that decided nothing (every value given, no class weights applied) is logged, not kept
    decided = bool(planned or plan.weighted_terms)
    datamodule.configure(plan.image_size, plan.batch_size, plan if decided else None)
    with open_dict(cfg):
        cfg.data.image_size, cfg.data.batch_size = plan.image_size, plan.batch_size
        for key in ("base_channels", "depth"):
            if key in cfg.model and cfg.model.get(key) is None:
                cfg.model[key] = getattr(plan, key)
        cfg.trainer.max_epochs = plan.epochs
    if rank_zero_only.rank == 0:
        log.info("detloss: the plan of this run (data.plan; values given on the command line win):\n%s", plan.table())
    return plan


def _measure_2d(cfg: DictConfig, datamodule, device: str):
    """The 2D planner's :data:`~detloss.plan.images.Measure2D` for this run: a few training steps of a candidate
    recipe with the run's own model, criterion and optimizer on a random batch of its size (the time of a step does
    not depend on the pixels' values), and one evaluation forward; the global random state is left as it was."""
    from .plan.images import unet_depth

    def measure(size, width, batch):
        trial = cfg.copy()
        with open_dict(trial):
            trial.data.image_size, trial.data.batch_size = int(size), int(batch)
            if "base_channels" in trial.model:
                trial.model.base_channels = int(width)
            if "depth" in trial.model and cfg.model.get("depth") is None:
                trial.model.depth = unet_depth(size)
        data = datamodule.describe() | {"image_size": int(size)}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            task = build_task(trial, data, pretrained=False).to(device)
            images = torch.rand(batch, datamodule.in_channels, size, size, device=device)
            masks = torch.randint(0, datamodule.num_classes, (batch, size, size), device=device)
            optimizer = task.optimizer_factory([{"params": [p for p in task.parameters() if p.requires_grad]}])
            times = []
            for _ in range(4):  # the first step pays for allocations; the fastest of the others is the step's time
                start = time.perf_counter()
                task.criterion(task.model(images), masks).total.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if device == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            task.model.eval()
            with torch.no_grad():
                start = time.perf_counter()
                task.model(images)
                if device == "cuda":
                    torch.cuda.synchronize()
                evaluation = time.perf_counter() - start
        log.info("detloss plan: %d px, %d channels, batch %d: %.3f s a step", size, width, batch, min(times[1:]))
        return {"step_seconds": min(times[1:]), "eval_seconds": evaluation}

    return measure


def compile_model(task: L.LightningModule, options: dict | None = None) -> None:
    """``compile=true``: ``torch.compile`` the training model's forward, in place (``nn.Module.compile``);
    ``compile={backend: aot_eager, mode: ...}`` passes those options to ``torch.compile``.

    In place, so the module keeps its class and its parameters their names: checkpoints carry no ``_orig_mod.``
    prefix and load into an uncompiled model, fine-tuning from any checkpoint works as without it, and the EMA copy
    (made when the task was built, before this) stays an ordinary module that follows the same parameters. The
    first steps pay for the compilation (tens of seconds on a CPU); a validation in eval mode and a last batch of
    another size compile once more each. The criterion is not compiled: it did not run faster compiled on the CPU
    (README, "Where the time goes").
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
    criterion = instantiate(cfg.criterion, num_classes=num_classes, loss=instantiate(cfg.loss))
    return instantiate(
        cfg.task,
        model=model,
        criterion=criterion,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        class_names=list(data["class_names"]),
    )


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
