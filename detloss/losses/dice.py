"""Region-overlap losses for segmentation: Dice, generalized Dice, Tversky, focal Tversky and Jaccard.

All five are built from three soft counts per sample ``b`` and class ``c``. With ``p`` the predicted
probabilities (softmax over the channels for ``mode="multiclass"``, sigmoid for ``"multilabel"`` and
``"binary"``), ``t`` the target and ``m`` the valid-element mask (see ``ignore_index``)::

    I = Σ p·t·m        P = Σ p·m        T = Σ t·m        (squared=True: P = Σ p²·m,  T = Σ t²·m)

the sums running over the spatial dims, and over the batch too with ``batch_dice=True``. With ``s = smooth``:

* ``dice_loss``: ``1 − (2I + s) / (P + T + s)`` (Milletari et al., V-Net, 2016);
* ``generalized_dice_loss``: ``1 − (2 Σ_c w_c I_c + s) / (Σ_c w_c (P_c + T_c) + s)``, one value per sample,
  ``w_c = 1 / T_c²`` by default (Sudre et al., 2017);
* ``tversky_loss``: ``1 − TI``, ``TI = (I + s) / (I + α·FP + β·FN + s)`` (Salehi et al., 2017);
* ``focal_tversky_loss``: ``(1 − TI)^γ`` (Abraham & Khan, 2019);
* ``jaccard_loss``: ``1 − (I + s) / (P + T − I + s)`` (soft Jaccard index / IoU);

with ``FP = P − I`` and ``FN = T − I``.

Shared conventions (every function and module of this file):

* ``logits``: ``(B, C, *spatial)``, e.g. ``(B, C, H, W)`` or ``(B, C, D, H, W)``; half / bfloat16 are upcast
  to float32 (also under autocast), float64 stays float64.
* ``target``, by ``mode``:

  - ``"multiclass"``: class indices ``(B, *spatial)`` or ``(B, 1, *spatial)`` of an integer dtype, or a
    one-hot / soft tensor of the logits' shape;
  - ``"binary"``: logits ``(B, 1, *spatial)``; labels {0, 1} ``(B, *spatial)`` / ``(B, 1, *spatial)`` of an
    integer dtype, or a float / bool tensor of either shape;
  - ``"multilabel"``: a tensor of the logits' shape, values in {0, 1} (soft values in [0, 1] allowed).

* ``ignore_index`` (``None`` to switch off): with class indices, pixels equal to it are left out for every class;
  with a dense target (one-hot, soft, multilabel, binary) an *element* equal to it is left out for its class
  only. For dense targets it must lie outside [0, 1], where it would collide with real target values.
* ``include_background=False`` drops channel 0 after the probabilities are computed (the softmax still runs
  over all channels). Not available for ``mode="binary"`` or a single-channel multiclass head.
* ``class_weights``: one non-negative value per class kept (``C' = C`` or ``C − 1``), with a positive sum.
* Reduction of the per-class losses (``(B', C')``, ``B' = B``, or ``1`` with ``batch_dice``): ``"none"``
  returns them times ``class_weights`` times ``weight``; ``"sum"`` their sum; ``"mean"`` that sum divided by
  ``B' · Σ_c class_weights[c]`` (``B' · C'`` without class weights), a weighted average that is the plain
  mean when all class weights are 1. ``weight`` must broadcast to ``(B', C')`` without enlarging it, e.g.
  ``(B, 1)`` per sample or ``(C',)`` per class; it is not part of the ``"mean"`` denominator.
* ``validate=True`` checks label values and target ranges (one host sync); shapes are always checked.

Degenerate input stays finite, in value and gradient, because ``smooth > 0`` is required:

* every pixel of a sample ignored (or a class empty in target and prediction): ``I = P = T = 0``, so every
  ratio is ``(0 + s) / (0 + s) = 1`` and the loss is exactly 0 for that sample and class;
* a class absent from the target only (empty mask): Dice / Jaccard / Tversky tend to ``1 − s / (P + s)``,
  i.e. near 1 if the class is predicted and near 0 if it is not (``P ≪ s``);
* a batch of one and 3-D volumes ``(B, C, D, H, W)`` need nothing special.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn

from ._utils import apply_weight, as_float, check_choice, check_in_unit_interval, check_labels, check_reduction, reduce

__all__ = [
    "dice_loss",
    "generalized_dice_loss",
    "tversky_loss",
    "focal_tversky_loss",
    "jaccard_loss",
    "DiceLoss",
    "GeneralizedDiceLoss",
    "TverskyLoss",
    "FocalTverskyLoss",
    "JaccardLoss",
]

MODES = ("multiclass", "multilabel", "binary")
WEIGHT_TYPES = ("square", "simple", "uniform")


# --------------------------------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------------------------------


class _Options(NamedTuple):
    mode: str
    include_background: bool
    smooth: float
    batch_dice: bool
    class_weights: Tensor | None
    ignore_index: int | None
    squared: bool
    reduction: str
    validate: bool


def _as_class_weights(class_weights, check_values: bool) -> Tensor | None:
    if class_weights is None:
        return None
    try:
        w = torch.as_tensor(class_weights)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"class_weights must be a sequence of numbers or a 1-D tensor, got {class_weights!r}"
        ) from None
    if w.ndim != 1 or w.numel() == 0 or w.is_complex() or w.dtype == torch.bool:
        raise ValueError(f"class_weights must be a non-empty 1-D sequence of numbers, got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        w = w.float()
    # A Python sequence is checked for free; a tensor costs a host sync, so only with validate=True.
    if check_values or not isinstance(class_weights, Tensor):
        if not (bool(torch.isfinite(w).all()) and bool((w >= 0).all()) and float(w.sum()) > 0):
            raise ValueError(f"class_weights must be finite, >= 0 and with a positive sum, got {w.tolist()}")
    return w


def _check_options(
    mode: str,
    include_background: bool,
    smooth: float,
    batch_dice: bool,
    class_weights,
    ignore_index: int | None,
    squared: bool,
    reduction: str,
    validate: bool,
) -> _Options:
    check_choice("mode", mode, MODES)
    check_reduction(reduction)
    if mode == "binary" and not include_background:
        raise ValueError(
            "include_background=False is not available for mode='binary': a binary head (B, 1, ...) has no "
            "background channel to drop"
        )
    if isinstance(smooth, bool) or not isinstance(smooth, (int, float)) or not (smooth > 0 and math.isfinite(smooth)):
        raise ValueError(f"smooth must be a finite number > 0 (it keeps empty classes defined), got {smooth!r}")
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise ValueError(f"ignore_index must be an int or None, got {ignore_index!r}")
    if mode != "multiclass":
        _check_dense_ignore_index(ignore_index)
    cw = _as_class_weights(class_weights, validate)
    return _Options(
        mode,
        bool(include_background),
        float(smooth),
        bool(batch_dice),
        cw,
        ignore_index,
        bool(squared),
        reduction,
        validate,
    )


def _check_dense_ignore_index(ignore_index: int | None) -> None:
    if ignore_index is not None and 0 <= ignore_index <= 1:
        raise ValueError(
            f"ignore_index={ignore_index} collides with target values in [0, 1] of a dense (binary, multilabel, "
            "one-hot or soft) target; use a value outside [0, 1], e.g. 255, or None"
        )


def _check_tversky(alpha: float, beta: float, squared: bool) -> None:
    for name, value in (("alpha", alpha), ("beta", beta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if alpha == 0 and beta == 0:
        raise ValueError("alpha and beta must not both be 0 (the Tversky index would be 1 for any prediction)")
    if squared and alpha != beta:
        # α·(Σp² − Σpt) + β·(Σt² − Σpt) is >= 0 for every p, t only when α == β (then it is α·Σ(p − t)²);
        # otherwise the index can exceed 1 and the loss turn negative.
        raise ValueError(f"squared=True needs alpha == beta for the Tversky index to stay <= 1, got {alpha}, {beta}")


def _check_gamma(gamma: float) -> None:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not (gamma > 0 and math.isfinite(gamma)):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")


# --------------------------------------------------------------------------------------------------------------
# the soft counts
# --------------------------------------------------------------------------------------------------------------


def _index_labels(logits: Tensor, target: Tensor, mode: str) -> Tensor | None:
    """``target`` as class indices ``(B, *spatial)`` if it is one (multiclass only), else ``None``."""
    if mode != "multiclass" or target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        return None
    batch, _, *spatial = logits.shape
    if target.shape == (batch, *spatial):
        return target
    if target.shape == (batch, 1, *spatial):
        return target.squeeze(1)
    return None  # maybe an integer one-hot of the logits' shape


def _region_stats(logits: Tensor, target: Tensor, o: _Options) -> tuple[Tensor, Tensor, Tensor]:
    """The soft counts ``(I, P, T)``, each ``(B', C')``, in the (float32 or float64) dtype of the maths."""
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

    first = 0 if o.include_background else 1
    probs = logits.softmax(1) if o.mode == "multiclass" else logits.sigmoid()
    probs = probs[:, first:]
    dims = tuple(range(2, logits.ndim))
    if o.batch_dice:
        dims = (0, *dims)

    def total(x: Tensor) -> Tensor:  # (B', C')
        return x.sum(dims, keepdim=True).flatten(1)

    pred_p = probs * probs if o.squared else probs
    labels = _index_labels(logits, target, o.mode)
    if labels is not None:
        if o.validate:
            check_labels("target", labels, num_classes, o.ignore_index)
        labels = labels.unsqueeze(1)  # (B, 1, *spatial)
        classes = torch.arange(first, num_classes, device=labels.device).view(1, -1, *([1] * (logits.ndim - 2)))
        # A float one-hot costs one (B, C', ...) buffer, but float * bool products measured ~30% slower on CPU.
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
    _check_dense_ignore_index(o.ignore_index)
    valid = None if o.ignore_index is None else target != o.ignore_index
    t = target.to(probs.dtype)
    if valid is not None:
        t = torch.where(valid, t, 0.0)
    if o.validate:
        if o.mode == "binary" and not (target.is_floating_point() or target.dtype == torch.bool):
            check_labels("target", target, 2, o.ignore_index)
        else:
            check_in_unit_interval("target", t.detach())
    t = t[:, first:]
    inter = total(probs * t)  # t is already 0 where ignored
    if valid is not None:
        pred_p = pred_p * valid[:, first:]
    true = total(t * t if o.squared else t)
    return inter, total(pred_p), true


# --------------------------------------------------------------------------------------------------------------
# reductions and the losses proper (options already checked)
# --------------------------------------------------------------------------------------------------------------


def _class_weights_for(loss: Tensor, cw: Tensor | None) -> Tensor | None:
    if cw is None:
        return None
    if cw.numel() != loss.shape[1]:
        raise ValueError(
            f"class_weights has {cw.numel()} values but the loss has {loss.shape[1]} classes "
            "(one weight per class kept, i.e. after include_background=False drops channel 0)"
        )
    return cw.to(device=loss.device, dtype=loss.dtype)


def _reduce_classes(loss: Tensor, o: _Options, weight: Tensor | None) -> Tensor:
    """Per-class losses ``(B', C')`` -> times class weights and ``weight``, then reduced (see module doc)."""
    cw = _class_weights_for(loss, o.class_weights)
    if cw is not None:
        loss = loss * cw
    loss = apply_weight(loss, weight)
    if o.reduction != "mean" or cw is None or loss.numel() == 0:
        return reduce(loss, o.reduction)
    return loss.sum() / (loss.shape[0] * cw.sum())


def _tversky_index(inter: Tensor, pred: Tensor, true: Tensor, o: _Options, alpha: float, beta: float) -> Tensor:
    return (inter + o.smooth) / (inter + alpha * (pred - inter) + beta * (true - inter) + o.smooth)


def _dice(logits, target, weight, o: _Options) -> Tensor:
    inter, pred, true = _region_stats(logits, target, o)
    loss = 1.0 - (2.0 * inter + o.smooth) / (pred + true + o.smooth)
    return _reduce_classes(loss, o, weight)


def _jaccard(logits, target, weight, o: _Options) -> Tensor:
    inter, pred, true = _region_stats(logits, target, o)
    loss = 1.0 - (inter + o.smooth) / (pred + true - inter + o.smooth)
    return _reduce_classes(loss, o, weight)


def _tversky(logits, target, weight, o: _Options, alpha: float, beta: float) -> Tensor:
    inter, pred, true = _region_stats(logits, target, o)
    loss = 1.0 - _tversky_index(inter, pred, true, o, alpha, beta)
    return _reduce_classes(loss, o, weight)


def _focal_tversky(logits, target, weight, o: _Options, alpha: float, beta: float, gamma: float) -> Tensor:
    inter, pred, true = _region_stats(logits, target, o)
    base = 1.0 - _tversky_index(inter, pred, true, o, alpha, beta)
    # (1 − TI)^γ has an infinite derivative at 0 for γ < 1: feed pow a safe base there, and output exactly 0.
    # (base < 0 only from rounding, as TI <= 1.)
    positive = base > 0
    safe = torch.where(positive, base, torch.ones_like(base))
    loss = torch.where(positive, safe.pow(gamma), torch.zeros_like(base))
    return _reduce_classes(loss, o, weight)


def _sudre_weights(volume: Tensor, weight_type: str) -> Tensor:
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


def _generalized_dice(logits, target, weight, o: _Options, weight_type: str) -> Tensor:
    inter, pred, true = _region_stats(logits, target, o)
    w = _sudre_weights(true, weight_type)
    cw = _class_weights_for(w, o.class_weights)
    if cw is not None:
        w = w * cw
    numer = 2.0 * (w * inter).sum(1) + o.smooth
    denom = (w * (pred + true)).sum(1) + o.smooth
    loss = 1.0 - numer / denom  # (B',)
    return reduce(apply_weight(loss, weight), o.reduction)


# --------------------------------------------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------------------------------------------


def dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    mode: str = "multiclass",
    include_background: bool = True,
    smooth: float = 1e-5,
    batch_dice: bool = False,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = 255,
    squared: bool = False,
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """Soft Dice loss, ``1 − (2I + s) / (P + T + s)`` per sample and class (Milletari et al., V-Net, 2016).

    ``I = Σ p·t·m``, ``P = Σ p·m``, ``T = Σ t·m`` over the spatial dims (and the batch with ``batch_dice``);
    ``squared=True`` uses ``Σ p²·m`` and ``Σ t²·m`` in the denominator, as in V-Net.

    Args:
        logits: ``(B, C, *spatial)`` raw scores, e.g. ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
        target: by ``mode``: class indices ``(B, *spatial)`` / ``(B, 1, *spatial)`` or a one-hot / soft tensor of
            the logits' shape (``"multiclass"``); the logits' shape, values in [0, 1] (``"multilabel"``); labels
            {0, 1} ``(B, *spatial)`` / ``(B, 1, *spatial)`` or a float tensor, for logits ``(B, 1, *spatial)``
            (``"binary"``).
        mode: ``"multiclass"`` (softmax over dim 1), ``"multilabel"`` or ``"binary"`` (sigmoid).
        include_background: ``False`` drops channel 0 after the softmax (not for ``"binary"`` or ``C == 1``).
        smooth: ``s > 0``, added to numerator and denominator; makes empty classes well defined.
        batch_dice: sum the counts over the batch too (one Dice per class for the whole batch).
        class_weights: ``(C',)`` non-negative weights, one per class kept, with a positive sum.
        ignore_index: label left out; for index targets the whole pixel, for dense targets that element only.
            Must lie outside [0, 1] for dense targets. ``None`` keeps everything.
        squared: square ``p`` and ``t`` in ``P`` and ``T``.
        weight: optional, rescales the unreduced ``(B', C')`` values elementwise (e.g. ``(B, 1)`` per sample).
        reduction: ``"none"``: ``(B', C')`` values times ``class_weights`` and ``weight``, ``B' = B`` or 1 with
            ``batch_dice``; ``"sum"``: their sum; ``"mean"``: the sum over ``B' · Σ_c class_weights[c]``, which is
            the plain mean without class weights.
        validate: check label values and target ranges (one host sync); shapes are checked regardless.

    Returns:
        A float32 scalar (float64 for float64 logits), or ``(B', C')`` for ``reduction="none"``.

    Degenerate input, all finite in value and gradient: a sample/class with every pixel ignored, or empty in
    both target and prediction, gives ``(0 + s) / (0 + s)``, i.e. loss 0; a class absent from the target but
    predicted gives a loss near 1; batches of one and 5-D volumes work unchanged.
    """
    o = _check_options(
        mode, include_background, smooth, batch_dice, class_weights, ignore_index, squared, reduction, validate
    )
    return _dice(logits, target, weight, o)


def generalized_dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    mode: str = "multiclass",
    include_background: bool = True,
    smooth: float = 1e-5,
    batch_dice: bool = False,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = 255,
    squared: bool = False,
    weight_type: str = "square",
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """Generalized Dice loss (Sudre et al., 2017): one value per sample, the classes pooled with weights.

    ``GDL = 1 − (2 Σ_c w_c I_c + s) / (Σ_c w_c (P_c + T_c) + s)`` with ``w_c = 1 / T_c²`` (``weight_type=
    "square"``), ``1 / T_c`` (``"simple"``) or ``1`` (``"uniform"``), ``T_c`` the target volume of the class
    (``Σ t²·m`` with ``squared``). The weights are constants (no gradient). A class absent from the target of a
    sample (``T_c = 0``) takes the largest finite weight of that sample, or 1 if every class is absent.
    ``class_weights``, when given, multiply ``w_c``. ``smooth`` acts on the weighted sums, so with ``"square"``
    weights and large images keep it small.

    Args:
        logits, target, mode, include_background, smooth, batch_dice, ignore_index, squared, validate:
            as in :func:`dice_loss`.
        class_weights: ``(C',)`` non-negative factors on ``w_c``, one per class kept.
        weight_type: ``"square"``, ``"simple"`` or ``"uniform"``.
        weight: optional, rescales the unreduced ``(B',)`` values elementwise.
        reduction: ``"none"`` returns ``(B,)``, or ``(1,)`` with ``batch_dice``; ``"mean"`` / ``"sum"`` over it.

    Returns:
        A float32 (or float64) scalar, or ``(B',)``.

    Degenerate input stays finite: a sample with every pixel ignored has ``I = P = T = 0`` and weights 1, so its
    loss is exactly 0; absent classes only change the weights as above.
    """
    check_choice("weight_type", weight_type, WEIGHT_TYPES)
    o = _check_options(
        mode, include_background, smooth, batch_dice, class_weights, ignore_index, squared, reduction, validate
    )
    return _generalized_dice(logits, target, weight, o, weight_type)


def tversky_loss(
    logits: Tensor,
    target: Tensor,
    *,
    mode: str = "multiclass",
    include_background: bool = True,
    smooth: float = 1e-5,
    batch_dice: bool = False,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = 255,
    squared: bool = False,
    alpha: float = 0.5,
    beta: float = 0.5,
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """Tversky loss (Salehi et al., 2017), ``1 − TI`` per sample and class.

    ``TI = (I + s) / (I + α·FP + β·FN + s)``, ``FP = P − I``, ``FN = T − I``. ``α = β = 0.5`` gives Dice (up
    to ``smooth``), ``α = β = 1`` Jaccard; ``β > α`` weighs missed foreground more. ``α, β >= 0``, not both 0;
    ``squared=True`` needs ``α == β`` (otherwise ``TI`` could exceed 1).

    Args and shapes as in :func:`dice_loss`: ``(B', C')`` for ``reduction="none"``, else a scalar.
    Degenerate input: a sample/class with every pixel ignored (or empty in target and prediction) gives
    ``TI = 1``, loss 0; a class absent from the target but predicted gives a loss near 1; all finite.
    """
    o = _check_options(
        mode, include_background, smooth, batch_dice, class_weights, ignore_index, squared, reduction, validate
    )
    _check_tversky(alpha, beta, o.squared)
    return _tversky(logits, target, weight, o, float(alpha), float(beta))


def focal_tversky_loss(
    logits: Tensor,
    target: Tensor,
    *,
    mode: str = "multiclass",
    include_background: bool = True,
    smooth: float = 1e-5,
    batch_dice: bool = False,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = 255,
    squared: bool = False,
    alpha: float = 0.5,
    beta: float = 0.5,
    gamma: float = 0.75,
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """Focal Tversky loss (Abraham & Khan, 2019), ``(1 − TI)^γ`` per sample and class.

    ``TI`` as in :func:`tversky_loss`; ``γ > 0`` (``γ = 1`` is the Tversky loss, ``γ < 1`` the paper's choice
    that keeps the gradient large on well-segmented classes). Where ``1 − TI = 0`` the value is exactly 0 and the
    gradient 0, not NaN (``x^γ`` has an infinite slope at 0 for ``γ < 1``).

    Args and shapes as in :func:`tversky_loss`: ``(B', C')`` for ``reduction="none"``, else a scalar.
    Degenerate input: a sample/class with every pixel ignored gives 0 with a zero gradient; all finite.
    """
    o = _check_options(
        mode, include_background, smooth, batch_dice, class_weights, ignore_index, squared, reduction, validate
    )
    _check_tversky(alpha, beta, o.squared)
    _check_gamma(gamma)
    return _focal_tversky(logits, target, weight, o, float(alpha), float(beta), float(gamma))


def jaccard_loss(
    logits: Tensor,
    target: Tensor,
    *,
    mode: str = "multiclass",
    include_background: bool = True,
    smooth: float = 1e-5,
    batch_dice: bool = False,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = 255,
    squared: bool = False,
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """Soft Jaccard (IoU) loss, ``1 − (I + s) / (P + T − I + s)`` per sample and class.

    With ``squared=True`` the union is ``Σ p²·m + Σ t²·m − I``, still ``>= I``.
    Args and shapes as in :func:`dice_loss`: ``(B', C')`` for ``reduction="none"``, else a scalar.
    Degenerate input: a sample/class with every pixel ignored (or empty in target and prediction) gives loss 0;
    a class absent from the target but predicted gives a loss near 1; all finite.
    """
    o = _check_options(
        mode, include_background, smooth, batch_dice, class_weights, ignore_index, squared, reduction, validate
    )
    return _jaccard(logits, target, weight, o)


# --------------------------------------------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------------------------------------------


class _RegionLoss(nn.Module):
    """Holds the options shared by the region losses, checked once here at construction."""

    def __init__(
        self,
        *,
        mode: str = "multiclass",
        include_background: bool = True,
        smooth: float = 1e-5,
        batch_dice: bool = False,
        class_weights: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = 255,
        squared: bool = False,
        reduction: str = "mean",
        validate: bool = True,
    ):
        super().__init__()
        o = _check_options(
            mode, include_background, smooth, batch_dice, class_weights, ignore_index, squared, reduction, True
        )
        self.mode, self.include_background, self.smooth = o.mode, o.include_background, o.smooth
        self.batch_dice, self.ignore_index, self.squared = o.batch_dice, o.ignore_index, o.squared
        self.reduction, self.validate = o.reduction, validate
        self.register_buffer("class_weights", o.class_weights, persistent=False)

    def _options(self) -> _Options:
        return _Options(
            self.mode,
            self.include_background,
            self.smooth,
            self.batch_dice,
            self.class_weights,
            self.ignore_index,
            self.squared,
            self.reduction,
            self.validate,
        )

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, include_background={self.include_background}, smooth={self.smooth}, "
            f"batch_dice={self.batch_dice}, ignore_index={self.ignore_index}, squared={self.squared}, "
            f"reduction={self.reduction!r}"
        )


class DiceLoss(_RegionLoss):
    """Module form of :func:`dice_loss`; same keyword options, checked at construction.

    ``forward(logits, target, weight=None)``: logits ``(B, C, *spatial)``; returns a scalar or ``(B', C')``.
    """

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return _dice(logits, target, weight, self._options())


class GeneralizedDiceLoss(_RegionLoss):
    """Module form of :func:`generalized_dice_loss`; ``weight_type`` plus the options of :class:`DiceLoss`.

    ``forward(logits, target, weight=None)``: returns a scalar or ``(B,)`` (``(1,)`` with ``batch_dice``).
    """

    def __init__(self, *, weight_type: str = "square", **options):
        check_choice("weight_type", weight_type, WEIGHT_TYPES)
        super().__init__(**options)
        self.weight_type = weight_type

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return _generalized_dice(logits, target, weight, self._options(), self.weight_type)

    def extra_repr(self) -> str:
        return f"weight_type={self.weight_type!r}, " + super().extra_repr()


class TverskyLoss(_RegionLoss):
    """Module form of :func:`tversky_loss`; ``alpha``, ``beta`` plus the options of :class:`DiceLoss`.

    ``forward(logits, target, weight=None)``: returns a scalar or ``(B', C')``.
    """

    def __init__(self, *, alpha: float = 0.5, beta: float = 0.5, **options):
        super().__init__(**options)
        _check_tversky(alpha, beta, self.squared)
        self.alpha, self.beta = float(alpha), float(beta)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return _tversky(logits, target, weight, self._options(), self.alpha, self.beta)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, " + super().extra_repr()


class FocalTverskyLoss(_RegionLoss):
    """Module form of :func:`focal_tversky_loss`; ``alpha``, ``beta``, ``gamma`` plus the options of
    :class:`DiceLoss`.

    ``forward(logits, target, weight=None)``: returns a scalar or ``(B', C')``.
    """

    def __init__(self, *, alpha: float = 0.5, beta: float = 0.5, gamma: float = 0.75, **options):
        super().__init__(**options)
        _check_tversky(alpha, beta, self.squared)
        _check_gamma(gamma)
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return _focal_tversky(logits, target, weight, self._options(), self.alpha, self.beta, self.gamma)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, " + super().extra_repr()


class JaccardLoss(_RegionLoss):
    """Module form of :func:`jaccard_loss`; same keyword options, checked at construction.

    ``forward(logits, target, weight=None)``: returns a scalar or ``(B', C')``.
    """

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return _jaccard(logits, target, weight, self._options())
