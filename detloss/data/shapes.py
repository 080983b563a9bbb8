"""Synthetic shapes: a detection dataset drawn on the fly from ``(seed, split, index)`` with numpy and PIL.

Each image has a random background (flat colour plus a linear gradient), clutter that is not an object (thin
lines and soft, blurred blobs), 0 to ``max_objects`` shapes of five classes, and Gaussian noise. Shapes are
filled, or, when at least 14 px, outlined with a stroke of 5-12 % of their size. Their size (the side of the
unrotated shape) is log-uniform in ``[min_size, max_size]``; their colour is resampled until it stands out from
the pixels it covers. Shapes may overlap, but at most 30 % of a shape ends up hidden. The box of a shape is the
tight box of the pixels drawn for it (``[x_min, y_min, x_max + 1, y_max + 1]``: pixel ``i`` spans ``[i, i + 1)``),
hidden parts included.

Classes: circle, square, triangle, star (five points), cross (plus sign). A "ring" class is left out on
purpose: an outlined circle would be one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch import Tensor

from .base import SPLITS, DetectionDataModule, DetectionDataset, to_uint8
from .transforms import detection_transforms

__all__ = ["SHAPE_CLASSES", "ShapesDataset", "ShapesDataModule"]

SHAPE_CLASSES = ["circle", "square", "triangle", "star", "cross"]
# circumradius of each shape as a fraction of its size: keeps a centred shape inside the image
_EXTENT = {"circle": 0.5, "square": math.sqrt(0.5), "triangle": 1 / math.sqrt(3), "star": 0.5, "cross": 0.54}
_MAX_COVERED = 0.3  # a new shape may hide at most this fraction of an earlier one
_MIN_CONTRAST = 0.3  # RGB distance between a shape and (90 % of) the pixels under it


def _polygon(kind: str, cx: float, cy: float, size: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a square / triangle / star / cross of ``size`` centred on ``(cx, cy)``, rotated by ``angle``."""
    if kind == "square":
        points = [(size * math.sqrt(0.5), math.pi / 4 + k * math.pi / 2) for k in range(4)]
    elif kind == "triangle":
        points = [(size / math.sqrt(3), -math.pi / 2 + k * 2 * math.pi / 3) for k in range(3)]
    elif kind == "star":
        points = [(size / 2 * (1.0 if k % 2 == 0 else 0.45), -math.pi / 2 + k * math.pi / 5) for k in range(10)]
    elif kind == "cross":
        h, a = size / 2, 0.18 * size
        corners = [(-a, -h), (a, -h), (a, -a), (h, -a), (h, a), (a, a), (a, h), (-a, h), (-a, a), (-h, a), (-h, -a)]
        corners.append((-a, -a))
        points = [(math.hypot(x, y), math.atan2(y, x)) for x, y in corners]
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return [(cx + r * math.cos(t + angle), cy + r * math.sin(t + angle)) for r, t in points]


def _shape_mask(kind: str, cx: float, cy: float, size: float, angle: float, width: int, canvas: int) -> np.ndarray:
    """Pixels ``(canvas, canvas)`` bool of one shape; ``width`` 0 fills it, ``width > 0`` outlines it."""
    img = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(img)
    fill = 255 if width == 0 else None
    if kind == "circle":
        r = size / 2
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=255, width=max(1, width))
    else:
        draw.polygon(_polygon(kind, cx, cy, size, angle), fill=fill, outline=255, width=max(1, width))
    return np.asarray(img) > 0


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """An RGB colour in [0, 1]: random hue, saturation and value."""
    h, s, v = rng.random(), rng.uniform(0.0, 1.0), rng.uniform(0.15, 1.0)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return (v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)).astype(np.float32)


