"""Hinge, regression and weight-penalty losses."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detloss.losses import (
    HingeLoss,
    L1Loss,
    MSELoss,
    SmoothL1Loss,
    WeightPenalty,
    hinge_loss,
    l1_loss,
    mse_loss,
    smooth_l1_loss,
    weight_penalty,
)

# ------------------------------------------------------------------------------------------------ hinge


def test_binary_hinge_hand_computed():
    x = torch.tensor([2.0, 0.5, -0.3, -2.0])
    # labels {0,1} and {-1,1} mean the same
    for y in (torch.tensor([1, 1, 0, 1]), torch.tensor([1, 1, -1, 1])):
        assert hinge_loss(x, y, reduction="none").tolist() == pytest.approx([0.0, 0.5, 0.7, 3.0])
        assert hinge_loss(x, y, p=2, reduction="sum").item() == pytest.approx(0.25 + 0.49 + 9.0)


def test_multiclass_hinge_hand_computed():
    x = torch.tensor([[1.0, 0.2, 0.9]])
    # y = 0: max(0, 1 − 1 + .2) + max(0, 1 − 1 + .9) = 1.1, divided by C = 3
    assert hinge_loss(x, torch.tensor([0])).item() == pytest.approx(1.1 / 3)
    assert hinge_loss(x, torch.tensor([0]), p=2).item() == pytest.approx((0.04 + 0.81) / 3)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("margin", [1.0, 0.3, 0.0, -0.5])
def test_multiclass_hinge_equals_torch(p, margin):
    g = torch.Generator().manual_seed(0)
    x, y, w = torch.randn(64, 7, generator=g), torch.randint(0, 7, (64,), generator=g), torch.rand(7, generator=g)
    ref = nn.MultiMarginLoss(p=p, margin=margin, weight=w, reduction="none")(x, y)
    torch.testing.assert_close(hinge_loss(x, y, p=p, margin=margin, class_weights=w, reduction="none"), ref)
    torch.testing.assert_close(HingeLoss(p=p, margin=margin)(x, y), nn.MultiMarginLoss(p=p, margin=margin)(x, y))


def test_hinge_gradcheck():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randint(0, 4, (6,), generator=g)
    for p in (1, 2):
        assert torch.autograd.gradcheck(lambda v: hinge_loss(v, y, p=p, reduction="none"), (x,))
        xb = torch.randn(9, dtype=torch.float64, generator=g, requires_grad=True)
        yb = torch.randint(0, 2, (9,), generator=g)
        assert torch.autograd.gradcheck(lambda v: hinge_loss(v, yb, p=p, reduction="none"), (xb,))


def test_hinge_degenerate_and_dtypes():
    assert hinge_loss(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)).item() == 0.0
    assert hinge_loss(torch.zeros(0), torch.zeros(0)).item() == 0.0
    assert hinge_loss(torch.randn(4, 3).bfloat16(), torch.tensor([0, 1, 2, 0])).dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs, x, y, match",
    [
        ({}, torch.zeros(3, 4), torch.tensor([0, 4, 1]), "label 4"),
        ({}, torch.zeros(3, 4), torch.zeros(2, dtype=torch.long), "shape"),
        ({}, torch.zeros(3), torch.tensor([0.0, 2.0, 1.0]), "labels in"),
        ({}, torch.zeros(3), torch.tensor([0, -1, 1]), "mixes 0 and -1"),
        ({"p": 3}, torch.zeros(3), torch.zeros(3), "p must be"),
        ({"class_weights": torch.ones(3)}, torch.zeros(3), torch.zeros(3), "class_weights"),
        ({"class_weights": torch.ones(3)}, torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), "class_weights"),
    ],
)
def test_hinge_bad_input(kwargs, x, y, match):
    with pytest.raises(ValueError, match=match):
        hinge_loss(x, y, **kwargs)


def test_hinge_module_checks_at_construction():
    with pytest.raises(ValueError, match="p must be"):
        HingeLoss(p=0)
    with pytest.raises(ValueError, match="margin"):
        HingeLoss(margin=float("nan"))


# ------------------------------------------------------------------------------------------- regression

REGRESSION = [
    (mse_loss, MSELoss, F.mse_loss, {}),
    (l1_loss, L1Loss, F.l1_loss, {}),
    (smooth_l1_loss, SmoothL1Loss, F.smooth_l1_loss, {"beta": 0.5}),
    (smooth_l1_loss, SmoothL1Loss, F.smooth_l1_loss, {"beta": 0.0}),
]


def test_regression_hand_computed():
    pred, target = torch.tensor([0.0, 1.0, 3.0]), torch.tensor([0.5, 1.0, 1.0])
    assert mse_loss(pred, target, reduction="none").tolist() == [0.25, 0.0, 4.0]
    assert l1_loss(pred, target).item() == pytest.approx(2.5 / 3)
    # β = 1: .5·.5²/1 = .125, 0, 2 − .5 = 1.5
    assert smooth_l1_loss(pred, target, reduction="none").tolist() == [0.125, 0.0, 1.5]


@pytest.mark.parametrize("fn, module, ref, kw", REGRESSION)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_regression_equals_torch(fn, module, ref, kw, reduction):
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    torch.testing.assert_close(
        fn(pred, target, reduction=reduction, **kw), ref(pred, target, reduction=reduction, **kw)
    )
    torch.testing.assert_close(
        module(reduction=reduction, **kw)(pred, target), ref(pred, target, reduction=reduction, **kw)
    )
    w = torch.rand(5, 1, generator=g)
    torch.testing.assert_close(
        fn(pred, target, weight=w, reduction="sum", **kw), (ref(pred, target, reduction="none", **kw) * w).sum()
    )


@pytest.mark.parametrize("fn, module, ref, kw", REGRESSION)
def test_regression_gradcheck_and_degenerate(fn, module, ref, kw):
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(8, dtype=torch.float64, generator=g, requires_grad=True)
    target = torch.randn(8, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(lambda p: fn(p, target, reduction="none", **kw), (pred,))
    empty = fn(torch.zeros(0, requires_grad=True), torch.zeros(0), **kw)
    assert empty.item() == 0.0
    assert fn(torch.randn(4).half(), torch.randn(4).half(), **kw).dtype == torch.float32


@pytest.mark.parametrize("fn", [mse_loss, l1_loss, smooth_l1_loss])
def test_regression_bad_input(fn):
    with pytest.raises(ValueError, match="same shape"):
        fn(torch.zeros(3, 1), torch.zeros(3))  # torch would broadcast to (3, 3) with a warning
    with pytest.raises(ValueError, match="target contains NaN"):
        fn(torch.zeros(2), torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="reduction"):
        fn(torch.zeros(2), torch.zeros(2), reduction="max")
    with pytest.raises(ValueError, match="beta"):
        SmoothL1Loss(beta=-1)


# ------------------------------------------------------------------------------------------ weight penalty


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2), nn.LayerNorm(2)
    )


def test_weight_penalty_hand_computed():
    lin = nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, -4.0]]))
        lin.bias.fill_(10.0)
    assert weight_penalty(lin, p=2).item() == 25.0
    assert weight_penalty(lin, p=1).item() == 7.0
    assert weight_penalty(lin, p=2, exclude_norm_and_bias=False).item() == 125.0
    assert weight_penalty(lin, p=1, reduction="mean").item() == 3.5


def test_weight_penalty_excludes_norm_and_bias():
    model = _model()
    conv, lin = model[0].weight, model[4].weight
    expected = conv.pow(2).sum() + lin.pow(2).sum()
    torch.testing.assert_close(weight_penalty(model), expected)
    assert weight_penalty(model, reduction="none").shape == (2,)
    everything = sum(p.pow(2).sum() for p in model.parameters())
    torch.testing.assert_close(weight_penalty(model, exclude_norm_and_bias=False), everything)
    torch.testing.assert_close(WeightPenalty(p=1)(model), conv.abs().sum() + lin.abs().sum())


def test_weight_penalty_gradients_and_degenerate():
    lin = nn.Linear(3, 2).double()
    nn.init.zeros_(lin.weight)  # zero weights: the gradient is 0, not NaN
    weight_penalty(lin).backward()
    assert torch.equal(lin.weight.grad, torch.zeros_like(lin.weight))
    assert lin.bias.grad is None
    # the analytic gradient against central differences, in float64
    torch.manual_seed(0)
    lin = nn.Linear(3, 4).double()
    for p in (1, 2):
        lin.zero_grad()
        weight_penalty(lin, p=p).backward()
        numeric = torch.zeros_like(lin.weight)
        with torch.no_grad():
            for i in range(lin.weight.numel()):
                w = lin.weight.view(-1)
                w[i] += 1e-6
                up = weight_penalty(lin, p=p)
                w[i] -= 2e-6
                down = weight_penalty(lin, p=p)
                w[i] += 1e-6
                numeric.view(-1)[i] = (up - down) / 2e-6
        torch.testing.assert_close(lin.weight.grad, numeric, atol=1e-6, rtol=1e-6)
    assert weight_penalty(nn.ReLU()).item() == 0.0
    assert weight_penalty(nn.Linear(2, 2).half()).dtype == torch.float32
    with pytest.raises(ValueError, match="p must be"):
        WeightPenalty(p=3)
    with pytest.raises(ValueError, match="module"):
        weight_penalty(torch.zeros(3))


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("margin", [1.0, 0.3, 0.0, -0.5])
def test_multiclass_hinge_gradient_equals_torch(p, margin):
    # the hand-written backward, against autograd through torch's own kernel; then the create_graph path
    x = torch.randn(64, 7, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 7, (64,))
    w = torch.rand(64, dtype=torch.float64)
    (ours,) = torch.autograd.grad((hinge_loss(x, y, p=p, margin=margin, reduction="none") * w).sum(), x)
    ref_loss = nn.functional.multi_margin_loss(x, y, p=p, margin=margin, reduction="none")
    (ref,) = torch.autograd.grad((ref_loss * w).sum(), x)
    torch.testing.assert_close(ours, ref)
    assert torch.autograd.gradgradcheck(lambda v: hinge_loss(v, y, p=p, margin=margin, reduction="sum"), (x,))
