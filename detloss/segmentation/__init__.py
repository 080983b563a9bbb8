"""Segmentation, 2D and 3D: the criterion and its views (per scale under deep supervision), distance maps of
masks, and sliding-window inference over whole volumes."""

from .criterion import VIEWS, SegmentationCriterion, deep_supervision_weights, default_segmentation_loss
from .distance import boundary_distance, mask_distance, signed_distance
from .inference import resize_logits, sliding_window

__all__ = [
    "SegmentationCriterion",
    "default_segmentation_loss",
    "deep_supervision_weights",
    "VIEWS",
    "signed_distance",
    "boundary_distance",
    "mask_distance",
    "sliding_window",
    "resize_logits",
]
