"""NIfTI files read as nnU-Net's ``NibabelIO`` reads them (Isensee et al., *nnU-Net*, Nature Methods 2021): the array
transposed from the file's ``(x, y, z)`` to ``(z, y, x)`` = ``(D, H, W)`` and the spacing (mm, the header's zooms)
reversed to match; the affine's orientation is not applied. A 4D file ``(x, y, z, C)`` (a Medical Segmentation
Decathlon image) holds one channel per modality along its last axis: :func:`read_channels` splits it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["Case", "read_header", "read_volume", "read_channels", "write_volume"]


@dataclass
class Case:
    """One training case: its channel files (one per channel, or one 4D file), label file, spacing ``(D, H, W)`` mm
    and shape ``(D, H, W)``."""

    name: str
    images: list[Path]
    label: Path
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]


def read_header(path: Path) -> tuple[tuple[int, ...], tuple[float, float, float]]:
    """``(shape, spacing)`` of a NIfTI file from its header only: the shape as the file gives it (``(x, y, z, ...)``),
    the spacing ``(D, H, W)`` mm."""
    try:
        header = nib.load(str(path)).header
    except Exception as err:  # nibabel raises several kinds for a broken file
        raise ValueError(f"{path}: cannot read as NIfTI: {err}") from None
    shape, zooms = header.get_data_shape(), header.get_zooms()
    if len(shape) < 3:
        raise ValueError(f"{path}: a volume must have 3 spatial axes, got shape {tuple(shape)}")
    return tuple(int(s) for s in shape), tuple(float(z) for z in zooms[:3][::-1])


def _header(path: Path) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """``(shape, spacing)`` of a 3D NIfTI file, ``(D, H, W)`` order, from its header only."""
    shape, spacing = read_header(path)
    if any(s != 1 for s in shape[3:]):
        raise ValueError(f"{path}: a volume must be 3D, got shape {tuple(shape)}")
    return tuple(shape[:3][::-1]), spacing


def _load(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    try:
        image = nib.load(str(path))
        array = np.asanyarray(image.dataobj)
    except Exception as err:
        raise ValueError(f"{path}: cannot read as NIfTI: {err}") from None
    return array, tuple(float(z) for z in image.header.get_zooms()[:3][::-1])


def read_volume(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A NIfTI volume as ``(D, H, W)`` (the file's ``(x, y, z)`` transposed) and its spacing ``(D, H, W)`` in mm."""
    array, spacing = _load(Path(path))
    if array.ndim > 3:
        array = array.reshape(array.shape[:3])
    return np.ascontiguousarray(array.transpose(2, 1, 0)), spacing


def read_channels(path: str | Path) -> tuple[list[np.ndarray], tuple[float, float, float]]:
    """The channels ``[(D, H, W), ...]`` of a 3D file (one) or of a 4D file ``(x, y, z, C)`` (``C``), and the
    spacing ``(D, H, W)`` in mm."""
    array, spacing = _load(Path(path))
    if array.ndim == 3:
        return [np.ascontiguousarray(array.transpose(2, 1, 0))], spacing
    if array.ndim != 4:
        raise ValueError(f"{path}: an image must be 3D (x, y, z) or 4D (x, y, z, C), got shape {array.shape}")
    return [np.ascontiguousarray(array[..., c].transpose(2, 1, 0)) for c in range(array.shape[3])], spacing


def write_volume(array: np.ndarray, spacing, path: str | Path) -> None:
    """``(D, H, W)`` or ``(C, D, H, W)`` written as :func:`read_volume` / :func:`read_channels` read it back:
    ``(x, y, z[, C])`` = ``(W, H, D[, C])``, the zooms the reversed ``spacing`` (mm), a diagonal affine."""
    if array.ndim not in (3, 4):
        raise ValueError(f"{path}: a volume is (D, H, W) or (C, D, H, W), got shape {array.shape}")
    affine = np.diag([*[float(s) for s in spacing[::-1]], 1.0])
    order = (2, 1, 0) if array.ndim == 3 else (3, 2, 1, 0)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array.transpose(order)), affine), str(path))
