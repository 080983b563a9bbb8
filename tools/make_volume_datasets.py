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
same arguments on any machine.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

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


# ---------------------------------------------------------------------------------------------------------- helpers


def smooth_field(rng: np.random.Generator, shape: Sequence[int], cells: Sequence[int]) -> np.ndarray:
    """A smooth random field of unit std on ``shape``: Gaussian noise on a ``cells`` grid, upsampled trilinearly."""
    coarse = torch.from_numpy(rng.standard_normal((1, 1, *[max(2, int(c)) for c in cells])).astype(np.float32))
    out = F.interpolate(coarse, size=tuple(int(s) for s in shape), mode="trilinear", align_corners=True)[0, 0].numpy()
    return (out - out.mean()) / (out.std() + 1e-6)


def rotation(rng: np.random.Generator, degrees: float) -> np.ndarray:
    """A random rotation matrix of at most about ``degrees`` about each axis."""
    angles = np.radians(rng.uniform(-degrees, degrees, 3))
    c, s = np.cos(angles), np.sin(angles)
    rz = np.array([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]])
    ry = np.array([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
    rx = np.array([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]])
    return (rz @ ry @ rx).astype(np.float32)


def ellipsoid(grid: np.ndarray, centre, radii, rot: np.ndarray | None = None) -> np.ndarray:
    """Approximate signed distance (mm, positive inside) to an ellipsoid of ``radii`` (z, y, x) mm at ``centre``,
    its axes turned by ``rot``: ``(1 − ‖q / radii‖) · min(radii)`` with ``q`` the point in the ellipsoid's frame."""
    q = grid - np.asarray(centre, np.float32).reshape(3, 1, 1, 1)
    if rot is not None:
        q = np.einsum("ji,j...->i...", rot, q)
    r = np.sqrt(sum((q[i] / float(radii[i])) ** 2 for i in range(3)))
    return ((1.0 - r) * float(min(radii))).astype(np.float32)


def cylinder(grid: np.ndarray, centre_yx, radii_yx) -> np.ndarray:
    """Approximate signed distance (mm) to an elliptic cylinder along z through ``centre_yx`` of ``radii_yx``."""
    r = np.sqrt(((grid[1] - centre_yx[0]) / radii_yx[0]) ** 2 + ((grid[2] - centre_yx[1]) / radii_yx[1]) ** 2)
    return ((1.0 - r) * float(min(radii_yx))).astype(np.float32)


def coverage(distance: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume coverage in [0, 1] of a signed distance (mm), ramped over ``width`` mm."""
    return np.clip(0.5 + distance / width, 0.0, 1.0).astype(np.float32)


def paint(image: np.ndarray, cover: np.ndarray, values: Sequence[float]) -> None:
    """``image (C, ...) ← image · (1 − cover) + value · cover`` per channel, in place."""
    for c, v in enumerate(values):
        image[c] += (float(v) - image[c]) * cover


def rician(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    """The magnitude of ``image`` plus complex Gaussian noise of std ``sigma`` (MR magnitude images)."""
    real = image + rng.normal(0.0, sigma, image.shape).astype(np.float32)
    imag = rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.sqrt(real * real + imag * imag).astype(np.float32)


def place(rng: np.random.Generator, region: Callable, radius: float, taken: list, tries: int = 200) -> np.ndarray:
    """A centre (mm) drawn by ``region(rng)`` at least ``radius`` + 2 mm from each ``(centre, radius)`` in ``taken``
    (appended); after ``tries`` failures the last draw is kept."""
    centre = region(rng)
    for _ in range(tries):
        if all(np.linalg.norm(centre - c) >= radius + r + 2.0 for c, r in taken):
            break
        centre = region(rng)
    taken.append((centre, radius))
    return centre


def in_ellipsoid(radii) -> Callable:
    """A sampler of points uniformly inside an ellipsoid of ``radii`` (z, y, x) mm centred at 0."""
    radii = np.asarray(radii, np.float32)

    def sample(rng: np.random.Generator) -> np.ndarray:
        while True:
            p = rng.uniform(-1.0, 1.0, 3)
            if (p * p).sum() <= 1.0:
                return (p * radii).astype(np.float32)

    return sample


def mr_finish(
    rng: np.random.Generator,
    clean: np.ndarray,
    noise: Sequence[float],
    scale: Sequence[tuple[float, float]],
    bias: Sequence[float],
) -> np.ndarray:
    """Per channel: ``clean · exp(bias · field) · k`` with Rician noise of ``noise · k``, ``k`` log-uniform in
    ``scale``; float32."""
    out = np.empty_like(clean)
    cells = [max(2, s // 24) for s in clean.shape[1:]]
    for c in range(len(clean)):
        field_c = np.exp(float(bias[c]) * smooth_field(rng, clean.shape[1:], cells)) if bias[c] else 1.0
        low, high = scale[c]
        k = math.exp(rng.uniform(math.log(low), math.log(high))) if high > low else low
        out[c] = rician(rng, clean[c] * field_c, float(noise[c])) * k
    return out


# ------------------------------------------------------------------------------------------------------------ mr2


def draw_mr2(rng: np.random.Generator, grid: np.ndarray, extent: np.ndarray):
    """Head with scalp, skull, bright-on-T2 cortex, white matter, ventricles and three small structures."""
    head = extent / 2 * np.array([0.88, 0.88, 0.80]) * rng.uniform(0.92, 1.04, 3)
    centre = rng.uniform(-3, 3, 3).astype(np.float32)
    rot = rotation(rng, 8)
    d = ellipsoid(grid, centre, head, rot) + 1.5 * smooth_field(rng, grid.shape[1:], [5, 5, 5])
    image = np.zeros((2, *grid.shape[1:]), np.float32)
    texture = 0.04 * smooth_field(rng, grid.shape[1:], [8, 10, 10])
    paint(image, coverage(d, 1.0), (0.70, 0.45))  # scalp
    paint(image, coverage(d - 3.0, 1.0), (0.06, 0.05))  # skull
    paint(image, coverage(d - 6.5, 1.0), (0.48, 0.82))  # cortex: the bright rim on T2
    brain = d - 10.0
    paint(image, coverage(brain, 1.5), (0.72, 0.40))  # white matter
    image[:, brain > 0] += texture[brain > 0]
    inner = (head - 10.0) * 0.5
    taken = []  # (centre relative to the head's, radius) of what the structures must not overlap
    for side in (-1, 1):  # ventricles beside the midline
        offset = np.array([0.1 * inner[0], -0.1 * inner[1], side * 0.18 * inner[2]], np.float32)
        radii = inner * np.array([0.45, 0.55, 0.16], np.float32)
        paint(image, coverage(ellipsoid(grid, centre + offset, radii, rot), 1.0), (0.14, 1.0))
        taken.append((offset, float(radii.max())))
    labels = np.zeros(grid.shape[1:], np.uint8)
    region = in_ellipsoid((head - 10.0) * 0.55)
    structures = [  # label, radii (z, y, x) mm, (T1, T2)
        (1, np.array([6.0, 7.5, 6.5]), (0.97, 0.22)),
        (2, np.array([4.5, 5.5, 5.0]), (0.30, 0.85)),
        (3, np.array([3.5, 8.0, 3.5]), (0.24, 0.16)),
    ]
    for label, radii, values in structures:
        radii = radii * rng.uniform(0.85, 1.15, 3)
        c = centre + place(rng, region, float(radii.max()), taken)
        s = ellipsoid(grid, c, radii, rotation(rng, 40)) + 0.6 * smooth_field(rng, grid.shape[1:], [6, 6, 6])
        paint(image, coverage(s, 1.0), values)
        labels[s > 0] = label
    return image, labels


def finish_mr2(rng, clean):
    return mr_finish(rng, clean, noise=(0.035, 0.04), scale=[(100, 5000)] * 2, bias=(0.25, 0.25))


# ------------------------------------------------------------------------------------------------------------- ct


def draw_ct(rng: np.random.Generator, grid: np.ndarray, extent: np.ndarray):
    """Abdomen-like section in HU: fat, muscle, spine, aorta, gas, a large liver and a small kidney."""
    half = extent / 2
    body = half[1:] * rng.uniform(0.78, 0.9, 2)  # (y, x) radii of the body, along the whole z
    shift = rng.uniform(-0.04, 0.04, 2) * half[1:]
    image = np.full((1, *grid.shape[1:]), -1000.0, np.float32)
    d_body = cylinder(grid, shift, body) + 1.0 * smooth_field(rng, grid.shape[1:], [3, 6, 6])
    paint(image, coverage(d_body, 1.5), (-100.0,))  # subcutaneous fat
    fat = 0.08 * body.min() * rng.uniform(0.7, 1.3)
    d_inner = d_body - fat
    paint(image, coverage(d_inner, 1.5), (40.0,))  # muscle and soft tissue
    image[0] += 8.0 * smooth_field(rng, grid.shape[1:], [6, 8, 8]) * (d_inner > 0)
    spine_c = shift + np.array([0.55 * body[0], 0.0], np.float32)  # posterior: +y
    spine_r = np.array([0.16, 0.13]) * body.min()
    d_spine = cylinder(grid, spine_c, spine_r)
    paint(image, coverage(d_spine, 1.5), (1200.0,))  # cortical bone
    paint(image, coverage(d_spine - 2.0, 1.5), (400.0,))  # cancellous bone
    aorta_c = spine_c - np.array([spine_r[0] + 0.08 * body[0], 0.0], np.float32)
    paint(image, coverage(cylinder(grid, aorta_c, [0.06 * body.min()] * 2), 1.5), (220.0,))
    labels = np.zeros(grid.shape[1:], np.uint8)
    liver_r = np.array([0.55 * half[0], 0.45 * body[0], 0.40 * body[1]]) * rng.uniform(0.85, 1.1, 3)
    liver_c = np.array(
        [rng.uniform(-0.1, 0.1) * half[0], shift[0] - 0.1 * body[0], shift[1] - 0.38 * body[1]], np.float32
    )
    d_liver = ellipsoid(grid, liver_c, liver_r, rotation(rng, 12)) + 2.0 * smooth_field(rng, grid.shape[1:], [4, 5, 5])
    d_liver = np.minimum(d_liver, d_inner - 2.0)
    paint(image, coverage(d_liver, 1.5), (100.0,))
    image[0] += 6.0 * smooth_field(rng, grid.shape[1:], [10, 12, 12]) * (d_liver > 0)
    labels[d_liver > 0] = 1
    for _ in range(int(rng.integers(1, 4))):  # bowel gas on the other side
        gy, gx = shift[0] + rng.uniform(-0.5, 0.1) * body[0], rng.uniform(0.1, 0.6) * body[1]
        gc = np.array([rng.uniform(-0.6, 0.6) * half[0], gy, gx])
        paint(image, coverage(ellipsoid(grid, gc, rng.uniform(4, 9, 3)), 1.5), (-900.0,))
    kidney_r = np.array([14.0, 7.0, 9.0]) * rng.uniform(0.8, 1.2, 3)
    kidney_c = np.array(
        [rng.uniform(-0.3, 0.3) * half[0], spine_c[0] - 0.1 * body[0], spine_c[1] + 2.2 * spine_r[1] + kidney_r[2]],
        np.float32,
    )
    d_kidney = ellipsoid(grid, kidney_c, kidney_r, rotation(rng, 20))
    paint(image, coverage(d_kidney, 1.5), (160.0,))
    labels[d_kidney > 0] = 2
    return image, labels


def finish_ct(rng, clean):
    noisy = clean + rng.normal(0.0, rng.uniform(10.0, 20.0), clean.shape).astype(np.float32)
    return np.clip(np.round(noisy), -1024, 3071).astype(np.int16)


# ------------------------------------------------------------------------------------------------------------ mr4

#: (T2w, ADC in 10⁻³ mm²/s, DWI, T1w), before each channel's scale
PELVIS = {
    "fat": (0.70, 0.30, 0.05, 0.90),
    "muscle": (0.22, 1.40, 0.15, 0.45),
    "bone": (0.45, 0.55, 0.05, 0.85),
    "bladder": (1.00, 2.80, 0.04, 0.12),
    "rectum": (0.18, 1.00, 0.30, 0.30),
    "gland": (0.48, 1.45, 0.25, 0.42),
    "peripheral": (0.82, 1.90, 0.18, 0.40),
    "lesion": (0.22, 0.75, 0.75, 0.40),
}


def draw_mr4(rng: np.random.Generator, grid: np.ndarray, extent: np.ndarray, p_lesion: float = 0.7):
    """Pelvis-like section: fat, muscle, bones, bladder, rectum, a gland with a tiny lesion in most cases."""
    lesion = rng.random() < p_lesion
    half = extent / 2
    body = half[1:] * rng.uniform(0.82, 0.92, 2)
    image = np.zeros((4, *grid.shape[1:]), np.float32)
    d_body = cylinder(grid, (0.0, 0.0), body) + 1.0 * smooth_field(rng, grid.shape[1:], [3, 8, 8])
    paint(image, coverage(d_body, 1.0), PELVIS["fat"])
    paint(image, coverage(d_body - 0.12 * body.min(), 1.0), PELVIS["muscle"])
    for side in (-1, 1):  # femoral heads / pelvic bones at the sides
        bc = (0.05 * body[0], side * 0.62 * body[1])
        paint(image, coverage(cylinder(grid, bc, [0.22 * body[0], 0.14 * body[1]]), 1.0), PELVIS["bone"])
    gland_r = np.array([16.0, 15.0, 20.0]) * rng.uniform(0.85, 1.15, 3)
    gland_c = np.array([rng.uniform(-0.1, 0.1) * half[0], rng.uniform(-3, 3), rng.uniform(-4, 4)], np.float32)
    bladder_c = gland_c + np.array([0.0, -(gland_r[1] + 14.0), 0.0], np.float32)
    bladder_r = np.array([22.0, 14.0, 26.0]) * rng.uniform(0.8, 1.2, 3)
    paint(image, coverage(ellipsoid(grid, bladder_c, bladder_r), 1.0), PELVIS["bladder"])
    rectum_c = (gland_c[1] + gland_r[1] + 10.0, gland_c[2])
    paint(image, coverage(cylinder(grid, rectum_c, [9.0, 12.0]), 1.0), PELVIS["rectum"])
    rot = rotation(rng, 10)
    d_gland = ellipsoid(grid, gland_c, gland_r, rot) + 0.8 * smooth_field(rng, grid.shape[1:], [4, 6, 6])
    paint(image, coverage(d_gland, 1.0), PELVIS["peripheral"])
    paint(image, coverage(d_gland - 4.0, 1.0), PELVIS["gland"])
    image[:, d_gland > 4.0] *= 1.0 + 0.06 * smooth_field(rng, grid.shape[1:], [6, 16, 16])[d_gland > 4.0]
    labels = np.zeros(grid.shape[1:], np.uint8)
    labels[d_gland > 0] = 2
    if lesion:
        radius = rng.uniform(2.5, 5.0)
        lc = gland_c + in_ellipsoid(np.maximum(gland_r - radius - 2.0, 1.0))(rng)
        d_lesion = ellipsoid(grid, lc, radius * rng.uniform(0.8, 1.25, 3))
        paint(image, coverage(d_lesion, 1.0), PELVIS["lesion"])
        labels[d_lesion > 0] = 1
    return image, labels


def finish_mr4(rng, clean):
    scale = [(2500.0, 4000.0), (0.95e-3, 1.05e-3), (0.6, 1.0), (200.0, 400.0)]
    return mr_finish(rng, clean, noise=(0.03, 0.05, 0.06, 0.03), scale=scale, bias=(0.2, 0.0, 0.15, 0.2))


# ------------------------------------------------------------------------------------------------------------ mr1


def draw_mr1(rng: np.random.Generator, grid: np.ndarray, extent: np.ndarray):
    """Head of scalp, skull and a lobulated brain (the one label) with dark CSF spaces inside."""
    head = extent / 2 * 0.86 * rng.uniform(0.9, 1.05, 3)
    centre = rng.uniform(-2, 2, 3).astype(np.float32)
    rot = rotation(rng, 10)
    d = ellipsoid(grid, centre, head, rot)
    image = np.zeros((1, *grid.shape[1:]), np.float32)
    paint(image, coverage(d, 1.0), (0.75,))  # scalp (fat: bright on T1)
    paint(image, coverage(d - 4.0, 1.0), (0.08,))  # skull
    paint(image, coverage(d - 6.0, 1.0), (0.20,))  # CSF around the brain
    brain = d - 8.0 + 2.5 * smooth_field(rng, grid.shape[1:], [6, 6, 6])
    paint(image, coverage(brain, 1.0), (0.62,))
    image[0] += 0.05 * smooth_field(rng, grid.shape[1:], [10, 10, 10]) * (brain > 0)
    paint(image, coverage(ellipsoid(grid, centre, (head - 8.0) * [0.3, 0.35, 0.12], rot), 1.0), (0.20,))
    labels = (brain > 0).astype(np.uint8)
    return image, labels


def finish_mr1(rng, clean):
    return mr_finish(rng, clean, noise=(0.04,), scale=[(50, 3000)], bias=(0.3,))


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
