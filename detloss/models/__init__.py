"""Models: a YOLOv8-style detector, 2D and 3D U-Nets, and a moving average of weights for evaluation."""

from .ema import ModelEMA
from .unet import UNet
from .unet3d import UNet3D
from .yolo import YOLODetector

__all__ = ["YOLODetector", "UNet", "UNet3D", "ModelEMA"]
