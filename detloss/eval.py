"""``detloss-eval ckpt_path=PATH [overrides]``: validate a checkpoint on its validation data.

The checkpoint carries its run's resolved config, so model, data, loss and task are rebuilt from it alone; the
command line still wins (``data.num_val=64``; ``data=coco data.val_images=...`` for other data): the precedence
is :func:`detloss.config.checkpoint_arguments`'. A checkpoint without a config (written before checkpoints carried
one) needs the training overrides typed again. Writes ``metrics.json`` into the evaluation's directory
(``outputs/<task>/eval/<time>/``) and returns the optimised metric.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .config import CONFIG_SOURCE, checkpoint_arguments
from .launch import VALUE_FLAGS
from .runs import final_metrics, progress, summarise
from .train import build, make_trainer

__all__ = ["evaluate", "main"]


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Validate ``cfg.ckpt_path`` with the task and data of ``cfg`` (already rebuilt on the checkpoint's config)."""
    ckpt = Path(cfg.ckpt_path)
    if not ckpt.is_file():
        raise FileNotFoundError(f"ckpt_path: no checkpoint at {ckpt}")
    datamodule, task = build(cfg, pretrained=False)
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
def _app(cfg: DictConfig) -> float | None:
    return evaluate(cfg).get(cfg.optimized_metric)


def main() -> float | None:
    """``detloss-eval``: the checkpoint's config becomes the default of its groups, then Hydra composes."""
    sys.argv = [sys.argv[0], *checkpoint_arguments(sys.argv[1:], VALUE_FLAGS)]
    return _app()


if __name__ == "__main__":
    main()
