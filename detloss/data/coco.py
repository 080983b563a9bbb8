"""COCO-format detection: an image folder and an instances JSON read through ``pycocotools.coco.COCO``.

Category ids of any numbering map to contiguous labels ``0..C-1`` in increasing id order. Crowd annotations
(``iscrowd=1``) and degenerate boxes (``w == 0`` or ``h == 0``) are dropped; ``bbox [x, y, w, h]`` becomes
``[x, y, x + w, y + h]``. Images listed without annotations are kept as images without objects. The file is
checked when the dataset is built: a missing file or folder, malformed JSON, a file without an ``annotations``
list (an image-info file would train on images without objects and leave mAP nothing to score; a dataset of
empty images says ``"annotations": []``), an annotation of an undeclared category or image, a malformed bbox or
one of negative width or height, and an image missing on disk all raise, naming the file (and the annotation).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from torch import Tensor

from .base import DetectionDataModule, DetectionDataset, clamp_boxes, read_image
from .transforms import detection_transforms

__all__ = ["CocoDetection", "CocoDataModule", "load_coco"]


def load_coco(annotation_file: str | Path) -> COCO:
    """Read and check a COCO instances file; a ``COCO`` index of it (pycocotools' prints silenced).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: malformed JSON, missing sections (``images``, ``categories``, ``annotations``: an empty
            ``annotations`` list is a dataset of images without objects), duplicate ids, an annotation of an
            undeclared category or image, or a bbox that is not 4 finite numbers or has a negative width or
            height (the message names the file and the annotation id).
    """
    path = Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: malformed JSON: {err}") from err
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise ValueError(f"{path}: expected a JSON object with 'images' and 'categories' lists")
    if not isinstance(data.get("annotations"), list):
        raise ValueError(
            f"{path}: no 'annotations' list, so every image would have no objects (an image-info file, not an "
            'instances file?); a dataset of images without objects says "annotations": []'
        )
    categories = _unique_ids(path, data["categories"], "category")
    images = _unique_ids(path, data["images"], "image")
    for i, ann in enumerate(data["annotations"]):
        ann_id = ann.get("id", f"#{i}") if isinstance(ann, dict) else f"#{i}"
        if not isinstance(ann, dict) or not {"image_id", "category_id", "bbox"} <= ann.keys():
            raise ValueError(f"{path}: annotation {ann_id} needs 'image_id', 'category_id' and 'bbox'")
        ann.setdefault("id", i)
        if ann["category_id"] not in categories:
            raise ValueError(
                f"{path}: annotation {ann_id} has category_id {ann['category_id']!r}, which is not declared in "
                f"'categories' (declared ids: {sorted(categories)})"
            )
        if ann["image_id"] not in images:
            raise ValueError(f"{path}: annotation {ann_id} refers to image_id {ann['image_id']!r}, not in 'images'")
        bbox = ann["bbox"]
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
        ):
            raise ValueError(f"{path}: annotation {ann_id} has bbox {bbox!r}; expected 4 finite numbers [x, y, w, h]")
        if bbox[2] < 0 or bbox[3] < 0:
            raise ValueError(f"{path}: annotation {ann_id} has bbox {bbox!r} of negative width or height")
    for img in data["images"]:
        if not isinstance(img.get("file_name"), str):
            raise ValueError(f"{path}: image {img['id']!r} has no 'file_name'")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _unique_ids(path: Path, entries: list, kind: str) -> set:
    ids = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry:
            raise ValueError(f"{path}: {kind} entry #{i} has no 'id'")
        if entry["id"] in ids:
            raise ValueError(f"{path}: duplicate {kind} id {entry['id']!r}")
        ids.add(entry["id"])
    return ids


class CocoDetection(DetectionDataset):
    """Detection samples of a COCO folder + file: ``(image (3, H, W), {"boxes": (n, 4), "labels": (n,)})``.

    Args:
        image_dir: folder that the images' ``file_name`` are relative to.
        annotation_file: the COCO instances JSON.
        transforms: v2 pipeline applied to each sample (e.g. :func:`detection_transforms`).

    Attributes:
        ``category_ids`` (sorted) and ``class_names`` (same order); ``cat_to_label``: category id -> contiguous
        label; ``image_ids``: image id of each index, file order.

    Memory: the dataset keeps what ``load`` reads and nothing else, in a few flat numpy arrays (file names, all
    boxes and labels, and each image's offset into them), not the ``pycocotools`` index of the whole file (its
    JSON, segmentation polygons included, is dropped once read) nor a Python object per image. Loader workers
    are forked from the main process and share its pages until they write to them; Python writes to an object
    whenever it touches it (reference counts, the garbage collector's pass over every container), so per-image
    lists and dicts end up copied into every worker, while a numpy array is one object whatever its length
    (docs/benchmarks/training_step.md: memory).
    """

    def __init__(self, image_dir: str | Path, annotation_file: str | Path, transforms: Callable | None = None):
        super().__init__(transforms)
        self.image_dir, self.annotation_file = Path(image_dir), Path(annotation_file)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"COCO image directory not found: {self.image_dir}")
        coco = load_coco(self.annotation_file)
        self.category_ids = sorted(coco.cats)
        self.cat_to_label = {cat_id: label for label, cat_id in enumerate(self.category_ids)}
        self.class_names = [str(coco.cats[c].get("name", c)) for c in self.category_ids]
        self.image_ids = [img["id"] for img in coco.dataset["images"]]
        files, boxes, labels, counts = [], [], [], []
        for image_id in self.image_ids:
            name = coco.imgs[image_id]["file_name"]
            if not (self.image_dir / name).is_file():
                path = self.image_dir / name
                raise FileNotFoundError(f"{self.annotation_file}: image {image_id} file not found: {path}")
            files.append(name)
            kept = self._target(coco, image_id)
            boxes += kept[0]
            labels += kept[1]
            counts.append(len(kept[1]))
        self.files = np.array(files, dtype=str)  # fixed-width, one buffer
        self.boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)

    def _target(self, coco: COCO, image_id) -> tuple[list, list]:
        """Boxes xyxy and labels of one image, crowds and boxes of zero width or height left out
        (:func:`load_coco` refused negative ones)."""
        boxes, labels = [], []
        for ann in coco.imgToAnns.get(image_id, []):
            x, y, w, h = ann["bbox"]
            if ann.get("iscrowd", 0) or w <= 0 or h <= 0:
                continue
            boxes.append((x, y, x + w, y + h))
            labels.append(self.cat_to_label[ann["category_id"]])
        return boxes, labels

    def __len__(self) -> int:
        return len(self.files)

    def path(self, index: int) -> Path:
        """The image file of sample ``index``."""
        return self.image_dir / str(self.files[index])

    def target(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Boxes ``(n, 4)`` xyxy and labels ``(n,)`` of sample ``index`` (views into the flat arrays)."""
        start, end = self.offsets[index], self.offsets[index + 1]
        return self.boxes[start:end], self.labels[start:end]

    def load(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        image = read_image(self.path(index), channels=3)
        boxes, labels = (a.copy() for a in self.target(index))
        height, width = image.shape[-2:]
        boxes, keep = clamp_boxes(torch.from_numpy(boxes), width, height)  # drops boxes that lay outside the image
        return image, boxes[keep], torch.from_numpy(labels)[keep]


class CocoDataModule(DetectionDataModule):
    """Train / val COCO datasets, letterboxed to ``image_size``.

    ``augment`` chooses the training augmentations (:mod:`detloss.data.augment`): ``yolo`` (the default: mosaic
    with probability ``mosaic``, turned off for the last ``close_mosaic`` epochs; zoom ``scale``, shift
    ``translate``; HSV gains ``hsv``; flip ``hflip``), ``light`` (colour ``jitter``, ``hflip``, zoom ``scale`` with
    shift ``translate``) or ``none``. ``class_names`` and ``num_classes`` come from the
    training file's categories; the validation file must declare the same category ids.
    """

    def __init__(
        self,
        train_images: str | Path,
        train_annotations: str | Path,
        val_images: str | Path,
        val_annotations: str | Path,
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
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory)
        self.image_size = int(image_size)
        options = dict(hflip=hflip, jitter=jitter, scale=scale, translate=translate, mosaic=mosaic, hsv=hsv)
        train_tf = self.train_transforms(augment, close_mosaic, **options)
        self.train_dataset = CocoDetection(train_images, train_annotations, train_tf)
        self.val_dataset = CocoDetection(val_images, val_annotations, detection_transforms(image_size, False))
        train_ds, val_ds = self.train_dataset, self.val_dataset
        if val_ds.category_ids != train_ds.category_ids:
            raise ValueError(
                f"{val_ds.annotation_file}: category ids {val_ds.category_ids} differ from those of "
                f"{train_ds.annotation_file}: {train_ds.category_ids}"
            )
        self.class_names = list(train_ds.class_names)

    @property
    def category_ids(self) -> list:
        """The training file's category ids, in the order of the contiguous labels (sorted)."""
        return list(self.train_dataset.category_ids)
