"""Segmentation folders: ``root/images/<split>/<stem>.<ext>`` with ``root/masks/<split>/<stem>.png``.

A mask is a single-channel PNG (mode ``L``, ``P``, ``I`` or ``1``) of class indices ``0..num_classes-1`` (0 is
usually the background) or ``ignore_index``. At construction every image must have its mask, of the same size
and a single-channel mode (read from the PNG headers only); mask values are checked when a mask is loaded, and
for all masks by :meth:`MaskFolderDataset.validate`.

Regions (``data.regions``, :mod:`detloss.data.regions`): the mask values are labels, and the model is trained on
overlapping regions of them, one sigmoid channel each, as volumes are; the batches' targets are then region masks
``(B, R, S, S)`` (made after the transforms, so that resizing and padding act on the labels).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .base import GREY_MODES, SegmentationDataModule, SegmentationDataset, list_images, read_image
from .regions import RegionTargets, resolve_regions

__all__ = ["MaskFolderDataset", "MaskDataModule"]

MASK_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L")  # single-channel modes of integer values
VALIDATE_BELOW = 2000
"""``MaskDataModule(validate=None)`` scans all mask values at construction when the folders hold fewer files."""


def _guess_channels(image_dir: Path) -> int:
    """1 when the first image of ``image_dir`` has a grey mode (``L``, ``I;16``, ...), else 3."""
    images = list_images(image_dir)
    if not images:
        return 3
    with Image.open(images[0]) as img:
        return 1 if img.mode in GREY_MODES else 3


class MaskFolderDataset(SegmentationDataset):
    """Samples ``(image (C, H, W) float32 in [0, 1], mask (H, W) int64)`` of one image / mask folder pair.

    Args:
        image_dir, mask_dir: the folders; masks are ``<mask_dir>/<image stem>.png``.
        num_classes: classes, background included; valid mask values are ``0..num_classes-1`` and
            ``ignore_index``.
        in_channels: 3 reads images as RGB, 1 as grey.
        transforms: v2 pipeline applied to each ``(Image, Mask)`` sample.
    """

    def __init__(
        self,
        image_dir: str | Path,
        mask_dir: str | Path,
        num_classes: int,
        ignore_index: int = 255,
        in_channels: int = 3,
        transforms: Callable | None = None,
    ) -> None:
        super().__init__(transforms)
        if num_classes < 1 or 0 <= ignore_index < num_classes:
            raise ValueError(
                f"need num_classes >= 1 and ignore_index outside [0, num_classes), got {num_classes}, {ignore_index}"
            )
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        self.image_dir, self.mask_dir = Path(image_dir), Path(mask_dir)
        self.num_classes, self.ignore_index, self.in_channels = int(num_classes), int(ignore_index), int(in_channels)
        if not self.mask_dir.is_dir():
            raise FileNotFoundError(f"mask directory not found: {self.mask_dir}")
        self.image_paths = list_images(self.image_dir)
        if not self.image_paths:
            raise ValueError(f"{self.image_dir}: no image files found")
        self.mask_paths = [self.mask_dir / f"{p.stem}.png" for p in self.image_paths]
        for image_path, mask_path in zip(self.image_paths, self.mask_paths):
            self._check_pair(image_path, mask_path)

    @staticmethod
    def _check_pair(image_path: Path, mask_path: Path) -> None:
        """Mask exists, is single-channel and has the image's size (headers only)."""
        if not mask_path.is_file():
            raise FileNotFoundError(f"image {image_path} has no mask: {mask_path} not found")
        with Image.open(image_path) as img, Image.open(mask_path) as mask:
            image_size, mask_size, mode = img.size, mask.size, mask.mode
        if mode not in MASK_MODES:
            raise ValueError(f"{mask_path}: mask mode {mode}; expected a single-channel PNG ({', '.join(MASK_MODES)})")
        if image_size != mask_size:
            raise ValueError(
                f"image {image_path} is {image_size[0]}x{image_size[1]} (WxH) but its mask {mask_path} is "
                f"{mask_size[0]}x{mask_size[1]}"
            )

    def __len__(self) -> int:
        return len(self.image_paths)

    def read_mask(self, index: int) -> np.ndarray:
        """Mask ``index`` as ``(H, W)`` int64, its values checked."""
        path = self.mask_paths[index]
        with Image.open(path) as img:
            mask = np.asarray(img).astype(np.int64)
        values = np.unique(mask)
        bad = values[((values < 0) | (values >= self.num_classes)) & (values != self.ignore_index)]
        if bad.size:
            raise ValueError(
                f"{path}: mask value {int(bad[0])} is neither a class in [0, {self.num_classes}) nor the "
                f"ignore_index {self.ignore_index}"
            )
        return mask

    def validate(self) -> None:
        """Read every mask and check its values; raises ``ValueError`` naming the first bad file and value."""
        for index in range(len(self)):
            self.read_mask(index)

    def load(self, index: int) -> tuple[Tensor, Tensor]:
        return read_image(self.image_paths[index], self.in_channels), torch.from_numpy(self.read_mask(index))


