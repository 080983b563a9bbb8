"""Models: a YOLOv8-style detector, a 2D U-Net, and a moving average of weights for evaluation."""

from __future__ import annotations

from .ema import ModelEMA
from .unet import UNet
from .yolo import SIZES, YOLODetector

__all__ = ["YOLODetector", "UNet", "ModelEMA", "SIZES", "build_detector"]


def build_detector(size: str, num_classes: int, **kwargs) -> YOLODetector:
    """``YOLODetector`` of a named size in ``SIZES`` (``kwargs`` override the preset)."""
    if size not in SIZES:
        raise ValueError(f"unknown detector size {size!r}; sizes: {', '.join(SIZES)}")
    return YOLODetector(num_classes, **{**SIZES[size], **kwargs})
