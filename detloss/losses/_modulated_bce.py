"""The engine shared by the BCE, focal, varifocal and quality focal losses: ``BCE(x, t) · m(σ(x), t)``, fused.

All four scale the elementwise binary cross-entropy with logits by a modulating factor ``m`` of ``p = σ(x)`` and
the target ``t`` (a soft score in [0, 1]):

=============  ===============================================================  ======================
``kind``       ``m(p, t)``                                                       paper
=============  ===============================================================  ======================
``bce``        ``1``                                                             —
``focal``      ``α_t · (p + t − 2pt)^γ``, ``α_t = αt + (1 − α)(1 − t)``          Lin et al., 2017
``varifocal``  ``t`` where ``t > 0``, ``α · p^γ`` where ``t = 0``                  Zhang et al., 2021
``quality``    ``|t − p|^β``                                                     Li et al., 2020
=============  ===============================================================  ======================

(``p + t − 2pt`` is ``1 − p_t`` of the focal loss paper, written for soft targets as torchvision does.)

Written as composed autograd ops, such a loss costs about a dozen full-size temporaries forward and as many
backward. :class:`_FusedModulatedBCE` instead computes the loss and its derivative

    dL/dx = (p − t) · m  +  BCE · ∂m/∂p · p(1 − p)

together, block by block on CPU (the temporaries of a block of :data:`._stable.BLOCK` elements stay in cache, so
the only full-size memory traffic is reading ``x`` and ``t`` and writing the derivative; each op of a block runs on
the calling thread, on purpose: see :data:`._stable.BLOCK`), keeps the derivative for the backward, and the backward
scales that buffer in place and hands it over as the gradient.

Two more things keep it fast on detection-sized inputs, where almost every target is 0:

* where ``t = 0`` all four factors reduce to ``c · p^e`` (``c``, ``e`` from :func:`_background`), so the
  dense pass runs the short kernel :func:`_background_block` over everything, which reads ``x`` only; the few
  ``t ≠ 0`` elements are then gathered, recomputed with the general formula (:func:`_terms`) and written over;
* ``p^e`` comes from ``exp(e · log p)``, except for ``e`` in {0, 1, 2, 3, 0.5}, done with multiplies / ``pow``.

:func:`composed` is the same losses in composed autograd ops, with the care for precision below. It is used when
the target requires grad and, inside the backward, when the graph of the gradient is wanted (``create_graph=True``:
double backward). The formulas as their papers write them, with no such care, are the public reference forms
(:mod:`.reference`: ``bce_with_logits``, ``focal_loss``, ``varifocal_loss``, ``quality_focal_loss``); the tests
hold the fused path equal to both.

Precision. Every quantity is computed from terms of one sign, so that the loss and its derivative keep full
relative precision (float32: about 1e-6 and better) for every finite logit, confident ones included, where the
textbook forms subtract numbers close to each other (``log1p(e^−|x|) + max(x, 0) − x·t`` at ``x = 10``, ``t = 1``
loses 3 of float32's 7 digits, and is 0 instead of 3e-7 at ``x = 15``; so does ``p − t``):

* ``1 − p`` is ``σ(−x)``, never ``1 − σ(x)``;
* ``BCE = x⁺·(1 − t) − x⁻·t + log1p(e^−|x|)`` (``x⁺ = max(x, 0)``, ``x⁻ = min(x, 0)``), three terms ``>= 0``;
* ``p − t = p·(1 − t) − (1 − p)·t`` and the focal base ``p + t − 2pt = p·(1 − t) + (1 − p)·t``;
* ``p^e`` in the background kernel is ``exp(e · log p)`` with ``log p = x⁻ − log1p(e^−|x|)``, not ``x − softplus(x)``.

:func:`composed` keeps the same care in composed form (``softplus`` on the side of ``x`` where it does not
cancel, :func:`._stable.sigmoid_pair` for ``p`` and ``1 − p``); ``tests/losses/test_precision.py`` holds both paths to
float64 and to an exact evaluation.

Where a base of a fractional power hits 0 (``p = 0`` with ``t = 0`` once ``x`` is below about −88 in float32, or
``p = t`` for the quality focal loss) the derivative of ``base^e`` is infinite for ``e < 1``; both paths clamp the
base at the smallest normal number there, which keeps gradients finite (0 in the limit) and moves no value by more
than that.

Class weights. ``class_weights`` ``w`` (one value per class, along dim 1 of ``(N, C, ...)``: the detection criterion's
``cls`` view is ``(B, C, A)``, a segmentation head's ``(B, C, *spatial)``) scale each element's loss by the weight of
its class, ``w_c · BCE · m``, and so its derivative: the fused path scales its loss and derivative buffers in place
(one pass, no temporaries), :func:`composed` multiplies, and the reference forms multiply, as
``F.binary_cross_entropy_with_logits(weight=w.view(1, C, 1, ...))`` does for the plain BCE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import runtime
from . import _stable
from ._stable import bce_terms, log1p, sigmoid_pair
from ._utils import Checks, apply_weight, as_float, as_target, autocast_off, check_same_shape, reduce

__all__ = ["BCE", "FOCAL", "QUALITY", "VARIFOCAL", "checked_inputs", "check_class_weights", "modulated_bce"]

BCE, FOCAL, VARIFOCAL, QUALITY = "bce", "focal", "varifocal", "quality"

#: inputs at least this large take the sparse route (background kernel + fix-up of the ``t ≠ 0`` elements) ...
SPARSE_MIN_NUMEL = 1 << 16
#: ... when at most this fraction of the target (estimated from a strided sample) is non-zero
SPARSE_MAX_DENSITY = 1 / 16
_SAMPLE = 1 << 14  # elements in that sample


# --------------------------------------------------------------------------------------------------------------
# the plain composed form (autograd does the backward)


def _pow(base: Tensor, exponent: float) -> Tensor:
    """``base ** exponent`` for ``base >= 0``, clamped where a fractional power would need it (see module doc)."""
    if exponent != int(exponent):
        base = base.clamp_min(torch.finfo(base.dtype).tiny if exponent < 1 else 0.0)
    return base.pow(exponent)


def check_class_weights(class_weights: Tensor | None, logits: Tensor) -> None:
    """``class_weights`` must hold one value per class of ``logits`` ``(N, C, ...)`` (dim 1)."""
    if class_weights is not None and (logits.ndim < 2 or class_weights.shape != (logits.shape[1],)):
        raise ValueError(
            f"class_weights has {class_weights.numel()} values for logits of shape {tuple(logits.shape)}: it needs "
            "one per class, along dim 1 of (N, C, ...)"
        )


def composed(x: Tensor, t: Tensor, kind: str, a: float, b: float, cw: Tensor | None = None) -> Tensor:
    """Elementwise loss from composed autograd ops: differentiable in ``x`` and ``t``, to any order.

    ``BCE = softplus(−x) + x·(1 − t)`` for ``x > 0``, ``softplus(x) − x·t`` otherwise: terms ``>= 0`` in value,
    derivatives ``(1 − t) − σ(−x)`` and ``σ(x) − t`` in ``x`` (``softplus``'s backward is ``σ`` to full precision),
    exactly ``−x`` in ``t``. ``cw``: class weights ``(C,)`` along dim 1, or ``None``.
    """
    ce = torch.where(x > 0, F.softplus(-x) + x * (1 - t), F.softplus(x) - x * t)
    if cw is not None:
        ce = ce * cw.view(1, -1, *([1] * (x.ndim - 2)))
    if kind == BCE:
        return ce
    p, q = sigmoid_pair(x)  # σ(x) and 1 − σ(x), each to full precision
    if kind == FOCAL:  # a = alpha, b = gamma
        m = _pow(p * (1 - t) + q * t, b)  # 1 − p_t
        if a >= 0:
            m = m * (a * t + (1 - a) * (1 - t))
    elif kind == VARIFOCAL:  # a = alpha, b = gamma
        m = torch.where(t > 0, t, a * _pow(p, b))
    else:  # quality: b = beta
        m = _pow((p * (1 - t) - q * t).abs(), b)
    return ce * m


# --------------------------------------------------------------------------------------------------------------
# loss and derivative without autograd


def _power_and_slope(u: Tensor, e: float) -> tuple[Tensor, Tensor | None]:
    """``(u^e, e·u^(e−1))`` for ``u >= 0``; the slope is ``None`` where it is 0 (``e == 0``)."""
    if e == 0:
        return torch.ones_like(u), None
    if e == 1:
        return u, torch.ones_like(u)
    if e == 2:
        return u * u, 2 * u
    if e != int(e):
        u = u.clamp_min(torch.finfo(u.dtype).tiny if e < 1 else 0.0)
    return u.pow(e), e * u.pow(e - 1)


def _terms(x: Tensor, t: Tensor, kind: str, a: float, b: float, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """Elementwise loss and ``dloss/dx`` for any target, from plain (non-recorded) ops, each quantity from terms
    of one sign (module doc, "Precision")."""
    ce = bce_terms(x, t)
    if kind == BCE and not need_grad:
        return ce, None
    p, q = torch.sigmoid(x), torch.sigmoid(-x)  # σ(x) and 1 − σ(x), each to full relative precision
    u = 1 - t
    d = torch.mul(p, u).sub_(q * t)  # p − t
    if kind == BCE:
        return ce, d
    if kind == FOCAL:
        s = 1 - 2 * t
        m, dm = _power_and_slope(torch.mul(p, u).addcmul_(q, t), b)  # (p + t − 2pt)^γ and its slope in it
        if dm is not None:
            dm = dm * s
        if a >= 0:
            alpha_t = (1 - a) + (2 * a - 1) * t
            m = m * alpha_t
            dm = None if dm is None else dm * alpha_t
    elif kind == VARIFOCAL:
        pos = t > 0
        pg, dpg = _power_and_slope(p, b)
        m = torch.where(pos, t, a * pg)
        dm = None if dpg is None else torch.where(pos, 0.0, a * dpg)
    else:
        m, dm = _power_and_slope(d.abs(), b)
        if dm is not None:
            dm = dm * d.sign()
    loss = ce * m
    if not need_grad:
        return loss, None
    grad = d * m
    if dm is not None:
        grad += ce * dm * (p * q)
    return loss, grad


def _background(kind: str, a: float, b: float) -> tuple[float, float]:
    """``(c, e)`` with ``m(p, 0) = c · p^e``."""
    if kind == BCE:
        return 1.0, 0.0
    if kind == FOCAL:
        return (1 - a if a >= 0 else 1.0), b
    if kind == VARIFOCAL:
        return a, b
    return 1.0, b


def _background_block(x: Tensor, c: float, e: float, loss_out: Tensor | None, grad_out: Tensor | None):
    """The ``t = 0`` kernel on a 1-D block, with ``sp = softplus(x)``::

        L = c · sp · p^e,    dL/dx = c · p^e · (p + e · sp · σ(−x))

    Every quantity keeps full relative precision (module doc, "Precision"): ``p = σ(x)`` and ``1 − p = σ(−x)``
    each from ``sigmoid``; ``l = log1p(e^−|x|)`` with ``e^−|x| = min(p, 1 − p) / max(p, 1 − p)`` (two vectorised
    sigmoids cost less than one ``exp``) and :func:`._stable.log1p`; ``sp = x⁺ + l`` and ``log p = x⁻ − l``, each
    a sum of terms of one sign; ``p^e`` as ``exp(e · log p)`` (or multiplies for ``e`` in {1, 2}, ``pow`` for 3
    and 0.5). Writes ``loss_out`` (or returns the block's sum when it is ``None``) and ``grad_out`` (when given).
    """
    into_grad = grad_out is not None and e == 0 and c == 1  # BCE: the derivative is p itself
    p = torch.sigmoid(x, out=grad_out) if into_grad else torch.sigmoid(x)
    q = torch.neg(x).sigmoid_()
    lg = log1p(torch.minimum(p, q).div_(torch.maximum(p, q)))  # log1p(e^−|x|)
    sp = torch.clamp_min(x, 0).add_(lg)
    if e == 0:
        cpe = None
    elif e == 1:
        cpe = p if c == 1 else p * c
    elif e == 2:
        cpe = torch.mul(p, p) if c == 1 else torch.mul(p, c).mul_(p)
    else:
        cpe = torch.pow(p, e) if e in (3, 0.5) else torch.clamp_max(x, 0).sub_(lg).mul_(e).exp_()
        if c != 1:
            cpe.mul_(c)
    if grad_out is not None and not into_grad:
        if cpe is None:
            torch.mul(p, c, out=grad_out)
        else:
            r = q.mul_(sp)  # sp·(1 − p)
            torch.add(p, r, alpha=e, out=r)
            torch.mul(r, cpe, out=grad_out)
    if loss_out is None:
        return sp.sum() * c if cpe is None else sp.mul_(cpe).sum()  # (torch.dot would sum less accurately)
    if cpe is None:
        torch.mul(sp, c, out=loss_out)
    else:
        torch.mul(sp, cpe, out=loss_out)
    return None


def _nonzero(t: Tensor) -> Tensor:
    """Indices of the non-zeros of a mostly-zero 1-D ``t``, as ``torch.nonzero(t).squeeze(1)``.

    Finds the rows of 64 that hold a non-zero first (their max and min, block by block on the calling thread, see
    :data:`._stable.BLOCK`), then the non-zeros within those rows: cheaper than ``torch.nonzero`` on a mostly-zero
    detection-sized score map, and no OpenMP fork/join per block.
    """
    n = t.numel()
    head = n - n % 64
    rows = t[:head].view(-1, 64)
    hi, lo = rows.new_empty(rows.shape[0]), rows.new_empty(rows.shape[0])
    step = max(1, _stable.BLOCK // 64)
    for r0 in range(0, rows.shape[0], step):
        r = slice(r0, r0 + step)
        torch.amax(rows[r], 1, out=hi[r])
        torch.amin(rows[r], 1, out=lo[r])
    row = torch.nonzero((hi != 0).logical_or_(lo != 0)).squeeze(1)  # NaN != 0 too
    r, col = torch.nonzero(rows[row], as_tuple=True)
    tail = torch.nonzero(t[head:]).squeeze(1).add_(head)
    return torch.cat([row[r].mul_(64).add_(col), tail])


def _blocks(n: int, device: torch.device):
    step = _stable.BLOCK if device.type == "cpu" else max(n, 1)
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def _is_sparse(t: Tensor) -> bool:
    n = t.numel()
    if n < SPARSE_MIN_NUMEL or t.device.type != "cpu":
        return False
    sample = t[:: max(1, n // _SAMPLE)]
    return int(torch.count_nonzero(sample)) <= SPARSE_MAX_DENSITY * sample.numel()


def _fused_forward(
    x: Tensor, t: Tensor, kind: str, a: float, b: float, reduce_sum: bool, need_grad: bool, cw: Tensor | None = None
):
    """``(loss, grad)``: the elementwise loss (or its sum) and ``dloss/dx`` (``None`` unless ``need_grad``), each
    scaled by the class weights ``cw`` (``(C,)`` along dim 1) when given."""
    if cw is not None:  # weigh the elementwise loss and derivative in place, then sum
        loss, grad = _fused_forward(x, t, kind, a, b, False, need_grad)
        per_class = (x.shape[0], x.shape[1], -1)
        weights = cw.view(1, -1, 1)
        loss.view(per_class).mul_(weights)
        if grad is not None:
            grad.view(per_class).mul_(weights)
        return (loss.sum() if reduce_sum else loss), grad
    xf, tf = x.reshape(-1), t.reshape(-1)
    n = xf.numel()
    grad = runtime.empty(x.shape, dtype=x.dtype, device=x.device) if need_grad else None
    loss = None if reduce_sum else torch.empty_like(x, memory_format=torch.contiguous_format)
    gf = None if grad is None else grad.view(-1)
    lf = None if loss is None else loss.view(-1)
    sums = []
    if _is_sparse(tf):
        c, e = _background(kind, a, b)
        for s in _blocks(n, x.device):
            total = _background_block(xf[s], c, e, None if lf is None else lf[s], None if gf is None else gf[s])
            if total is not None:
                sums.append(total)
        idx = _nonzero(tf)
        if idx.numel():
            xi = xf[idx]
            li, gi = _terms(xi, tf[idx], kind, a, b, need_grad)
            if lf is None:  # swap the background value for the true one in the sum
                sums.append(li.sum() - _background_block(xi, c, e, None, None))
            else:
                lf[idx] = li
            if gf is not None:
                gf[idx] = gi
    else:
        for s in _blocks(n, x.device):
            li, gi = _terms(xf[s], tf[s], kind, a, b, need_grad)
            if lf is None:
                sums.append(li.sum())
            else:
                lf[s] = li
            if gf is not None:
                gf[s] = gi
    if reduce_sum:
        loss = torch.stack(sums).sum() if sums else xf.new_zeros(())
    return loss, grad


class _FusedModulatedBCE(torch.autograd.Function):
    """Loss (elementwise, or summed with ``reduce_sum``) with the derivative computed in the forward.

    Gradient w.r.t. ``x`` only (callers send targets that require grad to :func:`composed`); the class weights
    ``cw`` are constants.
    """

    @staticmethod
    def forward(ctx, x, t, kind, a, b, reduce_sum, need_grad, cw=None):
        loss, grad = _fused_forward(x, t, kind, a, b, reduce_sum, need_grad, cw)
        ctx.save_for_backward(x, t)
        ctx.options = (kind, a, b, reduce_sum, cw)
        ctx.grad = grad
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        x, t = ctx.saved_tensors
        kind, a, b, reduce_sum, cw = ctx.options
        if torch.is_grad_enabled():  # create_graph=True: the gradient must be differentiable, take the composed form
            with torch.enable_grad():
                loss = composed(x, t, kind, a, b, cw)
                if reduce_sum:
                    loss = loss.sum()
                (gx,) = torch.autograd.grad(loss, x, grad_out, create_graph=True)
            return gx, None, None, None, None, None, None, None
        grad, ctx.grad = ctx.grad, None  # hand the buffer over: autograd may keep it as x.grad, no copy
        if grad is None:  # a second backward through a retained graph (or no grad was prepared): recompute
            _, grad = _fused_forward(x, t, kind, a, b, True, True, cw)
        return grad.mul_(grad_out), None, None, None, None, None, None, None


def modulated_bce(
    x: Tensor,
    t: Tensor,
    kind: str,
    a: float,
    b: float,
    weight: Tensor | None,
    reduction: str,
    class_weights: Tensor | None = None,
) -> Tensor:
    """The loss of ``kind`` for checked float logits ``x`` and target ``t`` of one shape and dtype, reduced.

    ``a``, ``b``: (alpha, gamma) for ``focal`` / ``varifocal``, (unused, beta) for ``quality``, unused for ``bce``;
    ``class_weights``: ``(C,)`` along dim 1 of ``x`` (checked by :func:`check_class_weights`), or ``None``.
    """
    cw = class_weights
    with autocast_off(x.device):
        if t.requires_grad or x.numel() == 0:
            return reduce(apply_weight(composed(x, t, kind, a, b, cw), weight), reduction)
        need_grad = torch.is_grad_enabled() and x.requires_grad
        if weight is None and reduction != "none":
            total = _FusedModulatedBCE.apply(x, t, kind, a, b, True, need_grad, cw)
            return total if reduction == "sum" else total / x.numel()
        loss = _FusedModulatedBCE.apply(x, t, kind, a, b, False, need_grad, cw)
        return reduce(apply_weight(loss, weight), reduction)


def checked_inputs(
    logits: Tensor, target: Tensor, name: str, weight: Tensor | None, validate: bool
) -> tuple[Tensor, Tensor]:
    """The inputs of the modulated-BCE losses as float tensors of one shape, their values checked if asked."""
    logits = as_float("logits", logits)
    target = as_target(name, target, logits)
    check_same_shape("logits", logits, name, target)
    if validate:
        checks = Checks()
        checks.unit_interval(name, target)
        checks.weight(weight)
        checks.run()
    return logits, target
