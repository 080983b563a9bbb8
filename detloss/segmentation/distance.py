"""Distance maps of segmentation masks, for the distance-weighted losses (:mod:`detloss.losses.boundary`).

One Euclidean distance transform per mask, in the units of the voxel spacing (mm for scans), through MONAI's
``distance_transform_edt``: scipy's exact transform on the CPU, cuCIM's on a CUDA device when cuCIM is installed.
Each call transforms all the masks of a sample at once (a loop over samples, never over voxels).

Conventions, for a mask ``M`` (a class of the target, or of the thresholded prediction) and a voxel ``x``, with
``d(x, A)`` the distance between voxel centres from ``x`` to the nearest voxel of ``A``:

* :func:`signed_distance`: ``d(x, M)`` outside ``M`` (positive), ``−d(x, ∁M)`` inside (negative): Kervadec et
  al.'s sign (negative inside). A boundary voxel is one voxel's spacing from the other side, so no voxel is 0;
* :func:`boundary_distance`: its absolute value, each voxel's distance to the other side of the boundary (what
  MONAI's ``HausdorffDTLoss`` computes, there with unit spacing);
* a mask without boundary (empty, or every voxel) has no distances: they are 0, and so are its loss terms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.transforms.utils import distance_transform_edt
from torch import Tensor

__all__ = ["signed_distance", "boundary_distance", "mask_distance", "class_masks"]


def class_masks(labels: Tensor, num_classes: int) -> Tensor:
    """Class indices ``(B, *spatial)`` -> one boolean mask per class ``(B, C, *spatial)``; a label outside
    ``[0, C)`` (``ignore_index``) belongs to no class."""
    classes = torch.arange(num_classes, device=labels.device).view(1, -1, *([1] * (labels.ndim - 1)))
    return labels.unsqueeze(1) == classes


def _spacings(spacing: Tensor | Sequence[float] | None, batch: int, dims: int) -> list[list[float] | None]:
    """One spacing per sample: ``None`` (unit), one ``(dims,)`` sequence for all, or ``(B, dims)``."""
    if spacing is None:
        return [None] * batch
    s = torch.as_tensor(spacing, dtype=torch.float64).cpu()
    if s.ndim == 1:
        s = s.expand(batch, -1)
    if s.shape != (batch, dims):
        raise ValueError(f"spacing must have shape ({dims},) or ({batch}, {dims}), got {tuple(s.shape)}")
    if not bool((s > 0).all()) or not bool(torch.isfinite(s).all()):
        raise ValueError(f"spacing must be finite and > 0, got {s.tolist()}")
    return s.tolist()


@torch.no_grad()
def mask_distance(masks: Tensor, spacing: Tensor | Sequence[float] | None = None, signed: bool = True) -> Tensor:
    """Distance maps ``(B, K, *spatial)`` float32 of boolean masks ``(B, K, *spatial)`` (2D or 3D).

    Args:
        masks: boolean (or 0/1) masks; ``K`` of them per sample.
        spacing: the voxel spacing along the spatial axes: ``None`` (1), one sequence for all samples, or a
            ``(B, dims)`` tensor.
        signed: negative inside (:func:`signed_distance`), or the absolute value (:func:`boundary_distance`).
    """
    masks = masks.bool()
    batch, dims = masks.shape[0], masks.ndim - 2
    if dims not in (2, 3):
        raise ValueError(f"masks must be (B, K, H, W) or (B, K, D, H, W), got {tuple(masks.shape)}")
    out = torch.zeros(masks.shape, dtype=torch.float32, device=masks.device)
    flat = masks.flatten(2)
    bounded = (flat.any(2) & ~flat.all(2)).cpu()  # masks with a boundary; the others keep 0
    for b, sampling in enumerate(_spacings(spacing, batch, dims)):
        channels = bounded[b].nonzero().flatten().tolist()
        if not channels:
            continue
        inside = masks[b, channels]
        to_outside = distance_transform_edt(inside, sampling=sampling)  # inside: distance to the nearest outside
        to_inside = distance_transform_edt(~inside, sampling=sampling)  # outside: distance to the nearest inside
        value = to_inside - to_outside if signed else to_inside + to_outside
        out[b, channels] = torch.as_tensor(value, dtype=torch.float32, device=masks.device)
    return out


def signed_distance(labels: Tensor, num_classes: int, spacing: Tensor | Sequence[float] | None = None) -> Tensor:
    """Signed distance map ``(B, C, *spatial)`` of each class of class indices ``(B, *spatial)``: negative inside,
    positive outside, in the units of ``spacing``; 0 for a class without boundary. Voxels of ``ignore_index``
    (any label outside ``[0, C)``) count as outside every class."""
    return mask_distance(class_masks(labels, num_classes), spacing, signed=True)


def boundary_distance(labels: Tensor, num_classes: int, spacing: Tensor | Sequence[float] | None = None) -> Tensor:
    """Each voxel's distance to the boundary of each class, ``|signed_distance|``."""
    return mask_distance(class_masks(labels, num_classes), spacing, signed=False)
