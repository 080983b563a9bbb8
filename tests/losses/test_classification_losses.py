"""BCE, cross-entropy, focal, varifocal and quality focal losses: hand-computed values, equality with torch and
torchvision, the fused kernel against the composed reference, gradients, degenerate and bad input, dtypes."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.ops as tv

from detloss.losses import _modulated_bce as M
from detloss.losses import _stable as S
from detloss.losses.bce import BCEWithLogitsLoss, bce_with_logits
from detloss.losses.cross_entropy import CrossEntropyLoss, cross_entropy
from detloss.losses.focal import FocalLoss, focal_loss
from detloss.losses.quality_focal import QualityFocalLoss, quality_focal_loss
from detloss.losses.varifocal import VarifocalLoss, varifocal_loss

REDUCTIONS = ("none", "mean", "sum")
MODULATED = {  # name -> (function, kind, options, (a, b) for the reference)
    "focal": (focal_loss, M.FOCAL, {"alpha": 0.25, "gamma": 2.0}, (0.25, 2.0)),
    "varifocal": (varifocal_loss, M.VARIFOCAL, {"alpha": 0.75, "gamma": 2.0}, (0.75, 2.0)),
    "quality": (quality_focal_loss, M.QUALITY, {"beta": 2.0}, (0.0, 2.0)),
}


def sig(x):
    return 1 / (1 + math.exp(-x))


def bce(x, t):  # written out: −[t log σ(x) + (1 − t) log(1 − σ(x))]
    return -(t * math.log(sig(x)) + (1 - t) * math.log(1 - sig(x)))


def sparse_scores(shape, density=0.02, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    t = torch.zeros(shape, dtype=dtype)
    pos = torch.rand(shape, generator=g) < density
    t[pos] = torch.rand(int(pos.sum()), generator=g, dtype=dtype)
    t[pos & (torch.rand(shape, generator=g) < 0.3)] = 1.0  # some hard positives too
    return t


def logits_like(t, scale=3.0, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t.shape, generator=g, dtype=t.dtype) * scale


@pytest.fixture
def route(monkeypatch):
    """Force the fused kernel's route: small blocks, sparse (background + fix-up) or dense (general formula)."""

    def set_route(sparse: bool, block: int = 1000):
        monkeypatch.setattr(S, "BLOCK", block)
        monkeypatch.setattr(M, "SPARSE_MIN_NUMEL", 0 if sparse else 1 << 62)
        monkeypatch.setattr(M, "SPARSE_MAX_DENSITY", 1.0 if sparse else 0.0)

    return set_route


# ------------------------------------------------------------------------------------------- hand-computed values

X3 = [0.5, -1.0, 2.0]
T3 = [1.0, 0.0, 0.3]


def test_bce_hand_computed():
    got = bce_with_logits(torch.tensor(X3), torch.tensor(T3), reduction="none")
    assert got.tolist() == pytest.approx([bce(x, t) for x, t in zip(X3, T3)], abs=1e-6)
    # pos_weight 3 on the positive term, label smoothing 0.2: t' = 0.8 t + 0.1
    got = bce_with_logits(
        torch.tensor(X3), torch.tensor(T3), pos_weight=torch.tensor(3.0), label_smoothing=0.2, reduction="sum"
    )
    want = 0.0
    for x, t in zip(X3, T3):
        ts = 0.8 * t + 0.1
        want += -(3 * ts * math.log(sig(x)) + (1 - ts) * math.log(1 - sig(x)))
    assert got.item() == pytest.approx(want, abs=1e-6)


def test_cross_entropy_hand_computed():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]])
    z0, z1 = math.exp(1) + math.exp(2) + math.exp(3), 2 + math.e
    l0, l1 = -math.log(math.exp(3) / z0), -math.log(1 / z1)  # labels 2 and 0
    got = cross_entropy(logits, torch.tensor([2, 0]), reduction="none")
    assert got.tolist() == pytest.approx([l0, l1], abs=1e-6)
    # class weights (1, 2, 4): mean = (4 l0 + 1 l1) / (4 + 1)
    got = cross_entropy(logits, torch.tensor([2, 0]), class_weights=torch.tensor([1.0, 2.0, 4.0]))
    assert got.item() == pytest.approx((4 * l0 + l1) / 5, abs=1e-6)
    # label smoothing 0.3 on the first row: 0.7·l0 + 0.1·Σ_c −log softmax_c
    smooth = sum(-math.log(math.exp(v) / z0) for v in (1, 2, 3))
    got = cross_entropy(logits[:1], torch.tensor([2]), label_smoothing=0.3)
    assert got.item() == pytest.approx(0.7 * l0 + 0.1 * smooth, abs=1e-6)
    # the ignored second row drops out of the sum and the mean
    got = cross_entropy(logits, torch.tensor([2, 255]))
    assert got.item() == pytest.approx(l0, abs=1e-6)


