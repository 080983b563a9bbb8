"""Tests for the region-overlap losses of ``detloss.losses.dice``.

The hand-computed cases share one 1×2×2×2 input whose probabilities are simple numbers: with class-0 logits 0
and class-1 logits ``d``, the softmax gives p1 = sigmoid(d), so ``d = ln 3, 0, −ln 3, ln 9`` yields
p1 = [[0.75, 0.5], [0.25, 0.9]] and p0 = 1 − p1 = [[0.25, 0.5], [0.75, 0.1]]. The same ``d`` as a one-channel
binary head gives the same p1 through the sigmoid.
"""

from __future__ import annotations

import math

import pytest
import torch

from detloss.losses.dice import (
    DiceLoss,
    FocalTverskyLoss,
    GeneralizedDiceLoss,
    JaccardLoss,
    TverskyLoss,
    dice_loss,
    focal_tversky_loss,
    generalized_dice_loss,
    jaccard_loss,
    tversky_loss,
)

S = 1e-5  # the default smooth
FUNCTIONS = [dice_loss, generalized_dice_loss, tversky_loss, focal_tversky_loss, jaccard_loss]
MODULES = [DiceLoss, GeneralizedDiceLoss, TverskyLoss, FocalTverskyLoss, JaccardLoss]
IDS = ["dice", "gdl", "tversky", "focal_tversky", "jaccard"]

D = [[math.log(3.0), 0.0], [-math.log(3.0), math.log(9.0)]]
P1 = [[0.75, 0.5], [0.25, 0.9]]
LABELS = [[1, 0], [0, 1]]


def two_class_logits(dtype=torch.float32) -> torch.Tensor:
    logits = torch.zeros(1, 2, 2, 2, dtype=dtype)
    logits[0, 1] = torch.tensor(D, dtype=dtype)
    return logits


def labels(values=LABELS) -> torch.Tensor:
    return torch.tensor([values], dtype=torch.long)


