"""Sigmoid, softmax, −log softmax, BCE and a ratio whose values *and* gradients keep full relative precision.

torch's own versions lose precision wherever a probability is close to 1, because they subtract from 1 there:
``torch.sigmoid``'s backward is ``g·y·(1 − y)``, ``torch.softmax``'s is ``y·(g − Σ g·y)``, and ``log_softmax``
takes the ``log`` of a sum that is close to 1. In float32 a logit margin of 10 costs three of the seven digits of
``1 − σ(x)`` and of the gradient, a margin of 17 all of them (``σ(17)`` rounds to 1). Each quantity here is
computed from terms of one sign instead, so that its relative error stays a few units of rounding (float32: below
1e-6) over the whole range of finite logits:

* ``1 − σ(x)`` is ``σ(−x)``, and the gradient of both is ``(g_p − g_q)·σ(x)·σ(−x)`` (:func:`sigmoid_pair`);
  ``BCE(x, t) = x⁺·(1 − t) − x⁻·t + log1p(e^−|x|)``, three terms ``>= 0`` (:func:`bce_terms`);
* ``n / (n + r)`` for ``n, r >= 0`` has the gradient ``(g·r, −g·n) / (n + r)²`` (:func:`ratio`), where autograd
  would sum ``1/(n + r) − n/(n + r)²`` for ``n``, which cancels where ``n ≫ r``;
* for the softmax over a dimension, with ``a`` the index of the largest logit and ``s' = Σ_{c≠a} exp(x_c − x_a)``
  (a sum that leaves the largest term, 1, out; a tied largest logit is each one ``a``):

  - ``−log p_c = (x_a − x_c) + log1p(s')``, two terms ``>= 0`` (:func:`neg_log_softmax`, :func:`index_nll`);
  - ``1 − p_a = s' / (1 + s')``, and ``1 − p_c`` for ``c ≠ a`` by subtraction, which is exact there because
    ``p_c <= 1/2`` (:func:`softmax_pair`);
  - the backward of ``−log p``: ``p_k·Σ_{c≠k} g_c − (1 − p_k)·g_k`` with the sum over the other classes taken as
    exclusive prefix plus suffix sums (for the index form: ``p_k·g`` and ``−(1 − p_y)·g`` at the label ``y``; with
    weights ``w_j`` at indices ``i_j``: ``p_k·W·g`` and ``(p_i·Σ_{j'≠j} w_j' − (1 − p_i)·w_j)·g`` at ``i_j``);
  - the backward of the softmax: ``p_k·((g_k − g_a) − Σ_c (g_c − g_a)·p_c)``, which is ``p_k·(g_k − Σ g·p)``
    without the difference of two numbers close to ``g_a``.

The functions take float32 or float64 input (the losses upcast half precision first). When the graph of a
gradient is wanted (``create_graph=True``), :func:`sigmoid_pair`, :func:`softmax_pair` and :func:`ratio`
differentiate their own backward; :func:`neg_log_softmax` and :func:`index_nll` differentiate the plain
``F.log_softmax`` form instead (the same derivatives, without this care for precision).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sigmoid_pair", "softmax_pair", "neg_log_softmax", "index_nll", "bce_terms", "ratio"]


def bce_terms(x: Tensor, t: Tensor) -> Tensor:
    """``BCE(x, t) = t·softplus(−x) + (1 − t)·softplus(x)`` elementwise, for plain (non-recorded) computation.

    Computed as ``x·([x > 0] − t) + log1p(exp(−|x|))``, i.e. ``x⁺·(1 − t) − x⁻·t + log1p(e^−|x|)``: three terms
    ``>= 0`` for ``t`` in [0, 1], so nothing cancels. (Not for autograd, which would see a kink at 0.)
    """
    return F.softplus(-x.abs()).addcmul_(x, (x > 0).to(x.dtype) - t)


class _SigmoidPair(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor):
        p, q = torch.sigmoid(x), torch.sigmoid(-x)
        ctx.save_for_backward(p, q)
        return p, q

    @staticmethod
    def backward(ctx, gp: Tensor | None, gq: Tensor | None):
        p, q = ctx.saved_tensors
        if gp is None:
            g = -gq
        elif gq is None:
            g = gp
        else:
            g = gp - gq
        return g * p * q


def sigmoid_pair(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(σ(x), 1 − σ(x))``, the second computed as ``σ(−x)``; gradient ``(g_p − g_q)·σ(x)·σ(−x)``."""
    return _SigmoidPair.apply(x)


