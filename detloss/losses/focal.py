"""Sigmoid focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

For logits ``x``, ``p = σ(x)`` and a target ``t`` in [0, 1] (hard 0/1 labels or soft scores)::

    FL(x, t) = α_t · (1 − p_t)^γ · BCE(x, t)
    p_t = p·t + (1 − p)(1 − t),   α_t = α·t + (1 − α)(1 − t)

which is ``torchvision.ops.sigmoid_focal_loss`` elementwise; ``alpha < 0`` leaves ``α_t`` out, as there. γ = 0 and
α < 0 give the plain BCE. The computation is the fused kernel of :mod:`._modulated_bce`.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._modulated_bce import FOCAL, check_finite_nonneg, modulated_bce
from ._utils import as_float, as_target, check_in_unit_interval, check_reduction, check_same_shape

__all__ = ["focal_loss", "FocalLoss"]


def _check_options(alpha: float, gamma: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha <= 1:
        raise ValueError(f"alpha must be a number <= 1 (a negative alpha turns the weighting off), got {alpha!r}")
    check_finite_nonneg("gamma", gamma)


def focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """Sigmoid focal loss.

    Args:
        logits: raw scores of any shape, e.g. ``(N, A, C)`` for ``A`` anchors and ``C`` classes.
        target: the logits' shape, values in [0, 1].
        alpha: weight of the positive term, in [0, 1]; negative: no weighting.
        gamma: focusing exponent, >= 0.
        weight: optional elementwise weight broadcastable to the logits.
        reduction: ``"none"`` returns the logits' shape; ``"mean"`` / ``"sum"`` a scalar.
        validate: check that the target lies in [0, 1] (one host sync).
    """
    check_reduction(reduction)
    _check_options(alpha, gamma)
    logits = as_float("logits", logits)
    target = as_target("target", target, logits)
    check_same_shape("logits", logits, "target", target)
    if validate:
        check_in_unit_interval("target", target.detach())
    return modulated_bce(logits, target, FOCAL, float(alpha), float(gamma), weight, reduction)


class FocalLoss(nn.Module):
    """Module form of :func:`focal_loss`."""

    def __init__(self, *, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "mean", validate: bool = True):
        super().__init__()
        _check_options(alpha, gamma)
        check_reduction(reduction)
        self.alpha, self.gamma, self.reduction, self.validate = alpha, gamma, reduction, validate

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return focal_loss(
            logits,
            target,
            alpha=self.alpha,
            gamma=self.gamma,
            weight=weight,
            reduction=self.reduction,
            validate=self.validate,
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"
