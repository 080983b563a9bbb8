"""Binary cross-entropy with logits, with optional positive-class weight and label smoothing.

For logits ``x`` and a target ``t`` in [0, 1]::

    BCE(x, t) = −[ w_pos · t · log σ(x) + (1 − t) · log(1 − σ(x)) ]

which ``F.binary_cross_entropy_with_logits`` computes too; this one keeps full relative precision for confident
logits, in value and gradient (torch's loses it: at ``x = −15``, ``t = 0`` its value is 0 instead of 3e-7 in
float32, and its gradient ``σ(x) − t`` is 0 instead of −3e-7 at ``x = 15``, ``t = 1``). Without ``pos_weight`` it
is the fused kernel of :mod:`._modulated_bce` (``m = 1``); with it,
``w_pos · t · softplus(−x) + (1 − t) · softplus(x)``, terms ``>= 0`` whose derivatives are ``σ(∓x)``. Label
smoothing pulls the target towards 1/2 first: ``t' = t(1 − ε) + ε/2`` (Szegedy et al., "Rethinking the Inception
Architecture for Computer Vision", CVPR 2016, for two classes). ``class_weights`` ``w`` multiply each element by
the weight of its class (dim 1 of ``(N, C, ...)``): ``w_c · BCE``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ._api import LossModule, LossOptions, as_options_tensor, loss_function
from ._modulated_bce import BCE, check_class_weights, modulated_bce
from ._utils import Checks, apply_weight, as_float, as_target, autocast_off, check_number, check_same_shape, reduce

__all__: list[str] = []


@dataclass(frozen=True, kw_only=True)
class BCEOptions(LossOptions):
    """``pos_weight``: weight of the positive term, a number or a tensor broadcastable to the logits (e.g. ``(C,)``
    for the last dim), >= 0; ``label_smoothing``: ε in [0, 1), the target becomes ``t(1 − ε) + ε/2``;
    ``class_weights``: ``(C,)`` weight of each class along dim 1 of ``(N, C, ...)``, >= 0 (None: all 1),
    multiplying both terms (``F.binary_cross_entropy_with_logits``'s ``weight`` shaped ``(1, C, 1, ...)``)."""

    pos_weight: Tensor | float | None = field(default=None, compare=False)
    label_smoothing: float = 0.0
    class_weights: Tensor | None = field(default=None, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "pos_weight", as_options_tensor("pos_weight", self.pos_weight))
        check_number("label_smoothing", self.label_smoothing, ge=0, lt=1)
        object.__setattr__(self, "class_weights", as_options_tensor("class_weights", self.class_weights, ndim=1))


@loss_function(BCEOptions)
def bce_with_logits(
    logits: Tensor,
    target: Tensor,
    options: BCEOptions,
    *,
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """Binary cross-entropy with logits.

    Reference form: :func:`detloss.losses.reference.bce_with_logits`.

    Args:
        logits: raw scores of any shape; with ``class_weights`` ``(N, C, ...)``, e.g. ``(B, C, A)`` (the detection
            criterion's ``cls`` view).
        target: the logits' shape, values in [0, 1].
        pos_weight, label_smoothing, class_weights: see :class:`BCEOptions`.
        weight: optional elementwise weight broadcastable to the logits.
        reduction: ``"none"`` returns the logits' shape; ``"mean"`` / ``"sum"`` a scalar.
        validate: check that the target lies in [0, 1] and the weight is >= 0 (one host sync).
    """
    logits = as_float("logits", logits)
    target = as_target("target", target, logits)
    check_same_shape("logits", logits, "target", target)
    pos_weight = options.on("pos_weight", logits)
    if pos_weight is not None and _broadcast(pos_weight, logits) != logits.shape:
        raise ValueError(
            f"pos_weight of shape {tuple(pos_weight.shape)} must broadcast to the logits of shape {tuple(logits.shape)}"
            " (typically one value per class, the last dimension)"
        )
    class_weights = options.on("class_weights", logits)
    check_class_weights(class_weights, logits)
    if validate:
        checks = Checks()
        checks.unit_interval("target", target)
        checks.weight(weight)
        checks.run()
    smoothing = options.label_smoothing
    if smoothing:
        target = target * (1 - smoothing) + smoothing / 2
    if pos_weight is None:
        return modulated_bce(logits, target, BCE, 0.0, 0.0, weight, reduction, class_weights)
    with autocast_off(logits.device):
        loss = pos_weight * target * F.softplus(-logits) + (1 - target) * F.softplus(logits)
        if class_weights is not None:
            loss = loss * class_weights.view(1, -1, *([1] * (logits.ndim - 2)))
        return reduce(apply_weight(loss, weight), reduction)


def _broadcast(a: Tensor, b: Tensor):
    try:
        return torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        return None


class BCEWithLogitsLoss(LossModule, function=bce_with_logits, name="bce"):
    """Module form of :func:`bce_with_logits`."""
