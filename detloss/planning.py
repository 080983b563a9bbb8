"""Planning a run's recipe (the entry points' side of :mod:`detloss.plan`): :func:`plan_run` builds the measuring
function from the run's own model, criterion and optimizer, asks the planner, fills what the configuration leaves
``null`` with the plan and configures the data module. :mod:`detloss.train` calls it between building the data and
the task; ``detloss-plan`` calls it alone.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from .plan import MIN_STEPS, VolumePlan, cached_plan
from .plan.image_plan import ImagePlan

__all__ = ["plan_run"]

log = logging.getLogger(__name__)


def plan_run(cfg: DictConfig, datamodule: L.LightningDataModule) -> VolumePlan | ImagePlan | None:
    """Plan the recipe of a run on data that is planned from its fingerprint (:class:`~detloss.data.NnUNetDataModule`
    and the data built on it), fill what ``cfg`` leaves ``null`` with the plan, and configure ``datamodule``.

    Values the configuration gives win (``data.patch_size``, ``data.batch_size``, ``data.patches_per_epoch``,
    ``data.target_spacing``, ``data.normalization``, ``model.base_channels``, ``model.depth``,
    ``trainer.max_epochs``); the others are planned (:func:`detloss.plan.plan_volumes`) under
    ``data.plan.budget_minutes`` on a CPU or ``data.plan.memory_gib`` on a GPU, measuring candidate recipes with
    this run's own model, criterion and optimizer. ``cfg`` is filled in place, so the resolved config that the run
    directory and the checkpoints keep holds the planned values (evaluation and prediction then preprocess as
    training did). The plan is logged as a table. 2D masks (:class:`~detloss.data.MaskDataModule`, the embedded
    :class:`~detloss.data.LesionsDataModule`) are planned by :func:`_plan_images`. Other data: ``None``, nothing
    changes.
    """
    from .data import LesionsDataModule, MaskDataModule, NnUNetDataModule

    if isinstance(datamodule, (MaskDataModule, LesionsDataModule)):
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
    given["depth"] = cfg.model.get("depth") if "depth" in cfg.model else None
    given["epochs"] = cfg.trainer.get("max_epochs")
    on_gpu = str(cfg.trainer.get("accelerator")) in ("gpu", "cuda") and torch.cuda.is_available()
    planned = [
        k for k in ("patch_size", "batch_size", "patches_per_epoch", "base_channels", "epochs") if given[k] is None
    ]
    resumed = Path(str(cfg.get("resume"))) / "plan.json" if cfg.get("resume") else None
    if resumed is not None and resumed.is_file():  # a resumed run trains the plan it started with
        plan = VolumePlan(**json.loads(resumed.read_text()))
    else:
        plan = _plan_volumes(cfg, datamodule, options, given, planned, on_gpu)
    # only what the configuration gave is "given" (the planner reads the data module's spacing and normalisation
    # either way; the foreground share is never planned)
    user = {
        k for k, v in given.items() if v is not None and k not in ("spacing", "normalization", "foreground_fraction")
    }
    user |= {k for k in ("spacing", "normalization") if datamodule.given.get(k) is not None}
    plan.given = sorted(k for k in plan.given if k in user)
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


def _plan_volumes(cfg, datamodule, options, given, planned, on_gpu) -> VolumePlan:
    """The volumetric plan of :func:`plan_run`, measured (and kept) where values are left to it."""
    measure = _measure(cfg, datamodule, "cuda" if on_gpu else "cpu") if planned else None
    return cached_plan(
        datamodule.fingerprint,
        measure,
        budget_minutes=None if on_gpu else options.get("budget_minutes", 10.0),
        memory_gib=options.get("memory_gib", 8.0) if on_gpu else None,
        min_steps=options.get("min_steps", MIN_STEPS),
        num_val_cases=len(datamodule.val_cases),
        num_cases=len(datamodule.train_cases) + len(datamodule.val_cases),
        given=given,
        key=[OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.loss), str(cfg.get("criterion"))],
        use_cache=options.get("cache", True),
        rank=rank_zero_only.rank,
    )


def _measure(cfg: DictConfig, datamodule, device: str):
    """The planner's :data:`~detloss.plan.Measure` for this run: a few training steps of a candidate recipe with the
    run's own model, criterion and optimizer on real patches (a step's time includes cutting its batch, which the
    training loop does too), one validation window, and once the time to read and preprocess a case (the first
    epoch does it for every case); the global random state is left as it was."""
    from .data import PatchDataset, volume_collate
    from .plan import topology

    loading = {}

    def load_seconds() -> float:
        if "seconds" not in loading:  # a case not read yet: read, normalise and resample it, then forget it
            index = datamodule.train_cases[-1]
            start = time.perf_counter()
            datamodule.source.image(index)
            loading["seconds"] = time.perf_counter() - start
        return loading["seconds"]

    def measure(patch, width, batch):
        trial = cfg.copy()
        with open_dict(trial):
            trial.data.patch_size, trial.data.batch_size = list(patch), int(batch)
            trial.model.base_channels = int(width)
            if "depth" in trial.model and cfg.model.get("depth") is None:
                trial.model.depth = topology(datamodule.spacing, patch)[0]
        data = datamodule.describe() | {"patch_size": list(patch)}
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device == "cuda" else []):
            torch.manual_seed(0)
            task = _build_task(trial, data, pretrained=False).to(device)
            patches = PatchDataset(
                datamodule.source, datamodule.train_cases, patch, batch, 1.0, False, datamodule.ignore_index
            )
            load = load_seconds()
            volume_collate([patches[i] for i in range(batch)])  # the cases of the batch read once
            start = time.perf_counter()
            images, targets = volume_collate([patches[i] for i in range(batch)])
            cut = time.perf_counter() - start
            images, targets = images.to(device), {k: v.to(device) for k, v in targets.items()}
            step, window, memory = _time_steps(task, images, targets, images[:1], device)
        log.info("detloss plan: patch %s, %d channels: %.3f s a step", list(patch), width, step + cut)
        return {"step_seconds": step + cut, "window_seconds": window, "memory_gib": memory, "load_seconds": load}

    return measure


def _plan_images(cfg: DictConfig, datamodule) -> ImagePlan:
    """:func:`plan_run` for 2D masks: the image size and batch (``data.image_size``, ``data.batch_size``), the
    U-Net's ``model.depth`` and ``model.base_channels``, ``trainer.max_epochs`` and the loss terms'
    ``class_weights``, each planned (:func:`detloss.plan.image_plan.plan_images`) only where the configuration leaves it
    ``null`` (a model without the key keeps its own); ``data.plan.class_weights=false`` proposes the weights in the
    plan without giving them to the loss, as data with regions does. A plan that decided nothing (every value given,
    no class weights applied) is logged but not kept by the data module (no ``plan.json``, nothing added to the
    checkpoints)."""
    from .plan.image_plan import cached_image_plan, weights_for_terms

    options = dict(datamodule.plan_options)
    known = {"budget_minutes", "min_steps", "min_epochs", "class_weights", "cache"}
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
        min_epochs=options.get("min_epochs", 1),
        num_val_images=len(datamodule.val_dataset),
        given={k: v for k, v in given.items() if k != "class_weights"},
        key=[OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.loss), str(cfg.get("criterion"))],
        use_cache=options.get("cache", True),
        rank=rank_zero_only.rank,
    )
    if plan.epochs is None:
        raise ValueError("trainer.max_epochs: not given and not planned")
    if set_weights:
        plan.given = sorted({*plan.given, "class_weights"})
    elif (
        plan.class_weights is not None
        and options.get("class_weights", True)
        and not getattr(datamodule, "regions", None)  # weights of classes, not of region channels
    ):
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
    """The 2D planner's :data:`~detloss.plan.image_plan.Measure2D` for this run: a few training steps of a candidate
    recipe with the run's own model, criterion and optimizer on a random batch of its size (the time of a step does
    not depend on the pixels' values), and one evaluation forward; the global random state is left as it was."""
    from .plan.image_plan import depth_for

    def measure(size, width, batch):
        trial = cfg.copy()
        with open_dict(trial):
            trial.data.image_size, trial.data.batch_size = int(size), int(batch)
            if "base_channels" in trial.model:
                trial.model.base_channels = int(width)
            if "depth" in trial.model and cfg.model.get("depth") is None:
                trial.model.depth = depth_for(size)
        data = datamodule.describe() | {"image_size": int(size)}
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device == "cuda" else []):
            torch.manual_seed(0)
            task = _build_task(trial, data, pretrained=False).to(device)
            images = torch.rand(batch, datamodule.in_channels, size, size, device=device)
            masks = torch.randint(0, datamodule.num_classes, (batch, size, size), device=device)
            step, evaluation, _ = _time_steps(task, images, masks, images, device)
        log.info("detloss plan: %d px, %d channels, batch %d: %.3f s a step", size, width, batch, step)
        return {"step_seconds": step, "eval_seconds": evaluation}

    return measure


def _time_steps(task, inputs, targets, eval_inputs, device: str) -> tuple[float, float, float]:
    """``(seconds a training step, seconds an evaluation forward of eval_inputs, peak GiB)`` of ``task`` on one
    batch: four steps with the task's own optimizer, the first paying for allocations, the median of the others
    taken."""
    optimizer = task.optimizer_factory([{"params": [p for p in task.parameters() if p.requires_grad]}])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(4):
        start = time.perf_counter()
        task.criterion(task.model(inputs), targets).total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    memory = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    task.model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        task.model(eval_inputs)
        if device == "cuda":
            torch.cuda.synchronize()
        evaluation = time.perf_counter() - start
    return sorted(times[1:])[1], evaluation, memory


def _build_task(cfg, data, pretrained):
    from .train import build_task  # the entry point builds tasks; it imports this module first

    return build_task(cfg, data, pretrained)
