"""A plain, dense rendering of the YOLO26 end-to-end loss from its description, the yardstick of
EndToEndCriterion (the description: docs/guide/detection.md, "YOLO26", facts of Ultralytics 8.4's ``E2ELoss``).

Per head, on the head's own assignment (dense, :func:`yolov8_reference.assign_dense`): CIoU × 7.5 and BCE × 0.5 as
YOLOv8's, and instead of DFL an L1 term × 1.5 on the four side distances, predicted (raw, one channel per side) and
target (unclamped), both times the anchor's stride and divided by the input's width (left, right) or height (top,
bottom), averaged over the sides and weighted by the target score; every term over that head's target-score sum
clamped at 1. The one-to-many head takes top-k 10; the one-to-one head top-k 7 then top-k2 1. The total is
``w · L_one2many + (1 − w) · L_one2one``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from yolov8_reference import assign_dense, ciou_dense

from detloss.detection.geometry import make_anchors


def head_loss(feats, targets, num_classes, strides=(8, 16, 32), topk=10, topk2=None, min_box_side=16.0):
    """``(box, cls, l1)`` weighted terms of one head with one channel per side."""
    bs, no = feats[0].shape[:2]
    x = torch.cat([f.reshape(bs, no, -1) for f in feats], 2)
    pred_dist, pred_scores = x[:, :4].permute(0, 2, 1), x[:, 4:].permute(0, 2, 1)  # (B, A, 4), (B, A, C)
    anchors, stride = make_anchors(feats, strides)
    height, width = feats[0].shape[2] * strides[0], feats[0].shape[3] * strides[0]

    n = [t["boxes"].shape[0] for t in targets]
    g = max(n, default=0)
    gt_bboxes, gt_labels = torch.zeros(bs, g, 4), torch.zeros(bs, g, dtype=torch.long)
    mask_gt = torch.zeros(bs, g, dtype=torch.bool)
    for i, t in enumerate(targets):
        gt_bboxes[i, : n[i]], gt_labels[i, : n[i]], mask_gt[i, : n[i]] = t["boxes"], t["labels"], True

    pred_bboxes = torch.cat((anchors - pred_dist[..., :2], anchors + pred_dist[..., 2:]), -1)
    target_bboxes, target_scores, fg = assign_dense(
        pred_scores.detach().sigmoid(), pred_bboxes.detach() * stride, anchors * stride, gt_labels, gt_bboxes,
        mask_gt, num_classes, topk=topk, min_box_side=min_box_side, topk2=topk2,
    )  # fmt: skip
    tss = max(target_scores.sum(), 1)
    cls = F.binary_cross_entropy_with_logits(pred_scores, target_scores, reduction="none").sum() / tss
    box = l1 = pred_dist.sum() * 0
    if fg.sum():
        target_bboxes = target_bboxes / stride
        weight = target_scores.sum(-1)[fg]
        box = ((1.0 - ciou_dense(pred_bboxes[fg], target_bboxes[fg])) * weight).sum() / tss
        x1y1, x2y2 = target_bboxes.chunk(2, -1)
        target_ltrb = torch.cat((anchors - x1y1, x2y2 - anchors), -1)
        scale = stride / torch.tensor([width, height, width, height])  # (A, 4)
        diff = (pred_dist * scale - target_ltrb * scale)[fg].abs().mean(-1)
        l1 = (diff * weight).sum() / tss
    return box * 7.5, cls * 0.5, l1 * 1.5


def yolo26_loss(outputs, targets, num_classes, strides=(8, 16, 32), w=0.8, min_box_side=16.0):
    """``(total, one2many terms, one2one terms)``; the total as Ultralytics' ``E2ELoss`` total / batch size."""
    many = head_loss(outputs["one2many"], targets, num_classes, strides, topk=10, min_box_side=min_box_side)
    one = head_loss(outputs["one2one"], targets, num_classes, strides, topk=7, topk2=1, min_box_side=min_box_side)
    return w * sum(many) + (1 - w) * sum(one), many, one
