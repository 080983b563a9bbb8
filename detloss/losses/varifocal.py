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

from dataclasses import dataclass

from torch import Tensor

from ._api import LossModule, LossOptions, loss_function
from ._modulated_bce import VARIFOCAL, checked_inputs, modulated_bce
from ._utils import check_number

__all__: list[str] = []


@dataclass(frozen=True, kw_only=True)
class VarifocalOptions(LossOptions):
    """``alpha``: scale of the negatives' weight, >= 0; ``gamma``: its exponent, >= 0."""

    alpha: float = 0.75
    gamma: float = 2.0

    def __post_init__(self):
        check_number("alpha", self.alpha, ge=0)
        check_number("gamma", self.gamma, ge=0)


@loss_function(VarifocalOptions)
def varifocal_loss(
    logits: Tensor,
    target_scores: Tensor,
    options: VarifocalOptions,
    *,
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """Varifocal loss.

    Reference form: :func:`detloss.losses.reference.varifocal_loss`.

    Args:
        logits: raw scores of any shape, e.g. ``(N, A, C)``.
        target_scores: the logits' shape, values in [0, 1]; 0 marks a negative.
        alpha, gamma: see :class:`VarifocalOptions`.
        weight: optional elementwise weight broadcastable to the logits.
        reduction: ``"none"`` returns the logits' shape; ``"mean"`` / ``"sum"`` a scalar.
        validate: check that the scores lie in [0, 1] and the weight is >= 0 (one host sync).
    """
    logits, target_scores = checked_inputs(logits, target_scores, "target_scores", weight, validate)
    return modulated_bce(
        logits, target_scores, VARIFOCAL, float(options.alpha), float(options.gamma), weight, reduction
    )


class VarifocalLoss(LossModule, function=varifocal_loss, name="varifocal"):
    """Module form of :func:`varifocal_loss`."""
