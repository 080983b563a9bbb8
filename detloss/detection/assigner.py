"""Task-aligned assignment (Feng et al., "TOOD: Task-aligned One-stage Object Detection", ICCV 2021), in the
form the YOLOv8 family trains with.

For every ground truth ``g`` and anchor ``a`` of the same image:

1. candidates: the anchor centre lies strictly inside the ground truth; a ground truth whose width or height is
   below ``min_box_side`` is enlarged to that side about its centre, for this test only, so small objects get
   candidates;
2. alignment ``t = s^α · u^β``, ``s`` the predicted probability of the ground truth's class at ``a``, ``u`` the
   CIoU of the predicted box at ``a`` and the ground truth, clamped at 0 (``t = 0`` off the candidates);
3. each ground truth claims its top-``k`` anchors by ``t``; a claim counts if the anchor is a candidate and
   ``t > 0`` (a claim of no alignment would only add a foreground anchor of target score 0, which changes no
   loss, and which of the anchors tied at 0 a top-k picks is arbitrary);
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

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .. import runtime as buffers
from ..losses import check_choice, check_number
from ._dense import dense_metrics, pair_ciou, pow_

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
        n = batch_size * num_classes * num_anchors
        dense = buffers.empty((n,), dtype=self.scores.dtype, device=self.scores.device).zero_()
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
        pairs: how the alignment of the candidate pairs is computed: ``"sparse"`` gathers the candidates (a host
            sync; the default on the CPU, where it costs nothing), ``"dense"`` computes every pair in blocks with
            no host sync (the default elsewhere); both give the same assignment.
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
        pairs: str = "auto",
    ):
        super().__init__()
        self.topk = check_number("topk", topk, integer=True, ge=1)
        self.topk2 = None if topk2 is None else check_number("topk2", topk2, integer=True, ge=1)
        self.alpha, self.beta = check_number("alpha", alpha, ge=0), check_number("beta", beta, ge=0)
        self.eps = check_number("eps", eps, ge=0)
        self.min_box_side = None if min_box_side is None else check_number("min_box_side", min_box_side, ge=0)
        self.chunk_elements = check_number("chunk_elements", chunk_elements, integer=True, ge=1)
        check_choice("pairs", pairs, ("auto", "sparse", "dense"))
        self.pairs = pairs

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
        levels: Sequence[tuple[int, int, float]] | None = None,
    ) -> Assignment:
        """Assign ground truths to anchors.

        Args:
            pred_logits: ``(B, C, A)`` class logits (the sigmoid of those needed is taken here).
            pred_boxes: ``(B, A, 4)`` decoded predicted boxes, xyxy pixels; or a function ``(batch, anchor) ->
                (M, 4)`` that decodes the boxes of the pairs asked for, which lets the sparse path decode only
                the candidate anchors (a third of all at 20 ground truths per 640 px image).
            anchor_points: ``(A, 2)`` anchor centres in pixels.
            gt_boxes: ``(B, G, 4)`` ground-truth boxes, xyxy pixels, padded to the largest image.
            gt_labels: ``(B, G)`` int64 classes.
            gt_mask: ``(B, G)`` bool, False for padding.
            levels: the ``(height, width, stride)`` of each level, in the order the anchors are numbered
                (:func:`~detloss.detection.make_anchors`); with them the sparse path finds the candidates of a
                ground truth from its box alone, without testing every anchor.
        """
        device = pred_logits.device
        if gt_boxes.shape[1] == 0:
            return _empty_assignment(device, gt_boxes.dtype)
        gt_boxes, anchor_points = gt_boxes.float(), anchor_points.float()
        if isinstance(pred_boxes, Tensor):
            boxes = pred_boxes.float()
            pred_boxes = lambda batch, anchor: boxes[batch, anchor]  # noqa: E731
        cand = self._candidate_boxes(gt_boxes)
        if self.is_sparse(device):
            args = (pred_logits, pred_boxes, anchor_points, gt_boxes, gt_labels, gt_mask, cand)
            return self._assign_sparse(*args, levels)
        every = _every_box(pred_boxes, *pred_logits.shape[::2], device)
        return self._assign_dense(pred_logits, every, anchor_points, gt_boxes, gt_labels, gt_mask, cand)

    def is_sparse(self, device: torch.device) -> bool:
        """Whether the assignment on ``device`` takes the sparse path (host syncs, none on the dense path)."""
        return self.pairs == "sparse" or (self.pairs == "auto" and device.type == "cpu")

    def inside(self, points: Tensor, cand: Tensor, gt_mask: Tensor) -> Tensor:
        """``(..., A)`` bool: the anchor centre lies strictly inside the candidate box (``cand (..., 1, 4)``)."""
        inside = (points[:, 0] - cand[..., 0] > self.eps) & (points[:, 1] - cand[..., 1] > self.eps)
        inside &= (cand[..., 2] - points[:, 0] > self.eps) & (cand[..., 3] - points[:, 1] > self.eps)
        return inside & gt_mask

    # ------------------------------------------------------------------------------------- the dense path

    def _assign_dense(self, pred_logits, pred_boxes, anchor_points, gt_boxes, gt_labels, gt_mask, cand):
        """Steps 1–5 on dense ``(B, G, A)`` maps of alignment and CIoU, with no host sync."""
        (batch_size, num_gt), num_anchors, device = gt_mask.shape, pred_logits.shape[2], pred_logits.device
        k = min(self.topk, num_anchors)
        align, ciou = dense_metrics(self, pred_logits, pred_boxes, anchor_points, gt_boxes, gt_labels, gt_mask, cand)

        # top-k claims (B, G, k); a claim counts if the anchor is a candidate of a real ground truth
        top, anchor = align.topk(k, dim=2)
        point = anchor_points[anchor]  # (B, G, k, 2)
        c = cand.unsqueeze(2)
        valid = (point[..., 0] - c[..., 0] > self.eps) & (point[..., 1] - c[..., 1] > self.eps)
        valid &= (c[..., 2] - point[..., 0] > self.eps) & (c[..., 3] - point[..., 1] > self.eps)
        valid &= gt_mask.unsqueeze(2) & (top > 0)

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

        fg = valid & _first_of_each(key, valid, batch_size * num_anchors)
        pair = (batch * num_gt + gt) * num_anchors + anchor
        t, u = align.view(-1)[pair], ciou.view(-1)[pair]
        return self._finish(batch, anchor, gt, fg, t, u, gt_boxes, gt_labels, k, num_anchors)

    # ------------------------------------------------------------------------------------ the sparse path

    def _assign_sparse(self, pred_logits, pred_boxes, anchor_points, gt_boxes, gt_labels, gt_mask, cand, levels):
        """Steps 1–5 on the candidate pairs alone (a ground truth has a few hundred candidates among thousands of
        anchors), gathered with host syncs, which cost nothing on the CPU; the same assignment as the dense path."""
        (batch_size, num_gt), num_anchors = gt_mask.shape, pred_logits.shape[2]
        k = min(self.topk, num_anchors)
        b, g, a = self._candidates(anchor_points, cand, gt_mask, levels)  # sorted by (b, g, a)
        owner = b * num_gt + g
        if b.numel() <= 2 * batch_size * num_anchors:  # decode the candidate pairs' boxes only ...
            boxes = pred_boxes(b, a).float()
        else:  # ... unless many ground truths share each anchor (200 per 640 px image): decode every anchor once
            boxes = _every_box(pred_boxes, batch_size, num_anchors, pred_logits.device)[b, a]
        u = pair_ciou(boxes, gt_boxes[b, g])
        t = pow_(pred_logits[b, gt_labels[b, g], a].sigmoid(), self.alpha).mul_(pow_(u, self.beta))

        # each ground truth claims its top-k candidates of positive alignment (ties: the lower anchor)
        claimed = _top_per_owner(t, a, owner, t > 0, k, batch_size * num_gt, num_anchors)
        batch, claimant, anchor = b[claimed], g[claimed], a[claimed]
        key = batch * num_anchors + anchor

        # an anchor claimed more than once goes to the ground truth of highest CIoU there: over all its candidate
        # pairs, the first such ground truth; when that CIoU is 0, ground truth 0, as the dense arg-max gives
        pair_key = b * num_anchors + a
        claims = torch.zeros(batch_size * num_anchors, dtype=torch.int32).scatter_add_(
            0, key, torch.ones_like(key, dtype=torch.int32)
        )
        max_u = torch.zeros(batch_size * num_anchors).scatter_reduce_(0, pair_key, u, reduce="amax")
        best = torch.full((batch_size * num_anchors,), num_gt).scatter_reduce_(
            0, pair_key, torch.where(u == max_u[pair_key], g, num_gt), reduce="amin"
        )
        best = torch.where(max_u > 0, best, 0)
        gt = torch.where(claims[key] > 1, best[key], claimant)

        fg = _first_of_each(key, torch.ones_like(key, dtype=torch.bool), batch_size * num_anchors)
        # t and u of the pairs as finally assigned: looked up among the candidates (0 for a pair that is not one)
        ids = owner * num_anchors + a
        wanted = (batch * num_gt + gt) * num_anchors + anchor
        if not ids.numel():  # no candidate at all: nothing is claimed either
            return _empty_assignment(gt_boxes.device, gt_boxes.dtype)
        pos = torch.searchsorted(ids, wanted).clamp_(max=ids.numel() - 1)
        found = ids[pos] == wanted
        t_pair, u_pair = torch.where(found, t[pos], 0.0), torch.where(found, u[pos], 0.0)
        return self._finish(batch, anchor, gt, fg, t_pair, u_pair, gt_boxes, gt_labels, k, num_anchors)

    def _candidates(self, anchor_points, cand, gt_mask, levels):
        """The candidate pairs ``(b, g, a)``, sorted: an anchor whose centre lies strictly inside a real ground
        truth's candidate box. With ``levels`` each box's anchors come from its grid rectangle on each level
        (then tested as the dense path tests them); without, every anchor is tested."""
        num_gt, num_anchors = gt_mask.shape[1], anchor_points.shape[0]
        if levels is None:
            return self.inside(anchor_points, cand.unsqueeze(2), gt_mask.unsqueeze(2)).nonzero(as_tuple=True)
        b, g = gt_mask.nonzero(as_tuple=True)
        box = cand[b, g]  # (N, 4)
        found, offset = [], 0
        for h, w, stride in levels:
            # the grid cells whose centre (i + 0.5)·stride can lie inside, one more on each side than needed
            j0 = (box[:, 0] / stride - 0.5).floor().clamp_(0, w).long()
            j1 = (box[:, 2] / stride - 0.5).floor().add_(2).clamp_(0, w).long()
            i0 = (box[:, 1] / stride - 0.5).floor().clamp_(0, h).long()
            i1 = (box[:, 3] / stride - 0.5).floor().add_(2).clamp_(0, h).long()
            width, height = j1 - j0, i1 - i0
            count = width * height
            total = int(count.sum())
            if total:
                which = torch.repeat_interleave(torch.arange(len(box)), count)
                local = torch.arange(total) - torch.repeat_interleave(count.cumsum(0) - count, count)
                anchor = offset + (i0[which] + local // width[which]) * w + j0[which] + local % width[which]
                found.append((which, anchor))
            offset += h * w
        if offset != num_anchors:
            raise ValueError(f"levels {list(levels)} hold {offset} anchors, anchor_points {num_anchors}")
        if not found:
            empty = torch.zeros(0, dtype=torch.long)
            return empty, empty, empty
        which, anchor = (torch.cat(parts) for parts in zip(*found))
        point, c = anchor_points[anchor], box[which]
        keep = (point[:, 0] - c[:, 0] > self.eps) & (point[:, 1] - c[:, 1] > self.eps)
        keep &= (c[:, 2] - point[:, 0] > self.eps) & (c[:, 3] - point[:, 1] > self.eps)
        which, anchor = which[keep], anchor[keep]
        order = torch.argsort((b[which] * num_gt + g[which]) * num_anchors + anchor)
        which, anchor = which[order], anchor[order]
        return b[which], g[which], anchor

    # ---------------------------------------------------------------------------------- both, at the end

    def _finish(self, batch, anchor, gt, fg, t, u, gt_boxes, gt_labels, k, num_anchors) -> Assignment:
        """Steps 4b and 5 on the slots: the second top-k, then the target scores."""
        num_gt = gt_boxes.shape[1]
        owner = batch * num_gt + gt
        num_owners = gt_boxes.shape[0] * num_gt
        t = t * fg
        if self.topk2 is not None and self.topk2 < k:
            fg = fg & _top_per_owner(t, anchor, owner, fg, self.topk2, num_owners, num_anchors)
            t = t * fg
        # target score: t · max_u / (max_t + eps), the maxima per ground truth over its foreground anchors
        u = u * fg
        max_t = torch.zeros(num_owners, device=t.device).scatter_reduce_(0, owner, t, reduce="amax")
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


def _top_per_owner(
    t: Tensor, anchor: Tensor, owner: Tensor, fg: Tensor, k: int, num_owners: int, num_anchors: int
) -> Tensor:
    """Which ``fg`` slots are among the ``k`` of highest ``t`` of their owner (ties: lower anchor first)."""
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
    return fg & (rank < k)


def _every_box(pred_boxes, batch_size: int, num_anchors: int, device: torch.device) -> Tensor:
    """``(B, A, 4)`` float32: every anchor's box from the assigner's ``pred_boxes`` function."""
    batch = torch.arange(batch_size, device=device).repeat_interleave(num_anchors)
    every = pred_boxes(batch, torch.arange(num_anchors, device=device).repeat(batch_size))
    return every.float().view(batch_size, num_anchors, 4)


def _first_of_each(key: Tensor, valid: Tensor, num_keys: int) -> Tensor:
    """Which slots are the first valid slot of their key (one slot stands for each foreground anchor)."""
    slots = torch.arange(key.numel(), device=key.device)
    first = torch.full((num_keys,), key.numel(), dtype=torch.long, device=key.device)
    first.scatter_reduce_(0, key, torch.where(valid, slots, key.numel()), reduce="amin")
    return first[key] == slots


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
