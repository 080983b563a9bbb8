"""Post-processing of raw detection head maps into torchvision-style detections: decode and score, then class-wise
NMS (a one-to-many head, YOLOv8) or the top scores alone (a one-to-one head, YOLO26: NMS-free)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision
from torch import Tensor

from .geometry import decode_boxes, make_anchors

__all__ = ["decode", "postprocess", "STRIDES"]

METHODS = ("nms", "topk")

STRIDES = (8, 16, 32)
MAX_CANDIDATES = 30_000  # (anchor, class) pairs handed to NMS per image, the highest scores first


def decode(feats: Sequence[Tensor], strides: Sequence[int], reg_max: int) -> tuple[Tensor, Tensor]:
    """Boxes and class logits of every anchor, levels in order, row-major within a level.

    Args:
        feats: raw maps ``[B, 4·reg_max + C, H_l, W_l]``, the ``4·reg_max`` side channels first.
        strides: stride of each level, pixels.
        reg_max: bins per box side (1: the channel is the distance itself).

    Returns:
        ``boxes (B, A, 4)`` xyxy pixels (float32) and ``logits (B, A, C)`` (float32), ``A = Σ H_l·W_l``: the
        boxes :func:`~detloss.detection.geometry.decode_boxes` gives from the anchors of
        :func:`~detloss.detection.geometry.make_anchors`, times each level's stride.
    """
    batch = feats[0].shape[0]
    head = torch.cat([f.float().flatten(2) for f in feats], 2).transpose(1, 2)  # (B, A, 4R + C)
    points, stride = make_anchors(feats, strides, device=head.device)
    sides = head[..., : 4 * reg_max].reshape(batch, -1, 4, reg_max)
    return decode_boxes(sides, points) * stride, head[..., 4 * reg_max :]


@torch.no_grad()
def postprocess(
    feats: Sequence[Tensor],
    num_classes: int,
    strides: Sequence[int] = STRIDES,
    reg_max: int = 16,
    image_size: tuple[int, int] | None = None,
    conf_threshold: float = 0.001,
    iou_threshold: float = 0.7,
    max_det: int = 300,
    method: str = "nms",
) -> list[dict[str, Tensor]]:
    """Decode, score, threshold, then class-wise NMS (``method="nms"``) or nothing more (``"topk"``).

    Args:
        feats: raw maps ``[B, 4·reg_max + C, H_l, W_l]`` of the levels in ``strides``.
        num_classes: ``C``.
        image_size: ``(H, W)`` to clip the boxes to; ``None``: the size the first level implies.
        conf_threshold: keep the (anchor, class) pairs whose sigmoid score exceeds it (multi-label).
        iou_threshold: IoU above which a lower-scored box of the same class is suppressed (``"nms"`` only).
        max_det: detections kept per image, the highest scores.
        method: ``"nms"``; or ``"topk"``, the NMS-free inference of a one-to-one head: the ``max_det`` highest
            (anchor, class) scores of each image, as they are.

    Returns:
        ``B`` dicts ``{"boxes": (n, 4) float32 xyxy pixels, "scores": (n,) float32, "labels": (n,) int64}``,
        sorted by decreasing score.
    """
    is_list = isinstance(feats, (list, tuple)) and all(isinstance(f, Tensor) for f in feats)
    if not is_list or len(feats) != len(strides):
        raise ValueError(f"feats must be a list of {len(strides)} tensors [B, 4·reg_max + C, H, W]")
    channels = 4 * reg_max + num_classes
    for i, f in enumerate(feats):
        if f.ndim != 4 or f.shape[1] != channels or f.shape[0] != feats[0].shape[0]:
            raise ValueError(f"feats[{i}] must have shape [B, {channels}, H, W], got {tuple(f.shape)}")
    if not 0 <= conf_threshold <= 1 or not 0 <= iou_threshold <= 1:
        raise ValueError(f"conf_threshold and iou_threshold must lie in [0, 1], got {conf_threshold}, {iou_threshold}")
    if not isinstance(max_det, int) or max_det < 1:
        raise ValueError(f"max_det must be a positive integer, got {max_det!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if image_size is None:
        image_size = (feats[0].shape[-2] * strides[0], feats[0].shape[-1] * strides[0])

    boxes, logits = decode(feats, strides, reg_max)
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, image_size[1])
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, image_size[0])
    scores = logits.sigmoid_()

    if method == "topk":
        return _top_scores(boxes, scores, conf_threshold, max_det)
    results = []
    for image_boxes, image_scores in zip(boxes, scores):
        anchor, label = (image_scores > conf_threshold).nonzero(as_tuple=True)
        score = image_scores[anchor, label]
        if score.numel() > MAX_CANDIDATES:
            top = score.topk(MAX_CANDIDATES).indices
            anchor, label, score = anchor[top], label[top], score[top]
        box = image_boxes[anchor]
        keep = torchvision.ops.batched_nms(box, score, label, iou_threshold)[:max_det]
        results.append({"boxes": box[keep], "scores": score[keep], "labels": label[keep]})
    return results


def _top_scores(boxes: Tensor, scores: Tensor, conf_threshold: float, max_det: int) -> list[dict[str, Tensor]]:
    """The ``max_det`` highest (anchor, class) scores of each image above ``conf_threshold``, no suppression."""
    batch, num_anchors, num_classes = scores.shape
    k = min(max_det, num_anchors * num_classes)
    top, index = scores.flatten(1).topk(k, dim=1)  # (B, k), sorted
    anchor, label = index // num_classes, index % num_classes
    keep = top > conf_threshold
    picked = boxes.gather(1, anchor.unsqueeze(-1).expand(-1, -1, 4))
    return [{"boxes": picked[i][keep[i]], "scores": top[i][keep[i]], "labels": label[i][keep[i]]} for i in range(batch)]
