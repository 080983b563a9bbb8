"""Helpers shared by every loss: option checks, float32 upcasting, value checks in one host sync, the one reduction.

Every loss in this package follows one contract:

* inputs in float16 / bfloat16 are upcast to float32 at the top, so the maths and the output are float32
  (float64 inputs stay float64, which is what ``gradcheck`` needs);
* ``weight`` (optional) rescales the unreduced values elementwise, must broadcast to them without enlarging them,
  and must be >= 0;
* ``reduction`` is one of ``"none"``, ``"mean"``, ``"sum"``;
* with ``validate=True`` (the default) bad input raises :class:`ValueError` naming the argument; the checks that
  read tensor values are gathered in a :class:`Checks` and cost one host sync together, and ``validate=False``
  skips exactly those.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "REDUCTIONS",
    "check_reduction",
    "check_choice",
    "check_number",
    "as_float",
    "as_target",
    "check_same_shape",
    "Checks",
    "apply_weight",
    "reduce",
    "autocast_off",
]

REDUCTIONS = ("none", "mean", "sum")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_number(
    name: str,
    value,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    integer: bool = False,
) -> float | int:
    """The one check of a numeric option: a finite real (an integer with ``integer=True``, bools refused) within
    the bounds given. Returns it as ``float`` (or ``int``); raises ``ValueError`` naming ``name`` and the bounds."""
    if integer:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    else:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (ge is None or value >= ge) and (gt is None or value > gt)
        ok = ok and (le is None or value <= le) and (lt is None or value < lt)
    if not ok:
        low = f"[{ge}" if ge is not None else f"({gt}" if gt is not None else None
        high = f"{le}]" if le is not None else f"{lt})" if lt is not None else None
        if low and high:
            bounds = f" in {low}, {high}"
        elif low:
            bounds = f" >= {ge}" if ge is not None else f" > {gt}"
        elif high:
            bounds = f" <= {le}" if le is not None else f" < {lt}"
        else:
            bounds = ""
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{name} must be {kind}{bounds}, got {value!r}")
    return int(value) if integer else float(value)


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


def _first(bad: Tensor) -> tuple[int, ...]:
    """The index of the first ``True`` of ``bad`` (a host sync: only for error messages)."""
    return tuple(int(i) for i in bad.nonzero()[0])


class Checks:
    """Value checks of tensors, read back in one host sync.

    Each check adds a 0-d boolean tensor "something is wrong" (computed on the tensor's device) and a message
    function; :meth:`run` reads all flags at once and raises :class:`ValueError` for the first failed check,
    whose message (the bad value and its index) is only computed then.
    """

    def __init__(self) -> None:
        self._flags: list[Tensor] = []
        self._messages: list[Callable[[], str]] = []

    def add(self, flag: Tensor, message: Callable[[], str]) -> None:
        self._flags.append(flag.reshape(()))
        self._messages.append(message)

    def finite(self, name: str, x: Tensor) -> None:
        """NaN and inf are refused (the flag reads ``x`` once, through its min and max, and allocates nothing)."""
        if x.numel():
            x = x.detach()
            lo, hi = torch.aminmax(x) if x.is_floating_point() else (x.min(), x.max())
            self.add(
                ~(torch.isfinite(lo) & torch.isfinite(hi)),  # NaN propagates into both
                lambda: f"{name} contains NaN or inf at index {_first(~torch.isfinite(x))}",
            )

    def nonneg(self, name: str, x: Tensor) -> None:
        """Values < 0 and NaN are refused."""
        if x.numel():
            bad = lambda: ~(x.detach() >= 0)  # noqa: E731
            self.add(
                bad().any(),
                lambda: f"{name} must be >= 0, found {x.detach()[bad()][0].item()!r} at index {_first(bad())}",
            )

    def weight(self, weight: Tensor | None) -> None:
        """An elementwise ``weight`` must be >= 0 (a negative weight would turn a loss into a reward)."""
        if isinstance(weight, Tensor):
            self.nonneg("weight", weight)

    def unit_interval(self, name: str, x: Tensor, what: str = "soft targets") -> None:
        """Values outside [0, 1] and NaN are refused."""
        if x.numel():
            lo, hi = torch.aminmax(x.detach())
            self.add(
                ~((lo >= 0) & (hi <= 1)),  # NaN fails both
                lambda: f"{name} must lie in [0, 1] ({what}), found values in [{float(lo)}, {float(hi)}]",
            )

    def labels(self, name: str, labels: Tensor, num_classes: int, ignore_index: int | None = None) -> None:
        """Integer class indices in ``[0, num_classes)`` or ``ignore_index``."""
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
        if labels.numel() == 0:
            return

        def bad() -> Tensor:
            out = (labels < 0) | (labels >= num_classes)
            return out if ignore_index is None else out & (labels != ignore_index)

        allowed = f"[0, {num_classes})" + (f" or ignore_index={ignore_index}" if ignore_index is not None else "")
        self.add(bad().any(), lambda: f"{name} holds label {int(labels[bad()][0])}, outside {allowed}")

    def run(self) -> None:
        """Raise for the first failed check (one host sync for all of them)."""
        if not self._flags:
            return
        failed = torch.stack(self._flags).tolist() if len(self._flags) > 1 else [bool(self._flags[0])]
        for flag, message in zip(failed, self._messages):
            if flag:
                raise ValueError(message())


def apply_weight(loss: Tensor, weight: Tensor | None) -> Tensor:
    """``loss * weight``; ``weight`` must broadcast to ``loss`` without enlarging it (:meth:`Checks.weight` checks
    its values)."""
    if weight is None:
        return loss
    if not isinstance(weight, Tensor):
        raise ValueError(f"weight must be a torch.Tensor or None, got {type(weight).__name__}")
    try:
        shape = torch.broadcast_shapes(weight.shape, loss.shape)
    except RuntimeError:
        raise ValueError(
            f"weight of shape {tuple(weight.shape)} does not broadcast to the unreduced loss of shape "
            f"{tuple(loss.shape)}"
        ) from None
    if shape != loss.shape:
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


def autocast_off(device: torch.device):
    """Turn autocast off inside a loss: its inputs are float32 (or float64) already and so must stay its maths."""
    if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
