"""Learning-rate schedules, stepped per optimizer step (the loss-weight schedules are in
:mod:`detloss.composite.weight_schedules`)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["warmup_cosine"]


def warmup_cosine(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int = 1,
    warmup_epochs: float = 1.0,
    warmup_steps: int | None = None,
    min_lr_ratio: float = 0.01,
) -> LambdaLR:
    """Linear warm-up from 0, then cosine decay to ``min_lr_ratio`` × the base rate at ``total_steps``.

    The warm-up lasts ``warmup_steps`` when given, else ``warmup_epochs × steps_per_epoch`` (at most a third of
    the run, so short runs still decay).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= min_lr_ratio <= 1:
        raise ValueError(f"min_lr_ratio must lie in [0, 1], got {min_lr_ratio}")
    warm = int(warmup_steps if warmup_steps is not None else round(warmup_epochs * steps_per_epoch))
    warm = max(0, min(warm, total_steps // 3))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
