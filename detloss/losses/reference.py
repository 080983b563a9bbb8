"""The maths of every loss that runs a fused kernel, in ordinary torch: the formula as its paper writes it.

Each function here has the signature of the loss it mirrors (the same options as keywords, with the same defaults,
and ``weight`` and ``reduction``), no value checks and no custom autograd: autograd differentiates the formula as
written. ``tests/losses/test_reference_forms.py`` holds each fused loss equal to its form here, in values and gradients
(float64), and each form here to a hand-computed case or to torch / torchvision / MONAI where they have the loss.

    ===============================  ==========================================  ===============================
    reference form                   the fused loss                              its kernel
    ===============================  ==========================================  ===============================
    :func:`bce_with_logits`          :func:`detloss.losses.bce_with_logits`      ``_modulated_bce.py``
    :func:`focal_loss`               :func:`detloss.losses.focal_loss`           ``_modulated_bce.py``
    :func:`varifocal_loss`           :func:`detloss.losses.varifocal_loss`       ``_modulated_bce.py``
    :func:`quality_focal_loss`       :func:`detloss.losses.quality_focal_loss`   ``_modulated_bce.py``
    :func:`cross_entropy`            :func:`detloss.losses.cross_entropy`        ``_stable.py`` (``index_nll``)
    :func:`dfl_loss`                 :func:`detloss.losses.dfl_loss`             ``_stable.py`` (blocked softmax)
    :func:`dice_loss` and the rest   :func:`detloss.losses.dice_loss`, ...       ``_region.py`` (fused counts)
    ===============================  ==========================================  ===============================

The IoU family needs no second form: :mod:`.iou` is written plainly, and :func:`detloss.losses.box_loss_corners`
is the one owner of its arithmetic, which the task-aligned assigner's dense blocks call too.

What the fused paths add is speed and precision, not different maths: they compute every quantity from terms of
one sign (``1 − σ(x)`` as ``σ(−x)``, ``1 − ratio`` as a ratio of the mismatch), which keeps float32 values and
gradients precise where these forms lose digits (a confident logit: ``x = 15`` costs all of ``1 − σ(x)``'s
digits in float32). Use these to read, check and compare, and the losses of :mod:`detloss.losses` to train.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "bce_with_logits",
    "focal_loss",
    "varifocal_loss",
    "quality_focal_loss",
    "cross_entropy",
    "dfl_loss",
    "dice_loss",
    "jaccard_loss",
    "tversky_loss",
    "focal_tversky_loss",
    "generalized_dice_loss",
]


def _reduce(loss: Tensor, weight: Tensor | None, reduction: str) -> Tensor:
    """``loss · weight``, then ``"none"``, ``"sum"`` or ``"mean"`` (0 for no elements)."""
    if weight is not None:
        loss = loss * weight
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" or loss.numel() == 0 else loss.mean()


# --------------------------------------------------------------------------------------------------------------
# sigmoid losses: BCE(x, t) · m(σ(x), t)


def _class_weighted(loss: Tensor, class_weights: Tensor | None) -> Tensor:
    """``loss`` ``(N, C, ...)`` times the weight of each element's class (dim 1); unchanged without weights."""
    if class_weights is None:
        return loss
    return loss * class_weights.view(1, -1, *([1] * (loss.ndim - 2)))


def _bce(x: Tensor, t: Tensor, pos_weight: Tensor | float = 1.0) -> Tensor:
    """``−[w_pos · t · log σ(x) + (1 − t) · log(1 − σ(x))]`` (``log σ`` as ``logsigmoid``, defined for every x)."""
    return -(pos_weight * t * F.logsigmoid(x) + (1 - t) * F.logsigmoid(-x))


