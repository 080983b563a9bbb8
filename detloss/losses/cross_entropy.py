"""Softmax cross-entropy over class dimension 1, with class weights, label smoothing and an ignored label.

For logits ``x`` of shape ``(N, C, d1, ...)`` and a class index ``y`` per position::

    CE(x, y) = −w_y · log softmax(x)_y

or, for a target of class probabilities ``q`` (the logits' shape), ``−Σ_c w_c q_c log softmax(x)_c``. Label
smoothing (Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016) mixes the
target with the uniform distribution: ``(1 − ε)·onehot(y) + ε/C``. All of it is ``F.cross_entropy``, which this
equals, except that a ``"mean"`` over positions that are all ignored is 0 instead of NaN.

``gamma > 0`` turns it into the softmax focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV
2017): each position's loss is scaled by ``(1 − p_t)^γ``, ``p_t`` the predicted probability of its class (of
the target distribution, ``Σ_c q_c p_c``, for probabilities), with the gradient through the factor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._modulated_bce import autocast_off
from ._utils import (
    apply_weight,
    as_float,
    as_target,
    check_in_unit_interval,
    check_labels,
    check_reduction,
    check_same_shape,
    reduce,
)

__all__ = ["cross_entropy", "CrossEntropyLoss"]


def _check_options(label_smoothing: float, ignore_index: int, gamma: float = 0.0) -> None:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 <= gamma < float("inf"):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    ok = isinstance(label_smoothing, (int, float)) and not isinstance(label_smoothing, bool)
    if not (ok and 0 <= label_smoothing < 1):
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")


def _class_weights(class_weights, num_classes: int, logits: Tensor, validate: bool) -> Tensor | None:
    if class_weights is None:
        return None
    if not isinstance(class_weights, Tensor):
        class_weights = torch.as_tensor(class_weights)
    if class_weights.shape != (num_classes,):
        raise ValueError(f"class_weights must have shape ({num_classes},), got {tuple(class_weights.shape)}")
    class_weights = class_weights.to(dtype=logits.dtype, device=logits.device)
    if validate and not bool((class_weights >= 0).all()):  # NaN fails too
        raise ValueError("class_weights must be >= 0")
    return class_weights


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    class_weights: Tensor | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int = 255,
    gamma: float = 0.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """Softmax cross-entropy (the softmax focal loss with ``gamma > 0``).

    Args:
        logits: ``(N, C)`` or ``(N, C, d1, ...)``.
        target: class indices of shape ``(N,)`` / ``(N, d1, ...)`` (integer dtype), or class probabilities of the
            logits' shape (floating dtype).
        class_weights: ``(C,)``, the weight ``w_c`` of each class.
        label_smoothing: ε in [0, 1).
        gamma: focusing parameter γ >= 0 of the focal factor ``(1 − p_t)^γ``; 0 is plain cross-entropy.
        ignore_index: class index that contributes nothing, to the sum or to the mean's normaliser (index
            targets only).
        weight: optional elementwise weight broadcastable to the unreduced loss ``(N, d1, ...)``.
        reduction: ``"none"`` returns ``(N, d1, ...)`` (0 at ignored positions); ``"sum"`` the sum; ``"mean"`` as
            torch: for index targets ``Σ weight·w_y·l / Σ w_y`` over the non-ignored positions (``w_y = 1``
            without class weights), 0 when all are ignored; for probabilities the mean over ``(N, d1, ...)``.
        validate: check labels (in ``[0, C)`` or ``ignore_index``) or probabilities (in [0, 1]); one host sync.
    """
    check_reduction(reduction)
    _check_options(label_smoothing, ignore_index, gamma)
    logits = as_float("logits", logits)
    if logits.ndim < 2:
        raise ValueError(f"logits must have shape (N, C) or (N, C, d1, ...), got {tuple(logits.shape)}")
    if not isinstance(target, Tensor):
        raise ValueError(f"target must be a torch.Tensor, got {type(target).__name__}")
    num_classes = logits.shape[1]
    class_weights = _class_weights(class_weights, num_classes, logits, validate)
    probabilities = target.is_floating_point()
    if probabilities:
        target = as_target("target", target, logits)
        check_same_shape("logits", logits, "target", target)
        if validate:
            check_in_unit_interval("target", target.detach())
    else:
        expected = logits.shape[:1] + logits.shape[2:]
        if target.shape != expected:
            raise ValueError(
                f"target of class indices must have shape {tuple(expected)} for logits {tuple(logits.shape)}, "
                f"got {tuple(target.shape)}"
            )
        if validate or target.dtype == torch.bool or target.is_complex():
            check_labels("target", target, num_classes, ignore_index)
        target = target.long()

    with autocast_off(logits.device):
        loss = F.cross_entropy(
            logits,
            target,
            weight=class_weights,
            ignore_index=-100 if probabilities else ignore_index,
            reduction="none",
            label_smoothing=label_smoothing,
        )
        if gamma > 0:
            loss = loss * _focal_factor(logits, target, probabilities, ignore_index, gamma)
        loss = apply_weight(loss, weight)
        if reduction != "mean" or probabilities:
            return reduce(loss, reduction)
        # torch's mean: the sum over the class weights of the non-ignored targets (their count without weights)
        valid = target != ignore_index
        if class_weights is None:
            norm = valid.sum()
        else:
            norm = (class_weights[target.masked_fill(~valid, 0)] * valid).sum()
        return loss.sum() / torch.where(norm > 0, norm, 1)  # all ignored: the sum is 0, so is the mean


def _focal_factor(logits: Tensor, target: Tensor, probabilities: bool, ignore_index: int, gamma: float) -> Tensor:
    """``(1 − p_t)^γ`` per position, 0 (with a zero gradient) where ``p_t = 1``."""
    log_p = F.log_softmax(logits, 1)
    if probabilities:
        p_t = (target * log_p.exp()).sum(1)
    else:
        index = target.masked_fill(target == ignore_index, 0).unsqueeze(1)
        p_t = log_p.gather(1, index).squeeze(1).exp()
    base = 1 - p_t
    positive = base > 0
    return torch.where(positive, torch.where(positive, base, 1.0).pow(gamma), 0.0)


class CrossEntropyLoss(nn.Module):
    """Module form of :func:`cross_entropy`; ``class_weights`` is kept as a (non-persistent) buffer."""

    def __init__(
        self,
        *,
        class_weights: Tensor | None = None,
        label_smoothing: float = 0.0,
        ignore_index: int = 255,
        gamma: float = 0.0,
        reduction: str = "mean",
        validate: bool = True,
    ):
        super().__init__()
        _check_options(label_smoothing, ignore_index, gamma)
        check_reduction(reduction)
        if class_weights is not None:
            class_weights = torch.as_tensor(class_weights, dtype=torch.float32)
            if class_weights.ndim != 1:
                raise ValueError(f"class_weights must have shape (C,), got {tuple(class_weights.shape)}")
            if validate and not bool((class_weights >= 0).all()):
                raise ValueError("class_weights must be >= 0")
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.label_smoothing, self.ignore_index, self.gamma = label_smoothing, ignore_index, gamma
        self.reduction, self.validate = reduction, validate

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return cross_entropy(
            logits,
            target,
            class_weights=self.class_weights,
            label_smoothing=self.label_smoothing,
            ignore_index=self.ignore_index,
            gamma=self.gamma,
            weight=weight,
            reduction=self.reduction,
            validate=self.validate,
        )

    def extra_repr(self) -> str:
        return (
            f"label_smoothing={self.label_smoothing}, ignore_index={self.ignore_index}, gamma={self.gamma}, "
            f"reduction={self.reduction!r}"
        )
