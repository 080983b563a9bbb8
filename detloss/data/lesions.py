"""Synthetic lesions: single-channel "scans" with a lesion mask, drawn on the fly from ``(seed, split, index)``.

Each image shows a dark surround (air), an elliptical body with smooth soft-tissue texture (bicubically
upsampled Gaussian noise at two scales), an organ of slightly different density, a few small bright dots
(vessels, not lesions) and 0 to ``max_lesions`` lesions inside the body, plus Gaussian noise. Lesion classes
(mask values; 0 is background):

1. ``bright_round``: a bright, round to slightly oval, homogeneous spot.
2. ``dark_irregular``: a dark, lobulated blob (radius modulated by 2nd to 4th harmonics).
3. ``ring_enhancing``: a bright rim around a darker core; the mask covers rim and core.

Lesion edges are anti-aliased over one pixel and the mask is the inside of the same contour, so masks and
pixels agree exactly. Lesions do not touch each other and stay inside the body.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cached_property

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .base import SPLITS, SegmentationDataModule, SegmentationDataset, to_uint8

__all__ = ["LESION_CLASSES", "LesionsDataset", "LesionsDataModule"]

LESION_CLASSES = ["background", "bright_round", "dark_irregular", "ring_enhancing"]
_AIR = 0.03


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise ``(size, size)`` of unit std: a ``cells x cells`` Gaussian grid, upsampled bicubically."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    field = np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC), dtype=np.float32)
    return (field - field.mean()) / (field.std() + 1e-6)


def _soft(signed_distance: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a region from its signed distance in pixels (positive inside)."""
    return np.clip(0.5 + signed_distance, 0.0, 1.0)


