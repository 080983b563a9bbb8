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

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ._api import LossModule, LossOptions, as_options_tensor, loss_function
from ._utils import Checks, apply_weight, as_float, as_target, autocast_off, check_number, check_same_shape, reduce

__all__: list[str] = []


@dataclass(frozen=True, kw_only=True)
class CrossEntropyOptions(LossOptions):
    """``class_weights``: ``(C,)`` weight ``w_c`` of each class, >= 0; ``label_smoothing``: ε in [0, 1);
    ``ignore_index``: class index that contributes nothing (index targets); ``gamma``: focusing parameter γ >= 0
    of the softmax focal factor ``(1 − p_t)^γ``, 0 for plain cross-entropy."""

    class_weights: Tensor | None = field(default=None, compare=False)
    label_smoothing: float = 0.0
    ignore_index: int = 255
    gamma: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "class_weights", as_options_tensor("class_weights", self.class_weights, ndim=1))
        check_number("label_smoothing", self.label_smoothing, ge=0, lt=1)
        check_number("ignore_index", self.ignore_index, integer=True)
        check_number("gamma", self.gamma, ge=0)


@loss_function(CrossEntropyOptions)
def cross_entropy(
    logits: Tensor,
    target: Tensor,
    options: CrossEntropyOptions,
    *,
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """Softmax cross-entropy (the softmax focal loss with ``gamma > 0``).

    Args:
        logits: ``(N, C)`` or ``(N, C, d1, ...)``.
        target: class indices of shape ``(N,)`` / ``(N, d1, ...)`` (integer dtype), or class probabilities of the
            logits' shape (floating dtype).
        class_weights, label_smoothing, ignore_index, gamma: see :class:`CrossEntropyOptions`.
        weight: optional elementwise weight broadcastable to the unreduced loss ``(N, d1, ...)``.
        reduction: ``"none"`` returns ``(N, d1, ...)`` (0 at ignored positions); ``"sum"`` the sum; ``"mean"`` as
            torch: for index targets ``Σ weight·w_y·l / Σ w_y`` over the non-ignored positions (``w_y = 1``
            without class weights), 0 when all are ignored; for probabilities the mean over ``(N, d1, ...)``.
        validate: check labels (in ``[0, C)`` or ``ignore_index``) or probabilities (in [0, 1]) and the weight's
            sign; one host sync.
    """
    logits = as_float("logits", logits)
    if logits.ndim < 2:
        raise ValueError(f"logits must have shape (N, C) or (N, C, d1, ...), got {tuple(logits.shape)}")
    if not isinstance(target, Tensor):
        raise ValueError(f"target must be a torch.Tensor, got {type(target).__name__}")
    num_classes, ignore_index, gamma = logits.shape[1], options.ignore_index, options.gamma
    class_weights = options.on("class_weights", logits)
    if class_weights is not None and class_weights.shape != (num_classes,):
        raise ValueError(f"class_weights must have shape ({num_classes},), got {tuple(class_weights.shape)}")
    probabilities = target.is_floating_point()
    checks = Checks()
    if probabilities:
        target = as_target("target", target, logits)
        check_same_shape("logits", logits, "target", target)
        if validate:
            checks.unit_interval("target", target, "class probabilities")
    else:
        expected = logits.shape[:1] + logits.shape[2:]
        if target.shape != expected:
            raise ValueError(
                f"target of class indices must have shape {tuple(expected)} for logits {tuple(logits.shape)}, "
                f"got {tuple(target.shape)}"
            )
        if validate or target.dtype == torch.bool or target.is_complex():
            checks.labels("target", target, num_classes, ignore_index)
        target = target.long()
    if validate:
        checks.weight(weight)
    checks.run()

    with autocast_off(logits.device):
        loss = F.cross_entropy(
            logits,
            target,
            weight=class_weights,
            ignore_index=-100 if probabilities else ignore_index,
            reduction="none",
            label_smoothing=options.label_smoothing,
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


class CrossEntropyLoss(LossModule, function=cross_entropy, name="cross_entropy"):
    """Module form of :func:`cross_entropy`."""
