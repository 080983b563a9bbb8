"""``python -m detloss.train`` / ``detloss-train``: compose the config, build the parts, fit, report.

The entry point is thin on purpose: Hydra composes ``configs/train.yaml`` with the command line, this module
instantiates data, model, loss, criterion and task in that order (the model and criterion need the number of
classes, which the data knows), fits, writes ``metrics.json`` and the resolved config into the run directory,
and returns the optimised metric for sweepers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

CONFIG_PATH = str(Path(__file__).resolve().parents[1] / "configs")

# ``${detloss_or:a,b}``: ``a`` unless it is null, else ``b`` (``oc.select`` falls back for missing keys only);
# configs/hydra/default.yaml uses it to put a run resumed with ``resume=RUN_DIR`` back into RUN_DIR.
# ``${detloss_set:a}``: whether ``a`` is not null.
if not OmegaConf.has_resolver("detloss_or"):
    OmegaConf.register_new_resolver("detloss_or", lambda value, default: default if value is None else value)
if not OmegaConf.has_resolver("detloss_set"):
    OmegaConf.register_new_resolver("detloss_set", lambda value: value is not None)

#: what Lightning's DDP launcher sets in the launching process (and never unsets)
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
_ENV_AT_START = {key: os.environ.get(key) for key in _LAUNCH_ENV}
#: Hydra's command-line flags that take a value and must reach the ranks Lightning starts
_VALUE_FLAGS = ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir")

__all__ = ["build", "train", "main"]

log = logging.getLogger(__name__)


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule]:
    """The DataModule and the task that ``cfg`` describes."""
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, num_classes=datamodule.num_classes, in_channels=datamodule.in_channels)
    criterion = instantiate(cfg.criterion, num_classes=datamodule.num_classes, loss=instantiate(cfg.loss))
    extra: dict[str, Any] = {"class_names": datamodule.class_names}
    if cfg.task_name == "segmentation":
        extra["num_classes"] = datamodule.num_classes
    task = instantiate(
        cfg.task,
        model=model,
        criterion=criterion,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        **extra,
    )
    return datamodule, task


def make_trainer(cfg: DictConfig, extra_callbacks: Sequence[L.Callback] = (), **overrides) -> L.Trainer:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks += list(extra_callbacks)
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    kwargs = {"callbacks": callbacks, "logger": loggers or False, **overrides}
    return instantiate(cfg.trainer, **kwargs)


def train(cfg: DictConfig, callbacks: Sequence[L.Callback] = ()) -> dict[str, float]:
    """Fit the configured task (with ``callbacks`` besides the configured ones); return the final metrics."""
    start = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    relaunch_this_job_only(out_dir)
    datamodule, task = build(cfg)
    trainer = make_trainer(cfg, callbacks)
    save_config(cfg, out_dir)
    trainer.fit(task, datamodule=datamodule, ckpt_path=checkpoint_to_resume(cfg))
    metrics, done = final_metrics(trainer), progress(trainer)
    write_metrics(out_dir, cfg, metrics, trainer, done, seconds=time.perf_counter() - start)
    summarise(cfg, metrics, done)
    return metrics


def final_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if torch.as_tensor(v).numel() == 1}


def job_overrides() -> list[str]:
    """The command-line overrides of this Hydra job (empty outside a Hydra run, e.g. under ``compose``)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def checkpoint_to_resume(cfg: DictConfig) -> str | None:
    """``ckpt_path``, or with ``resume=RUN_DIR`` that run's ``checkpoints/last.ckpt`` (the run then continues in
    RUN_DIR: ``configs/hydra/default.yaml`` points ``hydra.run.dir`` there)."""
    path = cfg.get("ckpt_path")
    if path is None and cfg.get("resume"):
        path = Path(cfg.resume) / "checkpoints" / "last.ckpt"
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint to resume from not found: {path} (from ckpt_path / resume)")
    return None if path is None else str(path)


def relaunch_this_job_only(out_dir: Path) -> None:
    """Make Lightning's DDP re-launch (``strategy=ddp``) start the other ranks on this sweep job, in its directory.

    Lightning starts ranks 1..N-1 as ``python -m detloss.train <sys.argv[1:]> hydra.run.dir=<hydra.run.dir>``.
    Inside a multirun that command line is the whole sweep (``-m``, comma lists) and ``hydra.run.dir`` is not the
    job's directory, so every job would start a sweep of its own and scatter run directories. Here, in the
    launching process of a sweep job, the command line becomes Hydra's flags (``-cn``, ``-cp``, ...) and this
    job's own overrides, and ``hydra.run.dir`` its output directory. Outside a multirun (including the ranks
    Lightning starts, which run a single job) nothing changes.
    """
    if not in_multirun():
        return
    sys.argv = [sys.argv[0], *hydra_flags(sys.argv[1:]), *job_overrides()]
    hydra_cfg = HydraConfig.get()
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = str(out_dir)