class LesionsDataset(SegmentationDataset):
    """Synthetic scans ``(1, S, S)`` with masks ``(S, S)`` (0 background, 1..K lesions); see the module docstring.

    Args:
        num_images: length of the dataset.
        image_size: side ``S`` of the square images.
        seed: with ``split`` and the index, determines each image (any worker, any order).
        split: ``"train"``, ``"val"`` or ``"test"``: independent streams of images for one seed.
        num_lesion_classes: ``K``, 2 (bright, dark) or 3 (also ring-enhancing).
        p_empty: probability of an image without lesions; otherwise 1 to ``max_lesions`` (uniform).
        radius: ``(min, max)`` lesion radius in pixels at ``S = 128`` (scaled with ``S``). Bright lesions use the
            lower part of the range, dark and ring lesions at least 8 px.
        noise: std of the Gaussian pixel noise.
        transforms: v2 pipeline applied to each ``(Image, Mask)`` sample (e.g.
            :func:`~detloss.data.transforms.segmentation_transforms`).
    """

    def __init__(
        self,
        num_images: int,
        image_size: int = 128,
        seed: int = 0,
        *,
        split: str = "train",
        num_lesion_classes: int = 3,
        p_empty: float = 0.25,
        max_lesions: int = 3,
        radius: tuple[float, float] = (6.0, 18.0),
        noise: float = 0.02,
        transforms: Callable | None = None,
        cache: bool = True,
    ) -> None:
        super().__init__(transforms)
        # drawing an item again at every epoch costs more than a training step can spare on a CPU (the data wait of
        # docs/benchmarks/training_step.md): keep what was drawn
        self.cache, self._cache = bool(cache), {}
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if num_lesion_classes not in (2, 3):
            raise ValueError(f"num_lesion_classes must be 2 or 3, got {num_lesion_classes}")
        radius = (float(radius[0]), float(radius[1]))
        if not 2 <= radius[0] <= radius[1] <= 24:
            raise ValueError(f"radius must satisfy 2 <= min <= max <= 24 (pixels at 128 px), got {radius}")
        self.num_images, self.image_size, self.seed, self.split = int(num_images), int(image_size), int(seed), split
        self.num_lesion_classes, self.p_empty, self.max_lesions = (
            int(num_lesion_classes),
            float(p_empty),
            int(max_lesions),
        )
        self.radius, self.noise = radius, float(noise)
        self.class_names = LESION_CLASSES[: num_lesion_classes + 1]

    def __len__(self) -> int:
        return self.num_images

    @property
    def num_classes(self) -> int:
        """Mask values, background included: ``num_lesion_classes + 1``."""
        return self.num_lesion_classes + 1

    def generate(self, index: int) -> dict[str, np.ndarray]:
        """Draw scan ``index``: ``image (S, S)`` float32 in [0, 1] and ``mask (S, S)`` int64."""
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        s = self.image_size
        ys, xs = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
        image, body = self._body(rng, xs, ys)
        mask = np.zeros((s, s), dtype=np.int64)
        count = 0 if rng.random() < self.p_empty else int(rng.integers(1, self.max_lesions + 1))
        placed: list[tuple[float, float, float]] = []  # (cx, cy, reach)
        for _ in range(count):
            label = int(rng.integers(1, self.num_lesion_classes + 1))
            self._lesion(rng, image, mask, xs, ys, body, placed, label)
        image += rng.normal(0.0, self.noise, image.shape).astype(np.float32)
        return {"image": np.clip(image, 0.0, 1.0), "mask": mask}

    def load(self, index: int) -> tuple[Tensor, Tensor]:
        """The scan as an 8-bit image would hold it, and its mask (kept in memory if ``cache``)."""
        if index not in self._cache:
            sample = self.generate(index)
            item = (torch.from_numpy(to_uint8(sample["image"])).unsqueeze(0), torch.from_numpy(sample["mask"]))
            if not self.cache:
                return item[0].float().div_(255), item[1]
            self._cache[index] = item
        image, mask = self._cache[index]
        return image.float().div_(255), mask.clone()

    # ------------------------------------------------------------------------------------------------ drawing

    def _body(self, rng, xs, ys) -> tuple[np.ndarray, tuple[float, float, float, float, float]]:
        """Air, body, tissue texture, organ and vessel dots; the image and the body ellipse."""
        s = self.image_size
        cx, cy = s / 2 + rng.normal(0, 0.03 * s, 2)
        a, b = s * rng.uniform(0.38, 0.46), s * rng.uniform(0.30, 0.42)
        theta = rng.uniform(-0.4, 0.4)
        u = (xs - cx) * math.cos(theta) + (ys - cy) * math.sin(theta)
        v = -(xs - cx) * math.sin(theta) + (ys - cy) * math.cos(theta)
        rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        body_alpha = _soft((1 - rho) * min(a, b))
        tissue = rng.uniform(0.33, 0.43) + 0.05 * _smooth_noise(rng, s, 6) + 0.025 * _smooth_noise(rng, s, 16)
        # an organ: a smooth-edged ellipse of slightly different density inside the body
        ox, oy = cx + rng.uniform(-0.3, 0.3) * a, cy + rng.uniform(-0.3, 0.3) * b
        oa, ob = s * rng.uniform(0.12, 0.22, 2)
        organ = np.clip(1 - np.sqrt(((xs - ox) / oa) ** 2 + ((ys - oy) / ob) ** 2), 0, 0.15) / 0.15
        tissue += rng.choice([-1, 1]) * rng.uniform(0.05, 0.1) * organ
        for _ in range(int(rng.integers(0, 6))):  # vessels: small bright dots, not lesions
            vx, vy = cx + rng.uniform(-0.7, 0.7) * a, cy + rng.uniform(-0.7, 0.7) * b
            r = rng.uniform(1.0, 2.5) * s / 128
            tissue += rng.uniform(0.1, 0.2) * _soft(r - np.hypot(xs - vx, ys - vy))
        image = _AIR + body_alpha * (tissue - _AIR)
        return image.astype(np.float32), (cx, cy, a, b, theta)

    def _lesion(self, rng, image, mask, xs, ys, body, placed, label: int, tries: int = 30) -> None:
        """Draw one lesion of class ``label`` into ``image`` and ``mask`` in place, clear of ``placed`` ones."""
        scale = self.image_size / 128
        r_min, r_max = self.radius[0] * scale, self.radius[1] * scale
        if label == 1:
            r = rng.uniform(r_min, r_min + 0.6 * (r_max - r_min))
        else:
            r = rng.uniform(min(max(r_min, 8 * scale), r_max), r_max)
        harmonics = rng.uniform(0.05, 0.15, 3) if label == 2 else np.zeros(3)
        phases = rng.uniform(0, 2 * math.pi, 3)
        aspect, tilt = (rng.uniform(0.8, 1.0) if label != 2 else 1.0), rng.uniform(0, math.pi)
        reach = r * (1 + harmonics.sum())
        cx0, cy0, a, b, theta = body
        for _ in range(tries):
            # a centre at least reach + 4 px inside the body ellipse, clear of earlier lesions
            t, rho = rng.uniform(0, 2 * math.pi), math.sqrt(rng.random())
            ea, eb = a - reach - 4, b - reach - 4
            if ea <= 0 or eb <= 0:
                return
            u, v = rho * ea * math.cos(t), rho * eb * math.sin(t)
            cx = cx0 + u * math.cos(theta) - v * math.sin(theta)
            cy = cy0 + u * math.sin(theta) + v * math.cos(theta)
            if all(math.hypot(cx - px, cy - py) > reach + pr + 3 for px, py, pr in placed):
                break
        else:
            return
        placed.append((cx, cy, reach))
        du = (xs - cx) * math.cos(tilt) + (ys - cy) * math.sin(tilt)
        dv = (-(xs - cx) * math.sin(tilt) + (ys - cy) * math.cos(tilt)) / aspect
        dist, angle = np.hypot(du, dv), np.arctan2(dv, du)
        contour = r * (1 + sum(h * np.cos((k + 2) * angle + p) for k, (h, p) in enumerate(zip(harmonics, phases))))
        inside = contour - dist  # signed distance in pixels (approximately), positive inside
        alpha = _soft(inside)
        if label == 1:  # bright, homogeneous, slightly brighter centre
            image += alpha * (rng.uniform(0.25, 0.4) + 0.05 * np.clip(1 - dist / r, 0, 1))
        elif label == 2:  # dark, hypodense
            image += alpha * (rng.uniform(0.08, 0.14) - image)
        else:  # ring: bright rim of 25-40 % of the radius around a darker core
            core = _soft(inside - max(2.0, rng.uniform(0.25, 0.4) * r))
            image += (alpha - core) * rng.uniform(0.25, 0.4) - core * rng.uniform(0.08, 0.15)
        mask[inside >= 0] = label


