"""Lightning tasks: they take built objects (model, criterion, optimiser partials); no Hydra inside."""

from .base import LossTask, StepObserver
from .detection import DetectionTask
from .diagnostics import AssignmentDiagnostics, GradientDiagnostics
from .lr_schedules import warmup_cosine
from .segmentation import SegmentationTask
from .volume_metrics import VolumeMetrics
from .volumetric import VolumetricTask

__all__ = [
    "LossTask",
    "StepObserver",
    "DetectionTask",
    "SegmentationTask",
    "VolumetricTask",
    "VolumeMetrics",
    "GradientDiagnostics",
    "AssignmentDiagnostics",
    "warmup_cosine",
]