class ShapesDataset(DetectionDataset):
    """Synthetic detection images ``(3, S, S)`` with the tight boxes of their shapes; see the module docstring.

    Args:
        num_images: length of the dataset.
        image_size: side ``S`` of the square images.
        seed: with ``split`` and the index, determines each image (any worker, any order).
        split: ``"train"``, ``"val"`` or ``"test"``: independent streams of images for one seed.
        max_objects: most shapes per image; the count is uniform in ``[1, max_objects]``, or 0 with
            probability ``p_empty``.
        min_size, max_size: range of the shape size in pixels (``max_size`` defaults to ``S // 2``).
        p_outline: probability that a shape of at least 14 px is outlined instead of filled.
        noise: the per-image std of the Gaussian pixel noise is uniform in ``[0, noise]``.
        clutter: draw distractor lines and blurred blobs.
        gradient: largest amplitude of the background's linear gradient.
        transforms: v2 pipeline applied to each sample (e.g. :func:`detection_transforms`).
    """

    class_names = SHAPE_CLASSES

    def __init__(
        self,
        num_images: int,
        image_size: int = 128,
        seed: int = 0,
        *,
        split: str = "train",
        max_objects: int = 8,
        p_empty: float = 0.1,
        min_size: float = 10.0,
        max_size: float | None = None,
        p_outline: float = 0.3,
        noise: float = 0.04,
        clutter: bool = True,
        gradient: float = 0.3,
        transforms: Callable | None = None,
        cache: bool = True,
    ) -> None:
        super().__init__(transforms)
        # drawing an item again at every epoch costs more than a training step can spare on a CPU (the data wait of
        # docs/benchmarks/training_step.md): keep what was drawn
        self.cache, self._cache = bool(cache), {}
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        max_size = image_size / 2 if max_size is None else max_size
        if not 1 <= min_size <= max_size <= image_size / math.sqrt(2) - 2:
            raise ValueError(f"need 1 <= min_size <= max_size <= image_size / sqrt(2) - 2, got {min_size}, {max_size}")
        self.num_images, self.image_size, self.seed, self.split = int(num_images), int(image_size), int(seed), split
        self.max_objects, self.p_empty, self.p_outline = int(max_objects), float(p_empty), float(p_outline)
        self.min_size, self.max_size = float(min_size), float(max_size)
        self.noise, self.clutter, self.gradient = float(noise), bool(clutter), float(gradient)

    def __len__(self) -> int:
        return self.num_images

    def generate(self, index: int) -> dict[str, np.ndarray]:
        """Draw image ``index``.

        Returns:
            ``image (S, S, 3)`` float32 in [0, 1], ``boxes (n, 4)`` float32 xyxy, ``labels (n,)`` int64 and
            ``masks (n, S, S)`` bool, the pixels drawn for each shape (before later shapes covered them).
        """
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        s = self.image_size
        canvas = self._background(rng)
        if self.clutter:
            self._draw_clutter(rng, canvas)
        count = 0 if rng.random() < self.p_empty else int(rng.integers(1, self.max_objects + 1))
        owner = np.full((s, s), -1, dtype=np.int32)  # index of the shape on top of each pixel
        masks: list[np.ndarray] = []
        labels: list[int] = []
        for _ in range(count):
            label = int(rng.integers(len(SHAPE_CLASSES)))
            placed = self._place(rng, canvas, owner, masks, SHAPE_CLASSES[label])
            if placed is not None:
                owner[placed] = len(masks)
                masks.append(placed)
                labels.append(label)
        if self.noise > 0:
            canvas += rng.normal(0.0, rng.uniform(0.0, self.noise), canvas.shape).astype(np.float32)
        boxes = np.zeros((len(masks), 4), dtype=np.float32)
        for i, mask in enumerate(masks):
            ys, xs = np.nonzero(mask)
            boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        return {
            "image": np.clip(canvas, 0.0, 1.0),
            "boxes": boxes,
            "labels": np.asarray(labels, dtype=np.int64),
            "masks": np.stack(masks) if masks else np.zeros((0, s, s), dtype=bool),
        }

    def load(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        """The drawn image as an 8-bit picture would hold it, its boxes and labels (kept in memory if ``cache``)."""
        if index not in self._cache:
            sample = self.generate(index)
            image = torch.from_numpy(to_uint8(sample["image"])).permute(2, 0, 1).contiguous()
            item = (image, torch.from_numpy(sample["boxes"]), torch.from_numpy(sample["labels"]))
            if not self.cache:
                return item[0].float().div_(255), item[1], item[2]
            self._cache[index] = item
        image, boxes, labels = self._cache[index]
        return image.float().div_(255), boxes.clone(), labels.clone()

    # ------------------------------------------------------------------------------------------------ drawing

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        s = self.image_size
        theta = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:s, 0:s].astype(np.float32) / s - 0.5
        ramp = rng.uniform(0, self.gradient) * (xs * math.cos(theta) + ys * math.sin(theta))
        return np.clip(_random_colour(rng)[None, None, :] + ramp[..., None], 0, 1).astype(np.float32)

    def _draw_clutter(self, rng: np.random.Generator, canvas: np.ndarray) -> None:
        """Blend 0-3 soft blobs and 0-3 thin lines into ``canvas (S, S, 3)`` in place."""
        s = self.image_size
        for _ in range(int(rng.integers(0, 4))):
            layer = Image.new("L", (s, s), 0)
            cx, cy = rng.uniform(0, s, 2)
            rx, ry = rng.uniform(0.05 * s, 0.25 * s, 2)
            ImageDraw.Draw(layer).ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
            layer = layer.filter(ImageFilter.GaussianBlur(rng.uniform(0.03, 0.06) * s))
            alpha = np.asarray(layer, dtype=np.float32)[..., None] / 255 * rng.uniform(0.2, 0.5)
            canvas += alpha * (_random_colour(rng) - canvas)
        for _ in range(int(rng.integers(0, 4))):
            layer = Image.new("L", (s, s), 0)
            x0, y0, x1, y1 = rng.uniform(-0.1 * s, 1.1 * s, 4)
            ImageDraw.Draw(layer).line([x0, y0, x1, y1], fill=255, width=int(rng.integers(1, 3)))
            alpha = np.asarray(layer, dtype=np.float32)[..., None] / 255 * rng.uniform(0.4, 1.0)
            canvas += alpha * (_random_colour(rng) - canvas)

    def _place(self, rng, canvas, owner, masks, kind, tries: int = 20) -> np.ndarray | None:
        """Draw one shape of ``kind`` where it hides little of the earlier ``masks``; its pixels, or None."""
        s = self.image_size
        for _ in range(tries):
            size = math.exp(rng.uniform(math.log(self.min_size), math.log(self.max_size)))
            reach = _EXTENT[kind] * size + 1
            cx, cy = rng.uniform(reach, s - reach, 2)
            angle = 0.0 if kind == "circle" else rng.uniform(0, 2 * math.pi)
            outline = size >= 14 and rng.random() < self.p_outline
            width = max(1, round(size * rng.uniform(0.05, 0.12))) if outline else 0
            mask = _shape_mask(kind, cx, cy, size, angle, width, s)
            if not mask.any():
                continue
            covered = np.bincount(owner[mask] + 1, minlength=len(masks) + 1)[1:]
            visible = np.bincount(owner.ravel() + 1, minlength=len(masks) + 1)[1:]
            if any(v - c < (1 - _MAX_COVERED) * m.sum() for c, v, m in zip(covered, visible, masks)):
                continue
            for _ in range(10):  # a colour that differs from what lies under the shape
                colour = _random_colour(rng)
                distance = np.linalg.norm(canvas[mask] - colour, axis=1)
                if np.percentile(distance, 10) >= _MIN_CONTRAST:
                    canvas[mask] = colour
                    return mask
        return None


