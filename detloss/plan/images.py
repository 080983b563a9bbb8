"""2D data: the fingerprint of a mask folder or a detection dataset, and the plan of a 2D segmentation run.

**Fingerprint** (:class:`ImageFingerprint`, the 2D side of :mod:`detloss.plan.fingerprint`), of the training split:
image sizes (median, min, max height and width, from the files' headers); for masks, per class the share of the
non-ignored pixels, the images holding it and the sizes of its connected components (8-connectivity) in pixels;
for detection, per class the boxes, the images holding them, the median box width and height and the COCO
small / medium / large counts (area below 32², below 96², above, in the image's own pixels). Reading is cheap:
images are never decoded (masks are, they are the annotations; detection boxes come from the annotation files,
except for generated data, which is drawn). Cached as JSON beside the data (``detloss_fingerprint_2d.json``) or in
``~/.cache/detloss/fingerprints/``, computed anew when a file's name, size or modification time changed.

**Plan** (:func:`plan_images`, in :mod:`detloss.plan.image_plan` with its constants), nnU-Net's 2D rules where they
apply (Isensee et al., Nature Methods 2021):

* image size: the median image side (the longer of the median height and width, the side a letterbox fits), capped
  at 512, rounded to a multiple of ``2**depth``; smaller candidates (3/4, 1/2 of it) only while the smallest class's
  median component keeps 16 pixels and the side 64;
* depth: poolings while the feature map keeps 8 pixels, at most 5 (nnU-Net's 2D U-Net pools to 4 px; 8 keeps the
  3×3 convolutions of the bottleneck away from padding on small images);
* width 32 (nnU-Net's) or 16 channels at full resolution (in 2D the resolution shrinks before the width falls
  lower), batch 16 / 8;
* steps and epochs from a CPU time budget, as for volumes (:mod:`detloss.plan.budget`, where detloss departs from
  nnU-Net): the image size is kept unless even its cheapest recipe does not fit (the resolution goes last, as
  nnU-Net shrinks its patch only when it must); at that size the widest network whose measured step trains
  ``min_steps`` steps and ``min_epochs`` passes over the training images within the budget wins, at batch 8 (a
  short budget spent on few passes at full resolution learns less than more passes at 3/4 of it:
  ``docs/benchmarks/segmentation_2d.md``); batch 16 only where it fits and trains an image in at most 0.8 of batch
  8's time (a GPU; on a CPU a step's time grows with its batch, and the smaller batch makes twice the updates in the
  same time); with the epochs given, the image size stays the rule's and the widest recipe whose epochs fit wins,
  at a batch that still gives ``min_steps`` steps (the cheapest where none fits: the plan's predicted run time
  then says by how much the budget is exceeded);
* class weights (detloss's own, not nnU-Net's): when the rarest foreground class holds less than
  a quarter of the mean foreground class's pixel share, ``1 / sqrt(share)`` per foreground class,
  normalised to mean 1 over them (background 1), for the loss terms that take ``class_weights``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from .cache import cache_folder, key, read_json, write_json
from .cache import signature as files_signature

__all__ = ["ImageFingerprint", "mask_fingerprint", "detection_fingerprint"]

VERSION = 1
_FILE = "detloss_fingerprint_2d.json"
SMALL, MEDIUM = 32**2, 96**2  # COCO's object-size areas, px²


@dataclass
class ImageFingerprint:
    """The fingerprint of a 2D dataset's training split (see the module docstring).

    Attributes:
        kind: ``"masks"`` or ``"detection"``.
        height, width: ``{"median", "min", "max"}`` over the images, pixels.
        classes: per class (masks: background first) ``{"name", "pixel_share", "images", "components",
            "component_pixels_median", "component_pixels_min"}`` (masks; the background's components are not
            counted) or ``{"name", "boxes", "images", "box_width_median", "box_height_median", "small", "medium",
            "large"}`` (detection).
        boxes: detection only, the same box statistics over all classes.
    """

    kind: str
    class_names: list[str]
    num_images: int
    height: dict[str, float]
    width: dict[str, float]
    classes: list[dict[str, Any]]
    boxes: dict[str, Any] | None = None
    signature: str = ""
    version: int = field(default=VERSION)

    @property
    def median_side(self) -> float:
        return float(max(self.height["median"], self.width["median"]))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageFingerprint:
        return cls(**data)


def _stats(values) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"median": 0.0, "min": 0.0, "max": 0.0}
    return {"median": float(np.median(values)), "min": float(values.min()), "max": float(values.max())}


def _cached(root: Path | None, signature: str, compute: Callable[[], ImageFingerprint], cache: bool):
    """The fingerprint cached beside the data (``root``) or in the cache directory, computed when absent or stale."""
    where = cache_folder("fingerprints") / f"2d-{key(str(root.resolve()) if root else signature)}.json"
    paths = ([root / _FILE] if root else []) + [where]
    if cache and (found := read_json(paths, lambda data: data.get("signature") == signature)):
        return ImageFingerprint.from_dict(found)
    fingerprint = compute()
    fingerprint.signature = signature
    if cache:
        write_json(paths, fingerprint.to_dict())
    return fingerprint


def _header_sizes(paths) -> tuple[list[int], list[int]]:
    """Heights and widths of image files, from their headers (PIL opens lazily: nothing is decoded)."""
    heights, widths = [], []
    for path in paths:
        try:
            with Image.open(path) as img:
                width, height = img.size
        except OSError as err:
            raise ValueError(f"{path}: cannot read the image header: {err}") from err
        heights.append(height)
        widths.append(width)
    return heights, widths


def _mask_items(dataset, root):
    """``(signature files or parameters, cache root, sizes, masks)`` of a mask folder or of generated masks
    (:class:`~detloss.data.LesionsDataset`), through their public attributes: ``sizes()`` reads the images' heights
    and widths (from the files' headers), ``masks`` yields each training mask (values checked) as an array."""
    from ..data.lesions import LesionsDataset

    if isinstance(dataset, LesionsDataset):  # generated data: its parameters say what it holds
        side, count = dataset.image_size, len(dataset)
        params = {k: v for k, v in vars(dataset).items() if isinstance(v, (int, float, str, tuple)) and k != "cache"}
        masks = (dataset.load(i)[1].numpy() for i in range(count))  # drawn once: the dataset keeps what it drew
        return params, None, lambda: ([side] * count, [side] * count), masks
    root = Path(root) if root is not None else Path(dataset.image_dir).parent.parent
    masks = (dataset.read_mask(i) for i in range(len(dataset)))  # decodes the masks only, and checks their values
    return [*dataset.image_paths, *dataset.mask_paths], root, lambda: _header_sizes(dataset.image_paths), masks


def mask_fingerprint(
    dataset, class_names: list[str] | None = None, root: str | Path | None = None, cache: bool = True
) -> ImageFingerprint:
    """The fingerprint of the training split of 2D masks: a :class:`~detloss.data.MaskFolderDataset` (cached in
    ``root``, default: the folder two levels above its images, the dataset root) or generated masks (a
    :class:`~detloss.data.LesionsDataset`, cached in the cache directory, keyed by its parameters); the classes named
    ``class_names``, default ``class_<k>``."""
    num_classes = int(dataset.num_classes)
    ignore_index = getattr(dataset, "ignore_index", None)  # generated masks have none
    facts = (VERSION, num_classes, class_names, ignore_index)  # what the counts depend on
    files, root, sizes, masks = _mask_items(dataset, root)
    signature = key([*facts, files]) if isinstance(files, dict) else files_signature(files, *facts)

    def compute() -> ImageFingerprint:
        heights, widths = sizes()
        counts = np.zeros(num_classes, dtype=np.int64)
        holding = np.zeros(num_classes, dtype=np.int64)
        components: list[list[int]] = [[] for _ in range(num_classes)]
        structure = np.ones((3, 3), dtype=bool)
        for mask in masks:
            valid = mask if ignore_index is None else mask[mask != ignore_index]
            present = np.bincount(valid.ravel(), minlength=num_classes)[:num_classes]
            counts += present
            holding += present > 0
            for k in np.flatnonzero(present[1:]) + 1:
                labelled, found = ndimage.label(mask == k, structure)
                components[k] += np.bincount(labelled.ravel(), minlength=found + 1)[1:].tolist()
        total = max(int(counts.sum()), 1)
        classes = [
            {
                "name": str(class_names[k]) if class_names is not None else f"class_{k}",
                "pixel_share": float(counts[k] / total),
                "images": int(holding[k]),
                "components": len(components[k]),
                "component_pixels_median": float(np.median(components[k])) if components[k] else 0.0,
                "component_pixels_min": int(min(components[k])) if components[k] else 0,
            }
            for k in range(num_classes)
        ]
        names = [c["name"] for c in classes]
        return ImageFingerprint("masks", names, len(heights), _stats(heights), _stats(widths), classes)

    return _cached(root, signature, compute, cache)


def _detection_items(dataset):
    """``(signature files or parameters, cache root, iterator of (height, width, boxes xyxy px (n, 4), labels))``
    of a COCO, YOLO or generated ``shapes`` dataset, through their public attributes (no image decoded)."""
    from ..data.coco import CocoDetection
    from ..data.shapes import ShapesDataset
    from ..data.yolo import YoloDetection

    if isinstance(dataset, CocoDetection):
        paths = [dataset.path(i) for i in range(len(dataset))]

        def coco():
            for i, (height, width) in enumerate(zip(*_header_sizes(paths))):
                yield height, width, *dataset.target(i)

        return [dataset.annotation_file, *paths], dataset.annotation_file.parent, coco()
    if isinstance(dataset, YoloDetection):
        labels = [dataset.label_dir / f"{p.stem}.txt" for p in dataset.paths]

        def yolo():
            for (height, width), (cxcywh, classes) in zip(zip(*_header_sizes(dataset.paths)), dataset.labels):
                cx, cy, w, h = (np.asarray(cxcywh, dtype=np.float64).reshape(-1, 4) * [width, height, width, height]).T
                yield height, width, np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1), classes

        existing = [p for p in labels if p.is_file()]
        return [*dataset.paths, *existing], dataset.label_dir.parent.parent, yolo()
    if isinstance(dataset, ShapesDataset):
        side = dataset.image_size

        def shapes():
            for i in range(len(dataset)):
                sample = dataset.generate(i)  # generated data: the boxes are known only once drawn
                yield side, side, sample["boxes"], sample["labels"]

        params = {k: v for k, v in vars(dataset).items() if isinstance(v, (int, float, str, bool))}
        return params, None, shapes()
    raise ValueError(
        f"detection_fingerprint: dataset of type {type(dataset).__name__} is not read (CocoDetection, YoloDetection "
        "and ShapesDataset are)"
    )