def hydra_flags(args: Sequence[str]) -> list[str]:
    """The flags of a Hydra command line (with their values), without ``-m`` / ``--multirun`` and overrides."""
    kept, take_next = [], False
    for arg in args:
        if take_next:
            kept.append(arg)
            take_next = False
        elif arg in ("-m", "--multirun") or not arg.startswith("-"):
            continue
        else:
            kept.append(arg)
            take_next = arg in _VALUE_FLAGS
    return kept


@contextlib.contextmanager
def fresh_distributed_state():
    """Each job of a multirun starts as the first did: Lightning's DDP launcher leaves its environment variables
    (``LOCAL_RANK=0`` makes the next job believe that its ranks are started by someone else, and wait for them)
    and its process group behind in the launching process; they are restored and destroyed around every job."""
    if in_multirun():
        for key, value in _ENV_AT_START.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        yield
    finally:
        if in_multirun() and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


@rank_zero_only
def save_config(cfg: DictConfig, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def run_record(cfg: DictConfig, status: str, seconds: float) -> dict[str, Any]:
    """What ``metrics.json`` says of every run, finished or failed (the sweep report reads it)."""
    return {
        "status": status,
        "task": cfg.get("task_name"),
        "optimized_metric": cfg.get("optimized_metric"),
        "mode": "max",
        "overrides": job_overrides(),
        "seed": cfg.get("seed"),
        "seconds": round(seconds, 2),
    }


@rank_zero_only
def write_metrics(
    out_dir: Path, cfg: DictConfig, metrics: dict[str, float], trainer: L.Trainer, done: tuple, seconds: float
) -> None:
    checkpoint = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    record = run_record(cfg, "ok", seconds) | {
        "value": metrics.get(cfg.optimized_metric),
        "metrics": {k: v for k, v in metrics.items() if k.startswith("val/")},
        "train": {k: v for k, v in metrics.items() if k.startswith("train/")},
        **dict(zip(("epochs", "steps"), done)),
        "best_checkpoint": checkpoint,
    }
    (out_dir / "metrics.json").write_text(json.dumps(record, indent=2))


def progress(trainer: L.Trainer) -> tuple[int | None, int | None]:
    """Epochs and optimizer steps done. Under ``ddp_spawn`` the ranks fit in other processes and this trainer
    stays at 0 (Lightning brings back only metrics and the best checkpoint): read them from ``last.ckpt``."""
    if trainer.global_step > 0:
        return trainer.current_epoch, trainer.global_step
    callback = trainer.checkpoint_callback
    if callback is not None and getattr(callback, "dirpath", None):
        last = Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
        if last.is_file():
            checkpoint = torch.load(last, map_location="cpu", weights_only=False, mmap=True)
            return checkpoint["epoch"] + 1, checkpoint["global_step"]
    return None, None


@rank_zero_only
def write_failure(out_dir: Path, cfg: DictConfig, error: BaseException, seconds: float) -> None:
    """``metrics.json`` with ``status: failed`` and the error, and the whole traceback in ``error.txt``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    record = run_record(cfg, "failed", seconds) | {"value": None, "error": f"{type(error).__name__}: {error}"}
    (out_dir / "metrics.json").write_text(json.dumps(record, indent=2))
    (out_dir / "error.txt").write_text("".join(traceback.format_exception(error)))


@rank_zero_only
def summarise(cfg: DictConfig, metrics: dict[str, float], done: tuple[int | None, int | None]) -> None:
    rows = [(k, v) for k, v in metrics.items() if k.startswith("val/")]
    width = max((len(k) for k, _ in rows), default=10)
    epochs, steps = done
    lines = [f"detloss: {cfg.task_name} finished after {epochs} epochs, {steps} steps"]
    lines += [f"  {k:<{width}}  {v:.4f}" for k, v in rows]
    lines.append(f"  {cfg.optimized_metric} (optimised) = {metrics.get(cfg.optimized_metric, math.nan):.4f}")
    lines.append(f"  run directory: {cfg.paths.output_dir}")
    rank_zero_info("\n".join(lines))


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train and return the optimised metric. A job of a sweep that fails is recorded as failed and returns
    ``None``, so that the other jobs go on: the basic sweeper only collects it, and the Optuna sweeper tells the
    trial as failed (a NaN would be refused by Optuna 2.10 and end the search)."""
    start = time.perf_counter()
    try:
        with fresh_distributed_state():
            metrics = train(cfg)
    except Exception as error:
        write_failure(Path(cfg.paths.output_dir), cfg, error, time.perf_counter() - start)
        if not in_multirun():
            raise
        log.exception("detloss: this sweep job failed (recorded in %s/metrics.json)", cfg.paths.output_dir)
        return None
    value = metrics.get(cfg.optimized_metric)
    return value if value is not None and math.isfinite(value) else None


if __name__ == "__main__":
    main()
