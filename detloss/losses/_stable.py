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
differentiate their own backward; :func:`softmax_counts` differentiates :func:`softmax_pair` and the products,
:func:`neg_log_softmax` and :func:`index_nll` the plain ``F.log_softmax`` form (the same derivatives, without this
care for precision).

Speed (docs/benchmarks/losses.md): :func:`log1p` replaces ATen's CPU ``log1p``, which is not vectorised; the
largest logits of a softmax are found as ``floor(exp(x − max))``; :func:`index_nll` computes its softmax in blocks of
:data:`BLOCK` elements into the buffer that becomes its gradient; :func:`softmax_counts` fuses the soft counts of the
region losses with the softmax so that their backward is two full-size passes.

The losses built on these keep their plain forms (``F.log_softmax``, ``torch.softmax``, ``torch.sigmoid``) in
:mod:`.reference`, where the formulas read as their papers write them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "sigmoid_pair",
    "softmax_pair",
    "softmax_counts",
    "neg_log_softmax",
    "index_nll",
    "bce_terms",
    "log1p",
    "ratio",
    "BLOCK",
]

#: Elements per block of the blocked CPU kernels (here and in ``_modulated_bce.py``): ~128 KiB per float32
#: temporary, so a block's few temporaries stay in L2, and just under ATen's grain size (32,768), below which an op
#: runs on the calling thread. Blocks large enough to be split over OpenMP threads are faster on idle cores, but every
#: op then ends in a fork/join, and while another process keeps the cores busy (data-loader workers during training)
#: each join can wait for a scheduler tick, which costs far more than the threads save
#: (docs/benchmarks/detection_criterion.md).
BLOCK = 32_704


