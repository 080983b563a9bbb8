"""The dense path of the task-aligned assigner: alignment and CIoU of every (ground truth, anchor) pair, in
blocks, with no host sync (what a GPU wants). The sparse path of :mod:`.assigner` gives the same result from the
candidate pairs alone.

The CIoU of both paths is :func:`detloss.losses.box_loss_corners`, the one owner of the IoU family's arithmetic;
the dense blocks hand it the corner planes of the predictions ``(b, 1, A)`` and of the ground truths ``(b, g, 1)``,
so that the per-box terms are computed once per box and only the pair terms take the block's shape.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..losses import box_loss_corners

__all__ = ["dense_metrics", "pair_ciou", "pow_"]


def _ciou(pred: tuple[Tensor, ...], gt: tuple[Tensor, ...]) -> Tensor:
    """CIoU (``1 −`` the CIoU loss) of every pair of the corner planes given, clamped at 0."""
    return box_loss_corners(pred, gt, "ciou").neg_().add_(1).clamp_(min=0)


def pair_ciou(pred: Tensor, gt: Tensor) -> Tensor:
    """The CIoU of pairs of boxes ``pred (P, 4)``, ``gt (P, 4)``, clamped at 0, by the same arithmetic as the dense
    blocks (so that the two paths of the assigner agree to the bit)."""
    return _ciou(_planes(pred), _planes(gt))


def _planes(boxes: Tensor) -> tuple[Tensor, ...]:
    """The corner planes ``x1, y1, x2, y2`` of ``boxes (..., 4)``, each contiguous."""
    return tuple(boxes.movedim(-1, 0).contiguous())


def dense_metrics(assigner, pred_logits, pred_boxes, anchor_points, gt_boxes, gt_labels, gt_mask, cand):
    """``(align, ciou)``, each ``(B, G, A)``: ``t`` and ``u`` of every pair, zero off the candidates."""
    (batch_size, num_gt), (num_anchors, device) = gt_mask.shape, (pred_logits.shape[2], pred_logits.device)
    align = torch.empty(batch_size, num_gt, num_anchors, device=device)
    ciou = torch.empty_like(align)
    pred = _planes(pred_boxes.unsqueeze(1))  # planes (B, 1, A)
    gt = _planes(gt_boxes.unsqueeze(2))  # planes (B, G, 1)
    block = assigner.chunk_elements if device.type != "cpu" else min(assigner.chunk_elements, 1 << 18)
    rows = max(1, block // num_anchors)  # (image, ground truth) rows per block
    step_b = max(1, min(batch_size, rows // num_gt))
    step_g = num_gt if step_b > 1 else min(num_gt, rows)
    for b0 in range(0, batch_size, step_b):
        for g0 in range(0, num_gt, step_g):
            ib, ig = slice(b0, b0 + step_b), slice(g0, g0 + step_g)
            inside = assigner.inside(anchor_points, cand[ib, ig, None], gt_mask[ib, ig, None])
            u = ciou[ib, ig]
            torch.mul(_ciou(tuple(p[ib] for p in pred), tuple(g[ib, ig] for g in gt)), inside, out=u)
            labels = gt_labels[ib, ig, None].expand(-1, -1, num_anchors)
            t = torch.gather(pred_logits[ib], 1, labels, out=align[ib, ig]).sigmoid_()
            t.copy_(pow_(t, assigner.alpha)).mul_(pow_(u, assigner.beta)).mul_(inside)
    return align, ciou


def pow_(x: Tensor, exponent: float) -> Tensor:
    """``x ** exponent`` for ``x >= 0``, by squaring for small integer exponents (``pow`` is slow on CPU)."""
    if exponent == 0.5:
        return x.sqrt()
    e = int(exponent)
    if e != exponent or not 0 <= e <= 16:
        return x.pow(exponent)
    result, base = None, x
    while e:
        if e & 1:
            result = base.clone() if result is None else result.mul_(base)
        e >>= 1
        if e:
            base = base.square()
    return torch.ones_like(x) if result is None else result