def one_hot(lab: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(lab, num_classes).movedim(-1, 1)


def dice_value(i: float, p: float, t: float, s: float = S) -> float:
    return 1.0 - (2.0 * i + s) / (p + t + s)


def tversky_index(i: float, p: float, t: float, alpha: float, beta: float, s: float = S) -> float:
    return (i + s) / (i + alpha * (p - i) + beta * (t - i) + s)


def close(actual: torch.Tensor, expected, tol: float = 1e-5) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


# Hand counts for LABELS = [[1, 0], [0, 1]]:
#   class 1: I = 0.75 + 0.9 = 1.65, P = 0.75 + 0.5 + 0.25 + 0.9 = 2.4, T = 2
#   class 0: I = 0.5 + 0.75 = 1.25, P = 0.25 + 0.5 + 0.75 + 0.1 = 1.6, T = 2
I1, P1S, T1 = 1.65, 2.4, 2.0
I0, P0S, T0 = 1.25, 1.6, 2.0


# ----------------------------------------------------------------------------------------------------------------
# hand-computed values
# ----------------------------------------------------------------------------------------------------------------


def test_dice_multiclass_by_hand():
    expected = [dice_value(I0, P0S, T0), dice_value(I1, P1S, T1)]
    close(dice_loss(two_class_logits(), labels(), reduction="none"), [expected])
    close(dice_loss(two_class_logits(), labels()), sum(expected) / 2)
    close(dice_loss(two_class_logits(), labels(), reduction="sum"), sum(expected))


def test_dice_include_background_false_by_hand():
    out = dice_loss(two_class_logits(), labels(), include_background=False, reduction="none")
    close(out, [[dice_value(I1, P1S, T1)]])


def test_dice_squared_by_hand():
    p_sq1 = 0.75**2 + 0.5**2 + 0.25**2 + 0.9**2  # 1.685; T = Σt² = 2
    p_sq0 = 0.25**2 + 0.5**2 + 0.75**2 + 0.1**2
    out = dice_loss(two_class_logits(), labels(), squared=True, reduction="none")
    close(out, [[dice_value(I0, p_sq0, T0), dice_value(I1, p_sq1, T1)]])


def test_jaccard_by_hand():
    expected = [1.0 - (i + S) / (p + t - i + S) for i, p, t in ((I0, P0S, T0), (I1, P1S, T1))]
    close(jaccard_loss(two_class_logits(), labels(), reduction="none"), [expected])


def test_tversky_and_focal_by_hand():
    alpha, beta, gamma = 0.3, 0.7, 0.75
    ti = [tversky_index(I0, P0S, T0, alpha, beta), tversky_index(I1, P1S, T1, alpha, beta)]
    out = tversky_loss(two_class_logits(), labels(), alpha=alpha, beta=beta, reduction="none")
    close(out, [[1.0 - ti[0], 1.0 - ti[1]]])
    out = focal_tversky_loss(two_class_logits(), labels(), alpha=alpha, beta=beta, gamma=gamma, reduction="none")
    close(out, [[(1.0 - ti[0]) ** gamma, (1.0 - ti[1]) ** gamma]])


def test_generalized_dice_by_hand():
    lab = labels([[1, 0], [0, 0]])
    # class 1: I = 0.75, P = 2.4, T = 1; class 0: I = 0.5 + 0.75 + 0.1 = 1.35, P = 1.6, T = 3
    i, p, t = [1.35, 0.75], [1.6, 2.4], [3.0, 1.0]
    for weight_type, w in (("square", [1 / 9, 1.0]), ("simple", [1 / 3, 1.0]), ("uniform", [1.0, 1.0])):
        num = 2.0 * (w[0] * i[0] + w[1] * i[1]) + S
        den = w[0] * (p[0] + t[0]) + w[1] * (p[1] + t[1]) + S
        out = generalized_dice_loss(two_class_logits(), lab, weight_type=weight_type, reduction="none")
        assert out.shape == (1,)
        close(out, [1.0 - num / den])


def test_generalized_dice_absent_class_takes_largest_weight():
    logits = torch.zeros(1, 3, 2, 2, dtype=torch.float64)  # p = 1/3 everywhere
    lab = labels([[0, 0], [0, 1]])  # class 2 absent: T = (3, 1, 0), P = 4/3 each
    i, p, t = [1.0, 1 / 3, 0.0], [4 / 3] * 3, [3.0, 1.0, 0.0]
    w = [1 / 9, 1.0, 1.0]  # the absent class takes max(1/9, 1)
    num = 2.0 * sum(wc * ic for wc, ic in zip(w, i)) + S
    den = sum(wc * (pc + tc) for wc, pc, tc in zip(w, p, t)) + S
    close(generalized_dice_loss(logits, lab), 1.0 - num / den, 1e-10)


def test_binary_by_hand_index_and_float_targets():
    logits = torch.tensor([[D]])  # (1, 1, 2, 2), p = P1
    expected = [[dice_value(I1, P1S, T1)]]
    for target in (labels(), labels().unsqueeze(1), labels().unsqueeze(1).float(), labels().bool()):
        close(dice_loss(logits, target, mode="binary", reduction="none"), expected)


def test_multilabel_by_hand():
    logits = torch.tensor([[D, [[0.0, 0.0], [0.0, 0.0]]]])  # channel 1: p = 0.5 everywhere
    target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 0.0]]]])
    # channel 0: I = 1.65, P = 2.4, T = 2; channel 1: I = 1.5, P = 2, T = 3
    expected = [[dice_value(1.65, 2.4, 2.0), dice_value(1.5, 2.0, 3.0)]]
    close(dice_loss(logits, target, mode="multilabel", reduction="none"), expected)


def test_ignore_index_index_target_by_hand():
    lab = labels([[1, 255], [0, 1]])  # pixel (0, 1) (p1 = p0 = 0.5) is left out for both classes
    expected = [[dice_value(0.75, 1.1, 1.0), dice_value(1.65, 1.9, 2.0)]]
    close(dice_loss(two_class_logits(), lab, reduction="none"), expected)
    # the same through a one-hot target where the ignored pixel carries 255 in both channels
    dense = one_hot(labels([[1, 0], [0, 1]]), 2).float()
    dense[0, :, 0, 1] = 255
    close(dice_loss(two_class_logits(), dense, reduction="none"), expected)


