"""Geometry, task-aligned assignment and the YOLO detection criterion."""

from .assigner import Assignment, TaskAlignedAssigner
from .criterion import DETECTION_VIEWS, DetectionCriterion, default_detection_loss
from .geometry import bbox2dist, dist2bbox, make_anchors

__all__ = [
    "make_anchors",
    "dist2bbox",
    "bbox2dist",
    "TaskAlignedAssigner",
    "Assignment",
    "DetectionCriterion",
    "default_detection_loss",
    "DETECTION_VIEWS",
]
