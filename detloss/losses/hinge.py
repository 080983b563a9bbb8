"""Hinge (margin) losses, binary and multi-class.

* binary: labels in {0, 1} or {−1, 1} (0 is read as −1), ``max(0, margin − y·x)^p``;
* multi-class (Weston & Watkins, 1999, in the form of ``torch.nn.MultiMarginLoss``):
  ``Σ_{i ≠ y} max(0, margin − x_y + x_i)^p / C``, times ``class_weights[y]`` when given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._api import LossModule, LossOptions, as_options_tensor, loss_function
from ._utils import Checks, apply_weight, as_float, check_choice, check_number, reduce

__all__: list[str] = []


@dataclass(frozen=True, kw_only=True)
class HingeOptions(LossOptions):
    """``margin``: the margin (a finite number); ``p``: 1 for the hinge, 2 for the squared hinge;
    ``class_weights``: multi-class only, ``(C,)``, rescales each sample by the weight of its class."""

    margin: float = 1.0
    p: int = 1
    class_weights: Tensor | None = field(default=None, compare=False)

    def __post_init__(self):
        check_number("margin", self.margin)
        check_choice("p", self.p, (1, 2))
        object.__setattr__(self, "class_weights", as_options_tensor("class_weights", self.class_weights, ndim=1))


@loss_function(HingeOptions)
def hinge_loss(
    logits: Tensor,
    target: Tensor,
    options: HingeOptions,
    *,
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """Hinge loss; the mode follows the shapes.

    Args:
        logits: binary: scores of any shape; multi-class: ``(N, C)``.
        target: binary: the logits' shape, values in {0, 1} or {−1, 1}; multi-class: ``(N,)`` class indices.
        margin, p, class_weights: see :class:`HingeOptions`.
        weight: optional elementwise weight broadcastable to the unreduced loss.
        reduction: ``"none"`` returns the logits' shape (binary) or ``(N,)`` (multi-class).
        validate: check label values and the weight's sign (one host sync).
    """
    logits = as_float("logits", logits)
    if not isinstance(target, Tensor):
        raise ValueError(f"target must be a torch.Tensor, got {type(target).__name__}")
    margin, p = float(options.margin), options.p
    checks = Checks()
    if validate:
        checks.weight(weight)

    if target.shape == logits.shape:  # binary
        if options.class_weights is not None:
            raise ValueError("class_weights applies to the multi-class hinge only (target of shape (N,))")
        if validate:
            is_neg, is_zero = target == -1, target == 0
            checks.add(
                ~(is_neg | is_zero | (target == 1)).all(),
                lambda: "target of a binary hinge must hold labels in {0, 1} or {-1, 1}",
            )
            checks.add(
                is_neg.any() & is_zero.any(), lambda: "target mixes 0 and -1 as negative labels; use {0, 1} or {-1, 1}"
            )
        checks.run()
        y = torch.where(target > 0, 1.0, -1.0).to(logits.dtype)
        loss = (margin - y * logits).clamp(min=0)
        if p == 2:
            loss = loss * loss
        return reduce(apply_weight(loss, weight), reduction)
    if logits.ndim == 2 and target.shape == logits.shape[:1]:  # multi-class
        num_classes = logits.shape[1]
        if validate:
            checks.labels("target", target, num_classes)
        checks.run()
        loss = _MultiClassHinge.apply(logits, target.long().unsqueeze(1), margin, p)
        class_weights = options.on("class_weights", logits)
        if class_weights is not None:
            if class_weights.shape != (num_classes,):
                raise ValueError(f"class_weights must have shape ({num_classes},), got {tuple(class_weights.shape)}")
            loss = loss * class_weights[target.long()]
        return reduce(apply_weight(loss, weight), reduction)
    raise ValueError(
        "target must have the logits' shape (binary hinge) or (N,) for logits (N, C) (multi-class hinge), "
        f"got logits {tuple(logits.shape)} and target {tuple(target.shape)}"
    )


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


class HingeLoss(LossModule, function=hinge_loss, name="hinge"):
    """Module form of :func:`hinge_loss`."""