def bce_with_logits(
    logits, target, *, pos_weight=None, label_smoothing=0.0, class_weights=None, weight=None, reduction="mean"
):
    """``−w_c · [w_pos · t' · log σ(x) + (1 − t') · log(1 − σ(x))]``, ``t' = t(1 − ε) + ε/2`` (label smoothing:
    Szegedy et al., CVPR 2016), ``w_c`` the class weight of the element's class (dim 1; 1 without weights)."""
    t = target * (1 - label_smoothing) + label_smoothing / 2
    loss = _bce(logits, t, 1.0 if pos_weight is None else pos_weight)
    return _reduce(_class_weighted(loss, class_weights), weight, reduction)


def focal_loss(logits, target, *, alpha=0.25, gamma=2.0, class_weights=None, weight=None, reduction="mean"):
    """Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017: ``α_t · (1 − p_t)^γ · BCE(x, t)`` with
    ``p = σ(x)``, ``p_t = p·t + (1 − p)(1 − t)``, ``α_t = α·t + (1 − α)(1 − t)`` (no ``α_t`` for ``α < 0``), as
    ``torchvision.ops.sigmoid_focal_loss``; times the class weight ``w_c`` (dim 1)."""
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    loss = (1 - p_t) ** gamma * _bce(logits, target)
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return _reduce(_class_weighted(loss, class_weights), weight, reduction)


def varifocal_loss(logits, target_scores, *, alpha=0.75, gamma=2.0, class_weights=None, weight=None, reduction="mean"):
    """Zhang et al., "VarifocalNet", CVPR 2021: ``BCE(x, q) · (q if q > 0 else α · σ(x)^γ)``, the weight not
    detached (as the authors' code); times the class weight ``w_c`` (dim 1)."""
    q = target_scores
    w = torch.where(q > 0, q, alpha * torch.sigmoid(logits) ** gamma)
    return _reduce(_class_weighted(_bce(logits, q) * w, class_weights), weight, reduction)


def quality_focal_loss(logits, target_scores, *, beta=2.0, class_weights=None, weight=None, reduction="mean"):
    """Li et al., "Generalized Focal Loss", NeurIPS 2020: ``|q − σ(x)|^β · BCE(x, q)``; times the class weight
    ``w_c`` (dim 1)."""
    q = target_scores
    loss = (q - torch.sigmoid(logits)).abs() ** beta * _bce(logits, q)
    return _reduce(_class_weighted(loss, class_weights), weight, reduction)


# --------------------------------------------------------------------------------------------------------------
# softmax losses


def cross_entropy(
    logits, target, *, class_weights=None, label_smoothing=0.0, ignore_index=255, gamma=0.0, weight=None,
    reduction="mean",
):  # fmt: skip
    """``−Σ_c w_c q_c log softmax(x)_c`` over dim 1, times ``(1 − p_t)^γ`` (softmax focal loss, Lin et al., 2017).

    ``q``: the target's class probabilities (floating ``target``) or ``onehot(y)`` (class indices), mixed with the
    uniform distribution by label smoothing, ``(1 − ε)·q + ε/C``; ``p_t = Σ_c q_c p_c`` of the unsmoothed ``q``.
    Positions labelled ``ignore_index`` count 0. ``"mean"`` for class indices is ``F.cross_entropy``'s: the sum
    over ``Σ w_y`` of the positions not ignored (0 when all are); for probabilities the plain mean.
    """
    num_classes = logits.shape[1]
    log_p = F.log_softmax(logits, 1)
    index = not target.is_floating_point()
    if index:
        valid = target != ignore_index
        q = F.one_hot(target.masked_fill(~valid, 0), num_classes).movedim(-1, 1).to(logits.dtype)
    else:
        q = target
    w = 1.0 if class_weights is None else class_weights.view(-1, *([1] * (logits.ndim - 2)))
    loss = -(w * (q * (1 - label_smoothing) + label_smoothing / num_classes) * log_p).sum(1)
    if gamma > 0:
        loss = loss * (1 - (q * log_p.exp()).sum(1)) ** gamma
    if not index:
        return _reduce(loss, weight, reduction)
    loss = torch.where(valid, loss, 0.0)
    if reduction != "mean":
        return _reduce(loss, weight, reduction)
    norm = (w * q).sum(1)[valid].sum()  # Σ w_y over the positions not ignored
    return _reduce(loss, weight, "sum") / torch.where(norm > 0, norm, 1)