def test_ignore_index_dense_target_per_class_by_hand():
    logits = torch.tensor([[D, [[0.0, 0.0], [0.0, 0.0]]]])
    target = torch.tensor([[[[1.0, 255.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 0.0]]]])
    # channel 0 loses pixel (0, 1) only: I = 1.65, P = 2.4 − 0.5 = 1.9, T = 2; channel 1 keeps everything
    expected = [[dice_value(1.65, 1.9, 2.0), dice_value(1.5, 2.0, 3.0)]]
    close(dice_loss(logits, target, mode="multilabel", reduction="none"), expected)


def test_ignore_index_may_be_a_class_for_index_targets():
    # ignore_index=0 with class indices leaves the class-0 pixels out for every class: over the two kept pixels
    # class 0 has I = 0, P = 0.25 + 0.1, T = 0 (absent, predicted: loss ~1); class 1 I = P = 0.75 + 0.9, T = 2
    out = dice_loss(two_class_logits(), labels(), ignore_index=0, reduction="none")
    close(out, [[dice_value(0.0, 0.35, 0.0), dice_value(1.65, 1.65, 2.0)]])


def test_batch_dice_by_hand():
    logits = torch.cat([two_class_logits(), torch.zeros(1, 2, 2, 2)])  # sample 2: p = 0.5 everywhere
    lab = torch.cat([labels(), labels([[1, 1], [1, 1]])])
    # sample 2: class 0: I = 0, P = 2, T = 0; class 1: I = 2, P = 2, T = 4
    per_sample = [
        [dice_value(I0, P0S, T0), dice_value(I1, P1S, T1)],
        [dice_value(0.0, 2.0, 0.0), dice_value(2.0, 2.0, 4.0)],
    ]
    close(dice_loss(logits, lab, reduction="none"), per_sample)
    pooled = [[dice_value(I0 + 0.0, P0S + 2.0, T0 + 0.0), dice_value(I1 + 2.0, P1S + 2.0, T1 + 4.0)]]
    out = dice_loss(logits, lab, batch_dice=True, reduction="none")
    assert out.shape == (1, 2)
    close(out, pooled)
    assert generalized_dice_loss(logits, lab, batch_dice=True, reduction="none").shape == (1,)


def test_class_weights_and_weight_reductions_by_hand():
    values = [dice_value(I0, P0S, T0), dice_value(I1, P1S, T1)]
    cw = [1.0, 3.0]
    logits, lab = two_class_logits(), labels()
    close(dice_loss(logits, lab, class_weights=cw, reduction="none"), [[values[0], 3.0 * values[1]]])
    close(dice_loss(logits, lab, class_weights=cw, reduction="sum"), values[0] + 3.0 * values[1])
    close(dice_loss(logits, lab, class_weights=cw), (values[0] + 3.0 * values[1]) / (1 * 4.0))
    close(dice_loss(logits, lab, class_weights=torch.tensor(cw)), (values[0] + 3.0 * values[1]) / 4.0)
    close(dice_loss(logits, lab, class_weights=[1.0, 1.0]), dice_loss(logits, lab))
    # weight rescales the "none" values; it is not part of the "mean" denominator
    w = torch.tensor([0.5, 2.0])
    close(dice_loss(logits, lab, weight=w, reduction="none"), [[0.5 * values[0], 2.0 * values[1]]])
    close(dice_loss(logits, lab, weight=w), (0.5 * values[0] + 2.0 * values[1]) / 2)
    # per-class weights index the classes kept
    out = dice_loss(logits, lab, include_background=False, class_weights=[2.0], reduction="none")
    close(out, [[2.0 * values[1]]])


def test_generalized_dice_class_weights_multiply_sudre_weights():
    lab = labels([[1, 0], [0, 0]])
    i, p, t = [1.35, 0.75], [1.6, 2.4], [3.0, 1.0]
    w = [1 / 9 * 2.0, 1.0 * 0.5]
    num = 2.0 * (w[0] * i[0] + w[1] * i[1]) + S
    den = w[0] * (p[0] + t[0]) + w[1] * (p[1] + t[1]) + S
    close(generalized_dice_loss(two_class_logits(), lab, class_weights=[2.0, 0.5]), 1.0 - num / den)


