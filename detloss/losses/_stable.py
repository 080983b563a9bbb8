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
  (a sum that leaves the largest term, 1, out):

  - ``−log p_c = (x_a − x_c) + log1p(s')``, two terms ``>= 0`` (:func:`neg_log_softmax`, :func:`index_nll`);
  - ``1 − p_a = s' / (1 + s')``, and ``1 − p_c`` for ``c ≠ a`` by subtraction, which is exact there because
    ``p_c <= 1/2`` (:func:`softmax_pair`);
  - the backward of ``−log p``: ``p_k·Σ_{c≠k} g_c − (1 − p_k)·g_k`` with the sum over the other classes taken as
    exclusive prefix plus suffix sums (for the index form: ``p_k·g`` and ``−(1 − p_y)·g`` at the label ``y``);
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
    """``(z, e, rest, a)``: ``z = x − max``, ``e = exp(z)``, ``rest = s'`` (keepdim), ``a`` the argmax (keepdim).

    ``e`` holds 1 at ``a``; ``rest`` is the sum of ``e`` without that entry.
    """
    m, a = x.max(dim, keepdim=True)
    z = x - m
    e = z.exp()
    e.scatter_(dim, a, 0.0)
    rest = e.sum(dim, keepdim=True)
    e.scatter_(dim, a, 1.0)
    return z, e, rest, a


def _complement(p: Tensor, rest: Tensor, a: Tensor, dim: int) -> Tensor:
    """``1 − p`` to full relative precision: by subtraction except at the argmax, where it is ``s' / (1 + s')``."""
    q = 1 - p
    return q.scatter_(dim, a, rest / (1 + rest))


class _SoftmaxPair(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, dim: int):
        _, e, rest, a = _softmax_parts(x, dim)
        p = e.div_(1 + rest)
        q = _complement(p, rest, a, dim)
        ctx.save_for_backward(p, a)
        ctx.dim = dim
        return p, q

    @staticmethod
    def backward(ctx, gp: Tensor | None, gq: Tensor | None):
        p, a = ctx.saved_tensors
        dim = ctx.dim
        if gp is None:
            g = -gq
        elif gq is None:
            g = gp
        else:
            g = gp - gq
        delta = g - g.gather(dim, a)  # 0 at the argmax
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
        z, e, rest, a = _softmax_parts(x, dim)
        ctx.save_for_backward(x, e.div_(1 + rest), rest, a)
        ctx.dim = dim
        return rest.log1p() - z

    @staticmethod
    def backward(ctx, g: Tensor):
        x, p, rest, a = ctx.saved_tensors
        dim = ctx.dim
        if torch.is_grad_enabled():  # create_graph: a differentiable (plain) form
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(-F.log_softmax(x, dim), x, g, create_graph=True)
            return grad, None
        q = _complement(p, rest, a, dim)
        return p * _others_sum(g, dim) - q * g, None


def neg_log_softmax(x: Tensor, dim: int = 1) -> Tensor:
    """``−log softmax(x)`` over ``dim`` (``>= 0``), to full relative precision in value and gradient."""
    return _NegLogSoftmax.apply(x, dim)


class _IndexNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, dim: int):
        z, e, rest, a = _softmax_parts(x, dim)
        ctx.save_for_backward(x, index, e.div_(1 + rest), rest, a)
        ctx.dim = dim
        return rest.log1p() - z.gather(dim, index)

    @staticmethod
    def backward(ctx, g: Tensor):
        x, index, p, rest, a = ctx.saved_tensors
        dim = ctx.dim
        if torch.is_grad_enabled():  # create_graph: a differentiable (plain) form
            with torch.enable_grad():
                plain = -F.log_softmax(x, dim).gather(dim, index)
                (grad,) = torch.autograd.grad(plain, x, g, create_graph=True)
            return grad, None, None
        q_y = torch.where(index == a, rest / (1 + rest), 1 - p.gather(dim, index))
        return (p * g).scatter_(dim, index, -q_y * g), None, None


def index_nll(x: Tensor, index: Tensor, dim: int = 1) -> Tensor:
    """``−log softmax(x)`` over ``dim`` at ``index`` (int64, ``x``'s shape with size 1 along ``dim``), to full
    relative precision in value and gradient; the result has ``index``'s shape."""
    return _IndexNLL.apply(x, index, dim)


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
