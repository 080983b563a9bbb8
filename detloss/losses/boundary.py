"""Distance-weighted losses for segmentation: the boundary loss and the Hausdorff distance-transform loss.

Both weigh each voxel's probability by its distance to a boundary, so that errors far from the target's surface
cost more than the near misses a region loss cannot tell apart. The distance maps are inputs: they come from the
segmentation criterion (:mod:`detloss.segmentation.distance`), which computes them once per sample and step with
the voxel spacing, and only when a term asks for them (the views ``distance`` and ``distance_pair``).

* ``boundary_loss`` (Kervadec et al., *Boundary loss for highly unbalanced segmentation*, MIDL 2019):
  ``Σ_Ω φ_c · p_c / |Ω|`` per sample and class, ``φ_c`` the signed distance map of the target's class ``c``:
  negative inside, positive outside (the paper's sign), in the units of the spacing (mm). Its minimum is negative
  (all probability inside the target); it is meant beside a region loss, whose weight it takes over by
  :class:`~detloss.composite.Rebalance` (``loss=dice_ce_boundary``).
* ``hausdorff_dt_loss`` (Karimi & Salcudean, *Reducing the Hausdorff Distance in Medical Image Segmentation with
  Convolutional Neural Networks*, IEEE TMI 2019, the distance-transform form):
  ``Σ_Ω (p_c − q_c)² · (d_q^α + d_p^α) / |Ω|`` per sample and class, ``d_q`` and ``d_p`` the (unsigned) distances to
  the boundary of the target and of the thresholded prediction (``p > 0.5``), ``α = 2``; MONAI's
  ``HausdorffDTLoss`` computes the same with unit spacing.

Shared conventions (see :func:`~detloss.losses._region.dense_inputs`): ``logits (B, C, *spatial)``; ``target``
class indices ``(B, *spatial)`` (``mode="multiclass"``, softmax) or a dense tensor of the logits' shape
(``"multiclass"`` one-hot, or ``"multilabel"``, sigmoid); distance maps of the logits' shape, one channel per
class (background included: channel 0 is dropped with the others' probabilities when ``include_background`` is
false, the default). Voxels equal to ``ignore_index`` are left out, and the mean over the voxels is over the valid
ones. ``"none"`` returns the ``(B, C')`` per-sample, per-class values; ``"mean"`` / ``"sum"`` reduce them.

Degenerate input stays finite: a class absent from the patch (or filling it) has no boundary, its distance maps
are 0 and so are its terms; a sample with every voxel ignored gives 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._api import LossModule, LossOptions, loss_function
from ._region import dense_inputs
from ._utils import Checks, apply_weight, as_target, autocast_off, check_choice, check_number, reduce

__all__: list[str] = []

MODES = ("multiclass", "multilabel")


@dataclass(frozen=True, kw_only=True)
class DistanceOptions(LossOptions):
    """``mode``: ``"multiclass"`` (softmax) or ``"multilabel"`` (sigmoid); ``include_background``: keep channel 0;
    ``ignore_index``: target value left out (``None``: none)."""

    mode: str = "multiclass"
    include_background: bool = False
    ignore_index: int | None = 255

    def __post_init__(self):
        check_choice("mode", self.mode, MODES)
        if self.ignore_index is not None:
            check_number("ignore_index", self.ignore_index, integer=True)


@dataclass(frozen=True, kw_only=True)
class HausdorffDTOptions(DistanceOptions):
    """:class:`DistanceOptions` and ``alpha > 0``, the exponent of the distances (the paper's 2)."""

    alpha: float = 2.0

    def __post_init__(self):
        super().__post_init__()
        check_number("alpha", self.alpha, gt=0)


def voxel_mean(values: Tensor, valid: Tensor | None) -> Tensor:
    """``(B, C', *spatial)`` -> ``(B, C')``: the mean over the valid voxels (0 where none is valid)."""
    dims = tuple(range(2, values.ndim))
    if valid is None:
        return values.mean(dims) if values[0, 0].numel() else values.sum(dims)
    return (values * valid).sum(dims) / valid.sum(dims).clamp(min=1)


def _distance(
    name: str, distance: Tensor, logits: Tensor, like: Tensor, first: int, checks: Checks | None, nonneg: bool
) -> Tensor:
    if not isinstance(distance, Tensor) or not distance.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor of the logits' shape {tuple(logits.shape)}")
    if distance.shape != logits.shape:
        raise ValueError(
            f"{name} must have the logits' shape {tuple(logits.shape)} (one map per class, background included), "
            f"got {tuple(distance.shape)}"
        )
    distance = as_target(name, distance, like)[:, first:]
    if checks is not None:
        checks.finite(name, distance)
        if nonneg:
            checks.nonneg(name, distance)
    return distance


@loss_function(DistanceOptions)
def boundary_loss(
    logits: Tensor,
    target: Tensor,
    distance: Tensor,
    options: DistanceOptions,
    *,
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """Boundary loss (Kervadec et al., MIDL 2019): ``Σ_Ω φ_c · p_c / |Ω|`` per sample and class.

    Args:
        logits: ``(B, C, *spatial)`` raw scores.
        target: class indices ``(B, *spatial)`` (multiclass), or a dense target of the logits' shape; used for
            the ignored voxels only (the distances carry the target).
        distance: ``(B, C, *spatial)`` signed distance map of each class of the target, negative inside and positive
            outside (:func:`detloss.segmentation.signed_distance`).
        options: see :class:`DistanceOptions`.
        weight: optional, >= 0, broadcasting to the ``(B, C')`` values without enlarging them.
        reduction: ``"none"``: the ``(B, C')`` values; ``"mean"`` / ``"sum"`` over them.
        validate: check label values, finite distances and the weight's sign (one host sync).
    """
    checks, o = Checks() if validate else None, options
    with autocast_off(logits.device):
        (probs, _), _, valid = dense_inputs(logits, target, o.mode, o.include_background, o.ignore_index, checks)
        phi = _distance("distance", distance, logits, probs, 0 if o.include_background else 1, checks, nonneg=False)
        if validate:
            checks.weight(weight)
            checks.run()
        return reduce(apply_weight(voxel_mean(probs * phi, valid), weight), reduction)


@loss_function(HausdorffDTOptions)
def hausdorff_dt_loss(
    logits: Tensor,
    target: Tensor,
    target_distance: Tensor,
    prediction_distance: Tensor,
    options: HausdorffDTOptions,
    *,
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """Hausdorff distance-transform loss (Karimi & Salcudean, IEEE TMI 2019):
    ``Σ_Ω (p_c − q_c)² · (d_q^α + d_p^α) / |Ω|`` per sample and class.

    Args:
        logits: ``(B, C, *spatial)`` raw scores.
        target: class indices ``(B, *spatial)`` (multiclass), or a one-hot / multilabel tensor of the logits' shape.
        target_distance: ``(B, C, *spatial)``, >= 0: each voxel's distance to the boundary of the target's class
            (:func:`detloss.segmentation.boundary_distance`); 0 for a class without boundary.
        prediction_distance: the same for the thresholded prediction (``p > 0.5``), a constant of the step.
        options: see :class:`HausdorffDTOptions`.
        weight: optional, >= 0, broadcasting to the ``(B, C')`` values without enlarging them.
        reduction: ``"none"``: the ``(B, C')`` values; ``"mean"`` / ``"sum"`` over them.
        validate: check label values, finite non-negative distances and the weight's sign (one host sync).
    """
    checks, o = Checks() if validate else None, options
    first = 0 if o.include_background else 1
    with autocast_off(logits.device):
        inputs = dense_inputs(logits, target, o.mode, o.include_background, o.ignore_index, checks)
        (probs, complement), onehot, valid = inputs
        d_q = _distance("target_distance", target_distance, logits, probs, first, checks, nonneg=True)
        d_p = _distance("prediction_distance", prediction_distance, logits, probs, first, checks, nonneg=True)
        if validate:
            checks.weight(weight)
            checks.run()
        # |p − q|: 1 − p without subtraction where the target is 1 (precise near a perfect prediction)
        error = torch.where(onehot == 1, complement, probs - onehot)
        values = error.square() * (d_q.pow(o.alpha) + d_p.pow(o.alpha))
        return reduce(apply_weight(voxel_mean(values, valid), weight), reduction)


class BoundaryLoss(LossModule, function=boundary_loss, name="boundary"):
    """Module form of :func:`boundary_loss`."""

    #: the signed distances are negative inside the target, so the loss is too where the prediction covers it
    #: (read by the loss-config check: balancers of log or ratio form refuse such a term)
    can_be_negative = True


class HausdorffDTLoss(LossModule, function=hausdorff_dt_loss, name="hausdorff_dt"):
    """Module form of :func:`hausdorff_dt_loss`."""
