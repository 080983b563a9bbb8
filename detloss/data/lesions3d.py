"""Synthetic MRI-like volumes with small brain tumours, written once in the nnU-Net layout and read like a user's data.

Each case is a head: air around an ellipsoidal brain with smooth tissue texture, darker ventricle-like ellipsoids
and a few small bright vessels (not tumour), then one tumour (``max_tumours``, at least 1 unless ``p_empty``) of
three nested regions, as BraTS labels them:

* 1 ``necrosis``: the innermost core, dark on T1ce;
* 2 ``edema``: the outer shell, bright on FLAIR (whole tumour = 1 ∪ 2 ∪ 3);
* 3 ``enhancing``: a rim around the necrosis, bright on T1ce (tumour core = 1 ∪ 3).

Two channels, ``0000`` FLAIR and ``0001`` T1ce; a lobulated ellipsoidal contour (a smooth random field perturbs the
distance to the centre) with radii in mm; partial-volume edges over about a millimetre while the labels are the
inside of the same contour; a multiplicative bias field ``exp(0.15 · smooth noise)`` per channel (intensity
inhomogeneity); Gaussian noise, magnitude taken (Rician-like in the air). The default voxel is 2 × 1 × 1 mm
(``D`` coarser), which the 3D U-Net's anisotropy-aware pooling handles.

:func:`generate_lesions3d` writes ``<cache>/<hash of the parameters>/`` once (``dataset.json``, ``imagesTr``,
``labelsTr``; atomically, so concurrent processes agree) and returns the folder; :class:`Lesions3DDataModule` then
reads it with the nnU-Net reader (:class:`~detloss.data.NnUNetDataModule`). Case ``i`` comes from
``numpy.random.default_rng([seed, i])``. The card is ``datasets/lesions3d/README.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..runtime import one_thread
from .nifti import write_volume
from .nnunet import NnUNetDataModule

__all__ = ["LESION3D_LABELS", "CHANNELS", "generate_case", "generate_lesions3d", "Lesions3DDataModule"]

LESION3D_LABELS = {"background": 0, "necrosis": 1, "edema": 2, "enhancing": 3}
CHANNELS = {"0": "FLAIR", "1": "T1ce"}
VERSION = 2  # part of the cache key: bump when the drawing changes (2: necrosis of BraTS-like size)
#: intensities (FLAIR, T1ce) before texture, bias and noise
TISSUE = {"brain": (0.35, 0.40), "ventricle": (0.12, 0.15), "edema": (0.75, 0.33)}
TISSUE |= {"enhancing": (0.62, 0.85), "necrosis": (0.50, 0.12), "vessel": (0.40, 0.80)}


def _smooth(rng: np.random.Generator, shape: Sequence[int], cells: Sequence[int]) -> np.ndarray:
    """A smooth random field of unit std: Gaussian noise on a coarse grid, upsampled (trilinear) to ``shape``."""
    coarse = torch.from_numpy(rng.standard_normal((1, 1, *cells)).astype(np.float32))
    with one_thread():
        field = F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=False)[0, 0].numpy()
    return (field - field.mean()) / (field.std() + 1e-6)


def _soft(inside_mm: np.ndarray, width: float = 1.0) -> np.ndarray:
    """Partial-volume coverage from a signed distance in mm (positive inside), over ``width`` mm."""
    return np.clip(0.5 + inside_mm / width, 0.0, 1.0).astype(np.float32)


def generate_case(
    rng: np.random.Generator,
    shape: Sequence[int] = (32, 64, 64),
    spacing: Sequence[float] = (2.0, 1.0, 1.0),
    max_tumours: int = 1,
    p_empty: float = 0.0,
    radius: tuple[float, float] = (10.0, 16.0),
    noise: float = 0.04,
) -> tuple[np.ndarray, np.ndarray]:
    """One case: ``image (2, D, H, W)`` float32 (FLAIR, T1ce) and ``labels (D, H, W)`` uint8 (see the module)."""
    shape = tuple(int(s) for s in shape)
    spacing = np.asarray(spacing, dtype=np.float32)
    extent = spacing * np.asarray(shape)
    grid = np.stack(np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij"))
    cells = [max(2, int(e // 16)) for e in extent]

    def ellipsoid(centre, axes) -> np.ndarray:  # signed distance (mm, positive inside), approximately
        rho = np.sqrt(sum(((grid[a] - centre[a]) / axes[a]) ** 2 for a in range(3)))
        return (1.0 - rho) * min(axes)

    brain_axes = extent * rng.uniform(0.40, 0.47, 3)
    brain_centre = extent / 2 + rng.normal(0, 0.02, 3) * extent
    brain = _soft(ellipsoid(brain_centre, brain_axes), 2.0)
    channels = np.zeros((2, *shape), dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    texture = 0.04 * _smooth(rng, shape, cells) + 0.02 * _smooth(rng, shape, [2 * c for c in cells])
    for c in range(2):
        channels[c] = brain * (TISSUE["brain"][c] + texture)
    for _ in range(2):  # ventricle-like dark ellipsoids
        centre = brain_centre + rng.uniform(-0.25, 0.25, 3) * brain_axes
        inside = _soft(ellipsoid(centre, brain_axes * rng.uniform(0.08, 0.18, 3)))
        for c in range(2):
            channels[c] += inside * brain * (TISSUE["ventricle"][c] - channels[c])
    for _ in range(int(rng.integers(2, 6))):  # vessels: small bright dots on T1ce, not tumour
        centre = brain_centre + rng.uniform(-0.7, 0.7, 3) * brain_axes
        inside = _soft(ellipsoid(centre, np.full(3, rng.uniform(1.0, 2.0))))
        for c in range(2):
            channels[c] += inside * brain * (TISSUE["vessel"][c] - channels[c])

    count = 0 if rng.random() < p_empty else int(rng.integers(1, max_tumours + 1))
    placed: list[tuple[np.ndarray, float]] = []
    for _ in range(count):
        r_wt = rng.uniform(*radius)
        for _ in range(30):  # a centre inside the brain, clear of other tumours
            centre = brain_centre + rng.uniform(-1, 1, 3) * np.maximum(brain_axes - r_wt - 3, 1.0)
            if np.sum(((centre - brain_centre) / brain_axes) ** 2) < 0.6 and all(
                np.linalg.norm(centre - p) > r_wt + r + 2 for p, r in placed
            ):
                break
        else:
            continue
        placed.append((centre, r_wt))
        axes = rng.uniform(0.8, 1.2, 3)
        rho = np.sqrt(sum(((grid[a] - centre[a]) / axes[a]) ** 2 for a in range(3)))
        rho = rho + 1.2 * _smooth(rng, shape, cells)  # lobulated contour
        r_tc = r_wt * rng.uniform(0.55, 0.70)
        r_ncr = r_tc * rng.uniform(0.60, 0.75)  # necrosis about a third of the core, as in BraTS
        whole, core, necrotic = (_soft(r - rho) for r in (r_wt, r_tc, r_ncr))
        regions = {"edema": whole - core, "enhancing": core - necrotic, "necrosis": necrotic}
        for c in range(2):
            tumour = sum(amount * TISSUE[name][c] for name, amount in regions.items()) + 0.5 * texture * whole
            channels[c] = channels[c] * (1 - whole * brain) + brain * tumour
        labels[rho < r_wt] = LESION3D_LABELS["edema"]
        labels[rho < r_tc] = LESION3D_LABELS["enhancing"]
        labels[rho < r_ncr] = LESION3D_LABELS["necrosis"]
    for c in range(2):
        channels[c] *= np.exp(0.15 * _smooth(rng, shape, [2, 2, 2]))
        channels[c] = np.abs(channels[c] + rng.normal(0, noise, shape).astype(np.float32))
    return channels, labels


def write_once(kind: str, params: dict, cache_dir: str | Path | None, write: Callable[[Path], dict]) -> Path:
    """A generated dataset written once into ``<cache_dir>/<hash of params>`` (``cache_dir`` default
    ``~/.cache/detloss/<kind>``) and its folder returned: ``write(folder)`` fills a fresh folder that holds empty
    ``imagesTr/`` and ``labelsTr/`` and returns its ``dataset.json``, written with ``params`` beside it; the folder is
    renamed into place at once, so that a reader never sees half a dataset and two writers never mix theirs."""
    key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    base = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "detloss" / kind
    root = base / key
    if (root / "dataset.json").is_file():
        return root
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=base))
    try:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        spec = write(tmp) | {"detloss_parameters": params}
        (tmp / "dataset.json").write_text(json.dumps(spec, indent=2))
        try:
            os.replace(tmp, root)  # atomic; fails if another process wrote it first
        except OSError:
            if not (root / "dataset.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def generate_lesions3d(
    num_cases: int = 50,
    shape: Sequence[int] = (32, 64, 64),
    spacing: Sequence[float] = (2.0, 1.0, 1.0),
    seed: int = 0,
    cache_dir: str | Path | None = None,
    **options,
) -> Path:
    """Write (once) ``num_cases`` cases of :func:`generate_case` in the nnU-Net raw layout and return the folder:
    ``<cache_dir>/<hash of the parameters>`` (``cache_dir`` default ``~/.cache/detloss/lesions3d``)."""
    if int(num_cases) < 1:
        raise ValueError(f"num_cases must be >= 1, got {num_cases}")
    if len(shape) != 3 or min(shape) < 8 or len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"shape must be 3 sides >= 8 and spacing 3 positive numbers, got {shape} and {spacing}")
    params = {"version": VERSION, "num_cases": int(num_cases), "shape": [int(s) for s in shape]}
    params |= {"spacing": [float(s) for s in spacing], "seed": int(seed), **options}

    def write(folder: Path) -> dict:
        for i in range(int(num_cases)):
            image, labels = generate_case(np.random.default_rng([int(seed), i]), shape, spacing, **options)
            name = f"lesion_{i:03d}"
            for c, channel in enumerate(image):
                write_volume(channel, spacing, folder / "imagesTr" / f"{name}_{c:04d}.nii.gz")
            write_volume(labels, spacing, folder / "labelsTr" / f"{name}.nii.gz")
        spec = {"channel_names": CHANNELS, "labels": LESION3D_LABELS, "numTraining": int(num_cases)}
        return spec | {"file_ending": ".nii.gz", "name": "lesions3d"}

    return write_once("lesions3d", params, cache_dir, write)


class Lesions3DDataModule(NnUNetDataModule):
    """The embedded 3D data (``data=lesions3d``): :func:`generate_lesions3d` writes the cases once, and the
    nnU-Net reader reads them (validation: fold ``fold`` of the seeded 5-fold split).

    Args:
        num_cases, shape, spacing, seed: the generated dataset (see :func:`generate_case`); ``max_tumours``,
            ``p_empty``, ``radius``, ``noise`` as there.
        cache_dir: where the generated datasets live (``None``: ``~/.cache/detloss/lesions3d``).
        the rest: as :class:`~detloss.data.NnUNetDataModule`.
    """

    def __init__(
        self,
        num_cases: int = 50,
        shape: Sequence[int] = (32, 64, 64),
        spacing: Sequence[float] = (2.0, 1.0, 1.0),
        seed: int = 0,
        max_tumours: int = 1,
        p_empty: float = 0.0,
        radius: Sequence[float] = (10.0, 16.0),
        noise: float = 0.04,
        cache_dir: str | Path | None = None,
        **reader,
    ) -> None:
        options = dict(max_tumours=int(max_tumours), p_empty=float(p_empty), radius=[float(r) for r in radius])
        options["noise"] = float(noise)
        root = generate_lesions3d(num_cases, shape, spacing, seed, cache_dir, **options)
        super().__init__(root, **reader)