def test_focal_hand_computed():
    a, g = 0.25, 2.0
    want = []
    for x, t in zip(X3, T3):
        p = sig(x)
        p_t = p * t + (1 - p) * (1 - t)
        want.append((a * t + (1 - a) * (1 - t)) * (1 - p_t) ** g * bce(x, t))
    got = focal_loss(torch.tensor(X3), torch.tensor(T3), reduction="none")
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    # the positive alone: 0.25 (1 − p)² (−log p)
    assert want[0] == pytest.approx(0.25 * (1 - sig(0.5)) ** 2 * -math.log(sig(0.5)))
    # alpha < 0: no alpha_t; gamma 0: plain BCE
    got = focal_loss(torch.tensor(X3), torch.tensor(T3), alpha=-1, gamma=0.0, reduction="sum")
    assert got.item() == pytest.approx(sum(bce(x, t) for x, t in zip(X3, T3)), abs=1e-6)


def test_varifocal_hand_computed():
    q = [0.8, 0.0, 0.3]
    want = [bce(X3[0], 0.8) * 0.8, bce(X3[1], 0.0) * 0.75 * sig(X3[1]) ** 2, bce(X3[2], 0.3) * 0.3]
    got = varifocal_loss(torch.tensor(X3), torch.tensor(q), reduction="none")
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    got = varifocal_loss(torch.tensor(X3), torch.tensor(q), alpha=0.5, gamma=1.0, reduction="mean")
    assert got.item() == pytest.approx((want[0] + bce(X3[1], 0) * 0.5 * sig(X3[1]) + want[2]) / 3, abs=1e-6)


def test_quality_focal_hand_computed():
    q = [0.8, 0.0, 0.3]
    want = [bce(x, t) * abs(t - sig(x)) ** 2 for x, t in zip(X3, q)]
    got = quality_focal_loss(torch.tensor(X3), torch.tensor(q), reduction="none")
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    got = quality_focal_loss(torch.tensor(X3), torch.tensor(q), beta=0.5, reduction="sum")
    assert got.item() == pytest.approx(sum(bce(x, t) * abs(t - sig(x)) ** 0.5 for x, t in zip(X3, q)), abs=1e-6)


# ------------------------------------------------------------------------------------- equality with the built-ins


