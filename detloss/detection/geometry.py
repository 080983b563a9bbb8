"""Anchor points of strided feature levels, and the distance ↔ box transforms of anchor-free heads.

Anchor points sit at cell centres, in grid units of their level (``(i + 0.5, j + 0.5)``); multiply by the
level's stride for pixels. A box is predicted as its distances ``(l, t, r, b)`` from the anchor point to its
four sides.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["make_anchors", "dist2bbox", "bbox2dist"]


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
