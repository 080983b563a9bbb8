"""Shared bases: the two dataset kinds, the two DataModule kinds and image-file helpers.

A dataset subclass implements ``__len__`` and ``load(index)``; the base applies the transforms and returns the
sample in the fixed convention (see :mod:`detloss.data.transforms`). A DataModule subclass builds
``train_dataset`` / ``val_dataset`` and ``class_names`` in ``__init__``, so ``num_classes`` is known before ``fit``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ..runtime import one_thread
from .collate import detection_collate, segmentation_collate
from .transforms import PAD_VALUE, apply_detection, apply_segmentation, segmentation_transforms

__all__ = [
    "IMAGE_EXTENSIONS",
    "DetectionDataset",
    "SegmentationDataset",
    "DetectionDataModule",
    "SegmentationDataModule",
    "read_image",
    "list_images",
    "to_uint8",
    "clamp_boxes",
    "GREY_MODES",
    "SPLITS",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
DEEP_GREY_MODES = ("I", "I;16", "I;16B", "I;16L", "F")  # 16-bit or float single-channel images (scans)
GREY_MODES = ("1", "L", "LA", *DEEP_GREY_MODES)
SPLITS = {"train": 0, "val": 1, "test": 2}
"""The splits of the generated datasets: independent random streams of one seed."""


def list_images(directory: Path) -> list[Path]:
    """The image files of ``directory`` (by extension, case-insensitive), sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"image directory not found: {directory}")
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def read_image(path: Path, channels: int = 3) -> Tensor:
    """Read an image file as ``(channels, H, W)`` float32 in [0, 1] (``channels`` 3: RGB, 1: grey)."""
    try:
        with Image.open(path) as img:
            if channels == 1 and img.mode in DEEP_GREY_MODES:
                array = np.asarray(img, dtype=np.float32)
                array = array / (65535.0 if img.mode.startswith("I") else 1.0)  # 16-bit or float scans
                return torch.from_numpy(np.clip(array, 0, 1)).unsqueeze(0)
            array = np.asarray(img.convert("RGB" if channels == 3 else "L"))
    except OSError as err:
        raise ValueError(f"{path}: cannot read image: {err}") from err
    tensor = torch.from_numpy(array.copy())
    tensor = tensor.permute(2, 0, 1) if tensor.ndim == 3 else tensor.unsqueeze(0)
    return tensor.float().div_(255.0)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Quantise a [0, 1] float image to 8 bits, as a stored picture would be (and cheap to cache)."""
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def clamp_boxes(boxes: Tensor, width: int, height: int) -> tuple[Tensor, Tensor]:
    """``xyxy`` boxes clamped to a ``width × height`` image, and which of them still have a positive area."""
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes, (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


class DetectionDataset(Dataset):
    """Base detection dataset: ``(image (3, H, W) float32 in [0, 1], {"boxes": (n, 4), "labels": (n,)})``.

    Subclasses implement ``__len__`` and ``load(index) -> (image, boxes (n, 4) float32 xyxy px, labels (n,) int64)``.
    ``transforms`` takes a loaded sample (``(Image, {"boxes", "labels"})``, a v2 pipeline), or, when it has
    ``uses_dataset = True`` (:class:`~detloss.data.augment.YoloAugment`, whose mosaic reads more samples), the
    dataset and the index.
    """

    class_names: list[str]

    def __init__(self, transforms: Callable | None = None) -> None:
        self.transforms = transforms

    def load(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {type(self).__name__} of {len(self)} items")
        if getattr(self.transforms, "uses_dataset", False):
            return self.transforms(self, index % len(self))
        with one_thread():  # drawing / decoding and transforms of one sample
            image, boxes, labels = self.load(index % len(self))
            return apply_detection(self.transforms, image, boxes, labels)


class SegmentationDataset(Dataset):
    """Base segmentation dataset: ``(image (C, H, W) float32 in [0, 1], mask (H, W) int64)``.

    Subclasses implement ``__len__`` and ``load(index) -> (image, mask)``.
    """

    class_names: list[str]

    def __init__(self, transforms: Callable | None = None) -> None:
        self.transforms = transforms

    def load(self, index: int) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {type(self).__name__} of {len(self)} items")
        with one_thread():
            image, mask = self.load(index % len(self))
            return apply_segmentation(self.transforms, image, mask)


def _run_seed() -> int:
    """The run's seed (``seed_everything`` sets ``PL_GLOBAL_SEED``), 0 outside a seeded run."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class EpochShuffle(Sampler[int]):
    """A fresh random order of ``size`` items each epoch, drawn from the run's seed and the epoch alone.

    The global random generator plays no part, so the order of epoch ``e`` is the same whatever ran before it: a
    run resumed from a checkpoint at the end of an epoch sees the orders the uninterrupted run saw (Lightning
    calls :meth:`set_epoch` before each epoch; under DDP it puts its distributed sampler, seeded the same way, in
    this one's place).
    """

    def __init__(self, size: int):
        self.size, self.epoch = int(size), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(_run_seed() * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class _DataModule(L.LightningDataModule):
    """Loader plumbing shared by all DataModules; subclasses set the datasets, ``class_names`` and ``image_size``
    (the side of the square batches, which the run checks against the model's ``size_multiple``)."""

    task: str
    collate_fn: Callable
    image_size: int
    #: the validation batch size; ``None``: ``batch_size`` (volumes validate one at a time)
    val_batch_size: int | None = None

    def __init__(self, batch_size: int, num_workers: int = 0, pin_memory: bool = False) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.class_names: list[str] = []
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        #: callbacks the training needs for this data (the yolo augmentation's close-mosaic switch)
        self.callbacks: list[L.Callback] = []

    @property
    def num_classes(self) -> int:
        """Number of classes (for segmentation it counts the background, class 0)."""
        return len(self.class_names)

    @property
    def category_ids(self) -> list:
        """The data's own id of each contiguous label ``0..C-1``, which predictions are written with: label ``i`` is
        id ``i`` for YOLO labels (the class index), mask folders (the mask value) and the generated data; a COCO
        file's category ids for :class:`~detloss.data.CocoDataModule`."""
        return list(range(self.num_classes))

    def describe(self) -> dict[str, Any]:
        """What a model trained on this data must know of it to predict without it (checkpoints carry it):
        ``kind`` (the ``task``: ``"detection"``, ``"segmentation"``), ``class_names``, ``category_ids``,
        ``in_channels``, ``image_size``, and how an image is brought to it (``resize``: ``"letterbox"`` or
        ``"resize"``; ``fill``: the padding grey); segmentation adds ``ignore_index``."""
        return {
            "kind": self.task,
            "class_names": list(self.class_names),
            "category_ids": list(self.category_ids),
            "in_channels": int(self.in_channels),
            "image_size": getattr(self, "image_size", None),
            "resize": self.resize,
            "fill": float(self.fill),
        }

    def class_counts(self) -> list[int]:
        """The objects (detection), pixels or voxels (segmentation) of each class in the training split, in the
        order of ``class_names``: what ``class_weights: inverse_frequency`` and ``effective_number`` weigh by
        (:mod:`detloss.data.class_weights`). Counted once and kept; the same on every rank (from the files)."""
        if getattr(self, "_class_counts", None) is None:
            from .class_weights import count_classes

            self._class_counts = count_classes(self)
        return list(self._class_counts)

    def _loader(self, dataset: Dataset, sampler: Sampler | None = None, batch_size: int | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size or self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=type(self).collate_fn,
            persistent_workers=self.num_workers > 0,
            # the workers' base seed from the run's seed, not from the global generator's state
            generator=torch.Generator().manual_seed(_run_seed()),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, EpochShuffle(len(self.train_dataset)))

    def val_dataloader(self) -> DataLoader:
        trainer, sampler = self.trainer, None
        if trainer is not None and trainer.world_size > 1:
            # Lightning's DistributedSampler would pad the last batch with repeated images, which the metrics
            # would count twice; this one gives every image to exactly one rank (a rank may run a batch less).
            sampler = UnrepeatedDistributedSampler(
                self.val_dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
            )
        return self._loader(self.val_dataset, sampler, batch_size=self.val_batch_size)


class DetectionDataModule(_DataModule):
    """Base of the detection DataModules: batches ``(images (B, 3, S, S), [target dicts])``; ``in_channels`` 3."""

    task = "detection"
    collate_fn = staticmethod(detection_collate)
    in_channels = 3
    resize, fill = "letterbox", PAD_VALUE  # what the validation transforms do to an image

    def train_transforms(self, augment: str | bool, close_mosaic: int = 10, **options):
        """The training transforms of ``augment`` (:func:`~detloss.data.augment.detection_train_transforms`:
        ``none``, ``light``, ``yolo``; ``options`` are theirs); with ``yolo``, :attr:`callbacks` gets the switch
        that turns the mosaic off for the last ``close_mosaic`` epochs."""
        from .augment import CloseMosaic, YoloAugment, detection_train_transforms

        transforms = detection_train_transforms(augment, self.image_size, **options)
        if isinstance(transforms, YoloAugment) and close_mosaic:
            self.callbacks = [CloseMosaic(transforms, close_mosaic)]
        return transforms


class SegmentationDataModule(_DataModule):
    """Base of the segmentation DataModules: batches ``(images (B, C, S, S), masks (B, S, S) int64)``."""

    task = "segmentation"
    collate_fn = staticmethod(segmentation_collate)
    resize, fill = "letterbox", 0.0  # what the validation transforms do to an image (a subclass may change them)

    def __init__(self, batch_size: int, num_workers: int = 0, pin_memory: bool = False, ignore_index: int = 255):
        super().__init__(batch_size, num_workers, pin_memory)
        self.ignore_index = int(ignore_index)
        self.in_channels = 1

    plan = None
    """The :class:`~detloss.plan.image_plan.ImagePlan` of a planned run (set by :meth:`configure` where the subclass
    plans, :func:`detloss.planning.plan_run`), which :meth:`describe` carries into checkpoints."""

    def configure(self, image_size: int, batch_size: int, plan=None) -> None:
        """Fix the side the images train at, the batch and the ``plan`` (an
        :class:`~detloss.plan.image_plan.ImagePlan`, which :meth:`describe` then carries): the transforms of both
        splits are made for ``image_size`` (``resize``, ``fill``; the training split's augmentation from the
        subclass's ``_augment``: ``augment`` and the options of
        :func:`~detloss.data.transforms.segmentation_transforms`)."""
        if int(image_size) < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.image_size, self.batch_size, self.plan = int(image_size), int(batch_size), plan
        common = dict(mode=self.resize, ignore_index=self.ignore_index, fill=self.fill)
        options = dict(self._augment)
        augment = options.pop("augment")
        self.train_dataset.transforms = segmentation_transforms(self.image_size, augment, **options, **common)
        self.val_dataset.transforms = segmentation_transforms(self.image_size, False, **common)

    def describe(self) -> dict[str, Any]:
        """The base's description, ``ignore_index`` and, where planned, ``plan``
        (:meth:`detloss.plan.image_plan.ImagePlan.to_dict`)."""
        planned = {} if self.plan is None else {"plan": self.plan.to_dict()}
        return super().describe() | {"ignore_index": self.ignore_index} | planned
