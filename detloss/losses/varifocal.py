"""Varifocal loss (Zhang et al., "VarifocalNet: An IoU-aware Dense Object Detector", CVPR 2021).

For logits ``x``, ``p = σ(x)`` and an IoU-aware target score ``q`` in [0, 1] (the IoU of the predicted box with its
ground truth at the true class, 0 elsewhere)::

    VFL(x, q) = BCE(x, q) · w,    w = q          where q > 0
                                  w = α · p^γ    where q = 0

Positives are weighted by their own score; only negatives are down-weighted, focal-style. As in the authors'
reference implementation the weight ``α·p^γ`` is not detached: the gradient also flows through ``σ(x)`` in it.
``class_weights`` ``w`` multiply each element by the weight of its class (dim 1): ``w_c · VFL``.
The computation is the fused kernel of :mod:`._modulated_bce`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from ._api import LossModule, LossOptions, as_options_tensor, loss_function
from ._modulated_bce import VARIFOCAL, check_class_weights, checked_inputs, modulated_bce
from ._utils import check_number

__all__: list[str] = []


@dataclass(frozen=True, kw_only=True)
class VarifocalOptions(LossOptions):
    """``alpha``: scale of the negatives' weight, >= 0; ``gamma``: its exponent, >= 0;
    ``class_weights``: ``(C,)`` weight of each class along dim 1 of ``(N, C, ...)``, >= 0 (None: all 1)."""

    alpha: float = 0.75
    gamma: float = 2.0
    class_weights: Tensor | None = field(default=None, compare=False)

    def __post_init__(self):
        check_number("alpha", self.alpha, ge=0)
        check_number("gamma", self.gamma, ge=0)
        object.__setattr__(self, "class_weights", as_options_tensor("class_weights", self.class_weights, ndim=1))


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
        logits: raw scores of any shape; with ``class_weights`` ``(N, C, ...)``, e.g. ``(B, C, A)`` (the detection
            criterion's ``cls`` view).
        target_scores: the logits' shape, values in [0, 1]; 0 marks a negative.
        alpha, gamma, class_weights: see :class:`VarifocalOptions`.
        weight: optional elementwise weight broadcastable to the logits.
        reduction: ``"none"`` returns the logits' shape; ``"mean"`` / ``"sum"`` a scalar.
        validate: check that the scores lie in [0, 1] and the weight is >= 0 (one host sync).
    """
    logits, target_scores = checked_inputs(logits, target_scores, "target_scores", weight, validate)
    class_weights = options.on("class_weights", logits)
    check_class_weights(class_weights, logits)
    alpha, gamma = float(options.alpha), float(options.gamma)
    return modulated_bce(logits, target_scores, VARIFOCAL, alpha, gamma, weight, reduction, class_weights)


class VarifocalLoss(LossModule, function=varifocal_loss, name="varifocal"):
    """Module form of :func:`varifocal_loss`."""
