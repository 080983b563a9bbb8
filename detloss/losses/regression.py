"""Elementwise regression losses: squared error, absolute error and smooth L1 (Huber).

Values equal ``torch.nn.functional.{mse_loss, l1_loss, smooth_l1_loss}``; these add the library's contract
(``weight``, float32 upcasting, checks) and refuse to broadcast mismatched shapes, which torch only warns about.
``smooth_l1_loss`` with ``beta`` is Huber's loss divided by ``beta`` (Girshick, Fast R-CNN, 2015); ``beta = 0``
is the L1 loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ._api import LossModule, LossOptions, loss_function
from ._utils import Checks, apply_weight, as_float, as_target, check_number, check_same_shape, reduce

__all__: list[str] = []


@dataclass(frozen=True, kw_only=True)
class SmoothL1Options(LossOptions):
    """``beta``: where the loss turns from quadratic to linear, >= 0 (0: the L1 loss)."""

    beta: float = 1.0

    def __post_init__(self):
        check_number("beta", self.beta, ge=0)


def _elementwise(fn, pred: Tensor, target: Tensor, weight, reduction: str, validate: bool, **kw) -> Tensor:
    pred = as_float("pred", pred)
    target = as_target("target", target, pred)
    check_same_shape("pred", pred, "target", target)
    if validate:
        checks = Checks()
        checks.finite("target", target)
        checks.weight(weight)
        checks.run()
    if weight is None and pred.numel():
        return fn(
            pred, target, reduction=reduction, **kw
        )  # the built-in reduces in one kernel (its mean of nothing is NaN)
    return reduce(apply_weight(fn(pred, target, reduction="none", **kw), weight), reduction)


@loss_function()
def mse_loss(
    pred: Tensor, target: Tensor, options, *, weight=None, reduction: str = "mean", validate: bool = True
) -> Tensor:
    """``(pred − target)²`` elementwise; ``"none"`` keeps the input's shape."""
    return _elementwise(F.mse_loss, pred, target, weight, reduction, validate)


@loss_function()
def l1_loss(
    pred: Tensor, target: Tensor, options, *, weight=None, reduction: str = "mean", validate: bool = True
) -> Tensor:
    """``|pred − target|`` elementwise; ``"none"`` keeps the input's shape."""
    return _elementwise(F.l1_loss, pred, target, weight, reduction, validate)


@loss_function(SmoothL1Options)
def smooth_l1_loss(
    pred: Tensor,
    target: Tensor,
    options: SmoothL1Options,
    *,
    weight=None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """``0.5·d²/β`` where ``|d| < β``, else ``|d| − 0.5·β``, with ``d = pred − target``; ``"none"`` keeps the shape."""
    return _elementwise(F.smooth_l1_loss, pred, target, weight, reduction, validate, beta=options.beta)


@loss_function()
def distance_l1_loss(
    pred: Tensor, target: Tensor, options, *, weight=None, reduction: str = "mean", validate: bool = True
) -> Tensor:
    """The L1 distance of a box's four sides, averaged over them: ``(N, 4)`` → ``(N,)`` for ``"none"``.

    ``mean_s |pred_s − target_s|`` over the sides ``s`` (left, top, right, bottom), e.g. distances from the anchor in
    fractions of the input's size, as YOLO26 regresses them (Ultralytics 8.4, ``BboxLoss`` with ``reg_max = 1``).
    ``weight`` is per box, broadcastable to ``(N,)``.
    """
    pred = as_float("pred", pred)
    target = as_target("target", target, pred)
    check_same_shape("pred", pred, "target", target)
    if pred.ndim < 1 or pred.shape[-1] != 4:
        raise ValueError(f"pred and target must have shape (..., 4) of box sides, got {tuple(pred.shape)}")
    if validate:
        checks = Checks()
        checks.finite("target", target)
        checks.weight(weight)
        checks.run()
    return reduce(apply_weight((pred - target).abs().mean(-1), weight), reduction)


class MSELoss(LossModule, function=mse_loss, name="mse"):
    """Module form of :func:`mse_loss`."""


class L1Loss(LossModule, function=l1_loss, name="l1"):
    """Module form of :func:`l1_loss`."""


class SmoothL1Loss(LossModule, function=smooth_l1_loss, name="smooth_l1"):
    """Module form of :func:`smooth_l1_loss`."""


class DistanceL1Loss(LossModule, function=distance_l1_loss, name="distance_l1"):
    """Module form of :func:`distance_l1_loss`."""
