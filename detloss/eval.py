"""``detloss-eval ckpt_path=PATH [overrides]``: validate a checkpoint on the configured validation data.

Pass the overrides the run was trained with (e.g. ``task=segmentation``, ``model=yolo_small``); the run's
``config.yaml`` lists them. Writes ``metrics.json`` into the evaluation's directory and returns the optimised
metric.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .config import CONFIG_SOURCE
from .runs import final_metrics, progress, summarise
from .train import build, make_trainer

__all__ = ["evaluate", "main"]


def evaluate(cfg: DictConfig) -> dict[str, float]:
    ckpt = Path(cfg.ckpt_path)
    if not ckpt.is_file():
        raise FileNotFoundError(f"ckpt_path: no checkpoint at {ckpt}")
    datamodule, task = build(cfg)
    trainer = make_trainer(cfg, logger=False, callbacks=[])
    trainer.validate(task, datamodule=datamodule, ckpt_path=str(ckpt))
    metrics = final_metrics(trainer)
    if trainer.is_global_zero:
        out = Path(cfg.paths.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        record = {"checkpoint": str(ckpt), "optimized_metric": cfg.optimized_metric, "metrics": metrics}
        (out / "metrics.json").write_text(json.dumps(record, indent=2))
    summarise(cfg, metrics, progress(trainer))
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_SOURCE, config_name="eval")
def main(cfg: DictConfig) -> float | None:
    return evaluate(cfg).get(cfg.optimized_metric)


if __name__ == "__main__":
    main()
