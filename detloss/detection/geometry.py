"""Box geometry of anchor-free heads, in one place: anchor points, the expected distance over the bins of a side,
and the distance ↔ box transforms. The criteria and the models' post-processing both use these.

Anchor points sit at cell centres, in grid units of their level (``(i + 0.5, j + 0.5)``); multiply by the level's
stride for pixels. A box is predicted as its distances ``(l, t, r, b)`` from the anchor point to its four sides:
with ``reg_max > 1`` bins per side (YOLOv8's Distribution Focal Loss head) a side is the expectation of the softmax
over bins ``0 … reg_max − 1``; with ``reg_max == 1`` (YOLO26) the one channel is the distance itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["make_anchors", "expected_distance", "dist2bbox", "bbox2dist", "decode_boxes"]


def make_anchors(
    feats: Sequence[Tensor] | Sequence[tuple[int, int]],
    strides: Sequence[float],
    offset: float = 0.5,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Anchor points of every level, row-major within a level, levels in order.

    Args:
        feats: per-level feature maps ``[B, ·, H_l, W_l]`` (or their ``(H_l, W_l)`` sizes).
        strides: the stride of each level in pixels.
        offset: the point's offset inside its cell (0.5: the centre).

    Returns:
        ``points (A, 2)`` as ``(x, y)`` in grid units and ``stride (A, 1)``, ``A = Σ H_l·W_l``.
    """
    if len(feats) != len(strides):
        raise ValueError(f"feats has {len(feats)} levels but strides has {len(strides)}")
    points, stride_list = [], []
    for feat, stride in zip(feats, strides):
        if isinstance(feat, Tensor):
            h, w = feat.shape[-2:]
            device = feat.device if device is None else device
        else:
            h, w = feat
        ys = torch.arange(h, dtype=dtype, device=device) + offset
        xs = torch.arange(w, dtype=dtype, device=device) + offset
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((xx, yy), -1).view(-1, 2))
        stride_list.append(torch.full((h * w, 1), float(stride), dtype=dtype, device=device))
    return torch.cat(points), torch.cat(stride_list)


def expected_distance(bin_logits: Tensor) -> Tensor:
    """``(..., 4, R)`` per-side logits → ``(..., 4)`` distances in grid units: ``Σ_i i · softmax(bins)_i`` for
    ``R > 1`` (the DFL head), the channel itself for ``R == 1`` (a direct distance, no softmax)."""
    reg_max = bin_logits.shape[-1]
    if reg_max == 1:
        return bin_logits[..., 0]
    return bin_logits.softmax(-1) @ torch.arange(reg_max, dtype=bin_logits.dtype, device=bin_logits.device)


def dist2bbox(distance: Tensor, points: Tensor, dim: int = -1) -> Tensor:
    """``xyxy`` boxes from distances ``(l, t, r, b)`` to the anchor points ``(x, y)`` (along ``dim``)."""
    lt, rb = distance.chunk(2, dim)
    return torch.cat((points - lt, points + rb), dim)


def bbox2dist(points: Tensor, boxes: Tensor, max_dist: float | None = None, dim: int = -1) -> Tensor:
    """Distances ``(l, t, r, b)`` from the anchor points to the sides of ``xyxy`` boxes.

    With ``max_dist`` the distances are clamped to ``[0, max_dist − 0.01]`` (the DFL target range).
    """
    x1y1, x2y2 = boxes.chunk(2, dim)
    dist = torch.cat((points - x1y1, x2y2 - points), dim)
    return dist if max_dist is None else dist.clamp(0, max_dist - 0.01)


def decode_boxes(bin_logits: Tensor, points: Tensor) -> Tensor:
    """``xyxy`` boxes in grid units from ``(..., 4, R)`` side logits and the anchor points ``(..., 2)``."""
    return dist2bbox(expected_distance(bin_logits), points)
