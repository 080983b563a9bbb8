"""Lightning tasks: they take built objects (model, criterion, optimiser partials); no Hydra inside."""

from .base import LossTask
from .detection import DetectionTask
from .schedules import warmup_cosine
from .segmentation import SegmentationTask

__all__ = ["LossTask", "DetectionTask", "SegmentationTask", "warmup_cosine"]
