"""The record a run leaves in its directory: ``config.yaml``, ``metrics.json``, ``error.txt``, the config and data
description inside every checkpoint; and the summary it prints, or the one line of a failure.

``metrics.json`` is what sweeps and ``detloss-report`` read, so a run's outcome can be known without a logger; the
checkpoints carry what ``detloss-eval`` and ``detloss-predict`` rebuild the run from (:mod:`detloss.config`).
"""

from __future__ import annotations

import json
import math
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, OmegaConf

from .config import CHECKPOINT_CONFIG, CHECKPOINT_DATA
from .launch import job_overrides
from .sweeps import pruned_epoch

__all__ = [
    "ConfigInCheckpoint",
    "final_metrics",
    "resolved_config",
    "save_config",
    "run_record",
    "write_metrics",
    "progress",
    "write_failure",
    "failure_line",
    "summarise",
]

PACKAGE = Path(__file__).resolve().parent


def final_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if torch.as_tensor(v).numel() == 1}


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's config with every interpolation resolved, as plain containers (``config.yaml``, checkpoints)."""
    return OmegaConf.to_container(cfg, resolve=True)


@rank_zero_only
def save_config(cfg: DictConfig, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


class ConfigInCheckpoint(L.Callback):
    """Store the run's resolved config (``checkpoint["detloss_config"]``) and what the model knows of its data
    (``checkpoint["detloss_data"]``: :meth:`~detloss.data.base.DetectionDataModule.describe`) in every checkpoint,
    so that ``detloss-eval`` and ``detloss-predict`` rebuild the run from the checkpoint alone."""

    def __init__(self, config: dict[str, Any], data: dict[str, Any]) -> None:
        self.config, self.data = config, data

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_CONFIG] = self.config
        checkpoint[CHECKPOINT_DATA] = self.data


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
    """``metrics.json`` of a finished run: ``status: ok``, or ``status: pruned`` with ``pruned_epoch`` (0-based) for
    a run that an Optuna trial's pruner stopped (:class:`detloss.sweeps.OptunaTrial`)."""
    checkpoint = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    pruned = pruned_epoch(trainer)
    record = run_record(cfg, "ok" if pruned is None else "pruned", seconds) | {
        "value": metrics.get(cfg.optimized_metric),
        "metrics": {k: v for k, v in metrics.items() if k.startswith("val/")},
        "train": {k: v for k, v in metrics.items() if k.startswith("train/")},
        **dict(zip(("epochs", "steps"), done)),
        "best_checkpoint": checkpoint,
    }
    if pruned is not None:
        record["pruned_epoch"] = pruned
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


def failure_line(error: BaseException, out_dir: Path) -> str:
    """The one line a failed single run ends with: ``detloss: error: <Type: message> (<file:line>); full traceback
    in <out_dir>/error.txt``, where ``file:line`` is the last frame inside detloss (the last frame at all if none
    is). Hydra's ``InstantiationException``, which only says which target failed, gives way to the error that
    the target raised; the message is joined into one line."""
    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if Path(f.filename).resolve().is_relative_to(PACKAGE)]
    where = ""
    if ours or frames:
        frame = (ours or frames)[-1]
        path = Path(frame.filename).resolve()
        name = path.relative_to(PACKAGE.parent) if ours else path
        where = f" ({name}:{frame.lineno})"
    message = " ".join(f"{type(error).__name__}: {error}".split())
    return f"detloss: error: {message}{where}; full traceback in {out_dir / 'error.txt'}"


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