def test_5d_input_by_hand_and_equals_flattened_4d():
    logits5 = two_class_logits().unsqueeze(2)  # (1, 2, 1, 2, 2)
    expected = [[dice_value(I0, P0S, T0), dice_value(I1, P1S, T1)]]
    close(dice_loss(logits5, labels().unsqueeze(1), reduction="none"), expected)
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 2, 3, 4)
    lab = torch.randint(0, 3, (2, 2, 3, 4))
    for fn in FUNCTIONS:
        close(fn(logits, lab, reduction="none"), fn(logits.flatten(2, 3), lab.flatten(1, 2), reduction="none"))


# ----------------------------------------------------------------------------------------------------------------
# target forms, identities, modules
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", FUNCTIONS, ids=IDS)
@pytest.mark.parametrize("include_background", [True, False])
def test_index_and_one_hot_targets_agree(fn, include_background):
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 5, 6)
    lab = torch.randint(0, 4, (2, 5, 6))
    lab[0, 0] = 255
    ref = fn(logits, lab, include_background=include_background, reduction="none")
    oh = one_hot(lab.clamp(max=3), 4)
    oh = torch.where(lab.unsqueeze(1) == 255, 255, oh)  # ignored pixels: 255 in every channel
    for target in (lab.unsqueeze(1), oh, oh.float()):
        close(fn(logits, target, include_background=include_background, reduction="none"), ref)


def test_identities():
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    lab = torch.randint(0, 3, (2, 6, 6))
    tiny = 1e-12
    d = dice_loss(logits, lab, smooth=tiny, reduction="none")
    close(tversky_loss(logits, lab, alpha=0.5, beta=0.5, smooth=tiny, reduction="none"), d, 1e-9)
    t = tversky_loss(logits, lab, alpha=0.2, beta=0.8, reduction="none")
    close(focal_tversky_loss(logits, lab, alpha=0.2, beta=0.8, gamma=1.0, reduction="none"), t, 1e-12)
    # α = β = 1 is Jaccard, also with squared sums
    jac = jaccard_loss(logits, lab, reduction="none")
    close(tversky_loss(logits, lab, alpha=1.0, beta=1.0, reduction="none"), jac, 1e-12)
    # GDL with uniform weights and one class is the Dice loss of that class: a binary head, and the foreground
    # of a two-channel softmax
    bin_logits, bin_target = logits[:, :1], (lab == 1).unsqueeze(1).double()
    close(
        generalized_dice_loss(bin_logits, bin_target, mode="binary", weight_type="uniform", reduction="none"),
        dice_loss(bin_logits, bin_target, mode="binary", reduction="none")[:, 0],
        1e-12,
    )
    two, lab2 = logits[:, :2], lab.clamp(max=1)
    close(
        generalized_dice_loss(two, lab2, include_background=False, weight_type="uniform", reduction="none"),
        dice_loss(two, lab2, include_background=False, reduction="none")[:, 0],
        1e-12,
    )
    # ... and the "square" weight of a single class cancels up to smooth
    close(
        generalized_dice_loss(bin_logits, bin_target, mode="binary", smooth=tiny, reduction="none"),
        dice_loss(bin_logits, bin_target, mode="binary", smooth=tiny, reduction="none")[:, 0],
        1e-9,
    )


@pytest.mark.parametrize("index", range(5), ids=IDS)
def test_modules_match_functions(index):
    fn, cls = FUNCTIONS[index], MODULES[index]
    torch.manual_seed(3)
    logits = torch.randn(2, 3, 4, 4)
    lab = torch.randint(0, 3, (2, 4, 4))
    extra = {"alpha": 0.3, "beta": 0.7} if index in (2, 3) else {}
    opts = dict(include_background=False, class_weights=[1.0, 2.0], batch_dice=True, reduction="sum", **extra)
    w = torch.tensor([[0.5, 1.5]]) if index != 1 else torch.tensor([0.5])
    close(cls(**opts)(logits, lab, w), fn(logits, lab, weight=w, **opts))
    assert isinstance(repr(cls(**opts)), str)


def test_binary_and_multilabel_shapes_and_weight():
    torch.manual_seed(4)
    logits = torch.randn(3, 1, 4, 4)
    target = torch.randint(0, 2, (3, 4, 4))
    out = dice_loss(logits, target, mode="binary", reduction="none")
    assert out.shape == (3, 1)
    w = torch.tensor([[1.0], [0.0], [2.0]])
    close(dice_loss(logits, target, mode="binary", weight=w, reduction="sum"), (out * w).sum())
    ml = jaccard_loss(torch.randn(3, 2, 4, 4), torch.rand(3, 2, 4, 4), mode="multilabel", reduction="none")
    assert ml.shape == (3, 2)


