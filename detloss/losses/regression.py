"""Elementwise regression losses: squared error, absolute error and smooth L1 (Huber).

Values equal ``torch.nn.functional.{mse_loss, l1_loss, smooth_l1_loss}``; these add the library's contract
(``weight``, float32 upcasting, checks) and refuse to broadcast mismatched shapes, which torch only warns about.
``smooth_l1_loss`` with ``beta`` is Huber's loss divided by ``beta`` (Girshick, Fast R-CNN, 2015); ``beta = 0``
is the L1 loss.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._utils import apply_weight, as_float, as_target, check_finite, check_nonneg, check_reduction, check_same_shape, reduce

__all__ = ["mse_loss", "l1_loss", "smooth_l1_loss", "MSELoss", "L1Loss", "SmoothL1Loss"]


def _elementwise(fn, pred: Tensor, target: Tensor, weight, reduction: str, validate: bool, **kw) -> Tensor:
    check_reduction(reduction)
    pred = as_float("pred", pred)
    target = as_target("target", target, pred)
    check_same_shape("pred", pred, "target", target)
    if validate:
        check_finite("target", target)
    if weight is None and pred.numel():  # the built-in reduces in one kernel (but its mean of nothing is NaN)
        return fn(pred, target, reduction=reduction, **kw)
    return reduce(apply_weight(fn(pred, target, reduction="none", **kw), weight), reduction)


def mse_loss(pred: Tensor, target: Tensor, *, weight=None, reduction: str = "mean", validate: bool = True) -> Tensor:
    """``(pred − target)²`` elementwise; ``"none"`` keeps the input's shape."""
    return _elementwise(F.mse_loss, pred, target, weight, reduction, validate)


def l1_loss(pred: Tensor, target: Tensor, *, weight=None, reduction: str = "mean", validate: bool = True) -> Tensor:
    """``|pred − target|`` elementwise; ``"none"`` keeps the input's shape."""
    return _elementwise(F.l1_loss, pred, target, weight, reduction, validate)


def smooth_l1_loss(
    pred: Tensor, target: Tensor, *, beta: float = 1.0, weight=None, reduction: str = "mean", validate: bool = True
) -> Tensor:
    """``0.5·d²/β`` where ``|d| < β``, else ``|d| − 0.5·β``, with ``d = pred − target``; ``"none"`` keeps the shape."""
    check_nonneg("beta", beta)
    return _elementwise(F.smooth_l1_loss, pred, target, weight, reduction, validate, beta=beta)


class _Elementwise(nn.Module):
    def __init__(self, *, reduction: str = "mean", validate: bool = True):
        super().__init__()
        check_reduction(reduction)
        self.reduction, self.validate = reduction, validate

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class MSELoss(_Elementwise):
    """Module form of :func:`mse_loss`."""

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return mse_loss(pred, target, weight=weight, reduction=self.reduction, validate=self.validate)


class L1Loss(_Elementwise):
    """Module form of :func:`l1_loss`."""

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return l1_loss(pred, target, weight=weight, reduction=self.reduction, validate=self.validate)


class SmoothL1Loss(_Elementwise):
    """Module form of :func:`smooth_l1_loss`."""

    def __init__(self, *, beta: float = 1.0, reduction: str = "mean", validate: bool = True):
        super().__init__(reduction=reduction, validate=validate)
        check_nonneg("beta", beta)
        self.beta = beta

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return smooth_l1_loss(pred, target, beta=self.beta, weight=weight, reduction=self.reduction, validate=self.validate)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, reduction={self.reduction!r}"
