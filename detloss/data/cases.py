"""The cases of a volume dataset, whatever its layout (nnU-Net v2, :mod:`detloss.data.nnunet`; the Decathlon's,
:mod:`detloss.data.msd`): the ``dataset.json`` that lists them, their split into cross-validation folds, and the
foreground voxels that patch sampling draws from.

Split: fold ``fold`` of a seeded ``num_folds``-fold split by case (nnU-Net: 5 folds, seed 12345), the cases sorted
by name and shuffled with the seed; the validation cases of the folds are disjoint and cover every case.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["FILE_ENDINGS", "MAX_LOCATIONS", "cross_validation_split", "foreground_locations", "read_dataset_json"]

FILE_ENDINGS = (".nii.gz", ".nii")
MAX_LOCATIONS = 10_000
"""Foreground voxels kept per case and class for patch sampling (nnU-Net keeps 10,000)."""


def read_dataset_json(path: Path, required: Sequence[str], layout: str) -> dict:
    """``path`` (a ``dataset.json``) read, with a clear error when it is absent, not JSON or lacks one of
    ``required`` (``layout`` names the format in the messages: ``"nnU-Net v2"``, ``"Decathlon"``)."""
    if not path.is_file():
        raise FileNotFoundError(f"{layout} dataset.json not found: {path}")
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None
    missing = [k for k in required if k not in spec]
    if missing:
        raise ValueError(f"{path}: missing keys {missing} (a {layout} dataset.json has {list(required)})")
    return spec


def cross_validation_split(names: Sequence[str], fold: int, num_folds: int = 5, seed: int = 12345):
    """``(train, val)`` case names of fold ``fold``: the sorted names shuffled with ``seed``, cut into ``num_folds``
    near-equal parts; part ``fold`` validates."""
    names = sorted(names)
    if not isinstance(num_folds, int) or num_folds < 2:
        raise ValueError(f"num_folds must be an integer >= 2, got {num_folds!r}")
    if not isinstance(fold, int) or not 0 <= fold < num_folds:
        raise ValueError(f"fold must be an integer in [0, {num_folds}), got {fold!r}")
    if len(names) < num_folds:
        raise ValueError(f"a {num_folds}-fold split needs at least {num_folds} cases, got {len(names)}")
    order = np.random.default_rng(seed).permutation(len(names))
    val = set(np.array_split(order, num_folds)[fold].tolist())
    return [n for i, n in enumerate(names) if i not in val], [n for i, n in enumerate(names) if i in val]


def foreground_locations(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Up to :data:`MAX_LOCATIONS` voxel indices ``(n, labels.ndim)`` int32 of class ``k`` in ``labels``, drawn
    without replacement with ``rng``."""
    where = np.flatnonzero(labels.ravel() == k)
    if len(where) > MAX_LOCATIONS:
        where = rng.choice(where, MAX_LOCATIONS, replace=False)
    return np.stack(np.unravel_index(where, labels.shape), 1).astype(np.int32)