# ----------------------------------------------------------------------------------------------------------------
# gradients and degenerate input
# ----------------------------------------------------------------------------------------------------------------

GRAD_CASES = [
    (dice_loss, {}),
    (dice_loss, {"squared": True, "batch_dice": True}),
    (generalized_dice_loss, {}),
    (generalized_dice_loss, {"weight_type": "simple", "include_background": False}),
    (tversky_loss, {"alpha": 0.3, "beta": 0.7}),
    (focal_tversky_loss, {"alpha": 0.7, "beta": 0.3, "gamma": 0.75}),
    (focal_tversky_loss, {"gamma": 2.0, "class_weights": [1.0, 2.0, 0.5]}),
    (jaccard_loss, {"squared": True}),
    (dice_loss, {"ignore_index": 255, "include_background": False, "batch_dice": True}),  # fused counts, all options
    (tversky_loss, {"alpha": 0.3, "beta": 0.7, "ignore_index": 255}),
]


@pytest.mark.parametrize("first", [0, 1])
@pytest.mark.parametrize("masked", [False, True])
def test_fused_softmax_counts_equal_the_composed_form(first, masked):
    """``_stable.softmax_counts`` (the multiclass index-label path) against ``softmax_pair`` and the products,
    values and gradients, with tied largest logits and every output's gradient in use."""
    from detloss.losses._stable import softmax_counts, softmax_pair

    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64)
    x[0, :2, 0, 0] = 3.0  # a tie for the largest logit
    lab = torch.randint(0, 4, (3, 1, 5, 6), generator=g)
    onehot = (lab == torch.arange(first, 4).view(1, -1, 1, 1)).double()
    valid = (torch.rand(3, 1, 5, 6, generator=g) > 0.2).double() if masked else None
    if valid is not None:
        onehot = onehot * valid
    dims = (0, 2, 3)
    upstream = [torch.rand(1, 4 - first, generator=g, dtype=torch.float64) for _ in range(3)]

    def composed(z):
        p, q = softmax_pair(z, 1)
        p, q = p[:, first:], q[:, first:]
        off = p * (1 - onehot) * (1 if valid is None else valid)
        return [v.sum(dims, keepdim=True).flatten(1) for v in (p * onehot, off, q * onehot)]

    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    ours, theirs = softmax_counts(a, onehot, valid, first, dims), composed(b)
    for u, v in zip(ours, theirs):
        torch.testing.assert_close(u, v, rtol=1e-13, atol=1e-15)
    sum(u.mul(w).sum() for u, w in zip(ours, upstream)).backward()
    sum(v.mul(w).sum() for v, w in zip(theirs, upstream)).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-15)
    # second order (create_graph): the fused function differentiates the composed form
    a2 = x.clone().requires_grad_()
    first_grad = torch.autograd.grad(softmax_counts(a2, onehot, valid, first, dims)[0].sum(), a2, create_graph=True)[0]
    b2 = x.clone().requires_grad_()
    want = torch.autograd.grad(composed(b2)[0].sum(), b2, create_graph=True)[0]
    torch.testing.assert_close(
        torch.autograd.grad(first_grad.square().sum(), a2)[0], torch.autograd.grad(want.square().sum(), b2)[0]
    )


@pytest.mark.parametrize("fn, opts", GRAD_CASES, ids=[f"{f.__name__}-{i}" for i, (f, _) in enumerate(GRAD_CASES)])
def test_gradcheck_multiclass(fn, opts):
    torch.manual_seed(5)
    logits = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    lab = torch.randint(0, 3, (2, 4, 4))
    lab[1, 0, :2] = 255
    assert torch.autograd.gradcheck(lambda x: fn(x, lab, **opts), (logits,))


@pytest.mark.parametrize("fn", FUNCTIONS, ids=IDS)
def test_gradcheck_binary_and_multilabel(fn):
    torch.manual_seed(6)
    x = torch.randn(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 2, (2, 3, 3))
    assert torch.autograd.gradcheck(lambda z: fn(z, t, mode="binary"), (x,))
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    t = torch.rand(1, 2, 3, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: fn(z, t, mode="multilabel", reduction="sum"), (x,))


