"""Lesion-wise Dice and HD95 as the BraTS 2023 challenges define them.

Source: the challenges' evaluation code (Saluja et al., ``rachitsaluja/BraTS-2023-Metrics``, ``eval.py``), for one
binary mask (a region such as the whole tumour) of one case:

1. **Lesions.** The ground truth's connected components (26-connectivity in 3D, 8 in 2D) whose dilations touch are
   one lesion: the ground truth is dilated ``dilation`` times by the structuring element of 18-connectivity
   (``scipy.ndimage.generate_binary_structure(3, 2)``; the full 3 × 3 square in 2D), the dilated mask's components
   (26-connectivity) are the lesions, and a lesion's voxels are the ground-truth voxels inside its component. The
   ground truth itself is not changed.
2. **Matching.** The prediction's connected components (26-connectivity) that overlap a lesion's dilation are that
   lesion's match (a component may match several lesions: two lesions merged by one prediction both count it whole).
3. **Per lesion**: Dice between the lesion and the union of its matched components, and the 95th-percentile
   Hausdorff distance between them in mm with the case's spacing; a lesion without a match scores Dice 0 and HD95
   the penalty (374 mm, the challenge's value for an infinite distance).
4. **Small lesions**: lesions of volume ``<= min_volume`` mm³ (50 for the glioma, sub-Saharan and paediatric
   challenges, 2 for metastases) are left out of both sums and counts; the prediction components they match are
   not false positives.
5. **False positives**: the prediction's components that match no lesion, each scoring Dice 0 and HD95 the penalty.
6. **Score**: ``lesion Dice = Σ_lesions Dice / (L + FP)`` and ``lesion HD95 = (Σ_lesions HD95 + 374 · FP) / (L + FP)``,
   with ``L`` the lesions kept; where ``L + FP = 0`` (an empty ground truth, or only small lesions, and no false
   positive) the case scores Dice 1 and HD95 0, as the challenge does.

``dilation=3, min_volume=50`` are the glioma challenge's (``BraTS-GLI``); meningioma uses ``dilation=1``, metastases
``dilation=1, min_volume=2``. One departure: the HD95 of a lesion is MONAI's ``compute_hausdorff_distance`` (the
95th percentile of the boundary voxels' distances, each direction, the larger of the two), where the challenge uses
DeepMind's ``surface-distance`` (surface elements weighted by their area); the two agree on the penalty, on
identical masks (0) and on distances between parallel faces.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance
from scipy import ndimage

__all__ = ["lesion_wise", "BRATS_PENALTY"]

#: the challenges' HD95 in mm for a missed lesion or a false-positive component
BRATS_PENALTY = 374.0


def _as_bool(mask, name: str) -> np.ndarray:
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if array.ndim not in (2, 3):
        raise ValueError(f"{name} must be one 2D or 3D mask, got shape {array.shape}")
    return array.astype(bool)


def _hd(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float], percentile: float) -> float:
    """MONAI's symmetric percentile Hausdorff distance of two non-empty masks, on their common bounding box plus a
    margin of one voxel (the distances between boundary voxels do not depend on what lies outside it)."""
    where = np.argwhere(pred | target)
    low, high = np.maximum(where.min(0) - 1, 0), where.max(0) + 2
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    pad = [(1 if a == 0 else 0, 1 if b > n else 0) for a, b, n in zip(low, high, pred.shape)]
    p, t = (np.pad(m[box], pad) for m in (pred, target))
    as_input = lambda m: torch.from_numpy(m)[None, None].float()  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = compute_hausdorff_distance(
            as_input(p), as_input(t), include_background=True, percentile=percentile, spacing=list(spacing)
        )
    return float(hd.item())


def lesion_wise(
    pred,
    target,
    spacing: Sequence[float] | None = None,
    dilation: int = 3,
    min_volume: float = 50.0,
    percentile: float = 95.0,
    penalty: float = BRATS_PENALTY,
) -> tuple[float, float]:
    """The BraTS 2023 lesion-wise ``(Dice, HD95)`` of one case and one binary mask (see the module docstring).

    Args:
        pred, target: binary masks of the same 2D or 3D shape (tensors or arrays; nonzero is foreground).
        spacing: the voxel size in mm per axis (the lesion volumes and distances use it); ``None``: 1 mm.
        dilation: iterations of the dilation that groups ground-truth components into lesions and matches them
            (an integer >= 0; 0 matches by overlap alone).
        min_volume: lesions of at most this volume in mm³ are left out.
        percentile: of the Hausdorff distance.
        penalty: the HD95 of a missed lesion or a false-positive component, in mm.
    """
    p, t = _as_bool(pred, "pred"), _as_bool(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have the same shape, got {p.shape} and {t.shape}")
    spacing = [1.0] * t.ndim if spacing is None else [float(s) for s in spacing]
    if len(spacing) != t.ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be {t.ndim} positive numbers (mm), got {spacing}")
    if not isinstance(dilation, int) or dilation < 0:
        raise ValueError(f"dilation must be an integer >= 0, got {dilation!r}")
    if not min_volume >= 0 or not penalty >= 0:
        raise ValueError(f"min_volume and penalty must be >= 0, got {min_volume} and {penalty}")
    full = ndimage.generate_binary_structure(t.ndim, t.ndim)  # 26-connectivity (8 in 2D)
    grow = ndimage.generate_binary_structure(t.ndim, min(2, t.ndim))  # 18-connectivity (8 in 2D)
    # scipy dilates until nothing changes when iterations=0: no dilation is the mask itself
    dilated = ndimage.binary_dilation(t, grow, iterations=dilation) if dilation else t
    zones, count = ndimage.label(dilated, full)  # a lesion's dilation is its zone: dilation of a union is the union
    components, _ = ndimage.label(p, full)
    voxel = float(np.prod(spacing))
    dice_sum, hd_sum, kept, matched = 0.0, 0.0, 0, set()
    for zone in range(1, count + 1):
        in_zone = zones == zone
        lesion = t & in_zone
        hits = np.unique(components[in_zone])
        hits = hits[hits > 0]
        matched.update(int(h) for h in hits)
        if lesion.sum() * voxel <= min_volume:
            continue
        kept += 1
        if len(hits) == 0:
            hd_sum += penalty
            continue
        found = np.isin(components, hits)
        dice_sum += 2.0 * float((found & lesion).sum()) / float(found.sum() + lesion.sum())
        hd_sum += _hd(found, lesion, spacing, percentile)
    false_positives = int(components.max()) - len(matched)
    total = kept + false_positives
    if total == 0:
        return 1.0, 0.0
    return dice_sum / total, (hd_sum + penalty * false_positives) / total
