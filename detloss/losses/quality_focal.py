"""Quality focal loss (Li et al., "Generalized Focal Loss: Learning Qualified and Distributed Bounding Boxes for
Dense Object Detection", NeurIPS 2020).

For logits ``x``, ``p = σ(x)`` and a quality target ``q`` in [0, 1] (the IoU at the true class, 0 elsewhere)::

    QFL(x, q) = |q − p|^β · BCE(x, q)

elementwise, the focal modulation extended to soft targets; the gradient flows through ``p`` in the factor too.
``class_weights`` ``w`` multiply each element by the weight of its class (dim 1): ``w_c · QFL``.
The computation is the fused kernel of :mod:`._modulated_bce`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from ._api import LossModule, LossOptions, as_options_tensor, loss_function
from ._modulated_bce import QUALITY, check_class_weights, checked_inputs, modulated_bce
from ._utils import check_number

__all__: list[str] = []


@dataclass(frozen=True, kw_only=True)
class QualityFocalOptions(LossOptions):
    """``beta``: exponent of the modulating factor ``|q − p|^β``, >= 0;
    ``class_weights``: ``(C,)`` weight of each class along dim 1 of ``(N, C, ...)``, >= 0 (None: all 1)."""

    beta: float = 2.0
    class_weights: Tensor | None = field(default=None, compare=False)

    def __post_init__(self):
        check_number("beta", self.beta, ge=0)
        object.__setattr__(self, "class_weights", as_options_tensor("class_weights", self.class_weights, ndim=1))


@loss_function(QualityFocalOptions)
def quality_focal_loss(
    logits: Tensor,
    target_scores: Tensor,
    options: QualityFocalOptions,
    *,
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """Quality focal loss.

    Reference form: :func:`detloss.losses.reference.quality_focal_loss`.

    Args:
        logits: raw scores of any shape; with ``class_weights`` ``(N, C, ...)``, e.g. ``(B, C, A)`` (the detection
            criterion's ``cls`` view).
        target_scores: the logits' shape, values in [0, 1].
        beta, class_weights: see :class:`QualityFocalOptions`.
        weight: optional elementwise weight broadcastable to the logits.
        reduction: ``"none"`` returns the logits' shape; ``"mean"`` / ``"sum"`` a scalar.
        validate: check that the scores lie in [0, 1] and the weight is >= 0 (one host sync).
    """
    logits, target_scores = checked_inputs(logits, target_scores, "target_scores", weight, validate)
    class_weights = options.on("class_weights", logits)
    check_class_weights(class_weights, logits)
    return modulated_bce(logits, target_scores, QUALITY, 0.0, float(options.beta), weight, reduction, class_weights)


class QualityFocalLoss(LossModule, function=quality_focal_loss, name="quality_focal"):
    """Module form of :func:`quality_focal_loss`."""
