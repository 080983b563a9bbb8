"""Task-aligned assignment (Feng et al., "TOOD: Task-aligned One-stage Object Detection", ICCV 2021), in the
form the YOLOv8 family trains with.

For every ground truth ``g`` and anchor ``a`` of the same image:

1. candidates: the anchor centre lies strictly inside the ground truth; a ground truth whose width or height is
   below ``min_box_side`` is enlarged to that side about its centre, for this test only, so small objects get
   candidates;
2. alignment ``t = s^α · u^β``, ``s`` the predicted probability of the ground truth's class at ``a``, ``u`` the
   CIoU of the predicted box at ``a`` and the ground truth, clamped at 0 (``t = 0`` off the candidates);
3. each ground truth claims its top-``k`` anchors by ``t``; a claim counts if the anchor is a candidate;
4. an anchor claimed by several ground truths goes to the one of highest CIoU (the maximum runs over every
   ground truth of the image, claimant or not, as in the reference implementation; ties go to the first);
4b. with ``topk2 < topk`` (YOLO26's one-to-one head: ``topk=7, topk2=1``), each ground truth then keeps only its
   ``topk2`` foreground anchors of highest alignment ``t`` (ties go to the lower anchor index);
5. the target score of a foreground anchor is ``t · max_u / (max_t + eps)`` for the class of its ground truth,
   the maxima taken per ground truth over its foreground anchors.

The dense per-pair quantities (``t`` and ``u``, ``B × G × A``) are computed in chunks of ground truths, so the
temporaries of the CIoU stay bounded; everything after the top-k works on the ``B × G × k`` claims, not on dense
masks, and nothing synchronises with the host.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..losses._utils import check_number
from ..losses.iou import DEGENERATE

__all__ = ["TaskAlignedAssigner", "Assignment"]


class Assignment(NamedTuple):
    """The result of an assignment, one slot per claim (``M = B · G · k``).

    Exactly one slot stands for each foreground anchor (``fg``); the other slots hold ``score = 0`` and
    ``fg = False``, so a loss weighted by ``scores`` ignores them without any host sync to compact them.
    """

    batch: Tensor  # (M,) image of the slot
    anchor: Tensor  # (M,) anchor index
    gt: Tensor  # (M,) index, within its image, of the assigned ground truth
    labels: Tensor  # (M,) class of the assigned ground truth
    boxes: Tensor  # (M, 4) the assigned ground-truth box, xyxy pixels
    scores: Tensor  # (M,) the target score of the anchor for that class; 0 where not foreground
    fg: Tensor  # (M,) bool, the slot stands for a foreground anchor

    def fg_mask(self, batch_size: int, num_anchors: int) -> Tensor:
        """``(B, A)`` bool: which anchors are foreground."""
        count = torch.zeros(batch_size * num_anchors, dtype=torch.int32, device=self.fg.device)
        count.index_put_((self.batch * num_anchors + self.anchor,), self.fg.int(), accumulate=True)
        return count.view(batch_size, num_anchors) > 0

    def target_scores(self, batch_size: int, num_classes: int, num_anchors: int) -> Tensor:
        """Dense ``(B, C, A)`` target scores (one-hot class × score on foreground anchors, 0 elsewhere)."""
        dense = torch.zeros(batch_size * num_classes * num_anchors, dtype=self.scores.dtype, device=self.scores.device)
        index = (self.batch * num_classes + self.labels) * num_anchors + self.anchor
        dense.index_put_((index,), self.scores, accumulate=True)  # non-fg slots add 0
        return dense.view(batch_size, num_classes, num_anchors)


class TaskAlignedAssigner(nn.Module):
    """Task-aligned assigner, vectorised over the batch.

    Args:
        topk: anchors each ground truth claims.
        alpha: exponent of the classification score in the alignment.
        beta: exponent of the CIoU in the alignment.
        eps: strictness of "inside" and the guard of the score normalisation.
        min_box_side: ground truths narrower or lower than this (pixels) are enlarged to it for the candidate
            test (small-target-aware assignment, STAL); ``None`` takes the middle stride of the criterion (16 at
            strides 8/16/32), 0 turns it off.
        topk2: after an anchor claimed twice has gone to one ground truth, each ground truth keeps at most its
            ``topk2`` best anchors by alignment; ``None`` (or ``>= topk``): no second selection.
        chunk_elements: at most this many ``B × g × A`` elements per chunk of ground truths (bounds memory).
    """

    def __init__(
        self,
        topk: int = 10,
        alpha: float = 0.5,
        beta: float = 6.0,
        eps: float = 1e-9,
        min_box_side: float | None = None,
        chunk_elements: int = 1 << 23,
        topk2: int | None = None,
    ):
        super().__init__()
        self.topk = check_number("topk", topk, integer=True, ge=1)
        self.topk2 = None if topk2 is None else check_number("topk2", topk2, integer=True, ge=1)
        self.alpha, self.beta = check_number("alpha", alpha, ge=0), check_number("beta", beta, ge=0)
        self.eps = check_number("eps", eps, ge=0)
        self.min_box_side = None if min_box_side is None else check_number("min_box_side", min_box_side, ge=0)
        self.chunk_elements = check_number("chunk_elements", chunk_elements, integer=True, ge=1)

    def extra_repr(self) -> str:
        topk2 = "" if self.topk2 is None else f", topk2={self.topk2}"
        return f"topk={self.topk}{topk2}, alpha={self.alpha}, beta={self.beta}, min_box_side={self.min_box_side}"

    @torch.no_grad()
    def forward(
        self,
        pred_logits: Tensor,
        pred_boxes: Tensor,
        anchor_points: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_mask: Tensor,
    ) -> Assignment:
        """Assign ground truths to anchors.

        Args:
            pred_logits: ``(B, C, A)`` class logits (the sigmoid of those needed is taken here).
            pred_boxes: ``(B, A, 4)`` decoded predicted boxes, xyxy pixels.
            anchor_points: ``(A, 2)`` anchor centres in pixels.
            gt_boxes: ``(B, G, 4)`` ground-truth boxes, xyxy pixels, padded to the largest image.
            gt_labels: ``(B, G)`` int64 classes.
            gt_mask: ``(B, G)`` bool, False for padding.
        """
        batch_size, _, num_anchors = pred_logits.shape
        num_gt = gt_boxes.shape[1]
        device = pred_logits.device
        k = min(self.topk, num_anchors)
        if num_gt == 0:
            return _empty_assignment(device, gt_boxes.dtype)

        gt_boxes = gt_boxes.float()
        pred_boxes = pred_boxes.float()
        anchor_points = anchor_points.float()
        cand = self._candidate_boxes(gt_boxes)

        # dense alignment t and CIoU u, (B, G, A), a block of images × ground truths at a time
        align = torch.empty(batch_size, num_gt, num_anchors, device=device)
        ciou = torch.empty_like(align)
        pred = _BoxTerms(pred_boxes.permute(2, 0, 1).unsqueeze(2))  # planes (B, 1, A)
        gt = _BoxTerms(gt_boxes.permute(2, 0, 1).unsqueeze(3))  # planes (B, G, 1)
        ax, ay = anchor_points[:, 0], anchor_points[:, 1]
        block = self.chunk_elements if device.type != "cpu" else min(self.chunk_elements, 1 << 18)
        rows = max(1, block // num_anchors)  # (image, ground truth) rows per block
        step_b = max(1, min(batch_size, rows // num_gt))
        step_g = num_gt if step_b > 1 else min(num_gt, rows)
        buffers = _Buffers((step_b, step_g, num_anchors), device)
        for b0 in range(0, batch_size, step_b):
            for g0 in range(0, num_gt, step_g):
                ib, ig = slice(b0, b0 + step_b), slice(g0, g0 + step_g)
                c = cand[ib, ig, None]  # (b, g, 1, 4)
                inside = (ax - c[..., 0] > self.eps) & (ay - c[..., 1] > self.eps)
                inside &= (c[..., 2] - ax > self.eps) & (c[..., 3] - ay > self.eps)
                inside &= gt_mask[ib, ig, None]
                u = _ciou_into(ciou[ib, ig], pred.rows(ib), gt.rows(ib, ig), buffers.like(ciou[ib, ig]))
                u.mul_(inside)
                labels = gt_labels[ib, ig, None].expand(-1, -1, num_anchors)
                t = torch.gather(pred_logits[ib], 1, labels, out=align[ib, ig]).sigmoid_()
                t.copy_(_pow(t, self.alpha)).mul_(_pow(u, self.beta)).mul_(inside)

        # top-k claims (B, G, k); a claim counts if the anchor is a candidate of a real ground truth
        _, anchor = align.topk(k, dim=2)
        point = anchor_points[anchor]  # (B, G, k, 2)
        c = cand.unsqueeze(2)
        valid = (point[..., 0] - c[..., 0] > self.eps) & (point[..., 1] - c[..., 1] > self.eps)
        valid &= (c[..., 2] - point[..., 0] > self.eps) & (c[..., 3] - point[..., 1] > self.eps)
        valid &= gt_mask.unsqueeze(2)

        batch = torch.arange(batch_size, device=device).view(-1, 1, 1).expand_as(anchor).reshape(-1)
        claimant = torch.arange(num_gt, device=device).view(1, -1, 1).expand_as(anchor).reshape(-1)
        anchor, valid = anchor.reshape(-1), valid.reshape(-1)
        key = batch * num_anchors + anchor  # (M,) the anchor, batch-wide

        # an anchor claimed more than once goes to the ground truth of highest CIoU there
        claims = torch.zeros(batch_size * num_anchors, dtype=torch.int32, device=device)
        claims.scatter_add_(0, key, valid.int())
        columns = anchor.view(batch_size, 1, -1).expand(-1, num_gt, -1)  # the CIoU of every ground truth ...
        best = ciou.gather(2, columns).argmax(1).view(-1)  # ... at each claimed anchor; first maximum
        gt = torch.where(claims[key] > 1, best, claimant)

        # one slot stands for each foreground anchor: its first valid claim
        slots = torch.arange(key.numel(), device=device)
        first = torch.full_like(claims, key.numel(), dtype=torch.long)
        first.scatter_reduce_(0, key, torch.where(valid, slots, key.numel()), reduce="amin")
        fg = valid & (first[key] == slots)

        pair = (batch * num_gt + gt) * num_anchors + anchor
        t = align.view(-1)[pair] * fg
        owner = batch * num_gt + gt
        if self.topk2 is not None and self.topk2 < k:
            fg = fg & _top_per_owner(t, anchor, owner, fg, self.topk2, batch_size * num_gt, num_anchors)
            t = t * fg

        # target score: t · max_u / (max_t + eps), the maxima per ground truth over its foreground anchors
        u = ciou.view(-1)[pair] * fg
        max_t = torch.zeros(batch_size * num_gt, device=device).scatter_reduce_(0, owner, t, reduce="amax")
        max_u = torch.zeros_like(max_t).scatter_reduce_(0, owner, u, reduce="amax")
        scores = t * max_u[owner] / (max_t[owner] + self.eps)

        return Assignment(
            batch=batch,
            anchor=anchor,
            gt=gt,
            labels=gt_labels.reshape(-1)[owner],
            boxes=gt_boxes.reshape(-1, 4)[owner],
            scores=scores,
            fg=fg,
        )

    def _candidate_boxes(self, gt_boxes: Tensor) -> Tensor:
        side = self.min_box_side or 0.0
        if side <= 0:
            return gt_boxes
        centre = (gt_boxes[..., :2] + gt_boxes[..., 2:]) * 0.5
        size = (gt_boxes[..., 2:] - gt_boxes[..., :2]).clamp(min=side)
        return torch.cat((centre - size * 0.5, centre + size * 0.5), -1)


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

    The formula of :func:`~detloss.losses.iou.box_iou_pairwise` (torchvision's ``eps`` placement, inverted boxes
    and the fade of the aspect term included), written with four scratch blocks so that the dozens of elementwise
    steps stay in cache.
    """
    a, b, c, d = tmp
    torch.minimum(p.x2, g.x2, out=out)
    out.sub_(torch.maximum(p.x1, g.x1, out=a)).clamp_(min=0)
    torch.minimum(p.y2, g.y2, out=b)
    out.mul_(b.sub_(torch.maximum(p.y1, g.y1, out=a)).clamp_(min=0))  # intersection
    torch.add(p.area, g.area, out=a).sub_(out).add_(eps)
    iou = out.div_(a)
    torch.maximum(p.hi_x, g.hi_x, out=a).sub_(torch.minimum(p.lo_x, g.lo_x, out=b)).square_()
    torch.maximum(p.hi_y, g.hi_y, out=b).sub_(torch.minimum(p.lo_y, g.lo_y, out=c)).square_()
    diag = a.add_(b).add_(eps)  # c², the enclosing box's diagonal squared
    torch.sub(g.cx, p.cx, out=b).square_()
    rho = b.add_(torch.sub(g.cy, p.cy, out=c).square_()).div_(diag)  # ρ² / c²
    v = torch.sub(g.atan, p.atan, out=c).square_().mul_(4 / math.pi**2)
    # the fade t⁴ / (t⁴ + 1), t² = r² / (κ² c²) capped at 10⁴, as 1 / (1 + 1 / t⁴)
    fade = torch.div(p.r2, diag, out=d).mul_(1 / DEGENERATE**2).clamp_(max=1e4).square_()
    v.mul_(fade.reciprocal_().add_(1).reciprocal_())
    alpha = torch.sub(v, iou, out=d).add_(1 + eps).reciprocal_().mul_(v)  # α = v / (1 − IoU + v), a constant
    return iou.sub_(rho.addcmul_(alpha, v)).clamp_(min=0)


