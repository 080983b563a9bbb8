"""A dataset's fingerprint: what planning needs to know of the data, computed once and cached.

For volumes (nnU-Net's dataset fingerprint, Isensee et al., *nnU-Net*, Nature Methods 2021, "dataset
fingerprint"): per case the shape, the spacing and the shape after cropping to the non-zero region (the bounding box
of the voxels where any channel is non-zero); per channel the intensity statistics of the foreground voxels (mean,
std, 0.5 and 99.5 percentiles, min, max; up to 10,000 foreground voxels drawn per case, as nnU-Net samples them);
per foreground label the share of the voxels it holds, the cases that hold it, and the sizes of its connected
components (26-connectivity) in voxels and mm³.

The fingerprint is written as JSON beside the data (``<root>/detloss_fingerprint.json``), or where that folder
cannot be written, into ``~/.cache/detloss/fingerprints/``; it is computed anew when a file of the dataset changed
(its name, size or modification time: the ``signature``) or when the fingerprint's ``VERSION`` changed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .cache import cache_folder, key, read_json, write_json
from .cache import signature as files_signature

__all__ = ["VolumeFingerprint", "volume_fingerprint", "crop_to_nonzero_box", "FOREGROUND_SAMPLES"]

VERSION = 1
FOREGROUND_SAMPLES = 10_000
"""Foreground voxels drawn per case for the intensity statistics (nnU-Net's ``num_foreground_voxels_for_intensitystats``
is 10e7 over the dataset, sampled per case; 10,000 per case keeps the statistics of a few hundred cases exact to
the third digit)."""
_FILE = "detloss_fingerprint.json"


@dataclass
class VolumeFingerprint:
    """The fingerprint of a volumetric dataset (see the module docstring). Shapes and spacings are ``(D, H, W)``.

    Attributes:
        channel_names: the name of each channel (``dataset.json``'s ``channel_names``).
        class_names: the name of each label value, background first.
        cases: per case ``{"name", "shape", "spacing", "cropped_shape"}``.
        intensities: per channel ``{"mean", "std", "p00_5", "p99_5", "min", "max"}`` of the foreground voxels.
        labels: per foreground label ``{"name", "voxel_share", "cases", "components", "component_voxels_median",
            "component_voxels_min", "component_mm3_median"}``.
        signature: the hash of the dataset's files it was computed from.
    """

    channel_names: list[str]
    class_names: list[str]
    cases: list[dict[str, Any]]
    intensities: list[dict[str, float]]
    labels: list[dict[str, Any]]
    signature: str = ""
    version: int = field(default=VERSION)

    @property
    def spacings(self) -> np.ndarray:
        return np.array([c["spacing"] for c in self.cases], dtype=np.float64)

    @property
    def shapes(self) -> np.ndarray:
        return np.array([c["shape"] for c in self.cases], dtype=np.int64)

    @property
    def cropped_shapes(self) -> np.ndarray:
        return np.array([c["cropped_shape"] for c in self.cases], dtype=np.int64)

    @property
    def median_spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.median(self.spacings, 0))

    def median_shape_at(self, spacing) -> tuple[int, int, int]:
        """The median over cases of the cropped shape resampled to ``spacing`` (voxels, ``(D, H, W)``)."""
        sizes = self.cropped_shapes * self.spacings / np.asarray(spacing, dtype=np.float64)
        return tuple(int(round(s)) for s in np.median(sizes, 0))

    @property
    def median_relative_size_after_cropping(self) -> float:
        """The median over cases of (voxels after cropping) / (voxels), read by the normalisation rule."""
        return float(np.median(np.prod(self.cropped_shapes, 1) / np.prod(self.shapes, 1)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VolumeFingerprint:
        return cls(**data)


def crop_to_nonzero_box(image: np.ndarray) -> tuple[slice, slice, slice]:
    """The bounding box of the voxels of ``image (C, D, H, W)`` where any channel is non-zero (the whole volume
    when none is): nnU-Net's ``crop_to_nonzero`` (its hole filling does not move the box)."""
    nonzero = np.any(image != 0, axis=0)
    if not nonzero.any():
        return tuple(slice(0, s) for s in nonzero.shape)
    box = []
    for axis in range(3):
        along = np.any(nonzero, axis=tuple(a for a in range(3) if a != axis))
        where = np.flatnonzero(along)
        box.append(slice(int(where[0]), int(where[-1]) + 1))
    return tuple(box)


def _cache_paths(root: Path) -> list[Path]:
    return [root / _FILE, cache_folder("fingerprints") / f"{key(str(root.resolve()))}.json"]


def volume_fingerprint(source, cache: bool = True) -> VolumeFingerprint:
    """The fingerprint of ``source`` (a :class:`~detloss.data.NnUNetDataset` or another reader of volumes: its
    cases and their files, ``read_channels(index)`` and ``raw_labels(index)``), read from its cache when the
    dataset's files are unchanged (``cache=False``: computed anew, and not written)."""
    files = [source.root / "dataset.json", *(p for case in source.cases for p in (*case.images, case.label))]
    signature = files_signature(files, VERSION)
    if cache and (found := read_json(_cache_paths(source.root), lambda d: d.get("signature") == signature)):
        return VolumeFingerprint.from_dict(found)
    num_labels = len(source.class_names) - 1
    samples: list[list[np.ndarray]] = [[] for _ in source.channel_names]
    counts = np.zeros(num_labels, dtype=np.int64)
    holding = np.zeros(num_labels, dtype=np.int64)
    component_voxels: list[list[int]] = [[] for _ in range(num_labels)]
    component_mm3: list[list[float]] = [[] for _ in range(num_labels)]
    cases, total = [], 0
    rng = np.random.default_rng(1234)
    structure = np.ones((3, 3, 3), dtype=bool)
    for index, case in enumerate(source.cases):
        image = np.stack(source.read_channels(index))  # the reader owns the files' layout and axis order
        labels = source.raw_labels(index)
        box = crop_to_nonzero_box(image)
        cases.append(
            {
                "name": case.name,
                "shape": list(case.shape),
                "spacing": list(case.spacing),
                "cropped_shape": [s.stop - s.start for s in box],
            }
        )
        total += labels.size
        foreground = (labels > 0) & (labels <= num_labels)
        where = np.flatnonzero(foreground.ravel())
        if len(where) > FOREGROUND_SAMPLES:
            where = rng.choice(where, FOREGROUND_SAMPLES, replace=False)
        for c in range(len(samples)):
            samples[c].append(image[c].ravel()[where].astype(np.float64))
        voxel_mm3 = float(np.prod(case.spacing))
        for k in range(1, num_labels + 1):
            mask = labels == k
            n = int(mask.sum())
            counts[k - 1] += n
            if n == 0:
                continue
            holding[k - 1] += 1
            components, found = ndimage.label(mask, structure)
            sizes = np.bincount(components.ravel(), minlength=found + 1)[1:]
            component_voxels[k - 1] += sizes.tolist()
            component_mm3[k - 1] += (sizes * voxel_mm3).tolist()
    intensities = []
    for channel in samples:
        values = np.concatenate(channel) if channel else np.zeros(0)
        if values.size == 0:  # no foreground anywhere: the statistics of nothing are 0 and 1
            intensities.append({"mean": 0.0, "std": 1.0, "p00_5": 0.0, "p99_5": 0.0, "min": 0.0, "max": 0.0})
            continue
        p00_5, p99_5 = np.percentile(values, [0.5, 99.5])
        intensities.append(
            {
                "mean": float(values.mean()),
                "std": float(values.std()),
                "p00_5": float(p00_5),
                "p99_5": float(p99_5),
                "min": float(values.min()),
                "max": float(values.max()),
            }
        )
    labels = []
    for k in range(num_labels):
        voxels, mm3 = component_voxels[k], component_mm3[k]
        labels.append(
            {
                "name": source.class_names[k + 1],
                "voxel_share": float(counts[k] / max(total, 1)),
                "cases": int(holding[k]),
                "components": len(voxels),
                "component_voxels_median": float(np.median(voxels)) if voxels else 0.0,
                "component_voxels_min": int(min(voxels)) if voxels else 0,
                "component_mm3_median": float(np.median(mm3)) if mm3 else 0.0,
            }
        )
    fingerprint = VolumeFingerprint(
        list(source.channel_names), list(source.class_names), cases, intensities, labels, signature
    )
    if cache:
        write_json(_cache_paths(source.root), fingerprint.to_dict())
    return fingerprint
