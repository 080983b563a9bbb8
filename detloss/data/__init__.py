"""Datasets, transforms and Lightning DataModules for detection and segmentation, 2D and volumetric.

Detection samples are ``(image (3, H, W) float32 in [0, 1], {"boxes": (n, 4) float32 xyxy px, "labels": (n,)
int64})`` and batch as ``(images (B, 3, S, S), [targets])``; segmentation samples are ``(image (C, H, W),
mask (H, W) int64)`` with ``ignore_index`` 255 and batch as ``(images (B, C, S, S), masks (B, S, S))``; volumes
(:mod:`.nnunet`, :mod:`.patches`) are ``(image (C, D, H, W), {"labels": (D, H, W), "spacing": (3,)})``. Every
DataModule exposes ``num_classes``, ``class_names``, ``category_ids`` (the data's own id of each label), ``in_channels``
and ``task`` right after ``__init__``, and ``describe()``, what a checkpoint keeps of the data for prediction.
"""

from .base import DetectionDataModule, DetectionDataset, SegmentationDataModule, SegmentationDataset, read_image
from .brats import BRATS_REGIONS, BraTSDataModule, generate_brats
from .cases import cross_validation_split
from .coco import CocoDataModule, CocoDetection, load_coco
from .collate import detection_collate, segmentation_collate
from .lesions import LESION_CLASSES, LesionsDataModule, LesionsDataset
from .lesions3d import LESION3D_LABELS, Lesions3DDataModule, generate_lesions3d
from .masks import MaskDataModule, MaskFolderDataset
from .msd import MSDDataModule, MSDDataset
from .nifti import read_channels, read_volume
from .nnunet import NnUNetDataModule, NnUNetDataset
from .patches import PatchDataset, VolumeDataset, volume_collate
from .regions import labels_to_regions, parse_regions, region_names, region_targets, regions_to_labels
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
    "BRATS_REGIONS",
    "BraTSDataModule",
    "PAD_VALUE",
    "LESION_CLASSES",
    "LESION3D_LABELS",
    "SHAPE_CLASSES",
    "CocoDataModule",
    "CocoDetection",
    "DetectionDataModule",
    "DetectionDataset",
    "Lesions3DDataModule",
    "LesionsDataModule",
    "LesionsDataset",
    "Letterbox",
    "MaskDataModule",
    "MaskFolderDataset",
    "MSDDataModule",
    "MSDDataset",
    "NnUNetDataModule",
    "NnUNetDataset",
    "PatchDataset",
    "SegmentationDataModule",
    "SegmentationDataset",
    "ShapesDataModule",
    "ShapesDataset",
    "YoloDataModule",
    "VolumeDataset",
    "YoloDetection",
    "apply_detection",
    "apply_segmentation",
    "cross_validation_split",
    "detection_collate",
    "detection_transforms",
    "generate_brats",
    "generate_lesions3d",
    "labels_to_regions",
    "letterbox",
    "letterbox_params",
    "load_coco",
    "parse_regions",
    "read_channels",
    "read_image",
    "read_volume",
    "read_yolo_labels",
    "read_yolo_names",
    "region_names",
    "region_targets",
    "regions_to_labels",
    "segmentation_collate",
    "segmentation_transforms",
    "unletterbox_boxes",
    "volume_collate",
]
