"""Collate functions: detection keeps one target dict per image, segmentation stacks the masks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..runtime import one_thread

__all__ = ["detection_collate", "segmentation_collate"]


def _stack(tensors: Sequence[Tensor], what: str) -> Tensor:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ValueError(f"cannot batch {what} of different shapes {sorted(shapes)}; letterbox them to one size")
    with one_thread():  # a plain copy: intra-op threads only add synchronisation
        return torch.stack(list(tensors))


def detection_collate(batch: Sequence[tuple[Tensor, dict[str, Tensor]]]) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """``[(image (3, H, W), {"boxes": (n_i, 4), "labels": (n_i,)}), ...]`` -> ``(images (B, 3, H, W), targets)``.

    ``targets`` is the list of the ``B`` target dicts, unchanged (``n_i`` may be 0).
    """
    images, targets = zip(*batch)
    return _stack(images, "images"), list(targets)


def segmentation_collate(batch: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """``[(image (C, H, W), mask (H, W)), ...]`` -> ``(images (B, C, H, W), masks (B, H, W) int64)``; region masks
    ``(R, H, W)`` stack to ``(B, R, H, W)``."""
    images, masks = zip(*batch)
    return _stack(images, "images"), _stack(masks, "masks").long()
