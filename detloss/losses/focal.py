"""Sigmoid focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

For logits ``x``, ``p = σ(x)`` and a target ``t`` in [0, 1] (hard 0/1 labels or soft scores)::

    FL(x, t) = α_t · (1 − p_t)^γ · BCE(x, t)
    p_t = p·t + (1 − p)(1 − t),   α_t = α·t + (1 − α)(1 − t)

which is ``torchvision.ops.sigmoid_focal_loss`` elementwise; ``alpha < 0`` leaves ``α_t`` out, as there. γ = 0 and
α < 0 give the plain BCE. ``class_weights`` ``w`` multiply each element by the weight of its class (dim 1):
``w_c · FL``. The computation is the fused kernel of :mod:`._modulated_bce`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from ._api import LossModule, LossOptions, as_options_tensor, loss_function
from ._modulated_bce import FOCAL, check_class_weights, checked_inputs, modulated_bce
from ._utils import check_number

__all__: list[str] = []


@dataclass(frozen=True, kw_only=True)
class FocalOptions(LossOptions):
    """``alpha``: weight of the positive term, <= 1 (a negative alpha turns the weighting off); ``gamma``:
    focusing exponent, >= 0; ``class_weights``: ``(C,)`` weight of each class along dim 1 of ``(N, C, ...)``, >= 0
    (None: all 1)."""

    alpha: float = 0.25
    gamma: float = 2.0
    class_weights: Tensor | None = field(default=None, compare=False)

    def __post_init__(self):
        check_number("alpha", self.alpha, le=1)
        check_number("gamma", self.gamma, ge=0)
        object.__setattr__(self, "class_weights", as_options_tensor("class_weights", self.class_weights, ndim=1))


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
        logits: raw scores of any shape; with ``class_weights`` ``(N, C, ...)``, e.g. ``(B, C, A)`` for ``A``
            anchors and ``C`` classes (the detection criterion's ``cls`` view).
        target: the logits' shape, values in [0, 1].
        alpha, gamma, class_weights: see :class:`FocalOptions`.
        weight: optional elementwise weight broadcastable to the logits.
        reduction: ``"none"`` returns the logits' shape; ``"mean"`` / ``"sum"`` a scalar.
        validate: check that the target lies in [0, 1] and the weight is >= 0 (one host sync).
    """
    logits, target = checked_inputs(logits, target, "target", weight, validate)
    class_weights = options.on("class_weights", logits)
    check_class_weights(class_weights, logits)
    alpha, gamma = float(options.alpha), float(options.gamma)
    return modulated_bce(logits, target, FOCAL, alpha, gamma, weight, reduction, class_weights)


class FocalLoss(LossModule, function=focal_loss, name="focal"):
    """Module form of :func:`focal_loss`."""
