"""Hinge (margin) losses, binary and multi-class.

* binary: labels in {0, 1} or {−1, 1} (0 is read as −1), ``max(0, margin − y·x)^p``;
* multi-class (Weston & Watkins, 1999, in the form of ``torch.nn.MultiMarginLoss``):
  ``Σ_{i ≠ y} max(0, margin − x_y + x_i)^p / C``, times ``class_weights[y]`` when given.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._utils import (
    apply_weight,
    as_float,
    check_choice,
    check_labels,
    check_reduction,
    reduce,
)

__all__ = ["hinge_loss", "HingeLoss"]


def _check_options(margin: float, p: int) -> None:
    check_choice("p", p, (1, 2))
    if not isinstance(margin, (int, float)) or margin != margin or abs(margin) == float("inf"):
        raise ValueError(f"margin must be a finite number, got {margin!r}")


def hinge_loss(
    logits: Tensor,
    target: Tensor,
    *,
    margin: float = 1.0,
    p: int = 1,
    class_weights: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """Hinge loss; the mode follows the shapes.

    Args:
        logits: binary: scores of any shape; multi-class: ``(N, C)``.
        target: binary: the logits' shape, values in {0, 1} or {−1, 1}; multi-class: ``(N,)`` class indices.
        margin: the margin (1 by default).
        p: 1 for the hinge, 2 for the squared hinge.
        class_weights: multi-class only, ``(C,)``, rescales each sample by the weight of its class.
        weight: optional elementwise weight broadcastable to the unreduced loss.
        reduction: ``"none"`` returns the logits' shape (binary) or ``(N,)`` (multi-class).
        validate: check label values (one host sync).
    """
    check_reduction(reduction)
    _check_options(margin, p)
    logits = as_float("logits", logits)
    if not isinstance(target, Tensor):
        raise ValueError(f"target must be a torch.Tensor, got {type(target).__name__}")

    if target.shape == logits.shape:  # binary
        if class_weights is not None:
            raise ValueError("class_weights applies to the multi-class hinge only (target of shape (N,))")
        if validate:
            is_neg, is_zero = target == -1, target == 0
            if not bool((is_neg | is_zero | (target == 1)).all()):
                raise ValueError("target of a binary hinge must hold labels in {0, 1} or {-1, 1}")
            if bool(is_neg.any() & is_zero.any()):
                raise ValueError("target mixes 0 and -1 as negative labels; use {0, 1} or {-1, 1}")
        y = torch.where(target > 0, 1.0, -1.0).to(logits.dtype)
        loss = (margin - y * logits).clamp(min=0)
    elif logits.ndim == 2 and target.shape == logits.shape[:1]:  # multi-class
        num_classes = logits.shape[1]
        if validate:
            check_labels("target", target, num_classes)
        index = target.long().unsqueeze(1)
        loss = (margin - logits.gather(1, index) + logits).clamp(min=0)
        loss = loss.scatter(1, index, 0.0)  # the true class does not compete with itself
        if p == 2:
            loss = loss * loss
        loss = loss.sum(1) / num_classes
        if class_weights is not None:
            class_weights = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
            if class_weights.shape != (num_classes,):
                raise ValueError(f"class_weights must have shape ({num_classes},), got {tuple(class_weights.shape)}")
            loss = loss * class_weights[target.long()]
        return reduce(apply_weight(loss, weight), reduction)
    else:
        raise ValueError(
            "target must have the logits' shape (binary hinge) or (N,) for logits (N, C) (multi-class hinge), "
            f"got logits {tuple(logits.shape)} and target {tuple(target.shape)}"
        )
    if p == 2:
        loss = loss * loss
    return reduce(apply_weight(loss, weight), reduction)


class HingeLoss(nn.Module):
    """Module form of :func:`hinge_loss`."""

    def __init__(
        self,
        *,
        margin: float = 1.0,
        p: int = 1,
        class_weights=None,
        reduction: str = "mean",
        validate: bool = True,
    ):
        super().__init__()
        _check_options(margin, p)
        check_reduction(reduction)
        self.margin, self.p, self.reduction, self.validate = margin, p, reduction, validate
        cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", cw, persistent=False)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return hinge_loss(
            logits,
            target,
            margin=self.margin,
            p=self.p,
            class_weights=self.class_weights,
            weight=weight,
            reduction=self.reduction,
            validate=self.validate,
        )

    def extra_repr(self) -> str:
        return f"margin={self.margin}, p={self.p}, reduction={self.reduction!r}"
