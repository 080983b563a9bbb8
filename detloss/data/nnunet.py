"""The nnU-Net v2 raw dataset layout (Isensee et al., *nnU-Net*, Nature Methods 2021), read with nibabel::

    DIR/dataset.json                 {"channel_names": {"0": "FLAIR", "1": "T1ce"}, "labels": {"background": 0,
                                      "edema": 1, ...}, "numTraining": N, "file_ending": ".nii.gz"}
    DIR/imagesTr/<case>_0000.nii.gz  one file per channel (<case>_<XXXX>, XXXX the channel's key)
    DIR/labelsTr/<case>.nii.gz       class indices 0 … K−1 (and the value of an optional "ignore" label)

Region labels (nnU-Net's region-based training, as for BraTS): ``"labels": {"background": 0, "whole tumor": [1, 2,
3], "tumor core": [2, 3], "enhancing tumor": 3}`` with ``"regions_class_order": [1, 2, 3]`` are read as regions
(:mod:`detloss.data.regions`); the label volumes then hold the values 0 … K−1 that the regions list, named
``label_<value>``. ``data.regions`` gives regions for any dataset.

Arrays are read as nnU-Net's ``NibabelIO`` reads them: transposed to ``(z, y, x)`` = ``(D, H, W)``, the spacing
(mm, from the header's zooms) reversed to match; the affine's orientation is not applied. Cases are resampled to
the target spacing of the plan (:mod:`detloss.data.resample`) when theirs differs. An ``"ignore"`` label becomes
``ignore_index`` (255).

Checks at construction, each naming the file: ``dataset.json`` present, with the four keys and labels 0 … K−1; a
channel file missing for a case; a label file missing; channels of one case with different shapes or spacings; a
label volume whose shape or spacing differs from its image's; label values absent from ``dataset.json`` (every label
volume is read once, which also gives the foreground locations for patch sampling); ``numTraining`` not matching
the cases found.

Normalisation: one scheme per channel (:func:`detloss.data.preprocess.normalise`), planned from the fingerprint as
nnU-Net plans it (:func:`detloss.plan.normalisation`): CT clipped to the dataset's foreground percentiles and
z-scored with its statistics, every other channel z-scored per case (inside the non-zero region where cropping to
it removes a quarter of the volume).

Split: a seeded split by case into folds (:func:`detloss.data.cases.cross_validation_split`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import _DataModule
from .cases import FILE_ENDINGS, cross_validation_split, foreground_locations, read_dataset_json
from .nifti import Case, _header, read_volume
from .patches import PatchDataset, VolumeDataset, volume_collate
from .preprocess import check_normalization, check_spacing, preprocess
from .regions import RegionTargets, nnunet_region_labels, resolve_regions
from .resample import needs_resampling, resample_labels

__all__ = ["NnUNetDataset", "NnUNetDataModule", "REQUIRED_KEYS"]

REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")


class NnUNetDataset:
    """A checked nnU-Net raw dataset (see the module docstring): its cases, classes and label volumes.

    Args:
        root: the dataset folder (``dataset.json``, ``imagesTr``, ``labelsTr``).
        ignore_index: the value an ``"ignore"`` label is mapped to (outside ``[0, K)``).
        cache: keep each case's normalised image in memory once read.

    Attributes: ``cases`` (sorted by name), ``class_names`` (by label value), ``channel_names``, ``labels`` (the
    label volumes, uint8 or int16), ``locations`` (per case, per class 1 … K−1, up to 10,000 voxel indices).
    """

    def __init__(self, root: str | Path, ignore_index: int = 255, cache: bool = True) -> None:
        self.root, self.ignore_index, self.cache = Path(root), int(ignore_index), bool(cache)
        self._images: dict[int, np.ndarray] = {}
        self.regions, self.regions_class_order = None, None  # set by a dataset.json of region labels
        spec = self._read_spec()
        self.cases = self._find_cases(spec)
        self._raw_labels = [self._read_labels(case) for case in self.cases]
        self.prepare()

    def prepare(self, spacing: Sequence[float] | None = None, normalization: Sequence[dict] | None = None) -> None:
        """Resample every case to ``spacing`` (``None``: each case at its own) and normalise its channels by
        ``normalization`` (one scheme per channel, see :func:`detloss.data.preprocess.normalise`; ``None``: z-score
        per case): what a plan fixes (:mod:`detloss.plan`). Resamples the label volumes at once and lists their
        foreground voxels."""
        if spacing is not None:
            spacing = check_spacing(spacing, "data.target_spacing")
        if normalization is not None:
            check_normalization(normalization, self.channel_names)
        self.target_spacing = spacing
        self.normalization = None if normalization is None else [dict(n) for n in normalization]
        self._images.clear()
        self.labels, self.locations = [], []
        rng = np.random.default_rng(1234)
        values = range(1, self.num_classes)
        for index, case in enumerate(self.cases):
            labels = self._raw_labels[index]
            if spacing is not None and needs_resampling(case.spacing, spacing):
                ignored = labels == self.ignore_index
                labels = resample_labels(labels, case.spacing, spacing, values)
                if ignored.any():
                    labels[resample_labels(ignored.astype(np.uint8), case.spacing, spacing, [1]) == 1] = (
                        self.ignore_index
                    )
            self.labels.append(labels)
            self.locations.append([foreground_locations(labels, k, rng) for k in values])

    def raw_labels(self, index: int) -> np.ndarray:
        """The label volume of case ``index`` at its own spacing (an ``"ignore"`` label as ``ignore_index``)."""
        return self._raw_labels[index]

    def spacing_of(self, index: int) -> tuple[float, float, float]:
        """The spacing case ``index`` is used at: the target spacing, or the case's own."""
        return self.target_spacing or self.cases[index].spacing

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return len(self.channel_names)

    def _read_spec(self) -> dict:
        path = self.root / "dataset.json"
        spec = read_dataset_json(path, REQUIRED_KEYS, "nnU-Net v2")
        if spec["file_ending"] not in FILE_ENDINGS:
            raise ValueError(
                f"{path}: file_ending {spec['file_ending']!r} is not NIfTI, expected one of {FILE_ENDINGS}"
            )
        channels = spec["channel_names"]
        if not isinstance(channels, dict) or sorted(channels, key=int) != [str(i) for i in range(len(channels))]:
            raise ValueError(f"{path}: channel_names must map '0', '1', … to names, got {channels!r}")
        self.channel_names = [str(channels[str(i)]) for i in range(len(channels))]
        labels = spec["labels"]
        if isinstance(labels, dict) and any(isinstance(v, list) for v in labels.values()):  # regions
            labels, self.regions, self.regions_class_order = nnunet_region_labels(spec, path)
        if not isinstance(labels, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in labels.values()
        ):
            raise ValueError(
                f"{path}: labels must map names to integer values, or to lists of them (regions, with "
                f"regions_class_order), got {labels!r}"
            )
        self.ignore_value = labels.get("ignore")
        named = {v: k for k, v in labels.items() if k != "ignore"}
        if (
            sorted(named) != list(range(len(named)))
            or len(named) < 2
            or len(named) != len(labels) - ("ignore" in labels)
        ):
            raise ValueError(f"{path}: labels must take the values 0 … K−1 (K >= 2, 0 the background), got {labels!r}")
        if self.ignore_value is not None and self.ignore_value < len(named):
            raise ValueError(f"{path}: the ignore label must have the highest value, got {labels!r}")
        if 0 <= self.ignore_index < len(named):
            raise ValueError(f"ignore_index {self.ignore_index} collides with the labels 0 … {len(named) - 1}")
        self.class_names = [named[v] for v in range(len(named))]
        self.file_ending = spec["file_ending"]
        if not isinstance(spec["numTraining"], int):
            raise ValueError(f"{path}: numTraining must be an integer, got {spec['numTraining']!r}")
        return spec

    def read_channels(self, index: int) -> list[np.ndarray]:
        """The raw channels ``[(D, H, W), ...]`` of case ``index``, as its files hold them (the fingerprint and
        :meth:`image` read cases through this)."""
        return [read_volume(path)[0] for path in self.cases[index].images]

    def _find_cases(self, spec: dict) -> list[Case]:
        ending = spec["file_ending"]
        images_dir, labels_dir = self.root / "imagesTr", self.root / "labelsTr"
        for folder in (images_dir, labels_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f"nnU-Net folder not found: {folder}")
        pattern = re.compile(rf"(.+)_\d{{4}}{re.escape(ending)}")
        names = sorted({m.group(1) for p in images_dir.iterdir() if (m := pattern.fullmatch(p.name))})
        if not names:
            raise ValueError(f"{images_dir}: no <case>_<XXXX>{ending} files found")
        cases = []
        for name in names:
            images = [images_dir / f"{name}_{c:04d}{ending}" for c in range(self.in_channels)]
            for path in images:
                if not path.is_file():
                    raise FileNotFoundError(f"case {name!r}: channel file not found: {path}")
            label = labels_dir / f"{name}{ending}"
            if not label.is_file():
                raise FileNotFoundError(f"case {name!r}: label file not found: {label}")
            headers = [_header(p) for p in images]
            shape, spacing = headers[0]
            for path, (s, z) in zip(images[1:], headers[1:]):
                if s != shape:
                    raise ValueError(f"{path}: shape {s} differs from the case's first channel {shape} ({images[0]})")
                if not np.allclose(z, spacing, rtol=1e-3):
                    raise ValueError(
                        f"{path}: spacing {z} differs from the case's first channel {spacing} ({images[0]})"
                    )
            label_shape, label_spacing = _header(label)
            if label_shape != shape:
                raise ValueError(f"{label}: label shape {label_shape} differs from its image's {shape} ({images[0]})")
            if not np.allclose(label_spacing, spacing, rtol=1e-3):
                raise ValueError(f"{label}: label spacing {label_spacing} differs from its image's {spacing}")
            cases.append(Case(name, images, label, spacing, shape))
        if spec["numTraining"] != len(cases):
            raise ValueError(
                f"{self.root / 'dataset.json'}: numTraining is {spec['numTraining']} but imagesTr holds "
                f"{len(cases)} cases"
            )
        return cases

    def _read_labels(self, case: Case) -> np.ndarray:
        array, _ = read_volume(case.label)
        values = np.unique(array)
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
            raise ValueError(f"{case.label}: label values must be integers, got {values[:10].tolist()}")
        allowed = set(range(self.num_classes)) | ({self.ignore_value} if self.ignore_value is not None else set())
        unknown = sorted(set(values.astype(np.int64).tolist()) - allowed)
        if unknown:
            raise ValueError(
                f"case {case.name!r}: {case.label}: label values {unknown} are absent from "
                f"{self.root / 'dataset.json'} (labels {sorted(allowed)})"
            )
        labels = array.astype(np.uint8 if self.ignore_index < 256 else np.int16)
        if self.ignore_value is not None:
            labels[array == self.ignore_value] = self.ignore_index
        return labels

    def image(self, index: int) -> np.ndarray:
        """The normalised image ``(C, D, H, W)`` float32 of case ``index`` at :meth:`spacing_of` (cached with
        ``cache``)."""
        if index in self._images:
            return self._images[index]
        case = self.cases[index]
        image = preprocess(
            self.read_channels(index), case.spacing, self.target_spacing, self.normalization, f"case {case.name!r}"
        )
        if self.cache:
            self._images[index] = image
        return image

    def median_spacing(self, indices: Sequence[int] | None = None) -> tuple[float, float, float]:
        indices = range(len(self.cases)) if indices is None else indices
        return tuple(float(v) for v in np.median([self.spacing_of(i) for i in indices], 0))