def _softmax_parts(x: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(m, p, rest, top)``: ``m`` the max (keepdim); ``top`` 1.0 where ``x == m``, else 0.0; ``rest = s'``
    (keepdim: the sum of ``exp(x − m)`` without one largest term, 1; other tied ones count 1 each) and
    ``p = softmax(x) = exp(x − m) / (1 + s')``, computed in one buffer.

    Speed, measured on CPU across the channels of ``(B, C, H, W)``: ``amax`` and a float mask, because ``max``
    with indices, ``scatter``, ``masked_fill`` and ``where`` are each several times slower than an arithmetic
    pass. ``e − top`` is exact (0 where ``e = 1``), so the sum leaves the largest terms out without a mask.
    """
    m = x.amax(dim, keepdim=True)
    top = (x == m).to(x.dtype)
    e = torch.sub(x, m).exp_()
    rest = torch.sub(e, top).sum(dim, keepdim=True).add_(top.sum(dim, keepdim=True).sub_(1))  # ties − 1 first
    return m, e.div_(1 + rest), rest, top


def _complement(p: Tensor, rest: Tensor, top: Tensor) -> Tensor:
    """``1 − p`` to full relative precision: by subtraction (exact, as ``p <= 1/2``) except at the largest logits,
    where it is ``s' / (1 + s') = s'·p``. (``lerp`` with a weight of exactly 0 or 1 returns an end exactly.)"""
    return torch.lerp(1 - p, rest * p, top)


class _SoftmaxPair(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, dim: int):
        _, p, rest, top = _softmax_parts(x, dim)
        q = _complement(p, rest, top)
        ctx.save_for_backward(p, top)
        ctx.dim = dim
        return p, q

    @staticmethod
    def backward(ctx, gp: Tensor | None, gq: Tensor | None):
        p, top = ctx.saved_tensors
        dim = ctx.dim
        if gp is None:
            g = -gq
        elif gq is None:
            g = gp
        else:
            g = gp - gq
        # g − Σ g·p = (g − r) − Σ (g − r)·p for any r; r = g at the largest logit(s) leaves nothing to cancel
        r = (g * top).sum(dim, keepdim=True) / top.sum(dim, keepdim=True)
        delta = g - r
        return p * (delta - (delta * p).sum(dim, keepdim=True)), None


def softmax_pair(x: Tensor, dim: int = 1) -> tuple[Tensor, Tensor]:
    """``(softmax(x), 1 − softmax(x))`` over ``dim``, both to full relative precision, and so their gradient."""
    return _SoftmaxPair.apply(x, dim)


def _others_sum(g: Tensor, dim: int) -> Tensor:
    """``Σ_{c ≠ k} g_c`` for every ``k`` along ``dim``, as exclusive prefix plus suffix sums (no subtraction)."""
    n = g.shape[dim]
    out = torch.zeros_like(g)
    if n > 1:
        out.narrow(dim, 1, n - 1).add_(g.narrow(dim, 0, n - 1).cumsum(dim))
        out.narrow(dim, 0, n - 1).add_(g.flip(dim).narrow(dim, 0, n - 1).cumsum(dim).flip(dim))
    return out


class _NegLogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, dim: int):
        m, p, rest, top = _softmax_parts(x, dim)
        ctx.save_for_backward(x, p, rest, top)
        ctx.dim = dim
        return torch.sub(m, x).add_(rest.log1p())

    @staticmethod
    def backward(ctx, g: Tensor):
        x, p, rest, top = ctx.saved_tensors
        dim = ctx.dim
        if torch.is_grad_enabled():  # create_graph: a differentiable (plain) form
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(-F.log_softmax(x, dim), x, g, create_graph=True)
            return grad, None
        q = _complement(p, rest, top)
        return p * _others_sum(g, dim) - q * g, None


def neg_log_softmax(x: Tensor, dim: int = 1) -> Tensor:
    """``−log softmax(x)`` over ``dim`` (``>= 0``), to full relative precision in value and gradient."""
    return _NegLogSoftmax.apply(x, dim)


class _IndexNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, weight: Tensor | None, dim: int):
        m, p, rest, top = _softmax_parts(x, dim)
        nll = (m - x.gather(dim, index)).add_(rest.log1p())
        ctx.save_for_backward(x, index, weight, p, rest, top)
        ctx.dim = dim
        return nll if weight is None else (weight * nll).sum(dim, keepdim=True)

    @staticmethod
    def backward(ctx, g: Tensor):
        x, index, weight, p, rest, top = ctx.saved_tensors
        dim = ctx.dim
        if torch.is_grad_enabled():  # create_graph: a differentiable (plain) form
            with torch.enable_grad():
                plain = -F.log_softmax(x, dim).gather(dim, index)
                if weight is not None:
                    plain = (weight * plain).sum(dim, keepdim=True)
                (grad,) = torch.autograd.grad(plain, x, g, create_graph=True)
            return grad, None, None, None
        p_i = p.gather(dim, index)
        q_i = torch.where(top.gather(dim, index) > 0, rest / (1 + rest), 1 - p_i)
        if weight is None:  # one index, weight 1: p·g, and −(1 − p_y)·g at the label
            return (p * g).scatter_(dim, index, q_i.mul_(g).neg_()), None, None, None
        # p_k·W·g off the indices; at index i: (p_i·(W − w_i) − (1 − p_i)·w_i)·g, W − w_i summed, not subtracted
        total = weight.sum(dim, keepdim=True)
        at_index = (p_i * _others_sum(weight, dim) - q_i * weight) * g
        return (p * (total * g)).scatter_(dim, index, at_index), None, None, None


def index_nll(x: Tensor, index: Tensor, dim: int = 1, weight: Tensor | None = None) -> Tensor:
    """``−log softmax(x)`` over ``dim`` at ``index`` (int64, ``x``'s shape but for ``dim``), to full relative
    precision in value and gradient; the result has ``index``'s shape. With ``weight`` (``index``'s shape, the
    indices along ``dim`` distinct) it is ``Σ_j weight_j · (−log p_{index_j})`` along ``dim`` (size 1 there), e.g.
    the two neighbouring bins of the distribution focal loss."""
    return _IndexNLL.apply(x, index, weight, dim)


class _Ratio(torch.autograd.Function):
    @staticmethod
    def forward(ctx, n: Tensor, r: Tensor):
        ctx.save_for_backward(n, r)
        return n / (n + r)

    @staticmethod
    def backward(ctx, g: Tensor):
        n, r = ctx.saved_tensors
        scale = g / (n + r).square()
        return scale * r, -scale * n


def ratio(n: Tensor, r: Tensor) -> Tensor:
    """``n / (n + r)`` for ``n, r >= 0`` (``n + r > 0``), with the gradient ``g·r / (n + r)²`` in ``n`` and
    ``−g·n / (n + r)²`` in ``r``, each one product (broadcasting as the division does)."""
    n, r = torch.broadcast_tensors(n, r)
    return _Ratio.apply(n, r)
