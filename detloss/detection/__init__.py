"""Detection: box geometry, task-aligned assignment, the YOLO criterion and post-processing."""

from .assigner import Assignment, TaskAlignedAssigner
from .criterion import DetectionCriterion, default_detection_loss
from .geometry import bbox2dist, decode_boxes, dist2bbox, expected_distance, make_anchors
from .postprocess import decode, postprocess

__all__ = [
    "make_anchors",
    "expected_distance",
    "dist2bbox",
    "bbox2dist",
    "decode_boxes",
    "TaskAlignedAssigner",
    "Assignment",
    "DetectionCriterion",
    "default_detection_loss",
    "decode",
    "postprocess",
]
