"""detloss.losses: every loss as a plain function and a thin ``nn.Module`` of the same options.

One family per file; ``available()`` lists the registered names and ``build(name, **kw)`` makes one.
"""

from .bce import BCEWithLogitsLoss, bce_with_logits
from .composite import CompositeLoss, LossOutput, View
from .cross_entropy import CrossEntropyLoss, cross_entropy
from .dfl import DFLoss, dfl_loss
from .dice import (
    DiceLoss,
    FocalTverskyLoss,
    GeneralizedDiceLoss,
    JaccardLoss,
    TverskyLoss,
    dice_loss,
    focal_tversky_loss,
    generalized_dice_loss,
    jaccard_loss,
    tversky_loss,
)
from .focal import FocalLoss, focal_loss
from .hinge import HingeLoss, hinge_loss
from .iou import CIoULoss, DIoULoss, EIoULoss, GIoULoss, IoULoss, SIoULoss, box_iou_pairwise, iou_loss
from .penalty import WeightPenalty, weight_penalty
from .quality_focal import QualityFocalLoss, quality_focal_loss
from .registry import available, build
from .regression import L1Loss, MSELoss, SmoothL1Loss, l1_loss, mse_loss, smooth_l1_loss
from .varifocal import VarifocalLoss, varifocal_loss

__all__ = [
    "available",
    "build",
    # composite
    "CompositeLoss",
    "LossOutput",
    "View",
    # box regression
    "iou_loss",
    "box_iou_pairwise",
    "IoULoss",
    "GIoULoss",
    "DIoULoss",
    "CIoULoss",
    "SIoULoss",
    "EIoULoss",
    # distribution
    "dfl_loss",
    "DFLoss",
    # dense classification
    "bce_with_logits",
    "BCEWithLogitsLoss",
    "cross_entropy",
    "CrossEntropyLoss",
    "focal_loss",
    "FocalLoss",
    "varifocal_loss",
    "VarifocalLoss",
    "quality_focal_loss",
    "QualityFocalLoss",
    # margin
    "hinge_loss",
    "HingeLoss",
    # regression
    "mse_loss",
    "MSELoss",
    "l1_loss",
    "L1Loss",
    "smooth_l1_loss",
    "SmoothL1Loss",
    # region
    "dice_loss",
    "DiceLoss",
    "generalized_dice_loss",
    "GeneralizedDiceLoss",
    "tversky_loss",
    "TverskyLoss",
    "focal_tversky_loss",
    "FocalTverskyLoss",
    "jaccard_loss",
    "JaccardLoss",
    # regularisation
    "weight_penalty",
    "WeightPenalty",
]
