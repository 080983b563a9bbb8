"""detloss: composable composite losses for YOLO-style detection and medical-style segmentation."""

__version__ = "0.1.0"