def _value_and_grad(fn, logits, target, **opts):
    x = logits.clone().requires_grad_(True)
    out = fn(x, target, **opts)
    out.sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("fn", FUNCTIONS, ids=IDS)
def test_all_pixels_ignored_gives_zero_and_finite_gradient(fn):
    logits = torch.randn(2, 3, 4, 4)
    lab = torch.full((2, 4, 4), 255)
    value, grad = _value_and_grad(fn, logits, lab, reduction="none")
    assert torch.equal(value, torch.zeros_like(value))
    assert torch.isfinite(grad).all()
    # one sample fully ignored, the other not: that sample's losses are still exactly 0
    lab[1] = torch.randint(0, 3, (4, 4))
    value, grad = _value_and_grad(fn, logits, lab, reduction="none")
    assert torch.equal(value[0], torch.zeros_like(value[0]))
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    # dense target, every element ignored
    value, grad = _value_and_grad(fn, logits, torch.full((2, 3, 4, 4), 255.0), mode="multilabel")
    assert value.item() == 0.0 and torch.isfinite(grad).all()


@pytest.mark.parametrize("fn", FUNCTIONS, ids=IDS)
def test_empty_class_and_empty_mask(fn):
    # class 2 absent from the target and (numerically) from the prediction: its loss is ~0, not NaN
    logits = torch.randn(2, 3, 4, 4)
    logits[:, 2] = -100.0
    lab = torch.randint(0, 2, (2, 4, 4))
    value, grad = _value_and_grad(fn, logits, lab, reduction="none")
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    if fn is not generalized_dice_loss:
        assert value[:, 2].abs().max() < 1e-6
    # empty binary masks, predicted empty or not
    for fill in (-30.0, 0.0, 30.0):
        empty = torch.zeros(1, 4, 4, dtype=torch.long)
        value, grad = _value_and_grad(fn, torch.full((1, 1, 4, 4), fill), empty, mode="binary")
        assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    # batch of one, one pixel
    value, grad = _value_and_grad(fn, torch.randn(1, 2, 1, 1), torch.tensor([[[1]]]))
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()


@pytest.mark.parametrize("fn", FUNCTIONS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_nan_or_inf_on_extreme_logits(fn, dtype):
    torch.manual_seed(7)
    logits = torch.randn(2, 3, 2, 4, 4, dtype=dtype) * 1e4
    lab = torch.randint(0, 3, (2, 2, 4, 4))
    lab[0, 0] = 255
    for opts in ({}, {"squared": True}, {"batch_dice": True, "include_background": False}, {"smooth": 1e-30}):
        value, grad = _value_and_grad(fn, logits, lab, reduction="none", **opts)
        assert torch.isfinite(value).all() and torch.isfinite(grad).all(), opts
        assert value.dtype == dtype


def _gdl_by_formula(logits: torch.Tensor, target: torch.Tensor, class_weights, smooth: float) -> torch.Tensor:
    """Multilabel generalized Dice straight from the formula, ``w_c = class_weights[c] / T_c²`` (all ``T_c > 0``)."""
    p = torch.sigmoid(logits)
    dims = tuple(range(2, logits.ndim))
    inter, pred, true = (p * target).sum(dims), p.sum(dims), target.sum(dims)
    w = torch.as_tensor(class_weights, dtype=logits.dtype) / true.square()
    return 1 - (2 * (w * inter).sum(1) + smooth) / ((w * (pred + true)).sum(1) + smooth)


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "autocast"])
@pytest.mark.parametrize("logit, target", [(88.0, 1e-20), (-88.0, 1e-20), (88.0, 3e-20), (20.0, 1e-19)])
def test_generalized_dice_saturated_logits_tiny_soft_targets(precision, logit, target):
    # 1 / T² of a tiny target volume is near float32's largest value: the weighted sums overflowed to inf and the
    # loss was inf / inf (NaN, in value and gradient); the weights are now divided by their largest
    cw, smooth = [1.0, 2.0, 0.5], 1e-8
    x = torch.full((2, 3, 4, 4), logit, dtype=torch.bfloat16 if precision == "bfloat16" else torch.float32)
    x.requires_grad_()
    t = torch.full((2, 3, 4, 4), target).to(x.dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "autocast"):
        out = generalized_dice_loss(x, t, mode="multilabel", class_weights=cw, smooth=smooth, reduction="none")
    out.sum().backward()
    assert out.dtype == torch.float32 and torch.isfinite(out).all() and torch.isfinite(x.grad).all(), (out, x.grad)
    want = _gdl_by_formula(x.detach().double(), t.double(), cw, smooth)  # no overflow in float64's range
    torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=0)


