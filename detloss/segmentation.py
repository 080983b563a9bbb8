"""The segmentation criterion: one ``pixels`` view of logits and index masks for the composite's terms.

Default composite (``configs/loss/dice_ce.yaml``): Dice over the foreground classes + cross-entropy, weight 1
each, ``ignore_index`` 255 — the nnU-Net habit. Each term reduces by its own mean (cross-entropy over the valid
pixels, Dice over samples and classes), so the view carries no ``norm``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .losses import CrossEntropyLoss, DiceLoss
from .losses._utils import check_labels
from .losses.composite import CompositeLoss, LossOutput, View

__all__ = ["SegmentationCriterion", "default_segmentation_loss", "SEGMENTATION_VIEWS"]

SEGMENTATION_VIEWS = frozenset({"pixels"})


def default_segmentation_loss(ignore_index: int = 255) -> CompositeLoss:
    return CompositeLoss(
        {
            "dice": {"loss": DiceLoss(include_background=False, ignore_index=ignore_index, validate=False), "weight": 1.0, "view": "pixels"},
            "ce": {"loss": CrossEntropyLoss(ignore_index=ignore_index, validate=False), "weight": 1.0, "view": "pixels"},
        }
    )


class SegmentationCriterion(nn.Module):
    """Loss of a segmentation head.

    Args:
        num_classes: classes of the head, background (0) included.
        loss: a composite whose terms take the ``pixels`` view; ``None`` for Dice + CE.
        ignore_index: mask value of pixels that count nowhere.
        validate: check mask values (one host sync).

    Called as ``criterion(logits (B, C, H, W), masks (B, H, W) int64)``; returns
    :class:`~detloss.losses.LossOutput`.
    """

    def __init__(self, num_classes: int, loss: CompositeLoss | None = None, ignore_index: int = 255, validate: bool = True):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2 (background included), got {num_classes!r}")
        self.num_classes, self.ignore_index, self.validate = num_classes, ignore_index, validate
        self.loss = default_segmentation_loss(ignore_index) if loss is None else loss
        if not isinstance(self.loss, CompositeLoss):
            raise ValueError(f"loss must be a CompositeLoss, got {type(self.loss).__name__}")
        self.loss.check_views(SEGMENTATION_VIEWS, "SegmentationCriterion")

    def forward(self, logits: Tensor, masks: Tensor) -> LossOutput:
        if logits.ndim < 3 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must have shape (B, {self.num_classes}, H, W), got {tuple(logits.shape)}")
        if masks.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(f"masks must have shape {tuple(logits.shape[:1] + logits.shape[2:])}, got {tuple(masks.shape)}")
        if self.validate:
            check_labels("masks", masks, self.num_classes, self.ignore_index)
        with torch.autocast(logits.device.type, enabled=False):
            return self.loss({"pixels": View((logits.float(), masks.long()))})
