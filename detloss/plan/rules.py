"""nnU-Net's planning rules on a fingerprint: target spacing, normalisation, patch size and network topology.

Sources: Isensee et al., *nnU-Net*, Nature Methods 2021 (the "rule-based parameters" of its Fig. 2 and the
supplement), and nnU-Net v2's default experiment planner. The rules, in detloss's words:

* **Target spacing** (:func:`target_spacing`): the median spacing of the cases; when the coarsest axis is more than
  3 times the coarsest of the others *and* holds fewer than a third of the voxels of the shortest other axis (a
  stack of thick slices), its spacing is the 10th percentile of the cases' spacings along it instead (not finer
  than the other axes).
* **Normalisation** (:func:`normalisation`): by the channel's name in ``dataset.json`` (any case), as nnU-Net v2
  maps it: ``CT`` is clipped to the 0.5 and 99.5 percentiles of the dataset's foreground intensities and z-scored
  with the foreground's mean and std; ``noNorm`` is left as it is; ``rescale_to_0_1`` is rescaled to [0, 1] per
  case; ``rgb_to_0_1`` is divided by 255; every other channel (``zscore``, ``T1``, ``FLAIR``, …) is z-scored per
  case, inside the non-zero region only when cropping to it removes a quarter of the volume or more (the median
  case), and is 0 outside it.
* **Patch size** (:func:`initial_patch`): a cube of 256³ voxels' worth of physical extent, shaped by the spacing
  (``1 / spacing`` aspect), then clipped to the median shape of the cases at the target spacing.
* **Topology** (:func:`topology`): poolings per axis and kernel sizes by :func:`plan_stages` (an axis
  is pooled only while its spacing is less than twice the finest of the axes still poolable and its feature map
  keeps 8 voxels, a pooled side rounded up; a lone axis needs 12; a coarse axis gets kernel 1 until the others
  catch up), as many poolings as the patch allows (nnU-Net v2 sets no cap); the patch is then rounded up to a
  multiple of the poolings.
* **Shrinking** (:func:`shrink_patch`): where a recipe is too large for the budget, the axis whose patch is largest
  relative to the median shape (of equals, the last) loses one pooling multiple, recomputed for the smaller patch
  so that no valid size is skipped (nnU-Net's loop under its GPU-memory estimate).

Where detloss departs, it says so in :mod:`detloss.plan.budget`: on a CPU the budget is time, not memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .fingerprint import VolumeFingerprint

__all__ = [
    "ANISOTROPY",
    "plan_stages",
    "MIN_FEATURE",
    "target_spacing",
    "normalisation",
    "initial_patch",
    "topology",
    "shrink_patch",
]

ANISOTROPY = 3.0
MIN_FEATURE = 4
"""The smallest side of a pooled feature map (nnU-Net's ``featuremap_min_edge_length``)."""


def plan_stages(
    spacing: Sequence[float], depth: int, patch_size: Sequence[int] | None = None, min_size: int = 4
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """The kernel size of each of the ``depth + 1`` stages and the pooling factors between them (``depth``).

    Raises ``ValueError`` when the patch is too small for ``depth`` poolings (no axis left to pool at a stage).
    """
    spacing = [float(s) for s in spacing]
    size = None if patch_size is None else [int(s) for s in patch_size]
    dims = len(spacing)
    kernel = [3 if s / min(spacing) < 2 else 1 for s in spacing]
    kernels, pools = [tuple(kernel)], []
    for stage in range(depth):
        poolable = [a for a in range(dims) if size is None or size[a] >= 2 * min_size]
        if not poolable:
            raise ValueError(
                f"patch_size {tuple(patch_size)} is too small for depth {depth}: after {stage} poolings no axis keeps "
                f"{2 * min_size} voxels to pool; use a larger patch or a smaller depth"
            )
        finest = min(spacing[a] for a in poolable)
        pool = [2 if a in poolable and spacing[a] / finest < 2 else 1 for a in range(dims)]
        lone = [a for a in range(dims) if pool[a] == 2]
        if size is not None and len(lone) == 1 and size[lone[0]] < 3 * min_size:
            raise ValueError(
                f"patch_size {tuple(patch_size)} is too small for depth {depth}: after {stage} poolings only one axis "
                f"is left to pool and it keeps fewer than {3 * min_size} voxels; use a larger patch or a smaller depth"
            )
        spacing = [s * p for s, p in zip(spacing, pool)]
        if size is not None:
            size = [-(-s // p) for s, p in zip(size, pool)]  # rounded up, as nnU-Net counts a pooled side
        kernel = [3 if k == 3 or s / min(spacing) < 2 else 1 for k, s in zip(kernel, spacing)]
        pools.append(tuple(pool))
        kernels.append(tuple(kernel))
    return kernels, pools


def target_spacing(fingerprint: VolumeFingerprint) -> tuple[float, float, float]:
    """The spacing every case is resampled to (see the module docstring), ``(D, H, W)`` mm."""
    spacings, sizes = fingerprint.spacings, fingerprint.cropped_shapes.astype(np.float64)
    target = np.percentile(spacings, 50, axis=0)
    size = np.percentile(sizes, 50, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    aniso_spacing = target[worst] > ANISOTROPY * max(target[others])
    aniso_voxels = size[worst] * ANISOTROPY < min(size[others])
    if aniso_spacing and aniso_voxels:
        low = float(np.percentile(spacings[:, worst], 10))
        target[worst] = max(low, max(target[others]) + 1e-5) if low < max(target[others]) else low
    return tuple(float(s) for s in target)


NAMED_SCHEMES = {"nonorm": "none", "rescale_to_0_1": "rescale_to_0_1", "rgb_to_0_1": "rgb_to_0_1"}
"""Channel names (casefolded) that nnU-Net v2 normalises by a scheme without statistics, and detloss's scheme."""


def normalisation(fingerprint: VolumeFingerprint) -> list[dict]:
    """One normalisation per channel, by its name (see the module docstring): ``{"scheme": "ct", "clip": [low,
    high], "mean", "std"}``, ``{"scheme": "none"}``, ``{"scheme": "rescale_to_0_1"}``, ``{"scheme": "rgb_to_0_1"}``
    or ``{"scheme": "zscore", "nonzero_mask": bool}`` (:func:`detloss.data.preprocess.normalise` applies them)."""
    use_mask = fingerprint.median_relative_size_after_cropping < 0.75
    schemes = []
    for name, stats in zip(fingerprint.channel_names, fingerprint.intensities):
        key = name.strip().casefold()
        if key in NAMED_SCHEMES:
            schemes.append({"scheme": NAMED_SCHEMES[key]})
        elif key == "ct":
            if stats["p00_5"] == stats["p99_5"]:
                raise ValueError(
                    f"channel {name!r} is CT, but the dataset has no foreground intensities to clip it to (no case "
                    "holds a foreground label, or it is constant); give data.normalization"
                )
            std = stats["std"] if stats["std"] > 1e-8 else 1.0
            schemes.append(
                {"scheme": "ct", "clip": [stats["p00_5"], stats["p99_5"]], "mean": stats["mean"], "std": std}
            )
        else:
            schemes.append({"scheme": "zscore", "nonzero_mask": bool(use_mask)})
    return schemes


def initial_patch(spacing: Sequence[float], median_shape: Sequence[int], voxels: float = 256.0**3) -> list[int]:
    """A patch of ``voxels`` voxels shaped by ``1 / spacing``, clipped to ``median_shape``."""
    inverse = 1.0 / np.asarray(spacing, dtype=np.float64)
    patch = inverse * (voxels / np.prod(inverse)) ** (1 / 3)
    return [int(min(round(p), m)) for p, m in zip(patch, median_shape)]


def topology(
    spacing: Sequence[float], patch: Sequence[int], max_depth: int | None = None
) -> tuple[int, list[int], list, list]:
    """``(depth, patch, kernels, pools)``: the most poolings (up to ``max_depth``; ``None``: as many as the patch
    allows, as nnU-Net v2) that ``patch`` allows with feature maps of at least :data:`MIN_FEATURE` voxels, and the
    patch rounded up to a multiple of them."""
    patch = [max(int(p), 1) for p in patch]
    depth, kernels, pools = 0, *plan_stages(spacing, 0, patch, MIN_FEATURE)
    most = max(patch).bit_length() if max_depth is None else int(max_depth)  # a side halves at most this often
    for d in range(1, most + 1):
        try:
            k, p = plan_stages(spacing, d, patch, MIN_FEATURE)
        except ValueError:
            break
        if p and all(f == 1 for f in p[-1]):
            break
        depth, kernels, pools = d, k, p
    multiple = [math.prod(p[a] for p in pools) for a in range(3)]
    patch = [int(math.ceil(s / m) * m) for s, m in zip(patch, multiple)]
    return depth, patch, kernels, pools


def shrink_patch(patch: Sequence[int], median_shape: Sequence[int], spacing: Sequence[float]) -> list[int] | None:
    """``patch`` one step smaller by nnU-Net's shrinking step, or ``None`` when no axis can shrink.

    The axis whose patch is largest relative to ``median_shape`` shrinks (of equals, the last, as nnU-Net's
    ``argsort()[-1]``), by the pooling multiple of the patch that one multiple of its current topology smaller would
    have: from 128 (five poolings, a multiple of 32) to 112, not 96, so that no valid size is skipped. An axis that
    would keep fewer than ``2 * MIN_FEATURE`` voxels does not shrink; the next largest does.
    """
    patch = [int(p) for p in patch]
    relative = np.array([p / max(m, 1) for p, m in zip(patch, median_shape)], dtype=np.float64)
    order = np.lexsort((np.arange(len(patch)), relative))[::-1]  # largest first; of equals, the last axis first
    multiple = _multiple(spacing, patch)
    for axis in order:
        trial = list(patch)
        trial[axis] -= multiple[axis]
        if trial[axis] < 2 * MIN_FEATURE:
            continue
        smaller = list(patch)
        smaller[axis] -= _multiple(spacing, trial)[axis]
        if smaller[axis] >= 2 * MIN_FEATURE:
            return smaller
    return None


def _multiple(spacing: Sequence[float], patch: Sequence[int]) -> list[int]:
    """What each side of ``patch`` must be divisible by for the poolings :func:`topology` gives it."""
    _, _, _, pools = topology(spacing, patch)
    return [math.prod(p[a] for p in pools) for a in range(len(patch))]