def test_generalized_dice_weights_divided_by_their_largest_keep_the_value():
    # the division by max_c w_c (and of smooth with them) leaves ordinary values where they were
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64) * 3
    t = torch.rand(2, 3, 5, 4, generator=g, dtype=torch.float64)
    for cw, smooth in ((None, S), ([1.0, 2.0, 0.5], 1e-8), ([0.25, 0.0, 3.0], 0.5)):
        got = generalized_dice_loss(x, t, mode="multilabel", class_weights=cw, smooth=smooth, reduction="none")
        want = _gdl_by_formula(x, t, [1.0, 1.0, 1.0] if cw is None else cw, smooth)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_gradcheck_generalized_dice_soft_multilabel_with_class_weights():
    x = torch.randn(2, 3, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4)).requires_grad_()
    t = torch.rand(2, 3, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 1e-3
    opts = {"mode": "multilabel", "class_weights": [1.0, 2.0, 0.5], "smooth": 1e-8, "reduction": "sum"}
    assert torch.autograd.gradcheck(lambda z: generalized_dice_loss(z, t, **opts), (x,))


@pytest.mark.parametrize("fn", FUNCTIONS, ids=IDS)
def test_tiny_smooth_on_an_empty_prediction_and_target_has_a_finite_gradient(fn):
    # every count near 0 and s = 1e-30: the gradient g·r / (n + r)² squared a total of ~1e-30 to 0 in float32 (NaN);
    # it is now (g / (n + r))·(r / (n + r)), the true gradient being p·(1 − p) / s ≈ 4e-14 here
    x = torch.full((1, 2, 4, 4), -100.0, requires_grad=True)
    value, grad = _value_and_grad(fn, x.detach(), torch.zeros(1, 2, 4, 4), mode="multilabel", smooth=1e-30)
    assert torch.isfinite(value).all() and torch.isfinite(grad).all(), (value, grad)
    assert value.abs().max() < 1e-6 and grad.abs().max() < 1e-12


def test_focal_tversky_at_perfect_prediction():
    target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]], dtype=torch.float64)
    # at ±40, FP = FN = 2·σ(−40) (σ(40) rounds to 1, but 1 − σ(40) is σ(−40)): 1 − TI = 0.5·(FP + FN) / (I + ...)
    logits = target * 80.0 - 40.0
    want = 0.5 * 4 * math.exp(-40) / (2 + 0.5 * 4 * math.exp(-40) + 1e-5)
    assert tversky_loss(logits, target, mode="binary").item() == pytest.approx(want, rel=1e-12)
    # at ±800, σ(−800) is 0 in float64: FP = FN = 0 and 1 − TI == 0 exactly, where x^γ has an infinite slope
    logits = (target * 1600.0 - 800.0).requires_grad_(True)
    assert tversky_loss(logits, target, mode="binary").item() == 0.0
    for gamma in (0.5, 0.75, 1.0, 2.0):
        logits.grad = None
        out = focal_tversky_loss(logits, target, mode="binary", gamma=gamma)
        out.backward()
        assert out.item() == 0.0
        assert torch.isfinite(logits.grad).all()


# ----------------------------------------------------------------------------------------------------------------
# precision
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", FUNCTIONS, ids=IDS)
def test_low_precision_and_autocast_give_float32(fn):
    torch.manual_seed(8)
    logits = torch.randn(2, 3, 8, 8)
    lab = torch.randint(0, 3, (2, 8, 8))
    ref = fn(logits, lab)
    for low in (torch.bfloat16, torch.float16):
        out = fn(logits.to(low), lab)
        assert out.dtype == torch.float32
        close(out, ref, 1e-2)
    conv = torch.nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        ref_conv = fn(conv(logits), lab)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(logits, lab)
        assert out.dtype == torch.float32
        close(out, ref, 1e-6)
        with torch.no_grad():
            out = fn(conv(logits), lab)  # bf16 logits from an autocast layer
        assert out.dtype == torch.float32
        close(out, ref_conv, 2e-2)


