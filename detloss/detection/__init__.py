"""Detection: box geometry, task-aligned assignment, the YOLOv8 and YOLO26 criteria and post-processing."""

from .assigner import Assignment, TaskAlignedAssigner
from .criterion import HEADS, DetectionCriterion, EndToEndCriterion, default_detection_loss, default_end_to_end_loss
from .gains import from_ultralytics_gains, ultralytics_gains, ultralytics_step_factor
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
    "EndToEndCriterion",
    "HEADS",
    "default_detection_loss",
    "default_end_to_end_loss",
    "decode",
    "postprocess",
    "from_ultralytics_gains",
    "ultralytics_gains",
    "ultralytics_step_factor",
]
