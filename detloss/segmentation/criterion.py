"""The segmentation criterion: one ``pixels`` view of logits and index masks for the composite's terms.

Default composite (``configs/loss/dice_ce.yaml``): Dice over the foreground classes + cross-entropy, weight 1
each, ``ignore_index`` 255 — the nnU-Net habit. Each term reduces by its own mean (cross-entropy over the valid
pixels, Dice over samples and classes), so the view carries no ``norm``.
"""

from __future__ import annotations

from torch import Tensor

from ..composite import CompositeLoss, Criterion, View
from ..losses import CrossEntropyLoss, DiceLoss
from ..losses._utils import Checks, check_number

__all__ = ["SegmentationCriterion", "default_segmentation_loss"]


def default_segmentation_loss(ignore_index: int = 255) -> CompositeLoss:
    """Dice over the foreground classes + cross-entropy, weight 1 each."""
    return CompositeLoss(
        {
            "dice": {
                "loss": DiceLoss(include_background=False, ignore_index=ignore_index),
                "weight": 1.0,
                "view": "pixels",
            },
            "ce": {"loss": CrossEntropyLoss(ignore_index=ignore_index), "weight": 1.0, "view": "pixels"},
        }
    )


class SegmentationCriterion(Criterion):
    """Loss of a segmentation head.

    Args:
        num_classes: classes of the head, background (0) included.
        loss: a composite whose terms take the ``pixels`` view; ``None`` for Dice + CE.
        ignore_index: mask value of pixels that count nowhere.
        validate: check that the logits are finite and the mask values valid (one host sync, naming the first bad
            index); the terms never check again (the view is marked ``checked``).

    Called as ``criterion(logits (B, C, H, W), masks (B, H, W) int64)``; returns
    :class:`~detloss.composite.LossOutput`. The one view, ``pixels``, is ``(logits, masks)``: each term reduces
    by its own mean (no ``norm``).
    """

    views = frozenset({"pixels"})
    min_classes = 2  # background included

    def __init__(
        self, num_classes: int, loss: CompositeLoss | None = None, ignore_index: int = 255, validate: bool = True
    ):
        check_number("ignore_index", ignore_index, integer=True)
        super().__init__(num_classes, default_segmentation_loss(ignore_index) if loss is None else loss)
        self.ignore_index, self.validate = ignore_index, validate

    def build_views(self, logits: Tensor, masks: Tensor) -> dict[str, View]:
        if logits.ndim < 3 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must have shape (B, {self.num_classes}, H, W), got {tuple(logits.shape)}")
        if masks.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(
                f"masks must have shape {tuple(logits.shape[:1] + logits.shape[2:])}, got {tuple(masks.shape)}"
            )
        if self.validate:
            checks = Checks()
            checks.finite("logits", logits)
            checks.labels("masks", masks, self.num_classes, self.ignore_index)
            checks.run()
        return {"pixels": View((logits.float(), masks.long()), checked=True)}
