"""Sigmoid focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

For logits ``x``, ``p = σ(x)`` and a target ``t`` in [0, 1] (hard 0/1 labels or soft scores)::

    FL(x, t) = α_t · (1 − p_t)^γ · BCE(x, t)
    p_t = p·t + (1 − p)(1 − t),   α_t = α·t + (1 − α)(1 − t)

which is ``torchvision.ops.sigmoid_focal_loss`` elementwise; ``alpha < 0`` leaves ``α_t`` out, as there. γ = 0 and
α < 0 give the plain BCE. The computation is the fused kernel of :mod:`._modulated_bce`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ._api import LossModule, LossOptions, loss_function
from ._modulated_bce import FOCAL, checked_inputs, modulated_bce
from ._utils import check_number

__all__: list[str] = []


@dataclass(frozen=True, kw_only=True)
class FocalOptions(LossOptions):
    """``alpha``: weight of the positive term, <= 1 (a negative alpha turns the weighting off); ``gamma``:
    focusing exponent, >= 0."""

    alpha: float = 0.25
    gamma: float = 2.0

    def __post_init__(self):
        check_number("alpha", self.alpha, le=1)
        check_number("gamma", self.gamma, ge=0)


@loss_function(FocalOptions)
def focal_loss(
    logits: Tensor,
    target: Tensor,
    options: FocalOptions,
    *,
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """Sigmoid focal loss.

    Reference form: :func:`detloss.losses.reference.focal_loss`.

    Args:
        logits: raw scores of any shape, e.g. ``(N, A, C)`` for ``A`` anchors and ``C`` classes.
        target: the logits' shape, values in [0, 1].
        alpha, gamma: see :class:`FocalOptions`.
        weight: optional elementwise weight broadcastable to the logits.
        reduction: ``"none"`` returns the logits' shape; ``"mean"`` / ``"sum"`` a scalar.
        validate: check that the target lies in [0, 1] and the weight is >= 0 (one host sync).
    """
    logits, target = checked_inputs(logits, target, "target", weight, validate)
    return modulated_bce(logits, target, FOCAL, float(options.alpha), float(options.gamma), weight, reduction)


class FocalLoss(LossModule, function=focal_loss, name="focal"):
    """Module form of :func:`focal_loss`."""
