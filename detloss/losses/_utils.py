"""Helpers shared by every loss: float32 upcasting, input checks and the one reduction.

Every loss in this package follows one contract:

* inputs in float16 / bfloat16 are upcast to float32 at the top, so the maths and the output are float32
  (float64 inputs stay float64, which is what ``gradcheck`` needs);
* ``weight`` (optional) rescales the unreduced values elementwise and must broadcast to them;
* ``reduction`` is one of ``"none"``, ``"mean"``, ``"sum"``;
* with ``validate=True`` (the default) bad input raises :class:`ValueError` naming the argument; the checks
  that read tensor values cost one host sync, and ``validate=False`` skips exactly those.
"""

from __future__ import annotations

import torch
from torch import Tensor

REDUCTIONS = ("none", "mean", "sum")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_nonneg(name: str, value: float) -> None:
    if not value >= 0:  # also catches NaN
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")


def as_float(name: str, x: Tensor) -> Tensor:
    """Return ``x`` as a floating tensor of at least float32 precision."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype in _LOW_PRECISION:
        return x.float()
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def as_target(name: str, x: Tensor, like: Tensor) -> Tensor:
    """A dense target (soft labels, boxes, distances) in the dtype of the prediction ``like``."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x.to(dtype=like.dtype)


def check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def check_finite(name: str, x: Tensor) -> None:
    """Raise if ``x`` holds NaN or inf (one host sync)."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")


def check_in_unit_interval(name: str, x: Tensor) -> None:
    """Raise if some value of ``x`` lies outside [0, 1] or is NaN (one host sync)."""
    if x.numel() == 0:
        return
    lo, hi = torch.aminmax(x)
    lo, hi = float(lo), float(hi)
    if not (lo >= 0.0 and hi <= 1.0):  # NaN fails both comparisons
        raise ValueError(f"{name} must lie in [0, 1] (soft targets), found values in [{lo}, {hi}]")


def check_labels(name: str, labels: Tensor, num_classes: int, ignore_index: int | None = None) -> None:
    """Raise if some label is outside ``[0, num_classes)`` and is not ``ignore_index`` (one host sync)."""
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    if labels.numel() == 0:
        return
    bad = (labels < 0) | (labels >= num_classes)
    if ignore_index is not None:
        bad &= labels != ignore_index
    if bool(bad.any()):
        value = int(labels[bad][0])
        allowed = f"[0, {num_classes})" + (f" or ignore_index={ignore_index}" if ignore_index is not None else "")
        raise ValueError(f"{name} holds label {value}, outside {allowed}")


def apply_weight(loss: Tensor, weight: Tensor | None) -> Tensor:
    if weight is None:
        return loss
    if not isinstance(weight, Tensor):
        raise ValueError(f"weight must be a torch.Tensor or None, got {type(weight).__name__}")
    try:
        torch.broadcast_shapes(weight.shape, loss.shape)
    except RuntimeError:
        raise ValueError(
            f"weight of shape {tuple(weight.shape)} does not broadcast to the unreduced loss of shape {tuple(loss.shape)}"
        ) from None
    if torch.broadcast_shapes(weight.shape, loss.shape) != loss.shape:
        raise ValueError(
            f"weight of shape {tuple(weight.shape)} would enlarge the unreduced loss of shape {tuple(loss.shape)}"
        )
    return loss * weight.to(loss.dtype)


def reduce(loss: Tensor, reduction: str) -> Tensor:
    """The one reduction. ``"mean"`` of an empty tensor is 0 (still attached to the graph), never NaN."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if loss.numel() == 0:
        return loss.sum()  # 0, keeps the graph alive
    return loss.mean()