def _values_and_grads(fn, x, *args):
    x = x.detach().requires_grad_()
    out = fn(x, *args)
    out.backward(torch.ones_like(out))
    return out.detach(), x.grad


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_equals_torch(reduction):
    t = sparse_scores((4, 50, 7), density=0.3)
    x = logits_like(t)
    pw, w = torch.rand(7) * 3, torch.rand(4, 50, 1)
    for ours_kw, theirs_kw, target in [
        ({}, {}, t),
        ({"pos_weight": pw}, {"pos_weight": pw}, t),
        ({"pos_weight": pw, "weight": w}, {"pos_weight": pw, "weight": w}, t),
        ({"label_smoothing": 0.1}, {}, t * 0.9 + 0.05),
    ]:
        ours = _values_and_grads(lambda z: bce_with_logits(z, t, reduction=reduction, **ours_kw), x)
        theirs = _values_and_grads(
            lambda z: F.binary_cross_entropy_with_logits(z, target, reduction=reduction, **theirs_kw), x
        )
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    module = BCEWithLogitsLoss(pos_weight=pw, reduction=reduction)
    want = F.binary_cross_entropy_with_logits(x, t, pos_weight=pw, reduction=reduction)
    torch.testing.assert_close(module(x, t), want)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_equals_torch_indices(reduction, smoothing, weighted):
    g = torch.Generator().manual_seed(0)
    for shape in [(12, 5), (3, 5, 4, 6)]:  # (N, C) and the K-dim (N, C, d1, d2)
        x = torch.randn(shape, generator=g) * 2
        y = torch.randint(0, 5, shape[:1] + shape[2:], generator=g)
        y.view(-1)[::4] = 255
        cw = torch.rand(5, generator=g) + 0.1 if weighted else None
        opts = {"label_smoothing": smoothing, "reduction": reduction}
        ours = _values_and_grads(lambda z: cross_entropy(z, y, class_weights=cw, **opts), x)
        theirs = _values_and_grads(lambda z: F.cross_entropy(z, y, weight=cw, ignore_index=255, **opts), x)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    # another ignore_index, through the module
    y2 = torch.where(y == 255, -100, y)
    loss = CrossEntropyLoss(class_weights=cw, label_smoothing=smoothing, ignore_index=-100, reduction=reduction)
    torch.testing.assert_close(loss(x, y2), F.cross_entropy(x, y2, weight=cw, **opts), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("block", [7 * 5, 3 * 5 * 4])  # blocks within a sample's pixels, or of whole samples
def test_index_nll_in_blocks_equals_torch(monkeypatch, block):
    """The blocked forward of ``index_nll`` (``_stable.row_blocks``), its gradient prepared there, against torch:
    (N, C), (N, C, d1, d2) with blocks cutting the pixels or several samples per block, and the weighted two-bin
    form of the DFL; a second backward through a retained graph recomputes the handed-over gradient."""
    monkeypatch.setattr(S, "BLOCK", block)
    g = torch.Generator().manual_seed(3)
    for shape in [(23, 5), (3, 5, 4, 6), (2, 5, 1, 3)]:
        x = torch.randn(shape, generator=g, dtype=torch.float64) * 3
        y = torch.randint(0, 5, shape[:1] + shape[2:], generator=g)
        ours = _values_and_grads(lambda z: cross_entropy(z, y, reduction="none"), x)
        theirs = _values_and_grads(lambda z: F.cross_entropy(z, y, reduction="none"), x)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    x = (torch.randn(9, 4, 16, generator=g, dtype=torch.float64) * 2).requires_grad_()
    left = torch.randint(0, 15, (9, 4, 1), generator=g)
    w = torch.rand(9, 4, 1, generator=g, dtype=torch.float64)
    index, weight = torch.cat([left, left + 1], -1), torch.cat([w, 1 - w], -1)
    ours = S.index_nll(x, index, -1, weight=weight)
    theirs = -(torch.log_softmax(x, -1).gather(-1, index) * weight).sum(-1, keepdim=True)
    torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=1e-12)
    upstream = torch.rand_like(ours)
    want = torch.autograd.grad(theirs, x, upstream)[0]
    for _ in range(2):  # the second backward recomputes: the first handed its buffer over
        torch.testing.assert_close(torch.autograd.grad(ours, x, upstream, retain_graph=True)[0], want)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_equals_torch_probabilities(reduction):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, 3, generator=g)
    q = torch.softmax(torch.randn(4, 6, 3, generator=g), 1)
    cw = torch.rand(6, generator=g)
    for kw in [{}, {"label_smoothing": 0.1}]:
        ours = _values_and_grads(lambda z: cross_entropy(z, q, class_weights=cw, reduction=reduction, **kw), x)
        theirs = _values_and_grads(lambda z: F.cross_entropy(z, q, weight=cw, reduction=reduction, **kw), x)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_cross_entropy_elementwise_weight():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 4, generator=g), torch.randint(0, 4, (8,), generator=g)
    y[0] = 255
    w, cw = torch.rand(8, generator=g), torch.rand(4, generator=g)
    unreduced = F.cross_entropy(x, y, weight=cw, ignore_index=255, reduction="none")
    got = cross_entropy(x, y, class_weights=cw, weight=w)
    torch.testing.assert_close(got, (w * unreduced).sum() / cw[y[1:]].sum())
    ones = torch.ones(8)
    unweighted = cross_entropy(x, y, class_weights=cw)
    torch.testing.assert_close(cross_entropy(x, y, class_weights=cw, weight=ones), unweighted)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.5, 0.5), (-1.0, 1.0), (0.75, 3.0), (0.25, 0.0)])