# ----------------------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", FUNCTIONS, ids=IDS)
def test_bad_tensors_raise(fn):
    logits = torch.randn(2, 3, 4, 4)
    lab = torch.randint(0, 3, (2, 4, 4))
    with pytest.raises(ValueError, match="target"):
        fn(logits, torch.full((2, 4, 4), 3))  # label out of range
    with pytest.raises(ValueError, match="target"):
        fn(logits, torch.full((2, 4, 4), -1))
    with pytest.raises(ValueError, match="target"):
        fn(logits, lab[:, :3])  # shape mismatch
    with pytest.raises(ValueError, match="target"):
        fn(logits, lab[:, :3], validate=False)  # shapes are always checked
    with pytest.raises(ValueError, match="target"):
        fn(logits, lab.float())  # float indices
    with pytest.raises(ValueError, match="target"):
        fn(logits, torch.full((2, 3, 4, 4), 1.5))  # soft target outside [0, 1]
    with pytest.raises(ValueError, match="target"):
        fn(logits, torch.full((2, 3, 4, 4), -0.5), mode="multilabel")
    with pytest.raises(ValueError, match="target"):
        fn(logits[:, :1], torch.full((2, 4, 4), 2), mode="binary")
    with pytest.raises(ValueError, match="logits"):
        fn(logits, lab, mode="binary")  # binary head must have one channel
    with pytest.raises(ValueError, match="logits"):
        fn(logits.long(), lab)
    with pytest.raises(ValueError, match="logits"):
        fn(logits[:, :, 0, 0], lab[:, 0, 0])
    with pytest.raises(ValueError, match="include_background"):
        fn(logits[:, :1], torch.zeros(2, 4, 4, dtype=torch.long), include_background=False)
    with pytest.raises(ValueError, match="class_weights"):
        fn(logits, lab, class_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="class_weights"):
        fn(logits, lab, include_background=False, class_weights=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="weight"):
        fn(logits, lab, weight=torch.ones(5))
    with pytest.raises(ValueError, match="ignore_index"):
        fn(logits, one_hot(lab, 3).float(), ignore_index=1)
    # validate=False skips the value checks only
    fn(logits, torch.full((2, 4, 4), 7), validate=False)


@pytest.mark.parametrize("index", range(5), ids=IDS)
def test_bad_options_raise_in_function_and_at_construction(index):
    fn, cls = FUNCTIONS[index], MODULES[index]
    logits = torch.randn(1, 2, 2, 2)
    lab = torch.zeros(1, 2, 2, dtype=torch.long)
    bad = [
        ({"mode": "softmax"}, "mode"),
        ({"reduction": "avg"}, "reduction"),
        ({"mode": "binary", "include_background": False}, "include_background"),
        ({"smooth": 0.0}, "smooth"),
        ({"smooth": -1.0}, "smooth"),
        ({"smooth": float("nan")}, "smooth"),
        ({"class_weights": [1.0, -1.0]}, "class_weights"),
        ({"class_weights": [0.0, 0.0]}, "class_weights"),
        ({"class_weights": [[1.0, 1.0]]}, "class_weights"),
        ({"mode": "multilabel", "ignore_index": 1}, "ignore_index"),
        ({"ignore_index": 1.5}, "ignore_index"),
    ]
    if index == 1:
        bad.append(({"weight_type": "cube"}, "weight_type"))
    if index in (2, 3):
        bad += [
            ({"alpha": -0.1}, "alpha"),
            ({"beta": float("inf")}, "beta"),
            ({"alpha": 0.0, "beta": 0.0}, "alpha and beta"),
            ({"alpha": 0.3, "beta": 0.7, "squared": True}, "squared"),
        ]
    if index == 3:
        bad += [({"gamma": 0.0}, "gamma"), ({"gamma": -1.0}, "gamma")]
    for opts, name in bad:
        with pytest.raises(ValueError, match=name):
            cls(**opts)
        with pytest.raises(ValueError, match=name):
            fn(logits, lab, **opts)
