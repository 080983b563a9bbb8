"""Quality focal loss (Li et al., "Generalized Focal Loss: Learning Qualified and Distributed Bounding Boxes for
Dense Object Detection", NeurIPS 2020).

For logits ``x``, ``p = σ(x)`` and a quality target ``q`` in [0, 1] (the IoU at the true class, 0 elsewhere)::

    QFL(x, q) = |q − p|^β · BCE(x, q)

elementwise, the focal modulation extended to soft targets; the gradient flows through ``p`` in the factor too.
The computation is the fused kernel of :mod:`._modulated_bce`.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._modulated_bce import QUALITY, check_finite_nonneg, modulated_bce
from ._utils import as_float, as_target, check_in_unit_interval, check_reduction, check_same_shape

__all__ = ["quality_focal_loss", "QualityFocalLoss"]


def quality_focal_loss(
    logits: Tensor,
    target_scores: Tensor,
    *,
    beta: float = 2.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """Quality focal loss.

    Args:
        logits: raw scores of any shape, e.g. ``(N, A, C)``.
        target_scores: the logits' shape, values in [0, 1].
        beta: exponent of the modulating factor, >= 0.
        weight: optional elementwise weight broadcastable to the logits.
        reduction: ``"none"`` returns the logits' shape; ``"mean"`` / ``"sum"`` a scalar.
        validate: check that the scores lie in [0, 1] (one host sync).
    """
    check_reduction(reduction)
    check_finite_nonneg("beta", beta)
    logits = as_float("logits", logits)
    target_scores = as_target("target_scores", target_scores, logits)
    check_same_shape("logits", logits, "target_scores", target_scores)
    if validate:
        check_in_unit_interval("target_scores", target_scores.detach())
    return modulated_bce(logits, target_scores, QUALITY, 0.0, float(beta), weight, reduction)


class QualityFocalLoss(nn.Module):
    """Module form of :func:`quality_focal_loss`."""

    def __init__(self, *, beta: float = 2.0, reduction: str = "mean", validate: bool = True):
        super().__init__()
        check_finite_nonneg("beta", beta)
        check_reduction(reduction)
        self.beta, self.reduction, self.validate = beta, reduction, validate

    def forward(self, logits: Tensor, target_scores: Tensor, weight: Tensor | None = None) -> Tensor:
        return quality_focal_loss(
            logits, target_scores, beta=self.beta, weight=weight, reduction=self.reduction, validate=self.validate
        )

    def extra_repr(self) -> str:
        return f"beta={self.beta}, reduction={self.reduction!r}"
