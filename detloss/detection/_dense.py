"""The dense path of the task-aligned assigner: alignment and CIoU of every (ground truth, anchor) pair, in
blocks, in place, with no host sync (what a GPU wants). The sparse path of :mod:`.assigner` gives the same result
from the candidate pairs alone."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..losses.iou import DEGENERATE

__all__ = ["dense_metrics", "pair_ciou", "pow_"]


def pair_ciou(pred: Tensor, gt: Tensor) -> Tensor:
    """The CIoU of pairs of boxes ``pred (P, 4)``, ``gt (P, 4)``, clamped at 0, by the same arithmetic as the dense
    blocks (so that the two paths of the assigner agree to the bit)."""
    out = torch.empty(pred.shape[0], device=pred.device)
    p, g = _BoxTerms(pred.t()), _BoxTerms(gt.t())
    return _ciou_into(out, p, g, _Buffers((pred.shape[0],), pred.device).like(out))


def dense_metrics(assigner, pred_logits, pred_boxes, anchor_points, gt_boxes, gt_labels, gt_mask, cand):
    """``(align, ciou)``, each ``(B, G, A)``: ``t`` and ``u`` of every pair, zero off the candidates."""
    (batch_size, num_gt), (num_anchors, device) = gt_mask.shape, (pred_logits.shape[2], pred_logits.device)
    align = torch.empty(batch_size, num_gt, num_anchors, device=device)
    ciou = torch.empty_like(align)
    pred = _BoxTerms(pred_boxes.permute(2, 0, 1).unsqueeze(2))  # planes (B, 1, A)
    gt = _BoxTerms(gt_boxes.permute(2, 0, 1).unsqueeze(3))  # planes (B, G, 1)
    block = assigner.chunk_elements if device.type != "cpu" else min(assigner.chunk_elements, 1 << 18)
    rows = max(1, block // num_anchors)  # (image, ground truth) rows per block
    step_b = max(1, min(batch_size, rows // num_gt))
    step_g = num_gt if step_b > 1 else min(num_gt, rows)
    buffers = _Buffers((step_b, step_g, num_anchors), device)
    for b0 in range(0, batch_size, step_b):
        for g0 in range(0, num_gt, step_g):
            ib, ig = slice(b0, b0 + step_b), slice(g0, g0 + step_g)
            inside = assigner.inside(anchor_points, cand[ib, ig, None], gt_mask[ib, ig, None])
            u = _ciou_into(ciou[ib, ig], pred.rows(ib), gt.rows(ib, ig), buffers.like(ciou[ib, ig]))
            u.mul_(inside)
            labels = gt_labels[ib, ig, None].expand(-1, -1, num_anchors)
            t = torch.gather(pred_logits[ib], 1, labels, out=align[ib, ig]).sigmoid_()
            t.copy_(pow_(t, assigner.alpha)).mul_(pow_(u, assigner.beta)).mul_(inside)
    return align, ciou


class _BoxTerms:
    """The per-box quantities of the CIoU, from planes ``x1, y1, x2, y2`` of any broadcastable shape (an inverted
    box has no area, and its corners in any order bound the enclosing box, as in the library's CIoU)."""

    NAMES = ("x1", "y1", "x2", "y2", "lo_x", "hi_x", "lo_y", "hi_y", "area", "cx", "cy", "atan", "r2")

    def __init__(self, planes: Tensor):
        self.x1, self.y1, self.x2, self.y2 = planes
        self.lo_x, self.hi_x = torch.minimum(self.x1, self.x2), torch.maximum(self.x1, self.x2)
        self.lo_y, self.hi_y = torch.minimum(self.y1, self.y2), torch.maximum(self.y1, self.y2)
        w, h = (self.x2 - self.x1).clamp(min=0), (self.y2 - self.y1).clamp(min=0)
        self.area = w * h
        self.cx, self.cy = (self.x1 + self.x2) * 0.5, (self.y1 + self.y2) * 0.5
        self.atan = torch.atan(w / (h + 1e-7))
        self.r2 = w * w + h * h

    def rows(self, *index) -> _BoxTerms:
        view = object.__new__(_BoxTerms)
        for name in self.NAMES:
            setattr(view, name, getattr(self, name)[index])
        return view


class _Buffers:
    """Scratch tensors of one block shape, reused across blocks (smaller blocks take a leading view)."""

    def __init__(self, shape: tuple[int, ...], device: torch.device):
        self.store = torch.empty(4, *shape, device=device)

    def like(self, x: Tensor) -> Tensor:
        return self.store[(slice(None), *(slice(0, n) for n in x.shape))]


def _ciou_into(out: Tensor, p: _BoxTerms, g: _BoxTerms, tmp: Tensor, eps: float = 1e-7) -> Tensor:
    """The CIoU of every prediction with every ground truth, clamped at 0, written into ``out`` in place.

    The formula of :func:`~detloss.losses.iou.box_iou_pairwise` (its ``1 − IoU = (U − I) / (U + eps)``, inverted
    boxes and the fade of the aspect term included), written with four scratch blocks so that the dozens of elementwise
    steps stay in cache.
    """
    a, b, c, d = tmp
    torch.minimum(p.x2, g.x2, out=out)
    out.sub_(torch.maximum(p.x1, g.x1, out=a)).clamp_(min=0)
    torch.minimum(p.y2, g.y2, out=b)
    out.mul_(b.sub_(torch.maximum(p.y1, g.y1, out=a)).clamp_(min=0))  # intersection
    torch.add(p.area, g.area, out=a).sub_(out).add_(eps)  # union + eps
    iou = out.add_(torch.sign(out, out=b).mul_(eps)).div_(a)  # 1 − (U − I) / (U + eps), 0 where I = 0
    torch.maximum(p.hi_x, g.hi_x, out=a).sub_(torch.minimum(p.lo_x, g.lo_x, out=b)).square_()
    torch.maximum(p.hi_y, g.hi_y, out=b).sub_(torch.minimum(p.lo_y, g.lo_y, out=c)).square_()
    diag = a.add_(b).add_(eps)  # c², the enclosing box's diagonal squared
    torch.sub(g.cx, p.cx, out=b).square_()
    rho = b.add_(torch.sub(g.cy, p.cy, out=c).square_()).div_(diag)  # ρ² / c²
    v = torch.sub(g.atan, p.atan, out=c).square_().mul_(4 / math.pi**2)
    # the fade s·(2 − s), s = min(1, r² / (κ² c² + eps))
    fade = torch.mul(diag, DEGENERATE**2, out=d).add_(eps)
    fade = torch.div(p.r2, fade, out=fade).clamp_(max=1)
    v.mul_(fade).mul_(fade.sub_(2).neg_())
    alpha = torch.sub(v, iou, out=d).add_(1 + eps).reciprocal_().mul_(v)  # α = v / (1 − IoU + v), a constant
    return iou.sub_(rho.addcmul_(alpha, v)).clamp_(min=0)


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