def dfl_loss(pred_logits, target, *, weight=None, reduction="mean"):
    """Li et al., "Generalized Focal Loss", NeurIPS 2020: ``−((y_r − y)·log S_{y_l} + (y − y_l)·log S_{y_r})``,
    ``S`` the softmax over the last dim (``reg_max`` bins), ``y_l = ⌊y⌋``, ``y_r = y_l + 1``, ``y`` clamped to
    ``[0, reg_max − 1.01]``; the mean over the sides (the dim before the bins)."""
    y = target.clamp(0, pred_logits.shape[-1] - 1.01)
    left = y.floor()
    log_s = F.log_softmax(pred_logits, -1)
    log_left = log_s.gather(-1, left.long().unsqueeze(-1)).squeeze(-1)
    log_right = log_s.gather(-1, left.long().unsqueeze(-1) + 1).squeeze(-1)
    loss = -((left + 1 - y) * log_left + (y - left) * log_right)
    return _reduce(loss.mean(-1) if loss.shape[-1] else loss.sum(-1), weight, reduction)


# --------------------------------------------------------------------------------------------------------------
# region losses: the soft counts I, P, T per sample and class


def _counts(logits, target, mode, include_background, ignore_index, squared, batch_dice):
    """``(I, P, T)``, each ``(B', C')``: ``I = Σ p·t·m``, ``P = Σ p·m``, ``T = Σ t·m`` over the spatial dims (and
    the batch with ``batch_dice``); ``Σ p²·m``, ``Σ t²·m`` with ``squared``; ``m`` the mask of elements not
    ignored. The options are those of :class:`detloss.losses.RegionOptions`."""
    num_classes, spatial = logits.shape[1], logits.shape[2:]
    p = torch.softmax(logits, 1) if mode == "multiclass" else torch.sigmoid(logits)
    labels = None
    if mode == "multiclass" and not (target.is_floating_point() or target.dtype == torch.bool):
        if target.shape[1:] == spatial or target.shape[2:] == spatial and target.shape[1] == 1:
            labels = target.reshape(target.shape[0], *spatial)
    if labels is not None:  # class indices: an ignored pixel is left out for every class
        m = torch.ones_like(labels, dtype=p.dtype) if ignore_index is None else (labels != ignore_index).to(p.dtype)
        t = F.one_hot(labels.masked_fill(m == 0, 0), num_classes).movedim(-1, 1).to(p.dtype)
        m = m.unsqueeze(1)
    else:  # a dense target: an element equal to ignore_index is left out for its class
        if target.ndim == logits.ndim - 1:
            target = target.unsqueeze(1)
        m = torch.ones_like(p) if ignore_index is None else (target != ignore_index).to(p.dtype)
        t = torch.where(m > 0, target.to(p.dtype), 0.0)
    t = t * m
    if not include_background:
        p, t, m = p[:, 1:], t[:, 1:], m[:, 1:] if m.shape[1] > 1 else m
    dims = tuple(range(0 if batch_dice else 2, logits.ndim))
    dims = tuple(d for d in dims if d != 1)

    def total(v: Tensor) -> Tensor:
        return (v * m).sum(dims).reshape(-1, p.shape[1])

    return total(p * t), total(p * p if squared else p), total(t * t if squared else t)


def _per_class(loss, class_weights, weight, reduction):
    """Per-class losses ``(B', C')`` times the class weights; ``"mean"``: over ``B' · Σ_c class_weights[c]``."""
    if class_weights is None:
        return _reduce(loss, weight, reduction)
    loss = loss * class_weights
    if reduction != "mean":
        return _reduce(loss, weight, reduction)
    return _reduce(loss, weight, "sum") / (loss.shape[0] * class_weights.sum())


