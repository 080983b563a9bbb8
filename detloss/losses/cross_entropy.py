"""Softmax cross-entropy over class dimension 1, with class weights, label smoothing and an ignored label.

For logits ``x`` of shape ``(N, C, d1, ...)`` and a class index ``y`` per position::

    CE(x, y) = −w_y · log softmax(x)_y

or, for a target of class probabilities ``q`` (the logits' shape), ``−Σ_c w_c q_c log softmax(x)_c``. Label
smoothing (Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016) mixes the
target with the uniform distribution: ``(1 − ε)·onehot(y) + ε/C``. All of it is ``F.cross_entropy``, which this
equals, except that a ``"mean"`` over positions that are all ignored is 0 instead of NaN, and that it keeps full
relative precision where the prediction is confident: ``−log softmax`` and its gradient come from
:mod:`._stable` (torch's ``log_softmax`` takes the log of a sum close to 1, and its gradient ``p_y − 1``
subtracts from 1: at a logit margin of 10 both lose 3 of float32's 7 digits, at 17 all of them).

``gamma > 0`` turns it into the softmax focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV
2017): each position's loss is scaled by ``(1 − p_t)^γ``, ``p_t`` the predicted probability of its class (of
the target distribution, ``Σ_c q_c p_c``, for probabilities), with the gradient through the factor; ``1 − p_t``
is computed as ``−expm1(log p_t)``, to full precision when ``p_t`` is close to 1 (beyond a margin of ~87 it
underflows float32 and the factor is 0, which for ``γ < 1`` with label smoothing is below the true value).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._api import LossModule, LossOptions, as_options_tensor, loss_function
from ._stable import index_nll, neg_log_softmax
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

    Reference form: :func:`detloss.losses.reference.cross_entropy`.

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
        loss, nll_t = _unreduced(logits, target, probabilities, class_weights, ignore_index, options.label_smoothing)
        if gamma > 0:
            loss = loss * _focal_factor(nll_t, target, probabilities, gamma)
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


def _unreduced(
    logits: Tensor, target: Tensor, probabilities: bool, class_weights: Tensor | None, ignore_index: int, eps: float
) -> tuple[Tensor, Tensor]:
    """``F.cross_entropy(..., reduction="none")`` to full precision (:mod:`._stable`), and ``−log p`` of the target:
    ``(N, d1, ...)`` at the label for class indices, ``(N, C, d1, ...)`` for probabilities."""
    num_classes = logits.shape[1]
    if probabilities:
        nll = neg_log_softmax(logits, 1)
        q = target * (1 - eps) + eps / num_classes if eps else target
        if class_weights is not None:
            q = q * class_weights.view(-1, *([1] * (logits.ndim - 2)))
        return (q * nll).sum(1), nll
    valid = target != ignore_index
    index = target.masked_fill(~valid, 0).unsqueeze(1)
    if eps:  # (1 − ε)·w_y·(−log p_y) + ε/C·Σ_c w_c·(−log p_c), as torch
        nll = neg_log_softmax(logits, 1)
        nll_y = nll.gather(1, index).squeeze(1)
        w_nll = nll if class_weights is None else nll * class_weights.view(-1, *([1] * (logits.ndim - 2)))
        loss = w_nll.sum(1) * (eps / num_classes)
        loss = loss + (nll_y if class_weights is None else nll_y * class_weights[index.squeeze(1)]) * (1 - eps)
    else:
        nll_y = index_nll(logits, index, 1).squeeze(1)
        loss = nll_y if class_weights is None else nll_y * class_weights[index.squeeze(1)]
    return torch.where(valid, loss, 0.0), nll_y


def _focal_factor(nll_t: Tensor, target: Tensor, probabilities: bool, gamma: float) -> Tensor:
    """``(1 − p_t)^γ`` per position, 0 (with a zero gradient) where ``p_t = 1``; ``nll_t`` from :func:`_unreduced`.

    ``1 − p`` is ``−expm1(−(−log p))``, to full precision for ``p`` close to 1; for probabilities
    ``1 − Σ_c q_c p_c = (1 − Σ_c q_c) + Σ_c q_c (1 − p_c)``.
    """
    if probabilities:
        base = (1 - target.sum(1)) + (target * torch.expm1(-nll_t).neg()).sum(1)
    else:
        base = torch.expm1(-nll_t).neg()
    positive = base > 0
    return torch.where(positive, torch.where(positive, base, 1.0).pow(gamma), 0.0)


class CrossEntropyLoss(LossModule, function=cross_entropy, name="cross_entropy"):
    """Module form of :func:`cross_entropy`."""
