"""Write synthetic 3D segmentation datasets in the nnU-Net v2 raw layout, unlike the embedded ``lesions3d``.

    python tools/make_volume_datasets.py outputs/data/volumes                 # every dataset, 30 cases each
    python tools/make_volume_datasets.py outputs/data/volumes --datasets mr2_aniso ct_iso --cases 20 --seed 1
    python tools/make_volume_datasets.py /tmp/tiny --scale 0.25 --cases 5     # the same fields of view, 4× coarser
    python -m detloss.train task=volumetric data=nnunet data.root=outputs/data/volumes/mr2_aniso

Each dataset goes to ``OUT_DIR/<name>/``: ``dataset.json`` (``channel_names``, ``labels`` 0 … K−1,
``numTraining``, ``file_ending`` ``".nii.gz"``, and the generator's parameters), ``imagesTr/case_NNN_XXXX.nii.gz``
(one file per channel) and ``labelsTr/case_NNN.nii.gz`` (uint8). NIfTI arrays are ``(x, y, z)`` with the affine
``diag(spacing x, y, z, 1)``, as ``detloss.data.nnunet`` and nnU-Net's ``NibabelIO`` read them. Sizes and spacings
below are ``x × y × z``. The embedded ``lesions3d`` is 64 × 64 × 32 voxels of 1 × 1 × 2 mm, two MR channels of
intensities in [0, 1], one tumour of three nested labels in every case; these differ from it as follows:

* ``mr2_aniso`` (the dataset of issue 24): two MR contrasts ``T1``, ``T2``; 96 × 96 × 64 voxels of 1 × 1 × 2 mm; a
  head-like ellipsoid (scalp, dark skull, a cortex rim bright on T2, white matter, two CSF ventricles) and three
  small structures at positions that vary per case, each well under 1 % of the voxels, of a different contrast
  pair each (``structure_a`` bright on T1 and dark on T2; ``structure_b`` as bright as the cortex on T2 but dark on
  T1; ``structure_c`` small, elongated and dark on both); a multiplicative bias field per channel, Rician noise and
  an arbitrary MR intensity scale per case and channel (a factor between 100 and 5,000). Separate labels that are
  not nested, smaller than ``lesions3d``'s, on a larger volume with a distracting bright rim.
* ``ct_iso``: one channel ``CT`` in Hounsfield units (int16: air −1000, fat −100, soft tissue 40, contrast-enhanced
  liver 100 and kidney 160, aorta 220, cancellous bone 400, cortical bone 1,200, bowel gas −900), isotropic 1.5 mm,
  each case its own shape (70 to 100 voxels per axis, drawn per case), the anatomy scaled to the field of view: an
  abdomen-like body (fat shell, muscle, spine), a large organ ``liver`` (several % of the voxels) and a small one
  ``kidney`` (about 0.1 %), Gaussian noise of 10 to 20 HU. One channel, a physical intensity scale (nnU-Net clips and
  z-scores CT over the dataset), isotropic voxels and case shapes that differ.
* ``mr4_thick``: four MR channels of very different scales: ``T2w`` (0 to about 4,000), ``ADC`` (mm²/s, 0 to 0.003),
  ``DWI`` (0 to 1), ``T1w`` (0 to about 400); 160 × 160 × 24 voxels of 0.8 × 0.8 × 4 mm (5:1 anisotropy, thick slices
  with partial volume across them); a pelvis-like section (fat, muscle, bones, bladder, rectum) with a ``gland``
  (about 1 % of the voxels, a bright peripheral zone on T2w) and a tiny ``lesion`` inside it (radius 2.5 to 5 mm,
  dark on T2w and ADC, bright on DWI) in about 70 % of the cases, none in the others. Four channels, scales four
  orders of magnitude apart, a label absent from some cases.
* ``mr1_iso``: one ``T1`` channel, 64 × 64 × 64 voxels of 1.2 mm, a head-like ellipsoid whose ``brain`` (one large
  label, 10 to 15 % of the voxels, lobulated) is to be told from scalp and skull; bias field, Rician noise,
  arbitrary scale. One channel, isotropic, one large label.

Partial volume: each volume is drawn on a grid finer along any axis coarser than the finest (up to 4 samples per
voxel), the clean intensities averaged and a voxel's label the most frequent among its samples (foreground winning
ties); a label drawn in a case keeps at least one voxel. Bias, noise and the intensity scale are applied on the
voxel grid afterwards. ``--scale s`` multiplies every side by ``s`` and divides every spacing by it (the same field
of view in fewer voxels, for quick tests); ``--shape`` and ``--spacing`` replace a dataset's defaults.

Case ``i`` of every dataset is drawn from ``numpy.random.default_rng([seed, i])``, so a dataset is the same for the
same arguments on any machine. The anatomy is drawn by ``tools/volume_anatomy.py``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from volume_anatomy import (
    draw_ct,
    draw_mr1,
    draw_mr2,
    draw_mr4,
    finish_ct,
    finish_mr1,
    finish_mr2,
    finish_mr4,
)

__all__ = ["DATASETS", "Spec", "draw_case", "write_dataset", "main"]

MAX_SUBSAMPLES = 4


@dataclass(frozen=True)
class Spec:
    """One dataset: its channels and labels (``dataset.json``), default geometry ``(x, y, z)`` and its drawing.

    ``draw(rng, grid, extent) -> (clean (C, D', H', W') float32, labels (D', H', W') uint8)`` paints the noise-free
    tissue on ``grid`` (``(3, D', H', W')`` mm, ``(z, y, x)``, centred on the volume's centre); ``finish(rng, clean
    (C, D, H, W)) -> image`` adds bias, noise and scale on the voxel grid and gives the stored dtype. ``shape_range``
    (optional) draws each side per case from ``[low, high]`` instead of ``shape``.
    """

    channels: tuple[str, ...]
    labels: tuple[str, ...]
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    draw: Callable
    finish: Callable
    shape_range: tuple[int, int] | None = None
    description: str = ""
    extra: dict = field(default_factory=dict)


DATASETS: dict[str, Spec] = {
    "mr2_aniso": Spec(
        ("T1", "T2"),
        ("background", "structure_a", "structure_b", "structure_c"),
        (96, 96, 64),
        (1.0, 1.0, 2.0),
        draw_mr2,
        finish_mr2,
        description="two MR contrasts, 1 x 1 x 2 mm, three small structures, bright cortex",
    ),  # fmt: skip
    "ct_iso": Spec(
        ("CT",),
        ("background", "liver", "kidney"),
        (85, 85, 85),
        (1.5, 1.5, 1.5),
        draw_ct,
        finish_ct,
        shape_range=(70, 100),
        description="CT in HU, isotropic 1.5 mm, shapes per case, a large and a small organ",
    ),  # fmt: skip
    "mr4_thick": Spec(
        ("T2w", "ADC", "DWI", "T1w"),
        ("background", "lesion", "gland"),
        (160, 160, 24),
        (0.8, 0.8, 4.0),
        draw_mr4,
        finish_mr4,
        description="four MR channels of very different scales, 4 mm slices, a tiny lesion",
    ),  # fmt: skip
    "mr1_iso": Spec(
        ("T1",),
        ("background", "brain"),
        (64, 64, 64),
        (1.2, 1.2, 1.2),
        draw_mr1,
        finish_mr1,
        description="one MR channel, isotropic 1.2 mm, one large label",
    ),  # fmt: skip
}


# ------------------------------------------------------------------------------------------------------- assembly


def _subsamples(spacing_dhw: np.ndarray) -> np.ndarray:
    """Samples per voxel along each axis: the axis's spacing over the finest, rounded, at most 4."""
    return np.clip(np.round(spacing_dhw / spacing_dhw.min()), 1, MAX_SUBSAMPLES).astype(int)


def draw_case(spec: Spec, rng: np.random.Generator, shape_xyz: Sequence[int], spacing_xyz: Sequence[float]):
    """One case of ``spec``: ``image (C, D, H, W)`` (the stored dtype) and ``labels (D, H, W)`` uint8, ``(z, y, x)``
    order, drawn at ``shape_xyz`` voxels of ``spacing_xyz`` mm (see the module docstring for partial volume)."""
    shape = np.asarray(shape_xyz[::-1], int)
    spacing = np.asarray(spacing_xyz[::-1], np.float32)
    sub = _subsamples(spacing)
    fine = shape * sub
    step = spacing / sub
    axes = [((np.arange(n) + 0.5) * s - n * s / 2).astype(np.float32) for n, s in zip(fine, step)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"))
    clean, fine_labels = spec.draw(rng, grid, (shape * spacing).astype(np.float32))
    if fine_labels.max(initial=0) >= len(spec.labels):
        raise AssertionError(f"drew label {fine_labels.max()} for {len(spec.labels)} labels")
    blocks = (shape[0], sub[0], shape[1], sub[1], shape[2], sub[2])
    clean = clean.reshape(len(clean), *blocks).mean(axis=(2, 4, 6)).astype(np.float32)
    counts = np.stack([(fine_labels == k).reshape(blocks).sum(axis=(1, 3, 5)) for k in range(len(spec.labels))])
    labels = np.argmax(counts + 0.5 * (np.arange(len(spec.labels)) > 0)[:, None, None, None], axis=0).astype(np.uint8)
    for k in range(1, len(spec.labels)):  # a label drawn in the case keeps at least one voxel
        if counts[k].any() and not (labels == k).any():
            labels[np.unravel_index(np.argmax(counts[k]), labels.shape)] = k
    return spec.finish(rng, clean), labels


def _write_nifti(array: np.ndarray, spacing_xyz: Sequence[float], path: Path) -> None:
    """A ``(D, H, W)`` array stored as ``(x, y, z)`` with the affine ``diag(spacing, 1)``."""
    affine = np.diag([*[float(s) for s in spacing_xyz], 1.0])
    image = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))


