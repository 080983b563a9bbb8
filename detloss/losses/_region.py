"""The soft counts of the region losses (:mod:`.dice`) and their reductions over samples and classes.

Precision: a region loss near a perfect prediction is ``1 − ratio`` with the ratio close to 1, which loses the
digits that the ratio shares with 1 (float32 at logits ±10: 3 of 7; at ±17: all). So the counts include the
mismatches themselves, ``FP = Σ p·(1 − t)·m`` and ``FN = Σ (1 − p)·t·m``, summed from terms ``>= 0`` with
``1 − p`` to full precision (:func:`._stable.softmax_pair`, :func:`._stable.sigmoid_pair`, whose gradients keep
it too). Since ``P = I + FP`` and ``T = I + FN`` (``P + T − 2I = Σ (p − t)²·m`` with ``squared``), every loss of
:mod:`.dice` is then ``N / (N + R)`` with a mismatch ``N`` and ``R = k·I + s``, e.g. Dice
``1 − (2I + s) / (P + T + s) = (FP + FN) / (FP + FN + 2I + s)``: no difference from 1, and :func:`._stable.ratio`
gives its gradient without the one autograd would take (``1/(N + R) − N/(N + R)²``).

The plain forms of these losses, from ``I``, ``P`` and ``T`` as their papers write them, are in :mod:`.reference`
(``dice_loss``, ``jaccard_loss``, ``tversky_loss``, ``focal_tversky_loss``, ``generalized_dice_loss``);
``tests/losses/test_reference_forms.py`` holds the two equal in values and gradients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from ._stable import sigmoid_pair, softmax_counts, softmax_pair
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


class Counts(NamedTuple):
    """The soft counts of one call, each ``(B', C')``, over the valid elements (mask ``m``).

    ``inter = Σ p·t·m``; ``true = Σ t·m`` (``Σ t²·m`` with ``squared``); ``fp = Σ p·(1 − t)·m`` and
    ``fn = Σ (1 − p)·t·m`` (``None`` with ``squared``); ``mismatch = P + T − 2·inter`` with ``P = Σ p·m``
    (``Σ p²·m``), i.e. ``fp + fn`` (``Σ (p − t)²·m`` with ``squared``), each summed from terms ``>= 0``.
    """

    inter: Tensor
    true: Tensor
    fp: Tensor | None
    fn: Tensor | None
    mismatch: Tensor


def checked_logits(logits: Tensor, target) -> Tensor:
    """``logits`` as float ``(B, C, *spatial)``, and ``target`` a tensor: the shape checks every region and
    distance loss makes first."""
    logits = as_float("logits", logits)
    if not isinstance(target, Tensor):
        raise ValueError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if logits.ndim < 3:
        raise ValueError(f"logits must have shape (B, C, *spatial), got {tuple(logits.shape)}")
    return logits


def region_stats(logits: Tensor, target: Tensor, o: RegionOptions, weight: Tensor | None, validate: bool) -> Counts:
    """The soft :class:`Counts`, in the (float32 or float64) dtype of the maths; with ``validate`` the target
    values and the weight are checked (one host sync)."""
    logits = checked_logits(logits, target)
    num_classes = logits.shape[1]
    if o.mode == "binary" and num_classes != 1:
        raise ValueError(f"logits of mode='binary' must have shape (B, 1, *spatial), got {tuple(logits.shape)}")
    if not o.include_background and num_classes == 1:
        raise ValueError("include_background=False needs logits with at least 2 channels, got 1")

    checks = Checks()
    if validate:
        checks.weight(weight)
    first = 0 if o.include_background else 1

    def pair() -> tuple[Tensor, Tensor]:  # p and 1 − p, each to full precision
        probs, comp = softmax_pair(logits, 1) if o.mode == "multiclass" else sigmoid_pair(logits)
        return probs[:, first:], comp[:, first:]

    dims = tuple(range(2, logits.ndim))
    if o.batch_dice:
        dims = (0, *dims)

    def total(x: Tensor) -> Tensor:  # (B', C')
        return x.sum(dims, keepdim=True).flatten(1)

    labels = index_labels(logits, target, o.mode)
    if labels is not None:
        if validate:
            checks.labels("target", labels, num_classes, o.ignore_index)
            checks.run()
        labels = labels.unsqueeze(1)  # (B, 1, *spatial)
        classes = torch.arange(first, num_classes, device=labels.device).view(1, -1, *([1] * (logits.ndim - 2)))
        # A float one-hot costs one (B, C', ...) buffer; float * bool products are slower on CPU.
        onehot = (labels == classes).to(logits.dtype)  # a label equal to ignore_index matches no class kept ...
        valid = None
        if o.ignore_index is not None:
            valid = (labels != o.ignore_index).to(logits.dtype)
            if first <= o.ignore_index < num_classes:  # ... unless ignore_index is itself a class index
                onehot = onehot * valid
        if o.mode == "multiclass" and not o.squared:  # the common case, fused
            inter, fp, fn = softmax_counts(logits, onehot, valid, first, dims)
            return Counts(inter, total(onehot), fp, fn, fp + fn)
        return _counts(*pair(), onehot, valid, o.squared, total)

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
    t = target.to(logits.dtype)
    if valid is not None:
        t = torch.where(valid, t, 0.0)
    if validate:
        if o.mode == "binary" and not (target.is_floating_point() or target.dtype == torch.bool):
            checks.labels("target", target, 2, o.ignore_index)
        else:
            checks.unit_interval("target", t)
        checks.run()
    return _counts(*pair(), t[:, first:], None if valid is None else valid[:, first:], o.squared, total)


def _counts(p: Tensor, q: Tensor, t: Tensor, valid: Tensor | None, squared: bool, total) -> Counts:
    """:class:`Counts` from ``p``, ``q = 1 − p``, the target ``t`` (0 where not valid) and the mask ``valid``."""
    inter = total(p * t)
    p_off = p * (1 - t)  # p·(1 − t)
    if valid is not None:
        p_off = p_off * valid
    if squared:
        diff = p_off - q * t  # p − t (as p·(1 − t) − (1 − p)·t), 0 where not valid
        return Counts(inter, total(t * t), None, None, total(diff * diff))
    fp, fn = total(p_off), total(q * t)
    return Counts(inter, total(t), fp, fn, fp + fn)


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
) -> tuple[tuple[Tensor, Tensor], Tensor, Tensor | None]:
    """Probabilities with their complements ``(p, 1 − p)``, target and valid mask as dense ``(B, C', *spatial)``
    tensors, for the losses that need them voxel by voxel (boundary, Hausdorff DT, clDice); channel 0 dropped without
    ``include_background``. ``1 − p`` is computed without subtraction (``_stable.py``), precise where ``p ≈ 1``.

    ``mode="multiclass"``: softmax over dim 1, ``target`` class indices ``(B, *spatial)`` / ``(B, 1, *spatial)`` (their
    values checked by ``checks``) or a one-hot / soft tensor of the logits' shape; ``"multilabel"``: sigmoid, ``target``
    of the logits' shape in [0, 1]. ``valid`` is ``None`` (nothing ignored) or a 0/1 mask broadcasting to the others:
    ``(B, 1, *spatial)`` for class indices, ``(B, C', *spatial)`` for a dense target; the target is 0 where ignored.
    ``checks`` (``None``: no value checks) gets the value checks; the caller runs them.
    """
    logits = checked_logits(logits, target)
    num_classes = logits.shape[1]
    if not include_background and num_classes == 1:
        raise ValueError("include_background=False needs logits with at least 2 channels, got 1")
    first = 0 if include_background else 1
    # the precise primitives (_stable.py): gradients keep their relative precision near a confident prediction
    pair = softmax_pair(logits, 1) if mode == "multiclass" else sigmoid_pair(logits)
    probs, complement = pair[0][:, first:], pair[1][:, first:]
    labels = index_labels(logits, target, mode)
    if labels is not None:
        if checks is not None:
            checks.labels("target", labels, num_classes, ignore_index)
        labels = labels.unsqueeze(1)
        classes = torch.arange(first, num_classes, device=labels.device).view(1, -1, *([1] * (logits.ndim - 2)))
        onehot = (labels == classes).to(probs.dtype)
        if ignore_index is None:
            return (probs, complement), onehot, None
        valid = (labels != ignore_index).to(probs.dtype)
        return (probs, complement), onehot * valid, valid
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
    return (probs, complement), t, valid
