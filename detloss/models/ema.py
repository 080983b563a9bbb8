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
import weakref
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
        self._paired: tuple | None = None  # see _module_pairs

    def current_decay(self) -> float:
        """``decay · (1 − exp(−updates / tau))``."""
        return self.decay * (1 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average towards ``model``'s current weights: one fused op over all the tensors."""
        self.updates += 1
        averaged, live, copied, sources, seen = [], [], [], [], set()
        for ema_module, module in self._module_pairs(unwrap(model)):
            for key, ema_param in ema_module._parameters.items():
                if ema_param is None or id(ema_param) in seen:  # a weight tied between modules is averaged once
                    continue
                seen.add(id(ema_param))
                param = module._parameters[key]
                if ema_param.is_floating_point():
                    averaged.append(ema_param)
                    live.append(param.to(ema_param.dtype))
                else:
                    copied.append(ema_param)
                    sources.append(param)
            for key, ema_buffer in ema_module._buffers.items():
                if ema_buffer is not None:
                    copied.append(ema_buffer)
                    sources.append(module._buffers[key])
        if averaged:
            torch._foreach_lerp_(averaged, live, 1 - self.current_decay())
        if copied:
            torch._foreach_copy_(copied, sources)

    def _module_pairs(self, model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
        """Each submodule of the average that holds tensors, with ``model``'s submodule of the same name.

        The tensors themselves are read from the modules at every update (moving a module may replace its
        buffers), but the walk by name, which costs more than the update (a few hundred modules), is done once per
        model.
        """
        if self._paired is None or self._paired[0]() is not model:
            modules = dict(model.named_modules())
            pairs = [(m, modules[n]) for n, m in self.module.named_modules() if m._parameters or m._buffers]
            self._paired = (weakref.ref(model), pairs)
        return self._paired[1]

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
