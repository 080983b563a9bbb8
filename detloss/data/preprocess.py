"""A case's channels as a network sees them: normalised by a scheme per channel (nnU-Net's z-score, CT, none,
rescale to [0, 1] and RGB to [0, 1]), then resampled to the plan's target spacing. Training
(:class:`~detloss.data.NnUNetDataset`), evaluation and prediction (:class:`~detloss.prediction.VolumeWriter`) all
call :func:`preprocess`, so they preprocess alike; :func:`check_normalization` and :func:`check_spacing` refuse what a
configuration may give wrongly."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .resample import needs_resampling, resample_image

__all__ = ["SCHEMES", "zscore", "normalise", "preprocess", "check_spacing", "check_normalization"]


def zscore(volume: np.ndarray) -> np.ndarray:
    """``(x − mean) / std`` over the volume, float32 (statistics in float64; a constant volume becomes 0)."""
    data = volume.astype(np.float64)
    std = data.std()
    return ((data - data.mean()) / (std if std > 1e-8 else 1.0)).astype(np.float32)


SCHEMES = {
    "zscore": {"scheme", "nonzero_mask"},
    "ct": {"scheme", "clip", "mean", "std"},
    "none": {"scheme"},
    "rescale_to_0_1": {"scheme"},
    "rgb_to_0_1": {"scheme"},
}
"""The normalisation schemes and the keys each takes (nnU-Net v2's ``ZScoreNormalization``, ``CTNormalization``,
``NoNormalization``, ``RescaleTo01Normalization`` and ``RGBTo01Normalization``)."""


def normalise(volume: np.ndarray, scheme: dict | None, nonzero: np.ndarray | None = None) -> np.ndarray:
    """One channel normalised by ``scheme`` (float32), as nnU-Net normalises:

    * ``None`` or ``{"scheme": "zscore"}``: :func:`zscore` over the volume; with ``"nonzero_mask": true``, over the
      voxels of ``nonzero`` (where any channel of the case is non-zero) only, and 0 outside them;
    * ``{"scheme": "ct", "clip": [low, high], "mean": m, "std": s}``: clipped to ``[low, high]`` (the dataset's
      foreground percentiles 0.5 and 99.5), then ``(x − m) / s`` (the dataset's foreground statistics);
    * ``{"scheme": "none"}``: the values as they are (nnU-Net's ``noNorm``);
    * ``{"scheme": "rescale_to_0_1"}``: ``(x − min) / (max − min)`` over the case's channel (a constant channel
      becomes 0);
    * ``{"scheme": "rgb_to_0_1"}``: ``x / 255``; values outside ``[0, 255]`` are refused.

    Raises:
        ValueError: an unknown scheme, or an ``rgb_to_0_1`` channel with values outside ``[0, 255]``.
    """
    kind = "zscore" if scheme is None else scheme.get("scheme")
    if kind == "ct":
        low, high = scheme["clip"]
        std = float(scheme["std"]) if float(scheme["std"]) > 1e-8 else 1.0
        return ((np.clip(volume.astype(np.float64), low, high) - float(scheme["mean"])) / std).astype(np.float32)
    if kind == "none":
        return volume.astype(np.float32)
    if kind == "rescale_to_0_1":
        data = volume.astype(np.float64)
        data = data - data.min()
        return (data / max(float(data.max()), 1e-8)).astype(np.float32)
    if kind == "rgb_to_0_1":
        low, high = float(volume.min()), float(volume.max())
        if low < 0 or high > 255:
            raise ValueError(f"an 'rgb_to_0_1' channel must hold values in [0, 255], got [{low:g}, {high:g}]")
        return (volume.astype(np.float64) / 255.0).astype(np.float32)
    if kind != "zscore":
        raise ValueError(f"normalization scheme must be one of {sorted(SCHEMES)}, got {scheme!r}")
    if not (scheme or {}).get("nonzero_mask") or nonzero is None or not nonzero.any():
        return zscore(volume)
    out = np.zeros(volume.shape, dtype=np.float32)
    values = volume[nonzero].astype(np.float64)
    std = values.std()
    out[nonzero] = ((values - values.mean()) / (std if std > 1e-8 else 1.0)).astype(np.float32)
    return out


def check_spacing(spacing: Sequence[float], name: str) -> tuple[float, float, float]:
    """``spacing`` as 3 positive floats ``(D, H, W)`` mm, or a ``ValueError`` naming ``name``."""
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"{name} must be 3 positive numbers (D, H, W) mm, got {spacing!r}")
    return values


def check_normalization(normalization: Sequence[dict], channel_names: Sequence[str]) -> None:
    """A ``ValueError`` naming ``data.normalization`` unless it gives one valid scheme per channel (see
    :func:`normalise` and :data:`SCHEMES`): ``{"scheme": "ct", "clip": [low, high], "mean": m, "std": s}`` with
    ``low <= high`` and ``s > 0``, ``{"scheme": "zscore"[, "nonzero_mask": bool]}``, or ``{"scheme": "none"}``,
    ``{"scheme": "rescale_to_0_1"}``, ``{"scheme": "rgb_to_0_1"}``."""
    if len(normalization) != len(channel_names):
        raise ValueError(
            f"data.normalization must give one scheme per channel ({len(channel_names)}: {list(channel_names)}), "
            f"got {len(normalization)}"
        )
    for name, scheme in zip(channel_names, normalization):
        kind = dict(scheme).get("scheme")
        keys = SCHEMES.get(kind)
        if keys is None:
            raise ValueError(
                f"data.normalization of channel {name!r}: scheme must be one of {sorted(SCHEMES)}, got {scheme!r}"
            )
        if set(scheme) - keys or (kind == "ct" and set(scheme) != keys):
            raise ValueError(
                f"data.normalization of channel {name!r}: a {kind!r} scheme has the keys {sorted(keys)}, "
                f"got {sorted(scheme)}"
            )
        if kind == "ct":
            low, high = (float(v) for v in scheme["clip"])
            if not (math.isfinite(low) and math.isfinite(high) and low <= high) or not float(scheme["std"]) > 0:
                raise ValueError(
                    f"data.normalization of channel {name!r}: a CT scheme needs clip [low, high] with low <= high "
                    f"and std > 0, got {scheme!r}"
                )


def preprocess(
    channels: Sequence[np.ndarray],
    spacing: Sequence[float],
    target_spacing: Sequence[float] | None = None,
    normalization: Sequence[dict] | None = None,
    case: str = "the case",
) -> np.ndarray:
    """A case's raw channels ``[(D, H, W), ...]`` at ``spacing`` as a network sees them: each channel normalised by
    its scheme (:func:`normalise`; ``None``: z-scored), then resampled to ``target_spacing``
    (:func:`~detloss.data.resample.resample_image`; ``None``: kept). Training, evaluation and prediction all call
    this, so they preprocess alike. Returns ``(C, D', H', W')`` float32.

    Raises:
        ValueError: a channel its scheme refuses, naming ``case`` and the channel.
    """
    schemes = list(normalization) if normalization is not None else [None] * len(channels)
    nonzero = (
        np.any(np.stack([c != 0 for c in channels]), 0) if any((s or {}).get("nonzero_mask") for s in schemes) else None
    )
    normalised = []
    for index, (channel, scheme) in enumerate(zip(channels, schemes)):
        try:
            normalised.append(normalise(channel, scheme, nonzero))
        except ValueError as error:
            raise ValueError(f"{case}, channel {index}: {error}") from None
    image = np.stack(normalised)
    if target_spacing is not None and needs_resampling(spacing, target_spacing):
        image = resample_image(image, spacing, target_spacing)
    return image
