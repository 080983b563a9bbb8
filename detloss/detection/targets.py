"""The targets of a detection batch: their structure and values checked, packed into padded tensors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from ..losses import Checks

__all__ = ["Targets", "pack_targets", "check_feats", "check_values"]


class Targets(NamedTuple):
    """``boxes (B, G, 4)`` xyxy pixels, padded; ``labels (B, G)`` int64; ``mask (B, G)`` bool, False for padding."""

    boxes: Tensor
    labels: Tensor
    mask: Tensor


def pack_targets(targets, batch_size: int, device: torch.device) -> Targets:
    """Check the structure of ``targets`` (a list of ``batch_size`` dicts ``{"boxes": (n, 4) float, "labels": (n,)
    int}``) and pack them, padded to the most boxes of an image."""
    _check_structure(targets, batch_size)
    counts = [t["boxes"].shape[0] for t in targets]
    if max(counts, default=0) == 0:
        return Targets(
            torch.zeros(batch_size, 0, 4, device=device),
            torch.zeros(batch_size, 0, dtype=torch.long, device=device),
            torch.zeros(batch_size, 0, dtype=torch.bool, device=device),
        )
    boxes = pad_sequence([t["boxes"].to(device=device, dtype=torch.float32) for t in targets], batch_first=True)
    labels = pad_sequence([t["labels"].to(device=device, dtype=torch.long) for t in targets], batch_first=True)
    mask = torch.arange(boxes.shape[1]).unsqueeze(0) < torch.tensor(counts).unsqueeze(1)
    return Targets(boxes, labels, mask.to(device, non_blocking=True))


def _check_structure(targets, batch_size: int) -> None:
    if not isinstance(targets, (list, tuple)) or len(targets) != batch_size:
        n = len(targets) if isinstance(targets, (list, tuple)) else type(targets).__name__
        raise ValueError(f"targets must be a list of {batch_size} dicts (one per image), got {n}")
    for i, t in enumerate(targets):
        if not isinstance(t, Mapping) or "boxes" not in t or "labels" not in t:
            raise ValueError(f"targets[{i}] must be a dict with 'boxes' and 'labels'")
        boxes, labels = t["boxes"], t["labels"]
        if not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
            raise ValueError(f"targets[{i}]['boxes'] must be a float tensor of shape (n, 4), got {_describe(boxes)}")
        if not isinstance(labels, Tensor) or labels.shape != boxes.shape[:1] or labels.is_floating_point():
            raise ValueError(
                f"targets[{i}]['labels'] must be an integer tensor of shape ({boxes.shape[0]},), "
                f"got {_describe(labels)}"
            )


def check_feats(feats, strides: Sequence[float], channels: int, name: str = "feats") -> None:
    """Per-level head maps ``[B, channels, H_l, W_l]`` of one image size at ``strides``."""
    if not isinstance(feats, (list, tuple)) or not all(isinstance(f, Tensor) for f in feats):
        raise ValueError(f"{name} must be a list of per-level tensors [B, 4·reg_max + C, H, W]")
    if len(feats) != len(strides):
        raise ValueError(f"{name} has {len(feats)} levels but strides {tuple(strides)} has {len(strides)}")
    for i, f in enumerate(feats):
        if f.ndim != 4 or f.shape[1] != channels:
            raise ValueError(
                f"{name}[{i}] must have shape [B, {channels}, H, W] (4·reg_max + num_classes channels), "
                f"got {tuple(f.shape)}"
            )
        if not f.is_floating_point():
            raise ValueError(f"{name}[{i}] must be floating point, got {f.dtype}")
        if f.shape[0] != feats[0].shape[0]:
            raise ValueError(f"{name}[{i}] has batch size {f.shape[0]}, {name}[0] has {feats[0].shape[0]}")
        for axis, side in ((2, "height"), (3, "width")):
            if f.shape[axis] * strides[i] != feats[0].shape[axis] * strides[0]:
                raise ValueError(
                    f"{name}[{i}] {side} {f.shape[axis]} × stride {strides[i]:g} does not match the image "
                    f"{side} {feats[0].shape[axis] * strides[0]:g} of {name}[0]"
                )


def check_values(heads: Mapping[str, Sequence[Tensor]], strides, targets, packed: Targets, num_classes: int) -> None:
    """Finite head maps, finite and upright target boxes, labels in range: one host sync for all of it, naming the
    head map (level and stride) or the target, and the first bad index."""
    checks = Checks()
    for name, feats in heads.items():
        for i, f in enumerate(feats):
            checks.finite(f"{name}[{i}] (the head output of stride {strides[i]:g})", f)
    x1, y1, x2, y2 = packed.boxes.unbind(-1)
    bad_box = ~torch.isfinite(packed.boxes).all(-1) | (x2 < x1) | (y2 < y1)
    bad_label = (packed.labels < 0) | (packed.labels >= num_classes)
    bad = (bad_box | bad_label) & packed.mask
    checks.add(bad.any(), lambda: _target_problem(targets, bad, bad_label, packed.labels, num_classes))
    checks.run()


def _target_problem(targets, bad: Tensor, bad_label: Tensor, labels: Tensor, num_classes: int) -> str:
    image, index = (int(v) for v in bad.nonzero()[0])
    if bool(bad_label[image, index]):
        return f"targets[{image}]['labels'][{index}] = {int(labels[image, index])} is outside [0, {num_classes})"
    box = targets[image]["boxes"][index].tolist()
    problem = "has NaN or inf" if not all(abs(v) < float("inf") for v in box) else "has x2 < x1 or y2 < y1"
    return f"targets[{image}]['boxes'][{index}] = {box} {problem}"


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__
