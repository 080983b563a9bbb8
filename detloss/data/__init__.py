"""Datasets, transforms and Lightning DataModules for detection and segmentation.

Detection samples are ``(image (3, H, W) float32 in [0, 1], {"boxes": (n, 4) float32 xyxy px, "labels": (n,)
int64})`` and batch as ``(images (B, 3, S, S), [targets])``; segmentation samples are ``(image (C, H, W),
mask (H, W) int64)`` with ``ignore_index`` 255 and batch as ``(images (B, C, S, S), masks (B, S, S))``. Every
DataModule exposes ``num_classes``, ``class_names``, ``category_ids`` (the data's own id of each label), ``in_channels``
and ``task`` right after ``__init__``, and ``describe()``, what a checkpoint keeps of the data for prediction.
"""

from .base import DetectionDataModule, DetectionDataset, SegmentationDataModule, SegmentationDataset, read_image
from .coco import CocoDataModule, CocoDetection, load_coco
from .collate import detection_collate, segmentation_collate
from .lesions import LESION_CLASSES, LesionsDataModule, LesionsDataset
from .masks import MaskDataModule, MaskFolderDataset
from .shapes import SHAPE_CLASSES, ShapesDataModule, ShapesDataset
from .transforms import (
    PAD_VALUE,
    Letterbox,
    apply_detection,
    apply_segmentation,
    detection_transforms,
    letterbox,
    letterbox_params,
    segmentation_transforms,
    unletterbox_boxes,
)
from .yolo import YoloDataModule, YoloDetection, read_yolo_labels, read_yolo_names

__all__ = [
    "PAD_VALUE",
    "LESION_CLASSES",
    "SHAPE_CLASSES",
    "CocoDataModule",
    "CocoDetection",
    "DetectionDataModule",
    "DetectionDataset",
    "LesionsDataModule",
    "LesionsDataset",
    "Letterbox",
    "MaskDataModule",
    "MaskFolderDataset",
    "SegmentationDataModule",
    "SegmentationDataset",
    "ShapesDataModule",
    "ShapesDataset",
    "YoloDataModule",
    "YoloDetection",
    "apply_detection",
    "apply_segmentation",
    "detection_collate",
    "detection_transforms",
    "letterbox",
    "letterbox_params",
    "load_coco",
    "read_image",
    "read_yolo_labels",
    "read_yolo_names",
    "segmentation_collate",
    "segmentation_transforms",
    "unletterbox_boxes",
]
