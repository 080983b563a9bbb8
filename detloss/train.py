"""``python -m detloss.train`` / ``detloss-train``: compose the config, build the parts, fit, report.

The entry point is thin on purpose: Hydra composes ``configs/train.yaml`` with the command line, this module
instantiates data, model, loss, criterion and task in that order (the model and criterion need the number of
classes, which the data knows), fits, writes ``metrics.json`` and the resolved config into the run directory,
and returns the optimised metric for sweepers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, OmegaConf

CONFIG_PATH = str(Path(__file__).resolve().parents[1] / "configs")

__all__ = ["build", "train", "main"]


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


def make_trainer(cfg: DictConfig, **overrides) -> L.Trainer:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    kwargs = {"callbacks": callbacks, "logger": loggers or False, **overrides}
    return instantiate(cfg.trainer, **kwargs)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured task; return the final validation metrics and loss terms."""
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    datamodule, task = build(cfg)
    trainer = make_trainer(cfg)
    save_config(cfg, out_dir, trainer)
    trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = final_metrics(trainer)
    write_metrics(out_dir, cfg, metrics, trainer)
    summarise(cfg, metrics, trainer)
    return metrics


def final_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if torch.as_tensor(v).numel() == 1}


@rank_zero_only
def save_config(cfg: DictConfig, out_dir: Path, trainer: L.Trainer) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


@rank_zero_only
def write_metrics(out_dir: Path, cfg: DictConfig, metrics: dict[str, float], trainer: L.Trainer) -> None:
    checkpoint = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    record = {
        "status": "ok",
        "optimized_metric": cfg.optimized_metric,
        "value": metrics.get(cfg.optimized_metric),
        "metrics": {k: v for k, v in metrics.items() if k.startswith("val/")},
        "train": {k: v for k, v in metrics.items() if k.startswith("train/")},
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "best_checkpoint": checkpoint,
    }
    (out_dir / "metrics.json").write_text(json.dumps(record, indent=2))


@rank_zero_only
def summarise(cfg: DictConfig, metrics: dict[str, float], trainer: L.Trainer) -> None:
    rows = [(k, v) for k, v in metrics.items() if k.startswith("val/")]
    width = max((len(k) for k, _ in rows), default=10)
    lines = [f"detloss: {cfg.task_name} finished after {trainer.current_epoch} epochs, {trainer.global_step} steps"]
    lines += [f"  {k:<{width}}  {v:.4f}" for k, v in rows]
    lines.append(f"  {cfg.optimized_metric} (optimised) = {metrics.get(cfg.optimized_metric, math.nan):.4f}")
    lines.append(f"  run directory: {cfg.paths.output_dir}")
    rank_zero_info("\n".join(lines))


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get(cfg.optimized_metric)


if __name__ == "__main__":
    main()
