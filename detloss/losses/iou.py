"""IoU-family box regression losses for pairs of ``xyxy`` boxes.

    =========  ===================================================================  ==============================
    kind       loss                                                                 reference
    =========  ===================================================================  ==============================
    ``iou``    1 − IoU                                                              Yu et al., UnitBox, 2016
    ``giou``   1 − IoU + (|C| − |A ∪ B|) / |C|                                      Rezatofighi et al., 2019
    ``diou``   1 − IoU + ρ²(b, b_gt) / c²                                           Zheng et al., 2020
    ``ciou``   DIoU + α·v,  v = 4/π²·(atan(w_gt/h_gt) − atan(w/h))²,                 Zheng et al., 2020
               α = v / (1 − IoU + v), α held constant in the gradient
    ``siou``   1 − IoU + (Δ + Ω)/2 (angle-aware distance cost Δ, shape cost Ω, θ=4)  Gevorgyan, 2022
    ``eiou``   DIoU + (w − w_gt)²/C_w² + (h − h_gt)²/C_h²                            Zhang et al., 2022
    =========  ===================================================================  ==============================

C is the smallest box enclosing both, c its diagonal, ρ the distance between the centres, U = |A ∪ B| and
I = |A ∩ B|. Each loss is a sum of non-negative terms, nothing subtracted from 1, so that a float32 value is
precise relative to itself:

* ``1 − IoU`` is ``(U − I) / (U + eps)`` (the two areas' excesses over ``I``, added), and exactly 1 where the boxes
  do not overlap (``I = 0``, an empty union included);
* the centre offset is ``((x1_gt − x1) + (x2_gt − x2)) / 2`` (and in ``y``), 0 for identical boxes anywhere.

The values of ``giou``, ``diou`` and ``ciou`` equal
``torchvision.ops.{generalized_box_iou,distance_box_iou,complete_box_iou}_loss`` (same ``eps``) on overlapping
boxes of positive area up to ``eps / (U + eps)``: torchvision's ``1 − I / (U + eps)`` is ``(U − I + eps) / (U + eps)``,
whose slope ``eps·side / (U + eps)²`` on identical boxes the form above removes (both tend to ``1 − I / U``: this
one from below, torchvision's from above); elsewhere they are equal but for rounding, and so are the ``eps``
placements of ``v`` (``atan(w / (h + eps))``, as Ultralytics has it; torchvision has none), ``c² + eps`` and
``|C| + eps``.

Degenerate boxes, so that values stay finite and gradients bounded:

* a pair of identical boxes has the loss 0 and a zero gradient, or the loss 1 and a zero gradient where their
  area is 0 (``I = 0``); GIoU's ``|C| − U``, which is 0 wherever the union is a box, counts as 0 with a zero
  gradient there (not as tied halves that cancel only up to rounding);
* an inverted predicted box (``x2 < x1`` or ``y2 < y1``, which a head that regresses raw distances can output) has
  no area: its width and height count as 0, and the enclosing box ``C`` spans all corners of both boxes, so every
  loss stays bounded and ``>= 0`` on it (inverted *target* boxes are refused when validating);
* the terms whose slope grows as ``1 / size`` when a size shrinks to nothing are faded out there, by the factor
  ``s·(2 − s)``, ``s = min(1, size² / unit²)``, ``unit² = κ²·c² + eps`` (``κ =`` :data:`DEGENERATE`): CIoU's
  aspect term ``v`` by the predicted box's diagonal, GIoU's enclosing-area penalty by the enclosing box's shorter
  side, SIoU's distance cost along each axis by the enclosing box's extent along it and its shape cost along each
  axis by the larger of the two boxes' extents. The factor is exactly 1 from ``unit`` up (those terms are then
  unchanged), and their gradients stay below about ``2 / unit``: ``2 / (κ·c)``, and at most ``2 / sqrt(eps)``
  (the ``eps`` is an area there, as in ``c² + eps`` and ``|C| + eps``), which is finite in float16;
* a zero-height box has aspect angle ``atan(w / eps)``;
* not bounded: the slope of ``1 − IoU`` itself, ``~side / (U + eps)``, for thin boxes (``U`` ~ ``eps·side``);
  bounding it would change the loss of identical or of ordinary boxes (``tests/losses/test_fuzz.py`` gives the numbers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass

import torch
from torch import Tensor

from ._api import LossModule, LossOptions, loss_function
from ._utils import Checks, apply_weight, as_float, as_target, check_choice, check_number, reduce

__all__ = ["IOU_KINDS", "DEGENERATE", "box_iou_pairwise", "box_loss_corners"]

IOU_KINDS = ("iou", "giou", "diou", "ciou", "siou", "eiou")
DEGENERATE = 1e-3
"""κ: a box below this fraction of the enclosing diagonal fades out the terms that would explode (module doc)."""


@dataclass(frozen=True)
class IoUOptions(LossOptions):
    """``kind``: one of :data:`IOU_KINDS`; ``eps``: keeps divisions finite for degenerate boxes (torchvision's)."""

    kind: str = "ciou"
    _: KW_ONLY
    eps: float = 1e-7

    def __post_init__(self):
        check_choice("kind", self.kind, IOU_KINDS)
        check_number("eps", self.eps, gt=0)


def box_iou_pairwise(pred: Tensor, target: Tensor, kind: str = "iou", eps: float = 1e-7) -> Tensor:
    """The (generalised) IoU of each pair of ``xyxy`` boxes: ``1 − iou_loss(pred, target, kind)``.

    Shapes ``(..., 4)`` and ``(..., 4)``, broadcastable; returns ``(...)``. No checks and no upcasting: this is the
    inner routine the losses and the task-aligned assigner share.
    """
    return 1 - box_loss_corners(pred.unbind(-1), target.unbind(-1), kind, eps)


def box_loss_corners(pred: Sequence[Tensor], target: Sequence[Tensor], kind: str, eps: float = 1e-7) -> Tensor:
    """The loss of ``kind`` (module table) of each pair, from the corner planes ``(x1, y1, x2, y2)`` of the
    predicted and of the target boxes, each plane of any shape, the eight broadcasting together.

    The one owner of the IoU family's arithmetic: :func:`iou_loss`, :func:`box_iou_pairwise` and the task-aligned
    assigner's dense blocks (planes ``(B, 1, A)`` against ``(B, G, 1)``) all call it, so a per-box quantity (area,
    aspect angle) is computed once per box and only the pair terms take the broadcast shape. Written as a sum of
    non-negative terms, nothing subtracted from 1 (module doc). No checks, no upcasting.
    """
    x1, y1, x2, y2 = pred
    x1g, y1g, x2g, y2g = target
    w, h = (x2 - x1).clamp(min=0), (y2 - y1).clamp(min=0)  # an inverted box has no area
    wg, hg = (x2g - x1g).clamp(min=0), (y2g - y1g).clamp(min=0)

    # The in-place steps (``sub_``, ``add_``, ...) act on fresh temporaries, whose values autograd keeps where a
    # backward needs them: fewer allocations of the pair shape on the assigner's dense blocks, the plain expressions'
    # values and gradients to the bit.
    inter_x = torch.minimum(x2, x2g).sub_(torch.maximum(x1, x1g)).clamp_(min=0)
    inter = inter_x * torch.minimum(y2, y2g).sub_(torch.maximum(y1, y1g)).clamp_(min=0)
    area, area_g = w * h, wg * hg
    union = (area + area_g).sub_(inter)
    # 1 − IoU as (U − I) / (U + eps): 0 with a zero gradient for identical boxes (the tied minimum and maximum
    # split their gradient in halves); 1 with a zero gradient, as torchvision's, for boxes that do not overlap
    loss = torch.where(inter > 0, (area - inter).add_(area_g - inter).div_(union + eps), 1.0)
    if kind == "iou":
        return loss

    # smallest box enclosing every corner of both (the corners of a valid box are its x1 <= x2, y1 <= y2)
    cw = _span(x1, x2, x1g, x2g)
    ch = _span(y1, y2, y1g, y2g)
    c2 = (cw * cw).add_(ch * ch).add_(eps)
    if kind == "giou":
        area_c = cw * ch
        side = torch.minimum(cw, ch)
        # |C| − |A ∪ B| >= 0 is 0, its minimum, where the union is a box (identical or nested boxes): the gradient
        # there is 0, taken as such rather than as a sum of tied halves that rounds to ~1e-7·side / U
        gap = area_c - union
        return loss + torch.where(gap > 0, gap / (area_c + eps) * _fade(side * side, c2, eps), 0.0)

    # centre offsets (target minus prediction), 0 for identical boxes wherever they lie
    dx = (x1g - x1).add_(x2g - x2).mul_(0.5)
    dy = (y1g - y1).add_(y2g - y2).mul_(0.5)
    if kind == "siou":
        distance = _siou_distance_cost(dx, dy, cw, ch, c2, eps)
        return loss + 0.5 * (distance + _siou_shape_cost(w, h, wg, hg, c2, eps))

    diou = (dx * dx).add_(dy * dy).div_(c2).add_(loss)  # 1 − IoU + ρ² / c²
    if kind == "diou":
        return diou
    if kind == "ciou":
        v = (torch.atan(wg / (hg + eps)) - torch.atan(w / (h + eps))).pow(2).mul_(4 / math.pi**2)
        v = v.mul_(_fade(w * w + h * h, c2, eps))
        with torch.no_grad():
            alpha = (loss + v).add_(eps)
            alpha = torch.div(v, alpha, out=alpha)  # v / (1 − IoU + v)
        return (alpha * v).add_(diou)
    if kind == "eiou":
        return diou + (w - wg).pow(2) / (cw * cw + eps) + (h - hg).pow(2) / (ch * ch + eps)
    raise ValueError(f"kind must be one of {IOU_KINDS}, got {kind!r}")


def _span(a1: Tensor, a2: Tensor, b1: Tensor, b2: Tensor) -> Tensor:
    """The extent along one axis of the box enclosing the intervals ``[a1, a2]`` and ``[b1, b2]``, either
    possibly inverted."""
    lo = torch.minimum(torch.minimum(a1, a2), torch.minimum(b1, b2))
    return torch.maximum(torch.maximum(a1, a2), torch.maximum(b1, b2)).sub_(lo)


def _fade(size2: Tensor, c2: Tensor, eps: float) -> Tensor:
    """``s·(2 − s)`` with ``s = min(1, size² / unit²)``, ``unit² = κ²·c² + eps``: 0 for a size of 0, exactly 1 from
    ``unit`` up, and flat there; below ``unit`` it is ``< 2·size² / unit²``, so times a term of slope ``~1/size`` it
    has a slope below ``~2 / unit``, and its own slope is below ``~1.6 / unit``."""
    s = (size2 / (c2 * DEGENERATE**2).add_(eps)).clamp_(max=1)
    return (2 - s).mul_(s)


def _siou_distance_cost(dx: Tensor, dy: Tensor, cw: Tensor, ch: Tensor, c2: Tensor, eps: float) -> Tensor:
    # angle cost Λ = sin(2·arcsin(sin a)) = 2·sin a·cos a, with a the smaller angle of the centre line to an axis
    sigma = torch.sqrt(dx * dx + dy * dy + eps)
    sin_x, sin_y = dx.abs() / sigma, dy.abs() / sigma
    sin_a = torch.where(sin_x > math.sqrt(0.5), sin_y, sin_x)
    angle = 2 * sin_a * torch.sqrt((1 - sin_a * sin_a).clamp(min=0))
    gamma = 2 - angle
    rho_x = (dx / (cw + eps)).pow(2)
    rho_y = (dy / (ch + eps)).pow(2)
    # each axis's cost 1 − exp(−γ·ρ), faded by the enclosing box's extent along that axis
    cost_x = -torch.expm1(-gamma * rho_x) * _fade(cw * cw, c2, eps)
    return cost_x - torch.expm1(-gamma * rho_y) * _fade(ch * ch, c2, eps)


def _siou_shape_cost(w: Tensor, h: Tensor, wg: Tensor, hg: Tensor, c2: Tensor, eps: float) -> Tensor:
    # each axis's cost (1 − exp(−ω))⁴, faded by the larger of the two extents along that axis
    big_w, big_h = torch.maximum(w, wg), torch.maximum(h, hg)
    omega_w = (w - wg).abs() / (big_w + eps)
    omega_h = (h - hg).abs() / (big_h + eps)
    cost_w = torch.expm1(-omega_w).pow(4) * _fade(big_w * big_w, c2, eps)
    return cost_w + torch.expm1(-omega_h).pow(4) * _fade(big_h * big_h, c2, eps)


@loss_function(IoUOptions)
def iou_loss(
    pred: Tensor,
    target: Tensor,
    options: IoUOptions,
    *,
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """IoU-family loss of each pair of boxes ``pred[i]``, ``target[i]`` (see the module table for the kinds).

    Args:
        pred: ``(N, 4)`` (or ``(..., 4)``) predicted boxes, ``xyxy``.
        target: target boxes of the same shape; each must have ``x2 >= x1`` and ``y2 >= y1``.
        kind: one of ``iou``, ``giou``, ``diou``, ``ciou``, ``siou``, ``eiou``.
        eps: keeps divisions finite for degenerate boxes (torchvision's default).
        weight: optional per-pair weight broadcastable to ``(N,)``.
        reduction: ``"none"`` returns ``(N,)`` (the leading shape), ``"mean"`` or ``"sum"`` a scalar.
        validate: check for NaN/inf, inverted target boxes and a negative weight (one host sync).

    Returns:
        float32 for half/bfloat16 input, else the input's dtype.

    Reference form: this one; its arithmetic is :func:`box_loss_corners`, which the assigner's dense blocks call too.
    """
    pred = as_float("pred", pred)
    target = as_target("target", target, pred)
    if pred.shape != target.shape or pred.shape[-1:] != (4,):
        raise ValueError(
            f"pred and target must both have shape (..., 4) of xyxy boxes, got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )
    if validate:
        _check_box_values(pred, target, weight)
    loss = box_loss_corners(pred.unbind(-1), target.unbind(-1), options.kind, options.eps)
    return reduce(apply_weight(loss, weight), reduction)


def _check_box_values(pred: Tensor, target: Tensor, weight: Tensor | None) -> None:
    checks = Checks()
    checks.finite("pred", pred)
    checks.finite("target", target)
    flat = target.detach().reshape(-1, 4)
    inverted = lambda: (flat[:, 2] < flat[:, 0]) | (flat[:, 3] < flat[:, 1])  # noqa: E731
    if flat.numel():
        checks.add(
            inverted().any(),
            lambda: (
                f"target box {int(inverted().nonzero()[0])} has x2 < x1 or y2 < y1: "
                f"{flat[inverted().nonzero()[0, 0]].tolist()}"
            ),
        )
    checks.weight(weight)
    checks.run()


class IoULoss(LossModule, function=iou_loss, name="iou"):
    """Module form of :func:`iou_loss`. ``IoULoss(kind=...)`` builds any member (IoU by default); the subclasses
    fix one."""

    defaults = {"kind": "iou"}


class GIoULoss(IoULoss, name="giou", kind="giou"):
    """Generalised IoU loss (Rezatofighi et al., 2019); see :func:`iou_loss`."""


class DIoULoss(IoULoss, name="diou", kind="diou"):
    """Distance IoU loss (Zheng et al., 2020); see :func:`iou_loss`."""


class CIoULoss(IoULoss, name="ciou", kind="ciou"):
    """Complete IoU loss (Zheng et al., 2020); see :func:`iou_loss`."""


class SIoULoss(IoULoss, name="siou", kind="siou"):
    """SCYLLA-IoU loss (Gevorgyan, 2022); see :func:`iou_loss`."""


class EIoULoss(IoULoss, name="eiou", kind="eiou"):
    """Efficient IoU loss (Zhang et al., 2022); see :func:`iou_loss`."""