class MaskDataModule(SegmentationDataModule):
    """Train / val splits of a segmentation folder ``root`` (``images/<split>``, ``masks/<split>``).

    The recipe can be planned from the data (:mod:`detloss.plan.images`): :attr:`fingerprint` (of the training
    split, cached beside the data) is read by the run (:func:`detloss.planning.plan_run`), which plans what is left
    ``None`` (image size, batch; the U-Net's depth and width, the epochs and class weights where their configs leave
    them open) and calls :meth:`configure`.

    Args:
        root: the dataset folder.
        num_classes: classes, background included (mask values ``0..num_classes-1``).
        image_size: side of the square batches; images are letterboxed (``mode="letterbox"``: padding is
            ``fill`` in the image and ``ignore_index`` in the mask) or stretched (``mode="resize"``); ``None``:
            planned (the module is then usable once :meth:`configure` has been called).
        class_names: defaults to ``["class_0", ...]``.
        in_channels: 1 (grey) or 3 (RGB); ``None`` takes 1 when the first training image is a grey mode
            (``L``, ``I;16``, ...) and 3 otherwise; every image is then converted to it.
        validate: scan every mask's values at construction; ``None``: when the folders hold fewer than
            2000 files (the values are checked at load time anyway).
        batch_size: training and validation batch (``None``: planned; 8 until then).
        augment: training flips (``hflip``, ``vflip``), rotations up to ``rotate`` degrees and brightness /
            contrast ``jitter``.
        plan: the planner's options (``budget_minutes``, ``min_steps``, ``class_weights``, ``cache``), read by
            the run.
        regions: ``{name: label values}`` trained as overlapping sigmoid channels (:mod:`detloss.data.regions`);
            ``class_names`` then names the region channels and ``label_names`` the mask values.
        regions_class_order: the label each region paints back in predictions (``None``: derived).
    """

    def __init__(
        self,
        root: str | Path,
        num_classes: int,
        image_size: int | None = 256,
        ignore_index: int = 255,
        class_names: list[str] | None = None,
        in_channels: int | None = None,
        validate: bool | None = None,
        batch_size: int | None = 8,
        num_workers: int = 0,
        pin_memory: bool = False,
        augment: bool = True,
        mode: str = "letterbox",
        fill: float = 0.0,
        hflip: float = 0.5,
        vflip: float = 0.0,
        rotate: float = 0.0,
        jitter: float = 0.0,
        train_split: str = "train",
        val_split: str = "val",
        plan: dict | None = None,
        regions: dict | None = None,
        regions_class_order: list[int] | None = None,
    ) -> None:
        super().__init__(8 if batch_size is None else batch_size, num_workers, pin_memory, ignore_index)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"segmentation dataset root not found: {self.root}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        self.label_names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(num_classes)]
        self.regions, self.regions_class_order = resolve_regions(
            None if regions is None else dict(regions),
            None if regions_class_order is None else list(regions_class_order),
            None,
            None,
            num_classes,
            f"the masks of {self.root}",
        )
        self.class_names = list(self.label_names if self.regions is None else self.regions)
        if in_channels is None:
            in_channels = _guess_channels(self.root / "images" / train_split)
        self.in_channels = int(in_channels)
        self.resize, self.fill = mode, float(fill)
        self.plan_options = dict(plan or {})
        self.given = {"image_size": image_size, "batch_size": batch_size}
        self._augment = dict(augment=augment, hflip=hflip, vflip=vflip, rotate=rotate, jitter=jitter)
        self.image_size: int | None = None
        self.plan = None
        self.train_dataset = self._split(train_split, num_classes)
        self.val_dataset = self._split(val_split, num_classes)
        if validate is None:
            validate = 2 * (len(self.train_dataset) + len(self.val_dataset)) < VALIDATE_BELOW
        if validate:
            self.validate()
        if image_size is not None:  # usable as it is; a run plans what is None
            self.configure(image_size, self.batch_size)

    def _split(self, split: str, num_classes: int) -> MaskFolderDataset:
        return MaskFolderDataset(
            self.root / "images" / split,
            self.root / "masks" / split,
            num_classes,
            self.ignore_index,
            self.in_channels,
        )

    @cached_property
    def fingerprint(self):
        """The :class:`~detloss.plan.images.ImageFingerprint` of the training split (read once, cached beside the
        data in ``<root>/detloss_fingerprint_2d.json``)."""
        from ..plan.images import mask_fingerprint

        return mask_fingerprint(self.train_dataset, self.label_names, self.root)

    def _configured(self):
        if self.image_size is None:
            raise ValueError(
                "data.image_size is not set and was not planned: give it, or train through detloss.train, which "
                "plans it (detloss.planning.plan_run)"
            )

    def _loader(self, dataset, sampler=None, batch_size=None):
        """The base's loader; with regions, of the masks made region masks after the transforms."""
        if self.regions is not None:
            dataset = RegionTargets(dataset, self.regions, self.ignore_index)
        return super()._loader(dataset, sampler, batch_size)

    def train_dataloader(self):
        self._configured()
        return super().train_dataloader()

    def val_dataloader(self):
        self._configured()
        return super().val_dataloader()

    @property
    def category_ids(self) -> list:
        """The mask values, which predictions are written with (with regions: painted back by
        ``regions_class_order``)."""
        return list(range(len(self.label_names)))

    def describe(self) -> dict[str, Any]:
        """The base's description (with the plan, where planned); ``regions``, ``regions_class_order`` and
        ``label_names`` (the mask values' names) with regions."""
        regions = (
            {}
            if self.regions is None
            else {
                "regions": {k: list(v) for k, v in self.regions.items()},
                "regions_class_order": list(self.regions_class_order),
                "label_names": list(self.label_names),
            }
        )
        return super().describe() | regions

    def validate(self) -> None:
        """Check the values of every training and validation mask."""
        self.train_dataset.validate()
        self.val_dataset.validate()
