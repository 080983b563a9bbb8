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
        loss = _MultiClassHinge.apply(logits, target.long().unsqueeze(1), float(margin), p)
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


def _multi_class_terms(logits: Tensor, index: Tensor, margin: float) -> Tensor:
    """``max(0, margin − x_y + x_i)`` for every class ``i``, the true one included (where it is ``max(0, margin)``)."""
    return (logits - logits.gather(1, index)).add_(margin).relu_()


class _MultiClassHinge(torch.autograd.Function):
    """``(Σ_{i ≠ y} max(0, margin − x_y + x_i)^p) / C`` per row of ``(N, C)`` logits, with a hand-written backward.

    The true class is computed with the others and its constant term ``max(0, margin)^p`` subtracted from the row
    sum, instead of zeroing it in a copy; the backward recomputes the terms (nothing ``(N, C)`` is kept), scales
    them into the gradient in place and moves each row's total, negated, onto its true class with one
    ``scatter_add_``, where autograd's version of the plain expression would allocate and scatter into a zero
    ``(N, C)`` tensor for the gather. The gradient at the true class, ``g_y − Σ_i g_i``, is the same formula for
    ``p = 1`` and ``p = 2``. When the graph of the gradient is wanted (``create_graph``) the plain expression is
    differentiated instead.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, index: Tensor, margin: float, p: int) -> Tensor:
        ctx.save_for_backward(logits, index)
        ctx.options = margin, p
        terms = _multi_class_terms(logits, index, margin)
        if p == 2:
            terms.square_()
        return terms.sum(1).sub_(max(margin, 0.0) ** p).div_(logits.shape[1])

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        logits, index = ctx.saved_tensors
        margin, p = ctx.options
        if torch.is_grad_enabled():  # create_graph=True
            with torch.enable_grad():
                terms = (margin - logits.gather(1, index) + logits).clamp(min=0).scatter(1, index, 0.0)
                loss = (terms * terms if p == 2 else terms).sum(1) / logits.shape[1]
                (grad,) = torch.autograd.grad(loss, logits, grad_out, create_graph=True)
            return grad, None, None, None
        scale = (grad_out / logits.shape[1]).unsqueeze(1)
        grad = _multi_class_terms(logits, index, margin)
        grad = grad.mul_(scale * 2) if p == 2 else grad.sign_().mul_(scale)
        grad.scatter_add_(1, index, grad.sum(1, keepdim=True).neg_())
        return grad, None, None, None


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
