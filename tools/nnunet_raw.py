"""Small random datasets in the nnU-Net v2 raw layout, for checking detloss's planner against nnU-Net's own
(``tools/nnunet_plan.py``): :func:`write_nnunet_dataset`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["write_nnunet_dataset"]


def _per_case(value, num_cases: int, name: str) -> list[tuple[float, float, float]]:
    """``value`` as one ``(x, y, z)`` triple a case: one triple for all, or a sequence of ``num_cases`` triples."""
    array = np.asarray(value, dtype=np.float64)
    if array.shape == (3,):
        array = np.broadcast_to(array, (num_cases, 3))
    if array.shape != (num_cases, 3):
        raise ValueError(
            f"{name} must be one (x, y, z) triple or {num_cases} of them (one a case), got shape {array.shape}"
        )
    if not np.all(array > 0):
        raise ValueError(f"{name} must be positive, got {value!r}")
    return [tuple(float(v) for v in row) for row in array]


def write_nnunet_dataset(
    root: str | Path,
    shape_xyz: Sequence[int] | Sequence[Sequence[int]],
    spacing_xyz: Sequence[float] | Sequence[Sequence[float]],
    num_cases: int,
    channel_names: Sequence[str],
    labels: Sequence[str],
    seed: int = 0,
) -> Path:
    """Write a small random dataset in the nnU-Net v2 raw layout under ``root`` and return ``root``.

    * ``shape_xyz``, ``spacing_xyz``: the voxel shape and spacing (mm) in the file's ``(x, y, z)`` order, one triple
      for every case or a sequence of ``num_cases`` triples (cases that differ, for the median and percentile rules);
    * ``channel_names``: one name a channel, written to ``dataset.json`` as nnU-Net reads them (``"CT"`` selects its
      ``CTNormalization``, any other name its ``ZScoreNormalization``);
    * ``labels``: the foreground structures, labels ``1..len(labels)`` (``background`` is 0).

    Files: ``imagesTr/case_NNN_CCCC.nii.gz`` (float32) and ``labelsTr/case_NNN.nii.gz`` (uint8), affine
    ``diag(spacing, 1)``, and ``dataset.json``. Each label is one ellipsoid blob placed and sized in millimetres (semi-
    axes 8 to 18 % of the smallest physical extent, centre in the middle 60 % of each axis; at least one voxel), later
    labels over earlier ones. Intensities are non-zero everywhere, so nnU-Net's crop to the non-zero region keeps the
    whole volume: a CT channel is Hounsfield-like (background about -100, label ``k`` about ``30 + 50 k``, noise 15),
    any other channel ``c`` MR-like on its own scale ``100 (c + 1)`` (background 1, label ``k`` ``1 + 0.3 k`` times
    the scale, noise 5 %). Everything is drawn from ``numpy.random.default_rng(seed)``.
    """
    import nibabel as nib

    if int(num_cases) < 1:
        raise ValueError(f"num_cases must be at least 1, got {num_cases!r}")
    num_cases = int(num_cases)
    if isinstance(channel_names, str) or not channel_names:
        raise ValueError(f"channel_names must be a non-empty sequence of names, got {channel_names!r}")
    if isinstance(labels, str) or not labels:
        raise ValueError(f"labels must be a non-empty sequence of foreground names, got {labels!r}")
    if "background" in labels:
        raise ValueError("labels lists the foreground structures only (background is label 0)")
    shapes = [tuple(int(v) for v in s) for s in _per_case(shape_xyz, num_cases, "shape_xyz")]
    spacings = _per_case(spacing_xyz, num_cases, "spacing_xyz")

    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for case, (shape, spacing) in enumerate(zip(shapes, spacings)):
        spacing_arr = np.asarray(spacing)
        extent = np.asarray(shape) * spacing_arr
        grids = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
        label = np.zeros(shape, dtype=np.uint8)
        for value in range(1, len(labels) + 1):
            centre = extent * rng.uniform(0.2, 0.8, size=3)
            semi = extent.min() * rng.uniform(0.08, 0.18, size=3)
            inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, semi)) <= 1.0
            if not inside.any():
                inside[tuple(np.minimum((centre / spacing_arr).astype(int), np.asarray(shape) - 1))] = True
            label[inside] = value
        affine = np.diag([*spacing, 1.0])
        for channel, name in enumerate(channel_names):
            noise = rng.standard_normal(shape)
            if name.casefold() == "ct":
                image = -100.0 + 15.0 * noise
                image = np.where(label > 0, 30.0 + 50.0 * label + 15.0 * noise, image)
            else:
                scale = 100.0 * (channel + 1)
                image = scale * (1.0 + 0.3 * label + 0.05 * noise)
            image[image == 0] = 1e-3  # the crop to the non-zero region must keep every voxel
            nib.save(
                nib.Nifti1Image(image.astype(np.float32), affine),
                str(root / "imagesTr" / f"case_{case:03d}_{channel:04d}.nii.gz"),
            )
        nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / f"case_{case:03d}.nii.gz"))
    dataset = {
        "channel_names": {str(i): str(name) for i, name in enumerate(channel_names)},
        "labels": {"background": 0, **{str(name): i + 1 for i, name in enumerate(labels)}},
        "numTraining": num_cases,
        "file_ending": ".nii.gz",
        "name": root.name,
    }
    (root / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    return root