def _box_stats(widths, heights) -> dict[str, Any]:
    area = np.asarray(widths, dtype=np.float64) * np.asarray(heights, dtype=np.float64)
    return {
        "box_width_median": float(np.median(widths)) if len(widths) else 0.0,
        "box_height_median": float(np.median(heights)) if len(heights) else 0.0,
        "small": int((area < SMALL).sum()),
        "medium": int(((area >= SMALL) & (area < MEDIUM)).sum()),
        "large": int((area >= MEDIUM).sum()),
    }


def detection_fingerprint(data, cache: bool = True) -> ImageFingerprint:
    """The fingerprint of detection data: a detection DataModule (its ``train_dataset``) or one of the datasets of
    :mod:`detloss.data.coco`, :mod:`~detloss.data.yolo`, :mod:`~detloss.data.shapes`; cached beside the annotations
    (generated data: in the cache directory, keyed by its parameters)."""
    dataset = getattr(data, "train_dataset", data)
    files, root, items = _detection_items(dataset)
    names = [str(name) for name in dataset.class_names]
    if isinstance(files, dict):  # generated data: its parameters say what it holds
        signature = key([VERSION, files, names])
    else:
        signature = files_signature(files, VERSION, names)

    def compute() -> ImageFingerprint:
        names = list(dataset.class_names)
        heights, widths, per_class = [], [], [([], [], set()) for _ in names]
        for index, (height, width, boxes, labels) in enumerate(items):
            heights.append(height)
            widths.append(width)
            boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            for (x0, y0, x1, y1), label in zip(boxes, np.asarray(labels).tolist()):
                per_class[label][0].append(x1 - x0)
                per_class[label][1].append(y1 - y0)
                per_class[label][2].add(index)
        classes = [
            {"name": str(name), "boxes": len(w), "images": len(held)} | _box_stats(w, h)
            for name, (w, h, held) in zip(names, per_class)
        ]
        all_w = [v for w, _, _ in per_class for v in w]
        all_h = [v for _, h, _ in per_class for v in h]
        boxes = {"count": len(all_w)} | _box_stats(all_w, all_h)
        return ImageFingerprint("detection", names, len(heights), _stats(heights), _stats(widths), classes, boxes)

    return _cached(root, signature, compute, cache)
