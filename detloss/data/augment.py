"""Detection training augmentations, chosen by ``data.augment``: ``none``, ``light`` or ``yolo``.

* ``none``: letterbox only, as validation.
* ``light`` (:func:`~detloss.data.transforms.detection_transforms`): colour jitter, horizontal flip, an optional
  zoom; enough for the embedded ``shapes``, whose generator already varies everything else.
* ``yolo`` (:class:`YoloAugment`): the recipe Ultralytics trains YOLOv8 with (``ultralytics/cfg/default.yaml``,
  ``ultralytics/data/augment.py``), for real, COCO-like data:

  1. mosaic, with probability ``mosaic`` (1.0): the sample and 3 random others of the dataset, each resized so its
     longer side is ``S`` (the image size), placed around a random centre in ``[S/2, 3S/2]²`` of a ``2S × 2S``
     grey canvas (Ultralytics' ``_mosaic4``); without mosaic, the sample letterboxed to ``S``;
  2. a random affine map without rotation or shear: zoom by a factor in ``scale`` (``(0.5, 1.5)``: Ultralytics'
     ``scale=0.5``) about the canvas centre and a shift of up to ``translate`` (0.1) of ``S``, then the central
     ``S × S`` (Ultralytics' ``RandomPerspective`` with ``border=-S/2`` after a mosaic);
  3. HSV jitter: hue shifted by up to ``hsv[0]`` (0.015) of the circle, saturation and value scaled by a factor
     in ``1 ± hsv[1]`` (0.7) and ``1 ± hsv[2]`` (0.4);
  4. horizontal flip with probability ``hflip`` (0.5);
  5. boxes clipped to the image; those left under ``min_box_size`` (2) px wide or high, or with under
     ``min_visible`` (10 %) of their area inside the image, dropped with their labels (Ultralytics'
     ``box_candidates``);

  and :class:`CloseMosaic` turns the mosaic off for the last ``close_mosaic`` (10) epochs, so that training ends
  on whole images as validation sees them. The switch is a shared-memory flag, so DataLoader worker processes
  (persistent or not) see it at the next epoch.

Images, boxes and labels travel as ``tv_tensors`` (boxes unclipped until step 5, so that what a crop hid can be
measured), so every geometric step moves the boxes with the pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..runtime import one_thread
from .transforms import PAD_VALUE, Letterbox, detection_transforms

__all__ = ["AUGMENTS", "YoloAugment", "CloseMosaic", "KeepVisibleBoxes", "detection_train_transforms"]

AUGMENTS = ("none", "light", "yolo")


class KeepVisibleBoxes:
    """Clip ``(Image, {"boxes", "labels"})`` boxes to the image, then drop (with their labels) those under
    ``min_size`` px wide or high, or with less than ``min_visible`` of their area inside the image."""

    def __init__(self, min_size: float = 2.0, min_visible: float = 0.1) -> None:
        self.min_size, self.min_visible = float(min_size), float(min_visible)

    def __call__(self, image, target):
        boxes = target["boxes"]
        height, width = boxes.canvas_size
        full = boxes.as_subclass(Tensor).float()
        clipped = full.clone()
        clipped[:, 0::2] = clipped[:, 0::2].clamp(0, width)
        clipped[:, 1::2] = clipped[:, 1::2].clamp(0, height)
        w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
        area = (full[:, 2] - full[:, 0]).clamp(min=0) * (full[:, 3] - full[:, 1]).clamp(min=0)
        keep = (w >= self.min_size) & (h >= self.min_size) & (w * h > self.min_visible * area)
        boxes = tv_tensors.wrap(clipped[keep], like=boxes)
        return image, {**target, "boxes": boxes, "labels": target["labels"][keep]}


class YoloAugment:
    """The ``yolo`` recipe (module docstring) for one sample of a detection dataset, which it reads itself: the
    mosaic needs 3 more samples (``dataset.load(index)``: image, boxes, labels, untransformed).

    Args:
        image_size: ``S``, the side of the square output.
        mosaic: probability of a mosaic while it is on (:meth:`set_mosaic`).
        scale: zoom range; translate: largest shift, a fraction of ``S``.
        hsv: hue, saturation, value gains; hflip: flip probability.
        min_box_size, min_visible: see :class:`KeepVisibleBoxes`.
    """

    uses_dataset = True  # DetectionDataset hands it (dataset, index) instead of a loaded sample

    def __init__(
        self,
        image_size: int,
        mosaic: float = 1.0,
        scale: Sequence[float] = (0.5, 1.5),
        translate: float = 0.1,
        hsv: Sequence[float] = (0.015, 0.7, 0.4),
        hflip: float = 0.5,
        min_box_size: float = 2.0,
        min_visible: float = 0.1,
    ) -> None:
        if not 0 <= mosaic <= 1 or not 0 <= hflip <= 1 or not 0 <= translate < 0.5:
            raise ValueError(f"need mosaic, hflip in [0, 1], translate in [0, 0.5); got {mosaic}, {hflip}, {translate}")
        scale = (float(scale[0]), float(scale[1]))
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be a range (low, high) with 0 < low <= high, got {scale}")
        if len(hsv) != 3 or not all(0 <= g for g in hsv) or hsv[0] > 0.5:
            raise ValueError(f"hsv must be 3 gains (hue <= 0.5, saturation, value) >= 0, got {list(hsv)}")
        self.size, self.mosaic = int(image_size), float(mosaic)
        self._on = torch.ones(1, dtype=torch.bool).share_memory_()  # seen by the DataLoader's worker processes
        fill = {tv_tensors.Image: PAD_VALUE}

        def zoom(canvas: int) -> v2.Transform:  # a shift of ``translate`` of S is translate · S / canvas of it
            shift = translate * self.size / canvas
            return v2.RandomAffine(degrees=0.0, translate=(shift, shift), scale=scale, fill=fill)

        colour_and_flip = [
            v2.ColorJitter(brightness=hsv[2] or None, saturation=hsv[1] or None, hue=hsv[0] or None),
            v2.RandomHorizontalFlip(hflip),
            KeepVisibleBoxes(min_box_size, min_visible),
        ]
        self.after_mosaic = v2.Compose([zoom(2 * self.size), v2.CenterCrop(self.size), *colour_and_flip])
        self.single = v2.Compose([Letterbox(self.size), zoom(self.size), *colour_and_flip])

    @property
    def mosaic_on(self) -> bool:
        return bool(self._on)

    def set_mosaic(self, on: bool) -> None:
        """Turn the mosaic on or off, in this process and in the DataLoader's workers."""
        self._on.fill_(bool(on))

    def __call__(self, dataset, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        with one_thread():
            if self.mosaic_on and self.mosaic > 0 and float(torch.rand(())) < self.mosaic:
                others = torch.randint(len(dataset), (3,)).tolist()
                image, target = self.after_mosaic(*self.combine([dataset.load(i) for i in [index, *others]]))
            else:
                image, target = self.single(*_wrap(*dataset.load(index)))
        boxes, labels = target["boxes"], target["labels"]
        return image.as_subclass(Tensor).float(), {
            "boxes": boxes.as_subclass(Tensor).float().reshape(-1, 4),
            "labels": labels.as_subclass(Tensor).long(),
        }

    def combine(self, samples: Sequence[tuple[Tensor, Tensor, Tensor]]):
        """Four samples as one ``2S × 2S`` mosaic (Ultralytics' ``_mosaic4``): ``(Image, {"boxes", "labels"})``."""
        s = self.size
        canvas = torch.full((3, 2 * s, 2 * s), PAD_VALUE)
        xc, yc = (int(v) for v in torch.randint(s // 2, 3 * s // 2 + 1, (2,)))
        all_boxes, all_labels = [], []
        for i, (image, boxes, labels) in enumerate(samples):
            height, width = image.shape[-2:]
            ratio = s / max(height, width)
            h, w = max(1, round(height * ratio)), max(1, round(width * ratio))
            image = F.resize(image, [h, w], antialias=True)
            # where it lands on the canvas (a) and which part of it does (b): bottom-right corner at the centre for
            # the top-left image, and so on clockwise
            x1a, x2a = (max(xc - w, 0), xc) if i in (0, 2) else (xc, min(xc + w, 2 * s))
            y1a, y2a = (max(yc - h, 0), yc) if i in (0, 1) else (yc, min(yc + h, 2 * s))
            x1b = w - (x2a - x1a) if i in (0, 2) else 0
            y1b = h - (y2a - y1a) if i in (0, 1) else 0
            canvas[:, y1a:y2a, x1a:x2a] = image[:, y1b : y1b + (y2a - y1a), x1b : x1b + (x2a - x1a)]
            offset = torch.tensor([x1a - x1b, y1a - y1b] * 2, dtype=torch.float32)
            all_boxes.append(boxes.float().reshape(-1, 4) * ratio + offset)
            all_labels.append(labels)
        return _wrap(canvas, torch.cat(all_boxes), torch.cat(all_labels))


def _wrap(image: Tensor, boxes: Tensor, labels: Tensor):
    """A sample as ``tv_tensors``, its boxes unclipped (``clamping_mode=None``) until :class:`KeepVisibleBoxes`."""
    canvas = tuple(image.shape[-2:])
    box = tv_tensors.BoundingBoxes(boxes.float().reshape(-1, 4), format="XYXY", canvas_size=canvas, clamping_mode=None)
    return tv_tensors.Image(image), {"boxes": box, "labels": labels}


class CloseMosaic(L.Callback):
    """Turn ``augment``'s mosaic off for the last ``epochs`` epochs of training (Ultralytics' ``close_mosaic``),
    on again before them (a resumed run lands on the right side). A run without ``max_epochs`` keeps it on."""

    def __init__(self, augment: YoloAugment, epochs: int = 10) -> None:
        if epochs < 0:
            raise ValueError(f"close_mosaic must be >= 0 epochs, got {epochs}")
        self.augment, self.epochs = augment, int(epochs)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        last = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
        self.augment.set_mosaic(last is None or trainer.current_epoch < last - self.epochs)


def detection_train_transforms(
    augment: str | bool,
    image_size: int,
    *,
    hflip: float = 0.5,
    jitter: float = 0.2,
    hue: float | None = None,
    scale: Sequence[float] | None = (0.5, 1.5),
    translate: float = 0.1,
    mosaic: float = 1.0,
    hsv: Sequence[float] = (0.015, 0.7, 0.4),
):
    """The training transforms of ``augment`` (``"none"``, ``"light"``, ``"yolo"``; ``True`` / ``False`` mean
    ``"light"`` / ``"none"``, as the option was a switch before): a v2 pipeline, or a :class:`YoloAugment`.

    Raises:
        ValueError: ``augment`` is none of these, naming ``data.augment``.
    """
    if isinstance(augment, bool):
        augment = "light" if augment else "none"
    if augment not in AUGMENTS:
        raise ValueError(f"data.augment must be one of {AUGMENTS}, got {augment!r}")
    if augment == "yolo":
        zoom = (1.0, 1.0) if scale is None else scale
        return YoloAugment(image_size, mosaic=mosaic, scale=zoom, translate=translate, hsv=hsv, hflip=hflip)
    return detection_transforms(
        image_size, augment == "light", hflip=hflip, jitter=jitter, hue=hue, scale=scale, translate=translate
    )
