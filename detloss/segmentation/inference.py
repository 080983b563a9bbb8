"""Sliding-window inference over whole volumes, through MONAI's ``sliding_window_inference`` (the medical
ecosystem's implementation; nnU-Net's predictor does the same).

Windows of the training patch size overlap by ``overlap`` (a fraction of the window along each axis); each window's
logits are weighted by a Gaussian centred on the window (``sigma_scale = 0.125`` of its size, MONAI's default and
nnU-Net's 1/8) and the weighted sum is divided by the summed weights, so that the windows' borders, where a network
sees the least context, count the least. A volume smaller than the window along an axis is padded (zeros, the mean of
a z-scored channel) and cropped back. The model must return one tensor of logits in evaluation (:class:`UNet3D` does:
its deep supervision outputs exist only in training).

Mirroring test-time augmentation (:func:`mirror_average`, ``tta=True``) follows nnU-Net v2's predictor
(``nnUNetPredictor._internal_maybe_mirror_and_predict``): each window is predicted as it is and flipped along every
non-empty set of the spatial axes (8 predictions in 3D, 4 in 2D), each prediction flipped back, and the *logits*
averaged, before the Gaussian blend; probabilities come after, from the averaged logits.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from torch import Tensor

from ..losses import check_number

__all__ = ["sliding_window", "mirror_average", "mirror_axes_sets", "resize_logits"]


def mirror_axes_sets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes`` (the empty one first, then by size, as :func:`itertools.combinations` orders them):
    the flips of mirroring test-time augmentation, ``2 ** len(axes)`` of them."""
    axes = tuple(int(a) for a in axes)
    if len(set(axes)) != len(axes):
        raise ValueError(f"mirror axes must be distinct, got {list(axes)}")
    return [c for k in range(len(axes) + 1) for c in itertools.combinations(axes, k)]


@torch.no_grad()
def mirror_average(model: Callable[[Tensor], Tensor], images: Tensor, axes: Sequence[int] | None = None) -> Tensor:
    """``mean over S of flip_S(model(flip_S(images)))`` in float32, ``S`` every subset of the spatial ``axes``.

    Args:
        model: ``(B, C_in, *spatial) -> (B, C, *spatial)`` logits, its output aligned voxel for voxel with its input.
        images: ``(B, C_in, *spatial)``, 2 or 3 spatial axes.
        axes: the spatial axes to mirror, counted from the first spatial axis (``0`` is ``D`` in 3D); ``None``:
            all of them (nnU-Net's default when training flipped along every axis, as detloss's augmentation does).

    Raises:
        ValueError: ``images`` without 2 or 3 spatial axes, or an axis out of range.
    """
    spatial = images.ndim - 2
    if spatial not in (2, 3):
        raise ValueError(f"images must be (B, C, H, W) or (B, C, D, H, W), got {tuple(images.shape)}")
    axes = list(range(spatial)) if axes is None else [int(a) for a in axes]
    if any(not 0 <= a < spatial for a in axes):
        raise ValueError(f"mirror axes must be in 0 … {spatial - 1} (spatial axes), got {axes}")
    flips = mirror_axes_sets([a + 2 for a in axes])
    total = None
    for dims in flips:
        out = model(images.flip(dims) if dims else images).float()
        out = out.flip(dims) if dims else out
        total = out if total is None else total.add_(out)
    return total / len(flips)


@torch.no_grad()
def sliding_window(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    roi_size: Sequence[int],
    overlap: float = 0.5,
    batch_size: int = 2,
    mode: str = "gaussian",
    tta: bool = False,
) -> Tensor:
    """Logits ``(B, C, D, H, W)`` of ``images (B, C_in, D, H, W)`` from windows of ``roi_size``.

    Args:
        model: called on ``(batch_size, C_in, *roi_size)`` windows, returns their logits.
        roi_size: the window (the training patch).
        overlap: the fraction of a window its neighbours overlap, in [0, 1).
        batch_size: windows per forward pass.
        mode: ``"gaussian"`` (the default) or ``"constant"`` weighting of each window's logits.
        tta: each window's logits averaged over its mirrorings along all three axes (:func:`mirror_average`).
    """
    check_number("overlap", overlap, ge=0, lt=1)
    check_number("sw_batch_size", batch_size, integer=True, ge=1)
    roi_size = [int(s) for s in roi_size]
    if images.ndim != 5 or len(roi_size) != 3:
        raise ValueError(f"images must be (B, C, D, H, W) and roi_size 3 sides, got {tuple(images.shape)}, {roi_size}")
    predictor = (lambda windows: mirror_average(model, windows)) if tta else model
    logits = sliding_window_inference(images, roi_size, batch_size, predictor, overlap=overlap, mode=mode)
    return logits.as_tensor() if hasattr(logits, "as_tensor") else logits


def resize_logits(logits: Tensor, shape: Sequence[int]) -> Tensor:
    """``logits (B, C, D, H, W)`` resized to ``shape`` (trilinear, in float32), to be scored or argmax-ed there: how
    a prediction at the plan's target spacing goes back to a case's own grid (nnU-Net resamples its probabilities
    with order 1 too). Unchanged when the shape is already ``shape``."""
    if tuple(logits.shape[2:]) == tuple(int(s) for s in shape):
        return logits
    return F.interpolate(logits.float(), size=tuple(int(s) for s in shape), mode="trilinear", align_corners=False)
