"""Binary cross-entropy with logits, with optional positive-class weight and label smoothing.

For logits ``x`` and a target ``t`` in [0, 1]::

    BCE(x, t) = −[ w_pos · t · log σ(x) + (1 − t) · log(1 − σ(x)) ]

computed stably from the logits, as ``F.binary_cross_entropy_with_logits``, which it equals. Label smoothing
pulls the target towards 1/2 first: ``t' = t(1 − ε) + ε/2`` (Szegedy et al., "Rethinking the Inception
Architecture for Computer Vision", CVPR 2016, for two classes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._modulated_bce import autocast_off
from ._utils import apply_weight, as_float, as_target, check_in_unit_interval, check_reduction, check_same_shape, reduce

__all__ = ["bce_with_logits", "BCEWithLogitsLoss"]


def _check_label_smoothing(label_smoothing: float) -> None:
    ok = isinstance(label_smoothing, (int, float)) and not isinstance(label_smoothing, bool)
    if not (ok and 0 <= label_smoothing < 1):
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}")


def _pos_weight(pos_weight, logits: Tensor, validate: bool) -> Tensor | None:
    if pos_weight is None:
        return None
    if not isinstance(pos_weight, (Tensor, int, float)) or isinstance(pos_weight, bool):
        raise ValueError(f"pos_weight must be a torch.Tensor, a number or None, got {type(pos_weight).__name__}")
    pos_weight = torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    try:
        ok = torch.broadcast_shapes(pos_weight.shape, logits.shape) == logits.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"pos_weight of shape {tuple(pos_weight.shape)} must broadcast to the logits of shape {tuple(logits.shape)}"
            " (typically one value per class, the last dimension)"
        )
    if validate and not bool((pos_weight >= 0).all()):  # NaN fails too
        raise ValueError("pos_weight must be >= 0")
    return pos_weight


def bce_with_logits(
    logits: Tensor,
    target: Tensor,
    *,
    pos_weight: Tensor | None = None,
    label_smoothing: float = 0.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """Binary cross-entropy with logits.

    Args:
        logits: raw scores of any shape.
        target: the logits' shape, values in [0, 1].
        pos_weight: weight of the positive term, broadcastable to the logits (e.g. ``(C,)`` for the last dim).
        label_smoothing: ε in [0, 1); the target becomes ``t(1 − ε) + ε/2``.
        weight: optional elementwise weight broadcastable to the logits.
        reduction: ``"none"`` returns the logits' shape; ``"mean"`` / ``"sum"`` a scalar.
        validate: check that the target lies in [0, 1] and ``pos_weight`` is >= 0 (host syncs).
    """
    check_reduction(reduction)
    _check_label_smoothing(label_smoothing)
    logits = as_float("logits", logits)
    target = as_target("target", target, logits)
    check_same_shape("logits", logits, "target", target)
    pos_weight = _pos_weight(pos_weight, logits, validate)
    if validate:
        check_in_unit_interval("target", target.detach())
    with autocast_off(logits.device):
        if weight is None and label_smoothing == 0 and (logits.numel() or reduction != "mean"):
            # the built-in as it is: same cost (the empty "mean", NaN there, takes the path below)
            return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction=reduction)
        if label_smoothing:
            target = target * (1 - label_smoothing) + label_smoothing / 2
        loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="none")
        return reduce(apply_weight(loss, weight), reduction)


class BCEWithLogitsLoss(nn.Module):
    """Module form of :func:`bce_with_logits`; ``pos_weight`` is kept as a (non-persistent) buffer."""

    def __init__(
        self,
        *,
        pos_weight: Tensor | None = None,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        validate: bool = True,
    ):
        super().__init__()
        _check_label_smoothing(label_smoothing)
        check_reduction(reduction)
        if pos_weight is not None:
            if isinstance(pos_weight, bool) or not isinstance(pos_weight, (Tensor, int, float)):
                raise ValueError(
                    f"pos_weight must be a torch.Tensor, a number or None, got {type(pos_weight).__name__}"
                )
            pos_weight = torch.as_tensor(pos_weight, dtype=torch.float32)
            if validate and not bool((pos_weight >= 0).all()):
                raise ValueError("pos_weight must be >= 0")
        self.register_buffer("pos_weight", pos_weight, persistent=False)
        self.label_smoothing, self.reduction, self.validate = label_smoothing, reduction, validate

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return bce_with_logits(
            logits,
            target,
            pos_weight=self.pos_weight,
            label_smoothing=self.label_smoothing,
            weight=weight,
            reduction=self.reduction,
            validate=self.validate,
        )

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"
