"""Synthetic BraTS-like brain scans: four MR contrasts, a glioma of three labelled parts, and look-alikes that are
not tumour, written once in the Medical Segmentation Decathlon layout (Task01_BrainTumour's) and read like a user's.

Each case is a head: air around an ellipsoidal brain with smooth tissue texture, two ventricles (CSF: dark on FLAIR
and T1, bright on T2), then one tumour (``p_empty`` of the cases have none) with the labels of the Decathlon's
Task01 (the BraTS labels, renumbered):

* 1 ``edema``: the outer shell, bright on FLAIR and T2;
* 2 ``non-enhancing tumor``: the necrotic / non-enhancing centre of the core, dark on T1 and T1ce, bright on T2;
* 3 ``enhancing tumour``: a rim around it, bright on T1ce.

The BraTS regions follow: ``whole_tumor = {1, 2, 3}``, ``tumor_core = {2, 3}``, ``enhancing_tumor = {3}``
(:data:`BRATS_REGIONS`). Look-alikes, never labelled: vessels (thin tubes, bright on T1ce as the enhancing rim is)
and a periventricular cap (a thin crescent at a ventricle's tip, bright on FLAIR as edema is). The contour of each
tumour part is a lobulated ellipsoid (a smooth random field perturbs the distance to the centre), with
partial-volume edges over about a millimetre while the labels are the inside of the same contour; each contrast gets
a multiplicative bias field ``exp(0.15 · smooth noise)`` and Gaussian noise, magnitude taken (Rician-like in the
air). The default voxel is 1.5 mm isotropic.

:func:`generate_brats` writes ``<cache>/<hash of the parameters>/`` once (``dataset.json``, ``imagesTr`` of 4D
``(x, y, z, 4)`` images, ``labelsTr``; atomically, so concurrent processes agree) and returns the folder;
:class:`BraTSDataModule` reads it with the Decathlon reader (:class:`~detloss.data.MSDDataModule`) and trains the
regions. Case ``i`` comes from ``numpy.random.default_rng([seed, i])``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .lesions3d import _smooth, _soft, write_once
from .msd import MSDDataModule
from .nifti import write_volume

__all__ = [
    "BRATS_LABELS",
    "BRATS_MODALITIES",
    "BRATS_REGIONS",
    "generate_brats_case",
    "generate_brats",
    "BraTSDataModule",
]

BRATS_MODALITIES = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}  # the Decathlon's names
BRATS_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
BRATS_REGIONS = {"whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3]}
VERSION = 1  # part of the cache key: bump when the drawing changes
#: intensities (FLAIR, T1, T1ce, T2) before texture, bias and noise
TISSUE = {
    "brain": (0.35, 0.55, 0.40, 0.35),
    "csf": (0.10, 0.15, 0.15, 0.90),
    "edema": (0.80, 0.40, 0.33, 0.75),
    "core": (0.55, 0.22, 0.15, 0.85),
    "enhancing": (0.60, 0.45, 0.90, 0.55),
    "vessel": (0.38, 0.50, 0.85, 0.30),
    "cap": (0.72, 0.48, 0.38, 0.62),
}


def _tube(grid: np.ndarray, start: np.ndarray, end: np.ndarray, radius: float) -> np.ndarray:
    """Signed distance (mm, positive inside) to a straight tube of ``radius`` from ``start`` to ``end``."""
    axis = end - start
    rel = grid - start[:, None, None, None]
    t = np.clip(np.tensordot(axis, rel, 1) / max(float(axis @ axis), 1e-6), 0, 1)
    closest = start[:, None, None, None] + axis[:, None, None, None] * t
    return radius - np.sqrt(((grid - closest) ** 2).sum(0))


def generate_brats_case(
    rng: np.random.Generator,
    shape: Sequence[int] = (40, 48, 48),
    spacing: Sequence[float] = (1.5, 1.5, 1.5),
    p_empty: float = 0.0,
    radius: tuple[float, float] = (11.0, 17.0),
    noise: float = 0.04,
) -> tuple[np.ndarray, np.ndarray]:
    """One case: ``image (4, D, H, W)`` float32 (FLAIR, T1, T1ce, T2) and ``labels (D, H, W)`` uint8 (see the
    module docstring)."""
    shape = tuple(int(s) for s in shape)
    spacing = np.asarray(spacing, dtype=np.float32)
    extent = spacing * np.asarray(shape)
    grid = np.stack(np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij"))
    cells = [max(2, int(e // 16)) for e in extent]

    def ellipsoid(centre, axes) -> np.ndarray:  # signed distance (mm, positive inside), approximately
        rho = np.sqrt(sum(((grid[a] - centre[a]) / axes[a]) ** 2 for a in range(3)))
        return (1.0 - rho) * min(axes)

    def paint(amount: np.ndarray, tissue: str) -> None:  # blend a tissue in where ``amount`` (0 … 1) covers
        for c in range(4):
            channels[c] += amount * brain * (TISSUE[tissue][c] - channels[c])

    brain_axes = extent * rng.uniform(0.40, 0.46, 3)
    brain_centre = extent / 2 + rng.normal(0, 0.02, 3) * extent
    brain = _soft(ellipsoid(brain_centre, brain_axes), 2.0)
    channels = np.zeros((4, *shape), dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    texture = 0.04 * _smooth(rng, shape, cells) + 0.02 * _smooth(rng, shape, [2 * c for c in cells])
    for c in range(4):
        channels[c] = brain * (TISSUE["brain"][c] + texture)
    side = rng.choice([-1.0, 1.0])
    for k in range(2):  # two ventricles, side by side along W; a FLAIR cap at the front tip of one
        offset = np.array([0.0, -0.1, (0.18 if k else -0.18)]) * brain_axes
        centre = brain_centre + offset + rng.normal(0, 0.03, 3) * brain_axes
        axes = brain_axes * np.array([0.25, 0.45, 0.10]) * rng.uniform(0.85, 1.15, 3)
        if k == 0:
            tip = centre + np.array([0.0, side * axes[1], 0.0])
            paint(_soft(ellipsoid(tip, np.array([0.55, 0.35, 0.9]) * axes[[0, 1, 0]] + 1.5)), "cap")
        paint(_soft(ellipsoid(centre, axes)), "csf")
    for _ in range(int(rng.integers(2, 5))):  # vessels: thin tubes, bright on T1ce, not tumour
        start = brain_centre + rng.uniform(-0.5, 0.5, 3) * brain_axes
        end = start + rng.normal(0, 1, 3) * brain_axes * 0.5
        paint(_soft(_tube(grid, start, end, rng.uniform(1.2, 2.0))), "vessel")

    if rng.random() >= p_empty:
        r_wt = rng.uniform(*radius)
        lateral = np.array([0.0, 0.0, rng.choice([-1.0, 1.0])]) * 0.45 * brain_axes
        centre = brain_centre + lateral + rng.uniform(-0.25, 0.25, 3) * brain_axes
        axes = rng.uniform(0.8, 1.2, 3)
        rho = np.sqrt(sum(((grid[a] - centre[a]) / axes[a]) ** 2 for a in range(3)))
        rho = rho + 1.2 * _smooth(rng, shape, cells)  # lobulated contour
        r_tc = r_wt * rng.uniform(0.55, 0.70)
        r_core = r_tc * rng.uniform(0.45, 0.65)  # the rim: a third to a half of the core's radius
        whole, core, centre_part = (_soft(r - rho) for r in (r_wt, r_tc, r_core))
        parts = {"edema": whole - core, "enhancing": core - centre_part, "core": centre_part}
        for c in range(4):
            tumour = sum(amount * TISSUE[name][c] for name, amount in parts.items()) + 0.5 * texture * whole
            channels[c] = channels[c] * (1 - whole * brain) + brain * tumour
        inside = brain > 0.5
        labels[(rho < r_wt) & inside] = 1
        labels[(rho < r_tc) & inside] = 3
        labels[(rho < r_core) & inside] = 2
    for c in range(4):
        channels[c] *= np.exp(0.15 * _smooth(rng, shape, [2, 2, 2]))
        channels[c] = np.abs(channels[c] + rng.normal(0, noise, shape).astype(np.float32))
    return channels, labels


def generate_brats(
    num_cases: int = 50,
    shape: Sequence[int] = (40, 48, 48),
    spacing: Sequence[float] = (1.5, 1.5, 1.5),
    seed: int = 0,
    cache_dir: str | Path | None = None,
    **options,
) -> Path:
    """Write (once) ``num_cases`` cases of :func:`generate_brats_case` in the Decathlon layout and return the
    folder: ``<cache_dir>/<hash of the parameters>`` (``cache_dir`` default ``~/.cache/detloss/brats``)."""
    if int(num_cases) < 1:
        raise ValueError(f"num_cases must be >= 1, got {num_cases}")
    if len(shape) != 3 or min(shape) < 16 or len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"shape must be 3 sides >= 16 and spacing 3 positive numbers, got {shape} and {spacing}")
    params = {"version": VERSION, "num_cases": int(num_cases), "shape": [int(s) for s in shape]}
    params |= {"spacing": [float(s) for s in spacing], "seed": int(seed), **options}

    def write(folder: Path) -> dict:
        training = []
        for i in range(int(num_cases)):
            image, labels = generate_brats_case(np.random.default_rng([int(seed), i]), shape, spacing, **options)
            name = f"BRATS_{i:03d}.nii.gz"
            write_volume(image, spacing, folder / "imagesTr" / name)
            write_volume(labels, spacing, folder / "labelsTr" / name)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        spec = {"name": "BRATS-like", "tensorImageSize": "4D", "modality": BRATS_MODALITIES, "labels": BRATS_LABELS}
        return spec | {"numTraining": int(num_cases), "numTest": 0, "training": training, "test": []}

    return write_once("brats", params, cache_dir, write)


class BraTSDataModule(MSDDataModule):
    """The embedded BraTS-like data (``data=brats``): :func:`generate_brats` writes the cases once, the Decathlon
    reader reads them, and the BraTS regions (:data:`BRATS_REGIONS`) are trained (validation: fold ``fold`` of the
    seeded 5-fold split).

    Args:
        num_cases, shape, spacing, seed: the generated dataset (see :func:`generate_brats_case`); ``p_empty``,
            ``radius``, ``noise`` as there.
        cache_dir: where the generated datasets live (``None``: ``~/.cache/detloss/brats``).
        regions: the regions trained (default :data:`BRATS_REGIONS`).
        the rest: as :class:`~detloss.data.NnUNetDataModule`.
    """

    def __init__(
        self,
        num_cases: int = 50,
        shape: Sequence[int] = (40, 48, 48),
        spacing: Sequence[float] = (1.5, 1.5, 1.5),
        seed: int = 0,
        p_empty: float = 0.0,
        radius: Sequence[float] = (11.0, 17.0),
        noise: float = 0.04,
        cache_dir: str | Path | None = None,
        regions: dict | None = None,
        **reader,
    ) -> None:
        options = {"p_empty": float(p_empty), "radius": [float(r) for r in radius], "noise": float(noise)}
        root = generate_brats(num_cases, shape, spacing, seed, cache_dir, **options)
        super().__init__(root, regions=dict(BRATS_REGIONS if regions is None else regions), **reader)
