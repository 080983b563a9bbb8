"""Volumes for training and validation: random patches with forced foreground, whole volumes, and their batches.

Samples are ``(image (C, D, H, W) float32, {"labels": (D, H, W) int64, "spacing": (3,) float32 mm})``; batches
stack them into ``(images (B, C, D, H, W), {"labels": (B, D, H, W), "spacing": (B, 3)})``, what the segmentation
criterion and the volumetric task take.

Patch sampling follows nnU-Net's: a share of the patches (``foreground_fraction``, a third) is forced to hold
foreground: a class present in the case is drawn uniformly, then one of its voxels (from up to 10,000 kept per
class), and the patch is placed around it (the voxel within the middle half of the patch along each axis the
volume allows); the others are placed uniformly at random. Which patches are forced is fixed by the sample's index
(every third), so the share is exact in every epoch. A case without foreground gets a random patch.

A patch larger than the volume along an axis takes the whole axis and is padded, centred: the image with 0 (the
mean of a z-scored channel) and the labels with ``ignore_index``, so that the padding counts in no loss and no
metric. Training patches are flipped along each axis with probability 1/2 (``augment``).

Random draws come from torch's generator (which the task seeds per epoch and rank), so a run is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..runtime import one_thread

if TYPE_CHECKING:
    from .nnunet import NnUNetDataset

__all__ = ["PatchDataset", "VolumeDataset", "volume_collate", "crop_or_pad", "is_forced"]


def is_forced(index: int, fraction: float) -> bool:
    """Whether patch ``index`` is forced to hold foreground: ``floor((i + 1) f) > floor(i f)``, so that exactly
    ``floor(n f)`` of the first ``n`` patches are (every third for ``f = 1/3``)."""
    return int((index + 1) * fraction + 1e-6) > int(index * fraction + 1e-6)


def crop_or_pad(
    image: np.ndarray,
    labels: np.ndarray,
    patch: Sequence[int],
    rng: np.random.Generator,
    centre: Sequence[int] | None = None,
    ignore_index: int = 255,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``patch``-sized window of ``image (C, D, H, W)`` and ``labels (D, H, W)``: random, or around ``centre``
    (which stays inside, in the middle half of the window where the volume allows); an axis shorter than the patch
    is taken whole and padded, centred (image 0, labels ``ignore_index``)."""
    slices, pads = [], []
    for axis, (size, p) in enumerate(zip(labels.shape, patch)):
        if size <= p:
            before = (p - size) // 2
            slices.append(slice(0, size))
            pads.append((before, p - size - before))
            continue
        if centre is None:
            start = int(rng.integers(0, size - p + 1))
        else:
            jitter = int(rng.integers(-(p // 4), p // 4 + 1))
            start = int(np.clip(int(centre[axis]) - p // 2 + jitter, 0, size - p))
        slices.append(slice(start, start + p))
        pads.append((0, 0))
    image, labels = image[(slice(None), *slices)], labels[tuple(slices)]
    if any(any(p) for p in pads):
        image = np.pad(image, [(0, 0), *pads])
        labels = np.pad(labels, pads, constant_values=ignore_index)
    return image, labels


def _target(labels: np.ndarray, spacing: Sequence[float]) -> dict[str, Tensor]:
    return {
        "labels": torch.from_numpy(np.ascontiguousarray(labels)).long(),
        "spacing": torch.tensor(spacing, dtype=torch.float32),
    }


class PatchDataset(Dataset):
    """``length`` training patches of the cases ``cases`` of ``source`` (see the module docstring)."""

    def __init__(
        self,
        source: NnUNetDataset,
        cases: Sequence[int],
        patch_size: Sequence[int],
        length: int,
        foreground_fraction: float = 1 / 3,
        augment: bool = True,
        ignore_index: int = 255,
    ) -> None:
        if not cases:
            raise ValueError("no training cases: the split left none for training")
        if int(length) < 1:
            raise ValueError(f"patches_per_epoch must be >= 1, got {length}")
        self.source, self.cases, self.patch_size = source, list(cases), tuple(int(s) for s in patch_size)
        self.length, self.foreground_fraction = int(length), float(foreground_fraction)
        self.augment, self.ignore_index = bool(augment), int(ignore_index)
        self.class_names = source.class_names

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} patches")
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,))))
        case = self.cases[int(rng.integers(len(self.cases)))]
        centre = None
        if is_forced(index, self.foreground_fraction):
            present = [locations for locations in self.source.locations[case] if len(locations)]
            if present:
                locations = present[int(rng.integers(len(present)))]
                centre = locations[int(rng.integers(len(locations)))]
        with one_thread():
            image, labels = crop_or_pad(
                self.source.image(case), self.source.labels[case], self.patch_size, rng, centre, self.ignore_index
            )
            if self.augment:
                for axis in range(3):
                    if rng.random() < 0.5:
                        image, labels = np.flip(image, axis + 1), np.flip(labels, axis)
            return torch.from_numpy(np.ascontiguousarray(image)), _target(labels, self.source.spacing_of(case))


class VolumeDataset(Dataset):
    """The whole, normalised volumes of the cases ``cases`` of ``source`` (validation): the image at the target
    spacing, as the network sees it, and the labels and spacing of the case's own grid, which the predictions are
    resampled back to before they are scored (as nnU-Net scores its validation)."""

    def __init__(self, source: NnUNetDataset, cases: Sequence[int]) -> None:
        if not cases:
            raise ValueError("no validation cases: the split left none to validate on")
        self.source, self.cases = source, list(cases)
        self.class_names = source.class_names

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        case = self.cases[index]
        image = torch.from_numpy(self.source.image(case))
        return image, _target(self.source.raw_labels(case), self.source.cases[case].spacing)


def volume_collate(batch: Sequence[tuple[Tensor, dict[str, Tensor]]]) -> tuple[Tensor, dict[str, Tensor]]:
    """``[(image, {"labels", "spacing"}), ...]`` -> ``(images (B, C, D, H, W), {"labels": (B, D, H, W), "spacing":
    (B, 3)})``; the volumes of a batch must have one shape (patches do; validation takes one volume a batch)."""
    images, targets = zip(*batch)
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) > 1:
        raise ValueError(f"cannot batch volumes of different shapes {sorted(shapes)}; validate with batch size 1")
    with one_thread():
        return torch.stack(images), {key: torch.stack([t[key] for t in targets]) for key in targets[0]}
