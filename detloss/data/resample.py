"""Resampling of volumes to another voxel spacing, as nnU-Net resamples them (Isensee et al., *nnU-Net*, Nature
Methods 2021; ``resample_data_or_seg`` of its preprocessing).

* Images: third-order splines (``scipy.ndimage.zoom(order=3)``). When the spacing is anisotropic (the coarsest axis
  more than :data:`ANISOTROPY` times the finest), the coarse axis is resampled on its own with order 0 (nearest), so
  that thick slices are not smeared into each other, and the other axes with order 3.
* Label volumes: each label's mask is resampled linearly (order 1; order 0 along a separate coarse axis) and every
  voxel takes the label of the highest value, so that thin structures survive what nearest-neighbour resampling
  would drop.
* Logits back to a case's own grid are :func:`detloss.segmentation.resize_logits`'s (inference).

The new shape of an axis is ``round(shape · spacing / new_spacing)``; shapes and spacings are ``(D, H, W)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["ANISOTROPY", "resampled_shape", "needs_resampling", "resample_image", "resample_labels"]

from ..plan.rules import ANISOTROPY  # nnU-Net's ANISO_THRESHOLD: one owner for the spacing and the resampling


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> tuple[int, ...]:
    """``round(shape · spacing / new_spacing)`` per axis (at least 1)."""
    return tuple(max(1, int(round(s * a / b))) for s, a, b in zip(shape, spacing, new_spacing))


def needs_resampling(spacing: Sequence[float], new_spacing: Sequence[float], rtol: float = 1e-3) -> bool:
    """Whether ``spacing`` differs from ``new_spacing`` along any axis by more than ``rtol`` (relative)."""
    return not np.allclose(np.asarray(spacing, float), np.asarray(new_spacing, float), rtol=rtol, atol=0)


def _separate_axis(spacing: Sequence[float], new_spacing: Sequence[float]) -> int | None:
    """The axis resampled on its own (nnU-Net's ``get_do_separate_z``): the coarsest of the source spacing, or else
    of the target, if that one is anisotropic; ``None`` otherwise."""
    for s in (spacing, new_spacing):
        s = np.asarray(s, float)
        if s.max() / s.min() > ANISOTROPY:
            return int(np.argmax(s))
    return None


def _zoom(volume: np.ndarray, shape: Sequence[int], order: int, separate: int | None) -> np.ndarray:
    factors = [n / s for n, s in zip(shape, volume.shape)]
    if separate is None:
        return ndimage.zoom(volume, factors, order=order, mode="nearest", grid_mode=True)
    in_plane = [1.0 if a == separate else f for a, f in enumerate(factors)]
    along = [factors[a] if a == separate else 1.0 for a in range(3)]
    volume = ndimage.zoom(volume, in_plane, order=order, mode="nearest", grid_mode=True)
    return ndimage.zoom(volume, along, order=0, mode="nearest", grid_mode=True)


def resample_image(image: np.ndarray, spacing: Sequence[float], new_spacing: Sequence[float]) -> np.ndarray:
    """``image (C, D, H, W)`` at ``spacing`` resampled to ``new_spacing`` (float32; see the module docstring)."""
    shape = resampled_shape(image.shape[1:], spacing, new_spacing)
    if tuple(shape) == tuple(image.shape[1:]):
        return image.astype(np.float32, copy=False)
    separate = _separate_axis(spacing, new_spacing)
    return np.stack([_zoom(c.astype(np.float32), shape, 3, separate) for c in image])


def resample_labels(
    labels: np.ndarray, spacing: Sequence[float], new_spacing: Sequence[float], values: Sequence[int] | None = None
) -> np.ndarray:
    """``labels (D, H, W)`` at ``spacing`` resampled to ``new_spacing``, label by label (see the module
    docstring); ``values``: the labels to resample (default: those present), every other voxel 0."""
    shape = resampled_shape(labels.shape, spacing, new_spacing)
    if tuple(shape) == tuple(labels.shape):
        return labels
    separate = _separate_axis(spacing, new_spacing)
    values = sorted(int(v) for v in (np.unique(labels) if values is None else values))
    out = np.zeros(shape, dtype=labels.dtype)
    best = np.full(shape, 0.5, dtype=np.float32)  # a voxel takes a label whose mask resamples above one half
    for value in values:
        if value == 0:
            continue
        share = _zoom((labels == value).astype(np.float32), shape, 1, separate)
        take = share > best
        out[take], best[take] = value, share[take]
    return out