def write_dataset(
    name: str,
    out_dir: str | Path,
    cases: int = 30,
    seed: int = 0,
    scale: float = 1.0,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
) -> Path:
    """Write dataset ``name`` of :data:`DATASETS` to ``out_dir/name`` (replacing its files) and return the folder.

    ``shape``, ``spacing``: ``(x, y, z)`` replacing the dataset's defaults (a given ``shape`` also fixes the shape
    of every case); ``scale``: every side times ``scale``, every spacing divided by it (sides at least 8)."""
    if name not in DATASETS:
        raise ValueError(f"datasets: unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if int(cases) < 1:
        raise ValueError(f"cases must be >= 1, got {cases}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    for arg, value in (("shape", shape), ("spacing", spacing)):
        if value is not None and (len(value) != 3 or min(value) <= 0):
            raise ValueError(f"{arg} must be 3 positive numbers (x y z), got {value}")
    spec = DATASETS[name]
    spacing = [float(s) / scale for s in (spacing or spec.spacing)]
    root = Path(out_dir) / name
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    for old in [*(root / "imagesTr").glob("*.nii.gz"), *(root / "labelsTr").glob("*.nii.gz")]:
        old.unlink()
    for i in range(int(cases)):
        rng = np.random.default_rng([int(seed), i])
        if shape is not None:
            sides = [int(s) for s in shape]
        elif spec.shape_range is not None:
            sides = [int(s) for s in rng.integers(spec.shape_range[0], spec.shape_range[1] + 1, 3)]
        else:
            sides = list(spec.shape)
        sides = [max(8, int(round(s * scale))) for s in sides]
        image, labels = draw_case(spec, rng, sides, spacing)
        case = f"case_{i:03d}"
        for c, channel in enumerate(image):
            _write_nifti(channel, spacing, root / "imagesTr" / f"{case}_{c:04d}.nii.gz")
        _write_nifti(labels, spacing, root / "labelsTr" / f"{case}.nii.gz")
    params = {"dataset": name, "cases": int(cases), "seed": int(seed), "scale": float(scale)}
    params |= {"shape": None if shape is None else [int(s) for s in shape], "spacing_xyz": spacing}
    description = {
        "channel_names": {str(c): n for c, n in enumerate(spec.channels)},
        "labels": {n: k for k, n in enumerate(spec.labels)},
        "numTraining": int(cases),
        "file_ending": ".nii.gz",
        "name": name,
        "description": f"synthetic ({spec.description}); tools/make_volume_datasets.py",
        "detloss_generator": params,
    }
    (root / "dataset.json").write_text(json.dumps(description, indent=2) + "\n")
    return root


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="each dataset goes to OUT_DIR/<name>/")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), metavar="NAME", help=", ".join(DATASETS))
    parser.add_argument("--cases", type=int, default=30, help="cases per dataset (default 30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="sides × scale, spacings ÷ scale (default 1)")
    parser.add_argument("--shape", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"), help="voxels per case")
    parser.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"), help="mm")
    args = parser.parse_args(argv)
    unknown = [n for n in args.datasets if n not in DATASETS]
    if unknown:
        parser.error(f"--datasets: unknown {', '.join(unknown)}; known: {', '.join(DATASETS)}")
    for name in args.datasets:
        root = write_dataset(name, args.out_dir, args.cases, args.seed, args.scale, args.shape, args.spacing)
        spec = DATASETS[name]
        print(f"{root}: {args.cases} cases, channels {', '.join(spec.channels)}; labels {', '.join(spec.labels[1:])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
