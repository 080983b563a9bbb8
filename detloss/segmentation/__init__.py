"""Segmentation: the criterion that builds the views of segmentation terms."""

from .criterion import SegmentationCriterion, default_segmentation_loss

__all__ = ["SegmentationCriterion", "default_segmentation_loss"]