class LesionsDataModule(SegmentationDataModule):
    """Train / val splits of :class:`LesionsDataset` (independent streams of the same ``seed``).

    ``augment`` adds flips (``hflip``, ``vflip``) and optionally rotations up to ``rotate`` degrees to the
    training images. Attributes: ``num_classes`` (``K + 1``, background included), ``class_names``,
    ``in_channels`` (1), ``ignore_index`` (255, used only for padding), ``task`` ("segmentation").

    The recipe is planned from the data as a mask folder's is (:class:`~detloss.data.MaskDataModule`): the scans
    train at the side they are drawn at (``image_size``); the batch (``batch_size=None``), the U-Net and the epochs
    are planned by the run (:func:`detloss.planning.plan_run`) from :attr:`fingerprint` under ``plan`` (the planner's
    options), which then calls :meth:`configure`. Until then the batch is 16.
    """

    def __init__(
        self,
        num_train: int = 1000,
        num_val: int = 200,
        image_size: int = 128,
        seed: int = 0,
        batch_size: int | None = 16,
        num_workers: int = 0,
        pin_memory: bool = False,
        augment: bool = True,
        hflip: float = 0.5,
        vflip: float = 0.5,
        rotate: float = 0.0,
        num_lesion_classes: int = 3,
        p_empty: float = 0.25,
        max_lesions: int = 3,
        radius: tuple[float, float] = (6.0, 18.0),
        noise: float = 0.02,
        ignore_index: int = 255,
        plan: dict | None = None,
    ) -> None:
        super().__init__(16 if batch_size is None else batch_size, num_workers, pin_memory, ignore_index)
        self.in_channels = 1
        self.class_names = LESION_CLASSES[: num_lesion_classes + 1]
        self.plan_options = dict(plan or {})
        self.given = {"image_size": int(image_size), "batch_size": batch_size}
        self._augment = dict(augment=augment, hflip=hflip, vflip=vflip, rotate=rotate)
        options = dict(
            num_lesion_classes=num_lesion_classes,
            p_empty=p_empty,
            max_lesions=max_lesions,
            radius=tuple(radius),
            noise=noise,
        )
        self.train_dataset = LesionsDataset(num_train, image_size, seed, split="train", **options)
        self.val_dataset = LesionsDataset(num_val, image_size, seed, split="val", **options)
        self.configure(image_size, self.batch_size)

    @cached_property
    def fingerprint(self):
        """The :class:`~detloss.plan.images.ImageFingerprint` of the training scans (drawn once; cached under the
        generator's parameters in the cache directory)."""
        from ..plan.images import mask_fingerprint

        return mask_fingerprint(self.train_dataset, list(self.class_names))