def dice_loss(
    logits, target, *, mode="multiclass", include_background=True, smooth=1e-5, batch_dice=False,
    class_weights=None, ignore_index=255, squared=False, weight=None, reduction="mean",
):  # fmt: skip
    """Milletari et al., V-Net, 2016: ``1 − (2I + s) / (P + T + s)`` per sample and class."""
    inter, pred, true = _counts(logits, target, mode, include_background, ignore_index, squared, batch_dice)
    return _per_class(1 - (2 * inter + smooth) / (pred + true + smooth), class_weights, weight, reduction)


def jaccard_loss(
    logits, target, *, mode="multiclass", include_background=True, smooth=1e-5, batch_dice=False,
    class_weights=None, ignore_index=255, squared=False, weight=None, reduction="mean",
):  # fmt: skip
    """Soft Jaccard (IoU) loss: ``1 − (I + s) / (P + T − I + s)`` per sample and class."""
    inter, pred, true = _counts(logits, target, mode, include_background, ignore_index, squared, batch_dice)
    return _per_class(1 - (inter + smooth) / (pred + true - inter + smooth), class_weights, weight, reduction)


def _tversky_index(logits, target, alpha, beta, smooth, *counting):
    inter, pred, true = _counts(logits, target, *counting)
    return (inter + smooth) / (inter + alpha * (pred - inter) + beta * (true - inter) + smooth)


def tversky_loss(
    logits, target, *, mode="multiclass", include_background=True, smooth=1e-5, batch_dice=False,
    class_weights=None, ignore_index=255, squared=False, alpha=0.5, beta=0.5, weight=None, reduction="mean",
):  # fmt: skip
    """Salehi et al., 2017: ``1 − TI``, ``TI = (I + s) / (I + α·FP + β·FN + s)``, ``FP = P − I``, ``FN = T − I``."""
    counting = (mode, include_background, ignore_index, squared, batch_dice)
    ti = _tversky_index(logits, target, alpha, beta, smooth, *counting)
    return _per_class(1 - ti, class_weights, weight, reduction)


def focal_tversky_loss(
    logits, target, *, mode="multiclass", include_background=True, smooth=1e-5, batch_dice=False,
    class_weights=None, ignore_index=255, squared=False, alpha=0.5, beta=0.5, gamma=0.75, weight=None,
    reduction="mean",
):  # fmt: skip
    """Abraham & Khan, 2019: ``(1 − TI)^γ``, ``TI`` as in :func:`tversky_loss`."""
    counting = (mode, include_background, ignore_index, squared, batch_dice)
    ti = _tversky_index(logits, target, alpha, beta, smooth, *counting)
    return _per_class((1 - ti) ** gamma, class_weights, weight, reduction)


def generalized_dice_loss(
    logits, target, *, mode="multiclass", include_background=True, smooth=1e-5, batch_dice=False,
    class_weights=None, ignore_index=255, squared=False, weight_type="square", weight=None, reduction="mean",
):  # fmt: skip
    """Sudre et al., 2017: ``1 − (2 Σ_c w_c I_c + s) / (Σ_c w_c (P_c + T_c) + s)`` per sample.

    ``w_c = 1 / T_c²`` (``"square"``), ``1 / T_c`` (``"simple"``) or 1 (``"uniform"``), constants (no gradient);
    a class absent from a sample's target takes the largest finite weight of that sample (1 if every class is
    absent); ``class_weights`` multiply ``w_c``.
    """
    inter, pred, true = _counts(logits, target, mode, include_background, ignore_index, squared, batch_dice)
    t = true.detach()
    w = torch.ones_like(t) if weight_type == "uniform" else 1 / (t if weight_type == "simple" else t * t)
    finite = torch.isfinite(w)
    largest = torch.where(finite, w, 0.0).amax(1, keepdim=True)
    w = torch.where(finite, w, torch.where(largest > 0, largest, 1.0))
    if class_weights is not None:
        w = w * class_weights
    loss = 1 - (2 * (w * inter).sum(1) + smooth) / ((w * (pred + true)).sum(1) + smooth)
    return _reduce(loss, weight, reduction)
