"""YOLO txt format: ``root/images/<split>/*.jpg|png``, ``root/labels/<split>/<stem>.txt``, ``root/data.yaml``.

A label line is ``class cx cy w h``, coordinates normalised to [0, 1] by the image's width and height; a missing
label file (or blank file) means an image without objects. The label folder itself must exist, and if it holds
label files, some must be named after the split's images: a missing or misnamed folder would otherwise load as
a split of empty images. ``data.yaml`` holds ``names:`` as a list or as an ``{id: name}`` mapping with ids
``0..C-1``. All label files are parsed when the dataset is built; errors name the folder, or the file and the
line.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import Tensor

from .base import DetectionDataModule, DetectionDataset, clamp_boxes, list_images, read_image
from .transforms import detection_transforms

__all__ = ["YoloDetection", "YoloDataModule", "read_yolo_names", "read_yolo_labels"]

TOLERANCE = 1e-3
"""How far a normalised coordinate may stray outside [0, 1] (rounding in exported files); it is then clipped."""


def read_yolo_names(yaml_file: str | Path) -> list[str]:
    """Class names of a YOLO ``data.yaml`` (``names:`` list or ``{0: name, 1: name, ...}``)."""
    path = Path(yaml_file)
    if not path.is_file():
        raise FileNotFoundError(f"YOLO data.yaml not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: malformed YAML: {err}") from err
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        try:
            by_id = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: 'names' keys must be integer class ids, got {list(names)}") from err
        if sorted(by_id) != list(range(len(by_id))):
            raise ValueError(f"{path}: 'names' ids must be 0..{len(by_id) - 1}, got {sorted(by_id)}")
        names = [by_id[i] for i in range(len(by_id))]
    elif isinstance(names, list):
        names = [str(n) for n in names]
    else:
        raise ValueError(f"{path}: needs 'names:' as a list or an {{id: name}} mapping")
    if not names:
        raise ValueError(f"{path}: 'names' is empty")
    if "nc" in data and data["nc"] != len(names):
        raise ValueError(f"{path}: nc is {data['nc']} but 'names' has {len(names)} entries")
    return names


def read_yolo_labels(label_file: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``(n, 4)`` normalised ``cx cy w h`` and labels ``(n,)`` of one label file (empty if it is missing).

    Boxes of zero width or height are dropped. Raises ``ValueError`` naming file and line for a line that is not
    5 numbers, a class id outside ``[0, num_classes)`` or a coordinate outside [0, 1].
    """
    if not label_file.is_file():
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    boxes, labels = [], []
    for lineno, line in enumerate(label_file.read_text(encoding="utf-8").splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{label_file}, line {lineno}"
        if len(tokens) != 5:
            raise ValueError(f"{where}: expected 5 values 'class cx cy w h', got {len(tokens)}: {line.strip()!r}")
        try:
            values = [float(t) for t in tokens]
        except ValueError as err:
            raise ValueError(f"{where}: not a number in {line.strip()!r}") from err
        cls, coords = values[0], values[1:]
        if not cls.is_integer() or not 0 <= cls < num_classes:
            raise ValueError(f"{where}: class id {tokens[0]} outside the {num_classes} names of data.yaml")
        if not all(math.isfinite(v) and -TOLERANCE <= v <= 1 + TOLERANCE for v in coords):
            raise ValueError(f"{where}: coordinates {tokens[1:]} outside [0, 1]")
        if coords[2] <= 0 or coords[3] <= 0:
            continue
        boxes.append(coords)
        labels.append(int(cls))
    return np.clip(np.asarray(boxes, np.float32).reshape(-1, 4), 0, 1), np.asarray(labels, np.int64)


class YoloDetection(DetectionDataset):
    """Detection samples of one YOLO split: ``(image (3, H, W), {"boxes": (n, 4) xyxy px, "labels": (n,)})``.

    Args:
        image_dir: ``root/images/<split>``; label_dir: ``root/labels/<split>``.
        class_names: the names of ``data.yaml`` (class ids index them).
        transforms: v2 pipeline applied to each sample.

    Raises:
        FileNotFoundError: ``image_dir`` or ``label_dir`` is not a folder.
        ValueError: ``label_dir`` holds label files but none of them is named after an image of ``image_dir``;
            or a label file is malformed (see :func:`read_yolo_labels`).
    """

    def __init__(
        self, image_dir: str | Path, label_dir: str | Path, class_names: list[str], transforms: Callable | None = None
    ) -> None:
        super().__init__(transforms)
        self.image_dir, self.label_dir = Path(image_dir), Path(label_dir)
        self.class_names = list(class_names)
        self.paths = list_images(self.image_dir)
        duplicates = [stem for stem, n in Counter(p.stem for p in self.paths).items() if n > 1]
        if duplicates:
            raise ValueError(f"{self.image_dir}: several images share the stem {duplicates[0]!r} (one label file each)")
        if not self.label_dir.is_dir():
            raise FileNotFoundError(
                f"YOLO label folder not found: {self.label_dir} (for the images of {self.image_dir}; an image "
                "without objects needs no label file, but the folder must be there)"
            )
        stems = {p.stem for p in self.label_dir.glob("*.txt")}
        if stems and self.paths and not stems & {p.stem for p in self.paths}:
            raise ValueError(
                f"{self.label_dir}: none of its {len(stems)} label files is named after an image of {self.image_dir} "
                f"(e.g. {sorted(stems)[0]}.txt against {self.paths[0].name}), so every image would have no objects"
            )
        self.labels = [read_yolo_labels(self.label_dir / f"{p.stem}.txt", len(class_names)) for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        image = read_image(self.paths[index], channels=3)
        height, width = image.shape[-2:]
        cxcywh, labels = self.labels[index]
        cx, cy, w, h = torch.from_numpy(cxcywh).unbind(-1)
        boxes = torch.stack(
            ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height), -1
        )
        boxes, keep = clamp_boxes(boxes, width, height)
        return image, boxes[keep], torch.from_numpy(labels)[keep]


class YoloDataModule(DetectionDataModule):
    """Train / val splits of a YOLO folder ``root``, letterboxed to ``image_size``.

    ``class_names`` / ``num_classes`` come from ``root/data.yaml`` at construction. ``augment`` chooses the
    training augmentations, ``yolo`` by default, as for :class:`~detloss.data.CocoDataModule`.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int = 640,
        batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool = False,
        augment: str | bool = "yolo",
        hflip: float = 0.5,
        jitter: float = 0.2,
        scale: tuple[float, float] | None = (0.5, 1.5),
        translate: float = 0.1,
        mosaic: float = 1.0,
        close_mosaic: int = 10,
        hsv: tuple[float, float, float] = (0.015, 0.7, 0.4),
        train_split: str = "train",
        val_split: str = "val",
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory)
        self.root, self.image_size = Path(root), int(image_size)
        if not self.root.is_dir():
            raise FileNotFoundError(f"YOLO dataset root not found: {self.root}")
        self.class_names = read_yolo_names(self.root / "data.yaml")
        options = dict(hflip=hflip, jitter=jitter, scale=scale, translate=translate, mosaic=mosaic, hsv=hsv)
        train_tf = self.train_transforms(augment, close_mosaic, **options)
        self.train_dataset = self._split(train_split, train_tf)
        self.val_dataset = self._split(val_split, detection_transforms(image_size, False))

    def _split(self, split: str, transforms: Callable) -> YoloDetection:
        return YoloDetection(self.root / "images" / split, self.root / "labels" / split, self.class_names, transforms)
