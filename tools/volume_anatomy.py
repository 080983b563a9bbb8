"""The anatomy that ``tools/make_volume_datasets.py`` draws: smooth fields, shapes, partial-volume painting, MR
finishing (bias field, Rician noise, an arbitrary intensity scale) and one ``draw_*`` / ``finish_*`` pair per dataset.

A ``draw_*(rng, grid, extent)`` function takes the sample grid (``(3, D, H, W)`` mm, from the volume's centre) and
the field of view and returns the clean intensities ``(C, D, H, W)`` and the label map; ``finish_*(rng, clean)``
turns the clean intensities, averaged onto the voxel grid, into the image a scanner gives (noise, bias, scale).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

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
