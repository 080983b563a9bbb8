"""Varifocal loss (Zhang et al., "VarifocalNet: An IoU-aware Dense Object Detector", CVPR 2021).

For logits ``x``, ``p = σ(x)`` and an IoU-aware target score ``q`` in [0, 1] (the IoU of the predicted box with its
ground truth at the true class, 0 elsewhere)::

    VFL(x, q) = BCE(x, q) · w,    w = q          where q > 0
                                  w = α · p^γ    where q = 0

Positives are weighted by their own score; only negatives are down-weighted, focal-style. As in the authors'
reference implementation the weight ``α·p^γ`` is not detached: the gradient also flows through ``σ(x)`` in it.
The computation is the fused kernel of :mod:`._modulated_bce`.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._modulated_bce import VARIFOCAL, check_finite_nonneg, modulated_bce
from ._utils import as_float, as_target, check_in_unit_interval, check_reduction, check_same_shape

__all__ = ["varifocal_loss", "VarifocalLoss"]


def _check_options(alpha: float, gamma: float) -> None:
    check_finite_nonneg("alpha", alpha)
    check_finite_nonneg("gamma", gamma)


def varifocal_loss(
    logits: Tensor,
    target_scores: Tensor,
    *,
    alpha: float = 0.75,
    gamma: float = 2.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """Varifocal loss.

    Args:
        logits: raw scores of any shape, e.g. ``(N, A, C)``.
        target_scores: the logits' shape, values in [0, 1]; 0 marks a negative.
        alpha: scale of the negatives' weight, >= 0.
        gamma: exponent of the negatives' weight, >= 0.
        weight: optional elementwise weight broadcastable to the logits.
        reduction: ``"none"`` returns the logits' shape; ``"mean"`` / ``"sum"`` a scalar.
        validate: check that the scores lie in [0, 1] (one host sync).
    """
    check_reduction(reduction)
    _check_options(alpha, gamma)
    logits = as_float("logits", logits)
    target_scores = as_target("target_scores", target_scores, logits)
    check_same_shape("logits", logits, "target_scores", target_scores)
    if validate:
        check_in_unit_interval("target_scores", target_scores.detach())
    return modulated_bce(logits, target_scores, VARIFOCAL, float(alpha), float(gamma), weight, reduction)


class VarifocalLoss(nn.Module):
    """Module form of :func:`varifocal_loss`."""

    def __init__(self, *, alpha: float = 0.75, gamma: float = 2.0, reduction: str = "mean", validate: bool = True):
        super().__init__()
        _check_options(alpha, gamma)
        check_reduction(reduction)
        self.alpha, self.gamma, self.reduction, self.validate = alpha, gamma, reduction, validate

    def forward(self, logits: Tensor, target_scores: Tensor, weight: Tensor | None = None) -> Tensor:
        return varifocal_loss(
            logits,
            target_scores,
            alpha=self.alpha,
            gamma=self.gamma,
            weight=weight,
            reduction=self.reduction,
            validate=self.validate,
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"
