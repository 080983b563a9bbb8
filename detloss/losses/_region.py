"""The soft counts of the region losses (:mod:`.dice`) and their reductions over samples and classes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ._utils import Checks, apply_weight, as_float, reduce

if TYPE_CHECKING:
    from .dice import RegionOptions

__all__: list[str] = []


def check_dense_ignore_index(ignore_index: int | None) -> None:
    if ignore_index is not None and 0 <= ignore_index <= 1:
        raise ValueError(
            f"ignore_index={ignore_index} collides with target values in [0, 1] of a dense (binary, multilabel, "
            "one-hot or soft) target; use a value outside [0, 1], e.g. 255, or None"
        )


def index_labels(logits: Tensor, target: Tensor, mode: str) -> Tensor | None:
    """``target`` as class indices ``(B, *spatial)`` if it is one (multiclass only), else ``None``."""
    if mode != "multiclass" or target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        return None
    batch, _, *spatial = logits.shape
    if target.shape == (batch, *spatial):
        return target
    if target.shape == (batch, 1, *spatial):
        return target.squeeze(1)
    return None  # maybe an integer one-hot of the logits' shape


def region_stats(
    logits: Tensor, target: Tensor, o: RegionOptions, weight: Tensor | None, validate: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """The soft counts ``(I, P, T)``, each ``(B', C')``, in the (float32 or float64) dtype of the maths; with
    ``validate`` the target values and the weight are checked (one host sync)."""
    logits = as_float("logits", logits)
    if not isinstance(target, Tensor):
        raise ValueError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if logits.ndim < 3:
        raise ValueError(f"logits must have shape (B, C, *spatial), got {tuple(logits.shape)}")
    num_classes = logits.shape[1]
    if o.mode == "binary" and num_classes != 1:
        raise ValueError(f"logits of mode='binary' must have shape (B, 1, *spatial), got {tuple(logits.shape)}")
    if not o.include_background and num_classes == 1:
        raise ValueError("include_background=False needs logits with at least 2 channels, got 1")

    checks = Checks()
    if validate:
        checks.weight(weight)
    first = 0 if o.include_background else 1
    probs = logits.softmax(1) if o.mode == "multiclass" else logits.sigmoid()
    probs = probs[:, first:]
    dims = tuple(range(2, logits.ndim))
    if o.batch_dice:
        dims = (0, *dims)

    def total(x: Tensor) -> Tensor:  # (B', C')
        return x.sum(dims, keepdim=True).flatten(1)

    pred_p = probs * probs if o.squared else probs
    labels = index_labels(logits, target, o.mode)
    if labels is not None:
        if validate:
            checks.labels("target", labels, num_classes, o.ignore_index)
            checks.run()
        labels = labels.unsqueeze(1)  # (B, 1, *spatial)
        classes = torch.arange(first, num_classes, device=labels.device).view(1, -1, *([1] * (logits.ndim - 2)))
        # A float one-hot costs one (B, C', ...) buffer; float * bool products are slower on CPU.
        onehot = (labels == classes).to(probs.dtype)  # a label equal to ignore_index matches no class kept ...
        valid = None
        if o.ignore_index is not None:
            valid = (labels != o.ignore_index).to(probs.dtype)
            if first <= o.ignore_index < num_classes:  # ... unless ignore_index is itself a class index
                onehot = onehot * valid
        inter = total(probs * onehot)
        pred = total(pred_p if valid is None else pred_p * valid)
        true = total(onehot)  # t² = t for a one-hot
        return inter, pred, true

    # dense target: one-hot, soft, multilabel or binary
    if o.mode == "multiclass" and target.shape != logits.shape:
        raise ValueError(
            f"target of mode='multiclass' must hold integer class indices of shape (B, *spatial) or (B, 1, *spatial), "
            f"or have the logits' shape {tuple(logits.shape)}; got shape {tuple(target.shape)} and dtype {target.dtype}"
        )
    if o.mode == "binary" and target.shape == logits.shape[:1] + logits.shape[2:]:
        target = target.unsqueeze(1)
    if target.shape != logits.shape:
        raise ValueError(
            f"target of mode={o.mode!r} must have the logits' shape {tuple(logits.shape)}"
            + (" or (B, *spatial)" if o.mode == "binary" else "")
            + f", got {tuple(target.shape)}"
        )
    check_dense_ignore_index(o.ignore_index)
    valid = None if o.ignore_index is None else target != o.ignore_index
    t = target.to(probs.dtype)
    if valid is not None:
        t = torch.where(valid, t, 0.0)
    if validate:
        if o.mode == "binary" and not (target.is_floating_point() or target.dtype == torch.bool):
            checks.labels("target", target, 2, o.ignore_index)
        else:
            checks.unit_interval("target", t)
        checks.run()
    t = t[:, first:]
    inter = total(probs * t)  # t is already 0 where ignored
    if valid is not None:
        pred_p = pred_p * valid[:, first:]
    true = total(t * t if o.squared else t)
    return inter, total(pred_p), true


def class_weights_for(loss: Tensor, o: RegionOptions) -> Tensor | None:
    cw = o.on("class_weights", loss)
    if cw is not None and cw.numel() != loss.shape[1]:
        raise ValueError(
            f"class_weights has {cw.numel()} values but the loss has {loss.shape[1]} classes "
            "(one weight per class kept, i.e. after include_background=False drops channel 0)"
        )
    return cw


def reduce_classes(loss: Tensor, o: RegionOptions, weight: Tensor | None, reduction: str) -> Tensor:
    """Per-class losses ``(B', C')`` -> times class weights and ``weight``, then reduced (see module doc)."""
    cw = class_weights_for(loss, o)
    if cw is not None:
        loss = loss * cw
    loss = apply_weight(loss, weight)
    if reduction != "mean" or cw is None or loss.numel() == 0:
        return reduce(loss, reduction)
    return loss.sum() / (loss.shape[0] * cw.sum())


def sudre_weights(volume: Tensor, weight_type: str) -> Tensor:
    """Class weights ``(B', C')`` from the target volumes ``T``; constants, no gradient."""
    volume = volume.detach()
    if weight_type == "uniform":
        return torch.ones_like(volume)
    w = volume.reciprocal() if weight_type == "simple" else volume.square().reciprocal()
    finite = torch.isfinite(w)  # an absent class (T = 0) has an infinite weight
    w = torch.where(finite, w, 0.0)
    fallback = w.amax(1, keepdim=True)  # the largest finite weight of the sample ...
    fallback = torch.where(fallback > 0, fallback, 1.0)  # ... or 1 when every class is absent
    return torch.where(finite, w, fallback)


def dense_inputs(
    logits: Tensor,
    target: Tensor,
    mode: str,
    include_background: bool,
    ignore_index: int | None,
    checks: Checks | None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Probabilities, target and valid mask as dense ``(B, C', *spatial)`` tensors, for the losses that need them
    voxel by voxel (boundary, Hausdorff DT, clDice); channel 0 dropped without ``include_background``.

    ``mode="multiclass"``: softmax over dim 1, ``target`` class indices ``(B, *spatial)`` / ``(B, 1, *spatial)`` (their
    values checked by ``checks``) or a one-hot / soft tensor of the logits' shape; ``"multilabel"``: sigmoid, ``target``
    of the logits' shape in [0, 1]. ``valid`` is ``None`` (nothing ignored) or a 0/1 mask broadcasting to the others:
    ``(B, 1, *spatial)`` for class indices, ``(B, C', *spatial)`` for a dense target; the target is 0 where ignored.
    ``checks`` (``None``: no value checks) gets the value checks; the caller runs them.
    """
    logits = as_float("logits", logits)
    if not isinstance(target, Tensor):
        raise ValueError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if logits.ndim < 3:
        raise ValueError(f"logits must have shape (B, C, *spatial), got {tuple(logits.shape)}")
    num_classes = logits.shape[1]
    if not include_background and num_classes == 1:
        raise ValueError("include_background=False needs logits with at least 2 channels, got 1")
    first = 0 if include_background else 1
    probs = (logits.softmax(1) if mode == "multiclass" else logits.sigmoid())[:, first:]
    labels = index_labels(logits, target, mode)
    if labels is not None:
        if checks is not None:
            checks.labels("target", labels, num_classes, ignore_index)
        labels = labels.unsqueeze(1)
        classes = torch.arange(first, num_classes, device=labels.device).view(1, -1, *([1] * (logits.ndim - 2)))
        onehot = (labels == classes).to(probs.dtype)
        if ignore_index is None:
            return probs, onehot, None
        valid = (labels != ignore_index).to(probs.dtype)
        return probs, onehot * valid, valid
    if target.shape != logits.shape:
        raise ValueError(
            f"target of mode={mode!r} must have the logits' shape {tuple(logits.shape)}"
            + (" or hold class indices of shape (B, *spatial)" if mode == "multiclass" else "")
            + f", got {tuple(target.shape)} of dtype {target.dtype}"
        )
    check_dense_ignore_index(ignore_index)
    valid = None if ignore_index is None else (target != ignore_index)[:, first:].to(probs.dtype)
    t = target[:, first:].to(probs.dtype)
    if valid is not None:
        t = t * valid
    if checks is not None:
        checks.unit_interval("target", t)
    return probs, t, valid