@pytest.mark.parametrize("sparse", [False, True])
def test_focal_equals_torchvision(route, reduction, alpha, gamma, sparse):
    route(sparse)
    t = sparse_scores((3, 700, 2))  # 4,200 elements: several blocks, not a multiple of them
    x = logits_like(t)
    for target in (t, (t > 0).float()):
        ours = _values_and_grads(lambda z: focal_loss(z, target, alpha=alpha, gamma=gamma, reduction=reduction), x)
        theirs = _values_and_grads(
            lambda z: tv.sigmoid_focal_loss(z, target, alpha=alpha, gamma=gamma, reduction=reduction), x
        )
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_focal_target_gradient_equals_torchvision():
    t = sparse_scores((40, 5), density=0.3)
    x = logits_like(t)
    grads = []
    for fn in (focal_loss, tv.sigmoid_focal_loss):
        xx, tt = x.clone().requires_grad_(), t.clone().requires_grad_()
        fn(xx, tt, reduction="sum").backward()
        grads.append((xx.grad, tt.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------- fused kernel == reference


def _fused_and_reference(name, x, t, opts, ab, reduction, weight=None):
    fn, kind, _, _ = MODULATED[name]
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    fused = fn(xa, t, **opts, weight=weight, reduction=reduction)
    ref = M.composed(xb, t, kind, *ab)
    if weight is not None:
        ref = ref * weight
    ref = {"none": ref, "sum": ref.sum(), "mean": ref.mean()}[reduction]
    g = torch.rand_like(fused) + 0.5
    fused.backward(g)
    ref.backward(g)
    return fused, ref, xa.grad, xb.grad


def _options(name, exponent):
    _, _, opts, (a, _) = MODULATED[name]
    key = "beta" if name == "quality" else "gamma"
    return {**opts, key: exponent}, (a, exponent)


@pytest.mark.parametrize("name", MODULATED)
@pytest.mark.parametrize("exponent", [0.5, 1.0, 2.0, 3.0, 1.7, 0.0])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_fused_equals_reference(route, name, exponent, sparse, reduction):
    route(sparse, block=997)
    t = sparse_scores((5, 1001), density=0.05)  # 5,005 elements: blocks of 997 and a short last one
    x = logits_like(t, scale=6.0)
    x[0, :20] = 100.0  # saturated logits, positives and negatives among them
    x[1, :20] = -100.0
    t[0, :5] = 1.0
    t[1, :5] = 1.0
    t[2, :3] = torch.sigmoid(x[2, :3])  # q == p exactly: the kink of |q − p|^β
    opts, ab = _options(name, exponent)
    fused, ref, g_fused, g_ref = _fused_and_reference(name, x, t, opts, ab, reduction)
    for v in (fused, ref, g_fused, g_ref):
        assert torch.isfinite(v).all()
    scale = max(1.0, ref.abs().max().item())  # sums of ~5,000 terms are compared relative to their size
    torch.testing.assert_close(fused, ref, atol=1e-6 * scale, rtol=1e-5)
    torch.testing.assert_close(g_fused, g_ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", MODULATED)
@pytest.mark.parametrize("sparse", [False, True])
def test_fused_equals_reference_weighted_float64(route, name, sparse):
    route(sparse, block=512)
    t = sparse_scores((3, 7, 101), density=0.1, dtype=torch.float64)
    x = logits_like(t)
    w = torch.rand(3, 7, 1, dtype=torch.float64)
    opts, ab = _options(name, 2.0)
    for reduction in REDUCTIONS:
        fused, ref, g_fused, g_ref = _fused_and_reference(name, x, t, opts, ab, reduction, weight=w)
        assert fused.dtype == torch.float64
        torch.testing.assert_close(fused, ref, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(g_fused, g_ref, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("name", MODULATED)
def test_fused_default_blocks_large_input(name):
    # the default block size, more than two blocks and a remainder, the sparse route chosen by itself
    t = sparse_scores((2 * S.BLOCK + 12_345,), density=1e-3)
    x = logits_like(t)
    opts, ab = _options(name, 2.0)
    assert M._is_sparse(t)
    fused, ref, g_fused, g_ref = _fused_and_reference(name, x, t, opts, ab, "sum")
    torch.testing.assert_close(fused, ref, atol=0, rtol=1e-5)
    torch.testing.assert_close(g_fused, g_ref, atol=1e-6, rtol=1e-5)
    # the float32 sum over blocks is as accurate as torch's own sum
    exact = M.composed(x.double(), t.double(), MODULATED[name][1], *ab).sum()
    assert abs(fused.double() - exact) <= 1e-6 * exact


def test_sparse_index_helper():
    for n in (0, 1, 63, 64, 65, 1000, 4099):
        t = sparse_scores((n,), density=0.05)
        if n > 10:
            t[3], t[-1] = float("nan"), -0.5  # found too (targets are only checked with validate=True)
        assert torch.equal(M._nonzero(t), torch.nonzero(t).squeeze(1))


@pytest.mark.parametrize("name", MODULATED)
def test_fused_backward_twice_and_double_backward(name):
    fn, _, opts, _ = MODULATED[name]
    t = sparse_scores((30, 4), density=0.3, dtype=torch.float64)
    x = logits_like(t).requires_grad_()
    loss = fn(x, t, **opts, reduction="sum")
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()  # the saved derivative was handed over the first time: recomputed
    torch.testing.assert_close(x.grad, 2 * first)
    # create_graph: the gradient is differentiable (through the reference)
    x4 = x[:4].detach().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda z: fn(z, t[:4], **opts, reduction="sum"), (x4,))


def test_no_grad_and_no_logit_grad():
    t = sparse_scores((50, 3))
    x = logits_like(t)
    with torch.no_grad():
        a = focal_loss(x, t, reduction="none")
    b = focal_loss(x, t, reduction="none")  # x does not require grad
    torch.testing.assert_close(a, tv.sigmoid_focal_loss(x, t, reduction="none"))
    torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------------------ gradcheck


def _f64(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("sparse", [False, True])
def test_gradcheck_modulated(route, sparse):
    route(sparse, block=7)
    t = sparse_scores((4, 5), density=0.4, dtype=torch.float64)
    x = _f64(4, 5).requires_grad_()
    w = torch.rand(4, 1, dtype=torch.float64)
    for name, (fn, _, opts, _) in MODULATED.items():
        for reduction in ("none", "sum"):
            assert torch.autograd.gradcheck(lambda z: fn(z, t, **opts, weight=w, reduction=reduction), (x,)), name
        assert torch.autograd.gradcheck(lambda z: fn(z, t, **opts, reduction="mean"), (x,)), name  # fused sum
    # the reference path: gradient w.r.t. the target too
    tq = (t * 0.8 + 0.1).requires_grad_()  # away from the kinks at q = 0
    for name, (fn, _, opts, _) in MODULATED.items():
        assert torch.autograd.gradcheck(lambda z, q: fn(z, q, **opts, reduction="sum"), (x, tq)), name


def test_gradcheck_bce_and_cross_entropy():
    x = _f64(3, 4).requires_grad_()
    t = torch.rand(3, 4, dtype=torch.float64)
    pw, w = torch.rand(4, dtype=torch.float64) + 0.5, torch.rand(3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: bce_with_logits(z, t, pos_weight=pw, label_smoothing=0.1, weight=w), (x,))
    assert torch.autograd.gradcheck(lambda z: bce_with_logits(z, t, reduction="sum"), (x,))
    y = torch.tensor([1, 255, 3])
    cw = torch.rand(4, dtype=torch.float64) + 0.1
    assert torch.autograd.gradcheck(lambda z: cross_entropy(z, y, class_weights=cw, label_smoothing=0.2), (x,))
    q = torch.softmax(_f64(3, 4, seed=1), 1)
    assert torch.autograd.gradcheck(lambda z: cross_entropy(z, q, reduction="none"), (x,))
    xk = _f64(2, 3, 2, 2).requires_grad_()
    yk = torch.tensor([[[0, 2], [1, 255]], [[2, 2], [0, 1]]])
    assert torch.autograd.gradcheck(lambda z: cross_entropy(z, yk), (xk,))


# ------------------------------------------------------------------------------------------------- degenerate cases


@pytest.mark.parametrize("name", MODULATED)
@pytest.mark.parametrize("sparse", [False, True])
def test_no_positives(route, name, sparse):
    route(sparse, block=100)
    fn, kind, opts, ab = MODULATED[name]
    t = torch.zeros(3, 250)
    x = logits_like(t, scale=5.0)
    x[0, :10], x[1, :10] = 100.0, -100.0
    fused, ref, g_fused, g_ref = _fused_and_reference(name, x, t, opts, ab, "mean")
    assert torch.isfinite(fused) and torch.isfinite(g_fused).all()
    torch.testing.assert_close(fused, ref)
    torch.testing.assert_close(g_fused, g_ref)


def test_cross_entropy_all_ignored_is_zero():
    for cw in (None, torch.rand(5)):
        x = torch.randn(4, 5, 3, requires_grad=True)
        y = torch.full((4, 3), 255)
        loss = cross_entropy(x, y, class_weights=cw, label_smoothing=0.1)
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert torch.equal(x.grad, torch.zeros_like(x))
    assert cross_entropy(torch.randn(2, 3), torch.tensor([0, 255]), reduction="none")[1].item() == 0.0


ALL = {
    "bce": (bce_with_logits, "target"),
    "focal": (focal_loss, "target"),
    "varifocal": (varifocal_loss, "target_scores"),
    "quality": (quality_focal_loss, "target_scores"),
}


@pytest.mark.parametrize("name", ALL)
def test_empty_inputs(name):
    fn, _ = ALL[name]
    x = torch.zeros(0, 80, requires_grad=True)
    t = torch.zeros(0, 80)
    for reduction in ("mean", "sum"):
        loss = fn(x, t, reduction=reduction)
        assert loss.item() == 0.0
        loss.backward()
    assert fn(x, t, reduction="none").shape == (0, 80)


def test_cross_entropy_empty():
    x = torch.zeros(0, 5, requires_grad=True)
    for target in (torch.zeros(0, dtype=torch.long), torch.zeros(0, 5)):
        for reduction in ("mean", "sum"):
            loss = cross_entropy(x, target, reduction=reduction)
            assert loss.item() == 0.0
            loss.backward()
        assert cross_entropy(x, target, reduction="none").shape == (0,)


# ---------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", ALL)
def test_bad_input_binary(name):
    fn, tname = ALL[name]
    x, t = torch.zeros(4, 3), torch.zeros(4, 3)
    with pytest.raises(ValueError, match=tname):
        fn(x, torch.zeros(4, 2))
    with pytest.raises(ValueError, match=tname):
        fn(x, torch.full((4, 3), 1.5))
    with pytest.raises(ValueError, match=tname):
        fn(x, torch.full((4, 3), -0.1))
    with pytest.raises(ValueError, match=tname):
        fn(x, torch.full((4, 3), float("nan")))
    fn(x, torch.full((4, 3), 1.5), validate=False)  # value checks only
    with pytest.raises(ValueError, match="reduction"):
        fn(x, t, reduction="avg")
    with pytest.raises(ValueError, match="logits"):
        fn(torch.zeros(4, 3, dtype=torch.long), t)
    with pytest.raises(ValueError, match="weight"):
        fn(x, t, weight=torch.ones(5, 4, 3))


def test_bad_options():
    for make, arg in [
        (lambda: FocalLoss(alpha=1.5), "alpha"),
        (lambda: FocalLoss(alpha=float("nan")), "alpha"),
        (lambda: FocalLoss(gamma=-1.0), "gamma"),
        (lambda: FocalLoss(gamma=float("inf")), "gamma"),
        (lambda: FocalLoss(reduction="avg"), "reduction"),
        (lambda: VarifocalLoss(alpha=-0.5), "alpha"),
        (lambda: VarifocalLoss(gamma=-2.0), "gamma"),
        (lambda: VarifocalLoss(reduction="max"), "reduction"),
        (lambda: QualityFocalLoss(beta=-1.0), "beta"),
        (lambda: QualityFocalLoss(reduction=None), "reduction"),
        (lambda: BCEWithLogitsLoss(label_smoothing=1.0), "label_smoothing"),
        (lambda: BCEWithLogitsLoss(label_smoothing=-0.1), "label_smoothing"),
        (lambda: BCEWithLogitsLoss(pos_weight=torch.tensor([-1.0])), "pos_weight"),
        (lambda: BCEWithLogitsLoss(reduction="avg"), "reduction"),
        (lambda: CrossEntropyLoss(label_smoothing=1.0), "label_smoothing"),
        (lambda: CrossEntropyLoss(ignore_index=1.5), "ignore_index"),
        (lambda: CrossEntropyLoss(class_weights=torch.ones(2, 2)), "class_weights"),
        (lambda: CrossEntropyLoss(class_weights=torch.tensor([1.0, -1.0])), "class_weights"),
        (lambda: CrossEntropyLoss(reduction="avg"), "reduction"),
    ]:
        with pytest.raises(ValueError, match=arg):
            make()
    x, t = torch.zeros(2, 3), torch.zeros(2, 3)
    with pytest.raises(ValueError, match="gamma"):
        focal_loss(x, t, gamma=-0.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        bce_with_logits(x, t, label_smoothing=2.0)
    with pytest.raises(ValueError, match="pos_weight"):
        bce_with_logits(x, t, pos_weight=torch.ones(4))


def test_bad_input_cross_entropy():
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="target"):
        cross_entropy(x, torch.tensor([0, 1, 3, 0]))  # out of range
    with pytest.raises(ValueError, match="target"):
        cross_entropy(x, torch.tensor([0, 1, -1, 0]))
    with pytest.raises(ValueError, match="target"):
        cross_entropy(x, torch.tensor([0, 1, 2]))  # shape
    with pytest.raises(ValueError, match="target"):
        cross_entropy(x, torch.zeros(4, 2))  # probabilities of the wrong shape
    with pytest.raises(ValueError, match="target"):
        cross_entropy(x, torch.full((4, 3), 1.5))
    with pytest.raises(ValueError, match="target"):
        cross_entropy(x, torch.tensor([True, False, True, True]))
    with pytest.raises(ValueError, match="logits"):
        cross_entropy(torch.zeros(3), torch.tensor(0))
    with pytest.raises(ValueError, match="class_weights"):
        cross_entropy(x, torch.tensor([0, 1, 2, 0]), class_weights=torch.ones(4))
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(x, torch.tensor([0, 1, 2, 0]), reduction="avg")
    cross_entropy(x, torch.tensor([0, 1, 255, 2]))  # the ignored label is fine


# --------------------------------------------------------------------------------------------------------- dtypes


def _all_losses(x, t, labels):
    return {
        "bce": bce_with_logits(x, t),
        "bce_smoothed": bce_with_logits(x, t, label_smoothing=0.1, weight=torch.ones(3)),
        "focal": focal_loss(x, t),
        "varifocal": varifocal_loss(x, t, reduction="none"),
        "quality": quality_focal_loss(x, t, reduction="sum"),
        "cross_entropy": cross_entropy(x, labels),
        "cross_entropy_probs": cross_entropy(x, t.softmax(1).to(x.dtype)),
    }


def test_low_precision_inputs_give_float32():
    t = sparse_scores((6, 3), density=0.5)
    labels = torch.tensor([0, 1, 2, 255, 1, 0])
    for dtype in (torch.bfloat16, torch.float16):
        x = logits_like(t).to(dtype).requires_grad_()
        for name, loss in _all_losses(x, t.to(dtype), labels).items():
            assert loss.dtype == torch.float32, name
            loss.sum().backward()
        assert x.grad.dtype == dtype
    xd = logits_like(t).double()
    for name, loss in _all_losses(xd, t.double(), labels).items():
        assert loss.dtype == torch.float64, name


def test_autocast_gives_float32():
    t = sparse_scores((6, 3), density=0.5)
    labels = torch.tensor([0, 1, 2, 255, 1, 0])
    lin = torch.nn.Linear(3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = lin(logits_like(t))  # bfloat16 under autocast
        assert x.dtype == torch.bfloat16
        for name, loss in _all_losses(x, t, labels).items():
            assert loss.dtype == torch.float32, name
        focal_loss(x, t).backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()


def test_modules_match_functions():
    t = sparse_scores((5, 4), density=0.5)
    x, w = logits_like(t), torch.rand(5, 1)
    pw = torch.ones(4) * 2
    pairs = [
        (FocalLoss(alpha=0.5, gamma=1.0), lambda: focal_loss(x, t, alpha=0.5, gamma=1.0, weight=w)),
        (VarifocalLoss(alpha=0.5, reduction="sum"), lambda: varifocal_loss(x, t, alpha=0.5, weight=w, reduction="sum")),
        (QualityFocalLoss(beta=1.5), lambda: quality_focal_loss(x, t, beta=1.5, weight=w)),
        (BCEWithLogitsLoss(pos_weight=pw), lambda: bce_with_logits(x, t, pos_weight=pw, weight=w)),
    ]
    for module, fn in pairs:
        torch.testing.assert_close(module(x, t, w), fn())
    y = torch.tensor([0, 1, 255, 3, 2])
    module = CrossEntropyLoss(class_weights=[1.0, 2.0, 3.0, 4.0], label_smoothing=0.1)
    want = cross_entropy(x, y, class_weights=torch.tensor([1.0, 2.0, 3.0, 4.0]), label_smoothing=0.1)
    torch.testing.assert_close(module(x, y), want)
