"""Loss registry: what exists, and a factory that builds it by name (the timm habit).

Hydra configs do not need it (``_target_: detloss.losses.CIoULoss`` names the class plainly); it serves
command-line tools, sweeps over loss names and ``detloss.losses.build("ciou", reduction="sum")``.
"""

from __future__ import annotations

from torch import nn

from .bce import BCEWithLogitsLoss
from .cross_entropy import CrossEntropyLoss
from .dfl import DFLoss
from .dice import DiceLoss, FocalTverskyLoss, GeneralizedDiceLoss, JaccardLoss, TverskyLoss
from .focal import FocalLoss
from .hinge import HingeLoss
from .iou import CIoULoss, DIoULoss, EIoULoss, GIoULoss, IoULoss, SIoULoss
from .penalty import WeightPenalty
from .quality_focal import QualityFocalLoss
from .regression import L1Loss, MSELoss, SmoothL1Loss
from .varifocal import VarifocalLoss

__all__ = ["available", "build", "LOSSES"]

LOSSES: dict[str, type[nn.Module]] = {
    # box regression
    "iou": IoULoss,
    "giou": GIoULoss,
    "diou": DIoULoss,
    "ciou": CIoULoss,
    "siou": SIoULoss,
    "eiou": EIoULoss,
    # distribution
    "dfl": DFLoss,
    # dense classification
    "bce": BCEWithLogitsLoss,
    "cross_entropy": CrossEntropyLoss,
    "focal": FocalLoss,
    "varifocal": VarifocalLoss,
    "quality_focal": QualityFocalLoss,
    # margin
    "hinge": HingeLoss,
    # regression
    "mse": MSELoss,
    "l1": L1Loss,
    "smooth_l1": SmoothL1Loss,
    # region (segmentation)
    "dice": DiceLoss,
    "generalized_dice": GeneralizedDiceLoss,
    "tversky": TverskyLoss,
    "focal_tversky": FocalTverskyLoss,
    "jaccard": JaccardLoss,
    # regularisation
    "weight_penalty": WeightPenalty,
}


def available() -> list[str]:
    """The names :func:`build` accepts, sorted."""
    return sorted(LOSSES)


def build(name: str, **kwargs) -> nn.Module:
    """Build the loss registered as ``name`` with the keyword options of its class."""
    try:
        cls = LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; available: {', '.join(available())}") from None
    return cls(**kwargs)