class NnUNetDataModule(_DataModule):
    """Training patches and whole validation volumes of an nnU-Net raw dataset (``data=nnunet data.root=DIR``).

    The recipe is planned from the data (:mod:`detloss.plan`): on construction the module reads the dataset, takes
    its fingerprint (:attr:`fingerprint`, cached beside the data) and fixes the target spacing and normalisation by
    nnU-Net's rules unless they are given; the patch, batch and epoch length are then either given here or planned
    under a compute budget by the run (:func:`detloss.plan.plan_run`), which calls :meth:`configure`.

    Args:
        root: the dataset folder.
        patch_size: the training patch ``(D, H, W)`` at the target spacing; also the sliding window of validation
            (``None``: planned).
        fold, num_folds, split_seed: the validation fold of a seeded split by case (nnU-Net: 0 of 5, seed 12345).
        batch_size: training patches per batch (``None``: planned; validation takes one volume at a time).
        patches_per_epoch: the length of a training epoch in patches (``None``: planned).
        foreground_fraction: the share of patches forced to hold foreground (nnU-Net's third).
        augment: random flips along each axis of the training patches.
        ignore_index: the label of voxels that count nowhere (padding, an ``"ignore"`` label).
        cache: keep the normalised images in memory once read.
        target_spacing: the spacing ``(D, H, W)`` mm every case is resampled to (``None``: planned).
        normalization: one scheme per channel (:func:`detloss.data.preprocess.normalise`; ``None``: planned).
        plan: the planner's options (``budget_minutes``, ``memory_gib``, ``min_steps``), read by the run.
        regions: ``{name: label values}`` trained as overlapping sigmoid channels (:mod:`detloss.data.regions`;
            ``None``: those of a ``dataset.json`` of region labels, or none).
        regions_class_order: the label each region paints back (``None``: the dataset's, or derived).

    Attributes (known after ``__init__``): ``class_names``, ``num_classes``, ``in_channels``, ``spacing`` (the target
    spacing, which the 3D U-Net plans its pooling for), ``normalization``, ``fingerprint``; ``patch_size`` once
    configured. With regions, ``class_names`` are the region names (one output channel each), ``label_names`` the
    labels', and the targets region masks ``(R, D, H, W)`` (:func:`~detloss.data.regions.region_targets`).
    """

    task = "volumetric"
    collate_fn = staticmethod(volume_collate)
    val_batch_size = 1  # whole volumes, of any size
    resize, fill = "none", 0.0  # volumes keep their size: validation and prediction slide windows over them
    dataset_class = NnUNetDataset  # the reader of the layout (the Decathlon's: detloss.data.msd)

    def __init__(
        self,
        root: str | Path,
        patch_size: Sequence[int] | None = None,
        fold: int = 0,
        num_folds: int = 5,
        split_seed: int = 12345,
        batch_size: int | None = None,
        patches_per_epoch: int | None = None,
        foreground_fraction: float = 1 / 3,
        augment: bool = True,
        num_workers: int = 0,
        pin_memory: bool = False,
        ignore_index: int = 255,
        cache: bool = True,
        target_spacing: Sequence[float] | None = None,
        normalization: Sequence[dict] | None = None,
        plan: dict | None = None,
        regions: dict | None = None,
        regions_class_order: Sequence[int] | None = None,
    ) -> None:
        from ..plan import normalisation, volume_fingerprint
        from ..plan import target_spacing as planned_spacing

        super().__init__(2 if batch_size is None else batch_size, num_workers, pin_memory)
        if not 0 <= foreground_fraction <= 1 or not math.isfinite(foreground_fraction):
            raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        self.foreground_fraction, self.augment = float(foreground_fraction), bool(augment)
        self.plan_options = dict(plan or {})
        if target_spacing is not None:
            target_spacing = check_spacing(target_spacing, "data.target_spacing")
        self.given = {
            "patch_size": None if patch_size is None else list(patch_size),
            "batch_size": batch_size,
            "patches_per_epoch": patches_per_epoch,
            "spacing": None if target_spacing is None else list(target_spacing),
            "normalization": None if normalization is None else [dict(n) for n in normalization],
            "foreground_fraction": foreground_fraction,
        }
        self.source = self.dataset_class(root, ignore_index=ignore_index, cache=cache)
        self.regions, self.regions_class_order = resolve_regions(
            None if regions is None else dict(regions),
            None if regions_class_order is None else list(regions_class_order),
            self.source.regions,
            self.source.regions_class_order,
            self.source.num_classes,
            str(self.source.root / "dataset.json"),
        )
        self.fingerprint = volume_fingerprint(self.source)
        self.spacing = tuple(float(s) for s in (target_spacing or planned_spacing(self.fingerprint)))
        self.normalization = [dict(n) for n in (normalization or normalisation(self.fingerprint))]
        self.source.prepare(self.spacing, self.normalization)
        names = [c.name for c in self.source.cases]
        train, val = cross_validation_split(names, fold, num_folds, split_seed)
        index = {name: i for i, name in enumerate(names)}
        self.train_cases, self.val_cases = [index[n] for n in train], [index[n] for n in val]
        self.label_names = list(self.source.class_names)
        self.class_names = list(self.label_names if self.regions is None else self.regions)
        self.in_channels = self.source.in_channels
        self.ignore_index = int(ignore_index)
        self.patch_size: tuple[int, int, int] | None = None
        self.plan = None
        self.val_dataset = self._targets(VolumeDataset(self.source, self.val_cases))
        if patch_size is not None:  # usable as it is; a run plans what is None (nnU-Net's batch 2 and 250 steps here)
            self.configure(patch_size, batch_size or 2, patches_per_epoch or 250 * (batch_size or 2))

    def configure(self, patch_size: Sequence[int], batch_size: int, patches_per_epoch: int, plan=None) -> None:
        """Fix the training patch, batch and epoch length (given, or from ``plan``, a
        :class:`~detloss.plan.VolumePlan` that :meth:`describe` then carries)."""
        patch_size = tuple(int(s) for s in patch_size)
        if len(patch_size) != 3 or min(patch_size) < 1:
            raise ValueError(f"patch_size must be 3 positive integers (D, H, W), got {patch_size}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.patch_size, self.batch_size, self.plan = patch_size, int(batch_size), plan
        self.train_dataset = self._targets(
            PatchDataset(
                self.source,
                self.train_cases,
                patch_size,
                patches_per_epoch,
                self.foreground_fraction,
                self.augment,
                self.ignore_index,
            )
        )

    def _targets(self, dataset):
        """``dataset`` itself, or with regions its labels as region masks."""
        return dataset if self.regions is None else RegionTargets(dataset, self.regions, self.ignore_index)

    def train_dataloader(self):
        if self.train_dataset is None:
            raise ValueError(
                "data.patch_size, data.batch_size and data.patches_per_epoch are not set and were not planned: give "
                "them, or train through detloss.train, which plans them (detloss.plan.plan_run)"
            )
        return super().train_dataloader()

    def describe(self) -> dict[str, Any]:
        """The base's description and what a 3D model and its predictions are planned for: ``spacing`` (the target
        spacing, mm, ``(D, H, W)``), ``normalization``, ``patch_size`` (the sliding window), ``ignore_index``,
        ``regions`` (``{name: label values}``, or ``None``), ``regions_class_order`` and ``label_names`` (the label
        values' names) and, where planned, ``plan`` (:meth:`detloss.plan.VolumePlan.to_dict`)."""
        return super().describe() | {
            "regions": None if self.regions is None else {k: list(v) for k, v in self.regions.items()},
            "regions_class_order": None if self.regions_class_order is None else list(self.regions_class_order),
            "label_names": list(self.label_names),
            "spacing": [float(v) for v in self.spacing],
            "normalization": [dict(n) for n in self.normalization],
            "patch_size": None if self.patch_size is None else list(self.patch_size),
            "ignore_index": self.ignore_index,
            "plan": None if self.plan is None else self.plan.to_dict(),
        }