def row_blocks(x: Tensor, dim: int):
    """``(x3, blocks)``: ``x`` viewed as ``(outer, x.shape[dim], inner)`` and the index pairs ``(outer slice, inner
    slice)`` that cut it into blocks of about :data:`BLOCK` elements, each holding whole rows along ``dim`` (one block
    off the CPU)."""
    dim = dim % x.ndim
    size = x.shape[dim]
    outer, inner = x.shape[:dim].numel(), x.shape[dim + 1 :].numel()
    x3 = x.reshape(outer, size, inner)
    if x.device.type != "cpu" or x.numel() <= BLOCK:
        return x3, [(slice(None), slice(None))]
    per = max(1, BLOCK // max(size, 1))  # rows per block
    if inner >= per:
        return x3, [(slice(o, o + 1), slice(i, i + per)) for o in range(outer) for i in range(0, inner, per)]
    step = max(1, per // inner)
    return x3, [(slice(o, o + step), slice(None)) for o in range(0, outer, step)]


def log1p(u: Tensor) -> Tensor:
    """``log(1 + u)`` for ``u >= 0``, to a few units of rounding, for plain (non-recorded) computation.

    ATen's CPU ``log1p`` (and ``softplus``, ``logsigmoid``, ``binary_cross_entropy_with_logits``, which use it)
    runs element by element, several times slower than its vectorised ``log`` (docs/benchmarks/losses.md). This is
    Goldberg's method instead ("What every computer scientist should know about floating-point arithmetic", 1991,
    theorem 4): with ``w = fl(1 + u)``, ``w − 1`` is exact and ``log(w) / (w − 1)`` varies slowly, so
    ``u · log(w) / (w − 1)`` keeps the relative precision that ``log(w)`` alone loses for small ``u``. Where ``w``
    rounds to 1 the quotient is ``tiny / tiny = 1`` and the result ``u`` (exact there to half a unit of rounding).
    """
    w = u + 1
    tiny = torch.finfo(w.dtype).tiny
    return torch.log(w).add_(tiny).div_(w.sub_(1).add_(tiny)).mul_(u)


def bce_terms(x: Tensor, t: Tensor) -> Tensor:
    """``BCE(x, t) = t·softplus(−x) + (1 − t)·softplus(x)`` elementwise, for plain (non-recorded) computation.

    Computed as ``x·([x > 0] − t) + log1p(exp(−|x|))``, i.e. ``x⁺·(1 − t) − x⁻·t + log1p(e^−|x|)``: three terms
    ``>= 0`` for ``t`` in [0, 1], so nothing cancels. (Not for autograd, which would see a kink at 0.) The step
    ``[x > 0]`` is ``(sign(x) + 1) / 2`` (0.5 at ``x = 0``, where it is multiplied by 0): arithmetic, where a
    comparison and a cast cost more than the rest together.
    """
    step = torch.sign(x).add_(1).mul_(0.5)
    return log1p(torch.abs(x).neg_().exp_()).addcmul_(x, step.sub_(t))


class _SigmoidPair(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor):
        p, q = torch.sigmoid(x), torch.sigmoid(-x)
        ctx.save_for_backward(p, q)
        return p, q

    @staticmethod
    def backward(ctx, gp: Tensor | None, gq: Tensor | None):
        p, q = ctx.saved_tensors
        return _pair_grad(gp, gq) * p * q


def _pair_grad(gp: Tensor | None, gq: Tensor | None) -> Tensor:
    """The gradient in ``p`` of an output pair ``(p, 1 − p)``: ``g_p − g_q``, a missing one counting as 0."""
    if gp is None:
        return -gq
    return gp if gq is None else gp - gq


def sigmoid_pair(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(σ(x), 1 − σ(x))``, the second computed as ``σ(−x)``; gradient ``(g_p − g_q)·σ(x)·σ(−x)``."""
    return _SigmoidPair.apply(x)


def _softmax_parts(x: Tensor, dim: int, out: tuple[Tensor, Tensor, Tensor] | None = None):
    """``(m, p, rest, top)``: ``m`` the max (keepdim); ``top`` 1.0 where ``x == m``, else 0.0; ``rest = s'``
    (keepdim: the sum of ``exp(x − m)`` without one largest term, 1; other tied ones count 1 each) and
    ``p = softmax(x) = exp(x − m) / (1 + s')``, computed in one buffer; ``out``: buffers for ``(m, p, rest)``.

    Speed, measured on CPU across the channels of ``(B, C, H, W)``: ``amax``, because ``max`` with indices,
    ``scatter``, ``masked_fill`` and ``where`` are each several times slower than an arithmetic pass; ``top`` is
    ``floor(exp(x − m))`` (the exponentials lie in (0, 1], 1 exactly at the largest logits), where a comparison and
    a cast to float cost four arithmetic passes. A logit within half a unit of rounding of the largest, whose
    exponential rounds to 1, counts as tied: ``rest`` is the same either way. ``e − top`` is exact (0 where
    ``e = 1``), so the sum leaves the largest terms out without a mask.
    """
    m = torch.amax(x, dim, keepdim=True, out=None if out is None else out[0])
    e = torch.sub(x, m, out=None if out is None else out[1]).exp_()
    top = e.floor()
    rest = torch.sum(torch.sub(e, top), dim, keepdim=True, out=None if out is None else out[2])
    rest.add_(top.sum(dim, keepdim=True).sub_(1))  # ties − 1 first
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
        return _softmax_backward(_pair_grad(gp, gq), p, top, ctx.dim), None


def _softmax_backward(g: Tensor, p: Tensor, top: Tensor, dim: int) -> Tensor:
    """The gradient in the logits of ``Σ g·softmax``: ``p·(g − Σ g·p)``, as ``p·(δ − Σ δ·p)`` with ``δ = g − r``,
    which is the same for any ``r``; ``r = g`` at the largest logit(s) leaves nothing to cancel."""
    r = (g * top).sum(dim, keepdim=True) / top.sum(dim, keepdim=True)
    delta = g - r
    return p * (delta - (delta * p).sum(dim, keepdim=True))


def softmax_pair(x: Tensor, dim: int = 1) -> tuple[Tensor, Tensor]:
    """``(softmax(x), 1 − softmax(x))`` over ``dim``, both to full relative precision, and so their gradient."""
    return _SoftmaxPair.apply(x, dim)


class _SoftmaxCounts(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, onehot: Tensor, valid: Tensor | None, first: int, dims: tuple[int, ...]):
        _, p, rest, top = _softmax_parts(x, 1)
        pk, topk = p[:, first:], top[:, first:]
        pt = pk * onehot
        p_off = pk - pt  # p·(1 − t), exact for t in {0, 1}
        if valid is not None:
            p_off.mul_(valid)
        q_t = torch.lerp(1 - pk, rest * pk, topk).mul_(onehot)  # (1 − p)·t, as _complement

        def total(v: Tensor) -> Tensor:
            return v.sum(dims, keepdim=True).flatten(1)

        ctx.save_for_backward(x, p, top, onehot, valid)
        ctx.first, ctx.dims = first, dims
        return total(pt), total(p_off), total(q_t)

    @staticmethod
    def backward(ctx, g_inter: Tensor | None, g_fp: Tensor | None, g_fn: Tensor | None):
        x, p, top, onehot, valid = ctx.saved_tensors
        first = ctx.first
        if torch.is_grad_enabled():  # create_graph: differentiate the composed form (p is not an output here)
            with torch.enable_grad():
                pk, qk = (v[:, first:] for v in softmax_pair(x, 1))
                off = pk * (1 - onehot) * (1 if valid is None else valid)
                counts = [v.sum(ctx.dims, keepdim=True).flatten(1) for v in (pk * onehot, off, qk * onehot)]
                pairs = [(c, g) for c, g in zip(counts, (g_inter, g_fp, g_fn)) if g is not None]
                (grad,) = torch.autograd.grad([c for c, _ in pairs], x, [g for _, g in pairs], create_graph=True)
            return grad, None, None, None, None
        shape = (-1, onehot.shape[1]) + (1,) * (onehot.ndim - 2)
        zero = p.new_zeros(())
        on = (zero if g_inter is None else g_inter.reshape(shape)) - (zero if g_fn is None else g_fn.reshape(shape))
        off = zero if g_fp is None else g_fp.reshape(shape)
        if valid is not None:
            off = off * valid
        # the gradient in p of the three sums (in 1 − p with a minus): g_inter − g_fn where t = 1, g_fp·m elsewhere
        g_k = torch.lerp(torch.broadcast_to(off, onehot.shape), on.broadcast_to(onehot.shape), onehot)
        g = g_k if first == 0 else torch.cat([g_k.new_zeros(g_k.shape[:1] + (first,) + g_k.shape[2:]), g_k], 1)
        return _softmax_backward(g, p, top, 1), None, None, None, None


def softmax_counts(
    x: Tensor, onehot: Tensor, valid: Tensor | None, first: int, dims: tuple[int, ...]
) -> tuple[Tensor, Tensor, Tensor]:
    """The soft counts of ``p = softmax(x)`` over dim 1 against a one-hot target: ``(Σ p·t, Σ p·(1 − t)·m,
    Σ (1 − p)·t)`` over ``dims`` (keepdim, then flattened to ``(B', C')``), for the classes from ``first`` on.

    ``x``: ``(B, C, *spatial)``; ``onehot``: exactly 0 or 1, ``(B, C − first, *spatial)``, 0 where ignored;
    ``valid``: ``None`` or a 0/1 mask broadcasting to ``onehot``. The same values as :func:`softmax_pair` and the
    products, and the same precision, from one function whose backward takes 2 full-size passes where autograd
    through the products takes 8 (docs/benchmarks/losses.md).
    """
    return _SoftmaxCounts.apply(x, onehot, valid, first, dims)


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


def _index_nll(x: Tensor, index: Tensor, weight: Tensor | None, dim: int, need_grad: bool):
    """``(nll, grad)`` of :func:`index_nll`; ``grad`` (``None`` unless ``need_grad``) is the gradient for an output
    gradient of 1. The softmax is computed in blocks of whole rows (:func:`row_blocks`) into the buffer that
    becomes the gradient; what happens at the indices is done once, on the small ``index``-shaped tensors."""
    x3, blocks = row_blocks(x, dim)
    index3 = index.reshape(x3.shape[0], index.shape[dim], x3.shape[2])
    m, rest = x3.new_empty(x3.shape[0], 1, x3.shape[2]), x3.new_empty(x3.shape[0], 1, x3.shape[2])
    p = torch.empty_like(x3)
    for o, i in blocks:
        _softmax_parts(x3[o, :, i], 1, out=(m[o, :, i], p[o, :, i], rest[o, :, i]))
    x_i = x3.gather(1, index3)
    nll = (m - x_i).add_(rest.log1p())
    shape = list(index.shape)
    if weight is not None:
        weight3 = weight.reshape(index3.shape)
        nll = (weight3 * nll).sum(1, keepdim=True)
        shape[dim % x.ndim] = 1
    if not need_grad:
        return nll.view(shape), None
    p_i = p.gather(1, index3)
    top_i = torch.sub(x_i, m).exp_().floor_()  # as _softmax_parts found it
    q_i = torch.lerp(1 - p_i, rest / (1 + rest), top_i)  # 1 − p_i to full precision
    if weight is None:  # p off the label, −(1 − p_y) at it
        p.scatter_(1, index3, q_i.neg_())
    else:  # p_k·W off the indices; at index i: p_i·(W − w_i) − (1 − p_i)·w_i, W − w_i summed, not subtracted
        at_index = p_i.mul_(_others_sum(weight3, 1)).sub_(q_i.mul_(weight3))
        p.mul_(weight3.sum(1, keepdim=True)).scatter_(1, index3, at_index)
    return nll.view(shape), p.view(x.shape)


class _IndexNLL(torch.autograd.Function):
    """The forward computes the gradient for an output gradient of 1 on the way, when one will be wanted; the
    backward scales that buffer in place and hands it over (as ``_modulated_bce.py`` does)."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, weight: Tensor | None, dim: int, need_grad: bool):
        nll, ctx.grad = _index_nll(x, index, weight, dim, need_grad)
        ctx.save_for_backward(x, index, weight)
        ctx.dim = dim
        return nll

    @staticmethod
    def backward(ctx, g: Tensor):
        x, index, weight = ctx.saved_tensors
        dim = ctx.dim
        if torch.is_grad_enabled():  # create_graph: a differentiable (plain) form
            with torch.enable_grad():
                plain = -F.log_softmax(x, dim).gather(dim, index)
                if weight is not None:
                    plain = (weight * plain).sum(dim, keepdim=True)
                (grad,) = torch.autograd.grad(plain, x, g, create_graph=True)
            return grad, None, None, None, None
        grad, ctx.grad = ctx.grad, None  # hand the buffer over: autograd may keep it as x.grad, no copy
        if grad is None:  # a second backward through a retained graph: recompute
            _, grad = _index_nll(x, index, weight, dim, True)
        return grad.mul_(g), None, None, None, None


def index_nll(x: Tensor, index: Tensor, dim: int = 1, weight: Tensor | None = None) -> Tensor:
    """``−log softmax(x)`` over ``dim`` at ``index`` (int64, ``x``'s shape but for ``dim``), to full relative
    precision in value and gradient; the result has ``index``'s shape. With ``weight`` (``index``'s shape, the
    indices along ``dim`` distinct) it is ``Σ_j weight_j · (−log p_{index_j})`` along ``dim`` (size 1 there), e.g.
    the two neighbouring bins of the distribution focal loss."""
    need_grad = torch.is_grad_enabled() and x.requires_grad
    return _IndexNLL.apply(x, index, weight, dim, need_grad)


class _Ratio(torch.autograd.Function):
    @staticmethod
    def forward(ctx, n: Tensor, r: Tensor):
        ctx.save_for_backward(n, r)
        return n / (n + r)

    @staticmethod
    def backward(ctx, g: Tensor):
        n, r = ctx.saved_tensors
        total = n + r
        scale = g / total  # not g / total²: that square underflows to 0 for totals below ~1e-19 in float32
        return scale * (r / total), -scale * (n / total)


def ratio(n: Tensor, r: Tensor) -> Tensor:
    """``n / (n + r)`` for ``n, r >= 0`` (``n + r > 0``), with the gradient ``g·r / (n + r)²`` in ``n`` and
    ``−g·n / (n + r)²`` in ``r``, formed as ``(g / (n + r))·(r / (n + r))`` so that no intermediate leaves the
    dtype's range where the gradient itself does not (broadcasting as the division does)."""
    n, r = torch.broadcast_tensors(n, r)
    return _Ratio.apply(n, r)
