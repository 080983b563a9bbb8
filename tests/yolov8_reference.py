"""A deliberately plain, dense rendering of the YOLOv8 detection loss, the yardstick of DetectionCriterion.

It follows the widely used formulation step by step, with its data layout: the head output concatenated and
permuted to ``(B, A, ·)``, a dense ``B × G × A`` assigner with boolean-mask indexing, top-k over all anchors,
one-hot target scores over ``(B, A, C)``, and the CIoU with the ``eps`` placement of that implementation
(``h + eps``, ``union + eps``). Written for the tests and ``tools/bench_detection_loss.py``; not for training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from detloss.detection.geometry import make_anchors


def ciou_dense(box1, box2, eps=1e-7):
    """CIoU of broadcast pairs of xyxy boxes, with the eps placement of the reference implementation."""
    b1_x1, b1_y1, b1_x2, b1_y2 = box1.chunk(4, -1)
    b2_x1, b2_y1, b2_x2, b2_y2 = box2.chunk(4, -1)
    w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + eps
    w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + eps
    inter = (b1_x2.minimum(b2_x2) - b1_x1.maximum(b2_x1)).clamp(0) * (
        b1_y2.minimum(b2_y2) - b1_y1.maximum(b2_y1)
    ).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = b1_x2.maximum(b2_x2) - b1_x1.minimum(b2_x1)
    ch = b1_y2.maximum(b2_y2) - b1_y1.minimum(b2_y1)
    c2 = cw.pow(2) + ch.pow(2) + eps
    rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2).pow(2) + (b2_y1 + b2_y2 - b1_y1 - b1_y2).pow(2)) / 4
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return (iou - (rho2 / c2 + v * alpha)).squeeze(-1)


@torch.no_grad()
def assign_dense(
    pd_scores,
    pd_bboxes,
    anc_points,
    gt_labels,
    gt_bboxes,
    mask_gt,
    num_classes,
    topk=10,
    alpha=0.5,
    beta=6.0,
    eps=1e-9,
    min_box_side=0.0,
    topk2=None,
):
    """Dense task-aligned assignment. Shapes: (B,A,C), (B,A,4), (A,2), (B,G), (B,G,4), (B,G) bool.

    ``topk2``: after the multiply-claimed anchors are resolved, each ground truth keeps only its ``topk2`` anchors
    of highest alignment (YOLO26's one-to-one head)."""
    bs, n_max = gt_bboxes.shape[:2]
    na = pd_bboxes.shape[1]
    if n_max == 0:
        return (torch.zeros_like(pd_bboxes), torch.zeros_like(pd_scores), torch.zeros(bs, na, dtype=torch.bool))
    cand = gt_bboxes.clone()
    if min_box_side > 0:
        centre = (cand[..., :2] + cand[..., 2:]) / 2
        size = (cand[..., 2:] - cand[..., :2]).clamp(min=min_box_side)
        cand = torch.cat((centre - size / 2, centre + size / 2), -1)
    lt, rb = cand.view(-1, 1, 4).chunk(2, 2)
    deltas = torch.cat((anc_points[None] - lt, rb - anc_points[None]), 2).view(bs, n_max, na, 4)
    mask_in = deltas.amin(3) > eps
    mask = mask_in & mask_gt[..., None]

    overlaps = torch.zeros(bs, n_max, na)
    scores = torch.zeros(bs, n_max, na)
    b_idx = torch.arange(bs).view(-1, 1).expand(-1, n_max)
    scores[mask] = pd_scores[b_idx, :, gt_labels][mask]
    pd = pd_bboxes.unsqueeze(1).expand(-1, n_max, -1, -1)[mask]
    gt = gt_bboxes.unsqueeze(2).expand(-1, -1, na, -1)[mask]
    overlaps[mask] = ciou_dense(gt, pd).clamp(0)
    align = scores.pow(alpha) * overlaps.pow(beta)

    _, topk_idx = torch.topk(align, topk, dim=-1)
    topk_idx.masked_fill_(~mask_gt[..., None].expand(-1, -1, topk), 0)
    count = torch.zeros(bs, n_max, na, dtype=torch.int8)
    for k in range(topk):
        count.scatter_add_(-1, topk_idx[:, :, k : k + 1], torch.ones_like(topk_idx[:, :, :1], dtype=torch.int8))
    count.masked_fill_(count > 1, 0)
    mask_pos = count.float() * mask_in * mask_gt[..., None]

    fg = mask_pos.sum(-2)
    if fg.max() > 1:
        multi = (fg.unsqueeze(1) > 1).expand(-1, n_max, -1)
        is_max = torch.zeros_like(mask_pos).scatter_(1, overlaps.argmax(1).unsqueeze(1), 1)
        mask_pos = torch.where(multi, is_max, mask_pos)
        fg = mask_pos.sum(-2)
    if topk2 is not None and topk2 < topk:
        kept = torch.zeros_like(mask_pos).scatter_(-1, torch.topk(align * mask_pos, topk2, dim=-1).indices, 1.0)
        mask_pos = mask_pos * kept
        fg = mask_pos.sum(-2)
    gt_idx = mask_pos.argmax(-2)

    flat = gt_idx + torch.arange(bs)[:, None] * n_max
    labels = gt_labels.flatten()[flat].clamp(0)
    target_bboxes = gt_bboxes.view(-1, 4)[flat]
    target_scores = F.one_hot(labels, num_classes).float() * (fg[..., None] > 0)

    align = align * mask_pos
    pos_align = align.amax(-1, keepdim=True)
    pos_overlaps = (overlaps * mask_pos).amax(-1, keepdim=True)
    norm = (align * pos_overlaps / (pos_align + eps)).amax(-2).unsqueeze(-1)
    return target_bboxes, target_scores * norm, fg > 0


def yolov8_loss(
    feats, targets, num_classes, strides=(8, 16, 32), reg_max=16, min_box_side=0.0, weights=(7.5, 0.5, 1.5)
):
    """Returns ``(box, cls, dfl)`` weighted terms, not multiplied by the batch size."""
    bs, no = feats[0].shape[:2]
    x = torch.cat([f.view(bs, no, -1) for f in feats], 2)
    pred_distri, pred_scores = x.split((reg_max * 4, num_classes), 1)
    pred_scores = pred_scores.permute(0, 2, 1).contiguous()
    pred_distri = pred_distri.permute(0, 2, 1).contiguous()
    anchors, stride = make_anchors(feats, strides)

    n = [t["boxes"].shape[0] for t in targets]
    g = max(n, default=0)
    gt_bboxes = torch.zeros(bs, g, 4)
    gt_labels = torch.zeros(bs, g, dtype=torch.long)
    mask_gt = torch.zeros(bs, g, dtype=torch.bool)
    for i, t in enumerate(targets):
        gt_bboxes[i, : n[i]] = t["boxes"]
        gt_labels[i, : n[i]] = t["labels"]
        mask_gt[i, : n[i]] = True

    proj = torch.arange(reg_max, dtype=torch.float32)
    a = pred_distri.shape[1]
    pred_dist = pred_distri.view(bs, a, 4, reg_max).softmax(3).matmul(proj)
    lt, rb = pred_dist.chunk(2, -1)
    pred_bboxes = torch.cat((anchors - lt, anchors + rb), -1)

    target_bboxes, target_scores, fg = assign_dense(
        pred_scores.detach().sigmoid(),
        pred_bboxes.detach() * stride,
        anchors * stride,
        gt_labels,
        gt_bboxes,
        mask_gt,
        num_classes,
        min_box_side=min_box_side,
    )
    tss = max(target_scores.sum(), 1)
    cls = F.binary_cross_entropy_with_logits(pred_scores, target_scores, reduction="none").sum() / tss
    box = dfl = torch.zeros(())
    if fg.sum():
        target_bboxes = target_bboxes / stride
        weight = target_scores.sum(-1)[fg].unsqueeze(-1)
        iou = ciou_dense(pred_bboxes[fg], target_bboxes[fg])
        box = ((1.0 - iou).unsqueeze(-1) * weight).sum() / tss
        x1y1, x2y2 = target_bboxes.chunk(2, -1)
        ltrb = torch.cat((anchors - x1y1, x2y2 - anchors), -1).clamp(0, reg_max - 1 - 0.01)[fg]
        logits = pred_distri[fg].view(-1, reg_max)
        tl = ltrb.long()
        wl = tl + 1 - ltrb
        d = (
            F.cross_entropy(logits, tl.view(-1), reduction="none").view(tl.shape) * wl
            + F.cross_entropy(logits, (tl + 1).view(-1), reduction="none").view(tl.shape) * (1 - wl)
        ).mean(-1, keepdim=True)
        dfl = (d * weight).sum() / tss
    return box * weights[0], cls * weights[1], dfl * weights[2]
