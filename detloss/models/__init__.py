"""Models: a YOLOv8-style detector, a 2D U-Net, and a moving average of weights for evaluation."""

from .ema import ModelEMA
from .unet import UNet
from .yolo import YOLODetector

__all__ = ["YOLODetector", "UNet", "ModelEMA"]