def _top_per_owner(
    t: Tensor, anchor: Tensor, owner: Tensor, fg: Tensor, k: int, num_owners: int, num_anchors: int
) -> Tensor:
    """Which foreground slots are among the ``k`` of highest ``t`` of their owner (ties: lower anchor first)."""
    if k == 1:  # the common case (YOLO26): the best slot of each owner, by one max and one min
        best = torch.full((num_owners,), -1.0, dtype=t.dtype, device=t.device)
        best.scatter_reduce_(0, owner, torch.where(fg, t, -1.0), reduce="amax")
        tied = fg & (t == best[owner])
        lowest = torch.full((num_owners,), num_anchors, dtype=anchor.dtype, device=anchor.device)
        lowest.scatter_reduce_(0, owner, torch.where(tied, anchor, num_anchors), reduce="amin")
        return tied & (anchor == lowest[owner])
    # general k: order the slots by owner, then t descending, then anchor; rank within each owner
    order = torch.argsort(anchor, stable=True)
    order = order[torch.argsort(-torch.where(fg, t, -1.0)[order], stable=True)]
    order = order[torch.argsort(torch.where(fg, owner, num_owners)[order], stable=True)]
    sorted_owner = torch.where(fg, owner, num_owners)[order]
    start = torch.searchsorted(sorted_owner, sorted_owner, right=False)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device) - start
    return rank < k


def _pow(x: Tensor, exponent: float) -> Tensor:
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


def _empty_assignment(device: torch.device, dtype: torch.dtype) -> Assignment:
    long = torch.zeros(0, dtype=torch.long, device=device)
    return Assignment(
        batch=long,
        anchor=long,
        gt=long,
        labels=long,
        boxes=torch.zeros(0, 4, dtype=torch.float32, device=device),
        scores=torch.zeros(0, dtype=torch.float32, device=device),
        fg=torch.zeros(0, dtype=torch.bool, device=device),
    )
