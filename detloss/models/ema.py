"""Exponential moving average of a model's weights, used for evaluation (the YOLO habit).

After ``n`` updates the average moves towards the live weights with the decay
``d_n = decay · (1 − exp(−n / tau))``::

    ema ← d_n · ema + (1 − d_n) · weights

so the average follows the weights closely early in training and settles to ``decay`` later. Floating-point
parameters are averaged; buffers (BatchNorm running statistics, counters) are copied.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

__all__ = ["ModelEMA", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DataParallel / DistributedDataParallel and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


class ModelEMA:
    """Moving average of ``model``'s weights in ``self.module``, a deep copy in eval mode without gradients.

    Args:
        model: the model to follow (wrappers are unwrapped).
        decay: the decay the average settles to, in [0, 1].
        tau: the number of updates over which the decay ramps up, > 0.

    Create it after the model is on its device (or move it with ``to``); call ``update(model)`` after each
    optimiser step and evaluate ``ema.module``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000):
        if not 0 <= decay <= 1:
            raise ValueError(f"decay must lie in [0, 1], got {decay!r}")
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau!r}")
        self.decay, self.tau = float(decay), float(tau)
        self.updates = 0
        self.module = copy.deepcopy(unwrap(model)).eval()
        self.module.requires_grad_(False)
        for param in self.module.parameters():
            param.grad = None

    def current_decay(self) -> float:
        """``decay · (1 − exp(−updates / tau))``."""
        return self.decay * (1 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average towards ``model``'s current weights."""
        self.updates += 1
        d = self.current_decay()
        model = unwrap(model)
        params = dict(model.named_parameters())
        for name, ema_param in self.module.named_parameters():
            param = params[name].detach()
            if ema_param.is_floating_point():
                ema_param.lerp_(param.to(ema_param.dtype), 1 - d)
            else:
                ema_param.copy_(param)
        buffers = dict(model.named_buffers())
        for name, ema_buffer in self.module.named_buffers():
            ema_buffer.copy_(buffers[name])

    def to(self, *args: Any, **kwargs: Any) -> ModelEMA:
        """Move the averaged model (``nn.Module.to`` arguments)."""
        self.module.to(*args, **kwargs)
        return self

    def state_dict(self) -> dict[str, Any]:
        """``{"module": the averaged weights, "updates": n}``."""
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