class ShapesDataModule(DetectionDataModule):
    """Train / val splits of :class:`ShapesDataset` (independent streams of the same ``seed``).

    ``augment="light"`` (the default) adds colour jitter (``jitter``; no hue shift, the generator already draws
    every hue) and horizontal flips (``hflip``) to the training images; the random zoom of
    :func:`detection_transforms` is off unless ``scale`` is given, the generator already varies sizes and
    positions. ``"yolo"`` and ``"none"`` as for :class:`~detloss.data.CocoDataModule`. Attributes: ``num_classes`` (5),
    ``class_names``, ``in_channels`` (3), ``task``.
    """

    def __init__(
        self,
        num_train: int = 4000,
        num_val: int = 256,
        image_size: int = 128,
        seed: int = 0,
        batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool = False,
        augment: str | bool = "light",
        hflip: float = 0.5,
        jitter: float = 0.2,
        scale: tuple[float, float] | None = None,
        mosaic: float = 1.0,
        close_mosaic: int = 10,
        max_objects: int = 8,
        p_empty: float = 0.1,
        min_size: float = 10.0,
        max_size: float | None = None,
        noise: float = 0.04,
        clutter: bool = True,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory)
        self.image_size = int(image_size)
        self.class_names = list(SHAPE_CLASSES)
        options = dict(
            max_objects=max_objects, p_empty=p_empty, min_size=min_size, max_size=max_size, noise=noise, clutter=clutter
        )
        augment_options = dict(hflip=hflip, jitter=jitter, hue=0.0, scale=scale, mosaic=mosaic)
        train_tf = self.train_transforms(augment, close_mosaic, **augment_options)
        val_tf = detection_transforms(image_size, train=False)
        self.train_dataset = ShapesDataset(num_train, image_size, seed, split="train", transforms=train_tf, **options)
        self.val_dataset = ShapesDataset(num_val, image_size, seed, split="val", transforms=val_tf, **options)
