"""IoU-family and DFL losses: hand-computed values, torchvision equality, gradients, degenerate and bad input."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.ops as tv

from detloss.losses import CIoULoss, DFLoss, GIoULoss, IoULoss, box_iou_pairwise, dfl_loss, iou_loss

KINDS = ("iou", "giou", "diou", "ciou", "siou", "eiou")


def random_boxes(n, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * 100
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * 50 + 1
    pred = torch.cat([xy, xy + wh], 1)
    xy2 = xy + torch.randn(n, 2, generator=g, dtype=dtype) * 10
    wh2 = wh * torch.exp(torch.randn(n, 2, generator=g, dtype=dtype) * 0.3)
    return pred, torch.cat([xy2, xy2 + wh2], 1)


# pred 2 wide × 1 high, target 1 wide × 2 high, both at the origin: I = 1, U = 3, enclosing box 2 × 2.
PRED = torch.tensor([[0.0, 0.0, 2.0, 1.0]], dtype=torch.float64)
TARGET = torch.tensor([[0.0, 0.0, 1.0, 2.0]], dtype=torch.float64)
_IOU = 1 / 3
_RHO2_OVER_C2 = 0.5 / 8  # centres (1, .5) and (.5, 1); diagonal² of the 2×2 enclosing box = 8
_V = 4 / math.pi**2 * (math.atan(1 / 2) - math.atan(2 / 1)) ** 2
_SIOU_DIST = 2 - 2 * math.exp(-(2 - 1) * (0.5 / 2) ** 2)  # 45° centre line: angle cost 1, γ = 1
_SIOU_SHAPE = 2 * (1 - math.exp(-0.5)) ** 4
HAND = {
    "iou": 1 - _IOU,
    "giou": 1 - _IOU + (4 - 3) / 4,
    "diou": 1 - _IOU + _RHO2_OVER_C2,
    "ciou": 1 - _IOU + _RHO2_OVER_C2 + _V / (1 - _IOU + _V) * _V,
    "siou": 1 - _IOU + 0.5 * (_SIOU_DIST + _SIOU_SHAPE),
    "eiou": 1 - _IOU + _RHO2_OVER_C2 + 1 / 4 + 1 / 4,
}


@pytest.mark.parametrize("kind", KINDS)
def test_iou_hand_computed(kind):
    got = iou_loss(PRED, TARGET, kind, reduction="none")
    assert got.shape == (1,)
    assert got.item() == pytest.approx(HAND[kind], abs=1e-6)


def test_giou_hand_computed_disjoint():
    # disjoint unit boxes two apart: IoU 0, enclosing area 3, union 2 → GIoU = −1/3
    got = iou_loss(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([[2.0, 0, 3, 1]]), "giou")
    assert got.item() == pytest.approx(1 + 1 / 3, abs=1e-6)


@pytest.mark.parametrize(
    "kind, ref",
    [("giou", tv.generalized_box_iou_loss), ("diou", tv.distance_box_iou_loss), ("ciou", tv.complete_box_iou_loss)],
)
def test_equals_torchvision_values_and_gradients(kind, ref):
    pred, target = random_boxes(500)
    a = pred.clone().requires_grad_()
    b = pred.clone().requires_grad_()
    ours = iou_loss(a, target, kind, reduction="none")
    theirs = ref(b, target, reduction="none")
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    ours.sum().backward()
    theirs.sum().backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4)  # CIoU: α constant in both


def test_one_minus_iou_is_torchvisions_less_eps_over_union():
    # (U − I) / (U + eps) against torchvision's 1 − I / (U + eps): eps / (U + eps) less where the boxes overlap,
    # equal (1) where they do not
    pred, target = random_boxes(500, dtype=torch.float64)
    target[:50] = pred[:50] + 200  # disjoint
    ours = iou_loss(pred, target, "giou", reduction="none", eps=1e-3)
    theirs = tv.generalized_box_iou_loss(pred, target, reduction="none", eps=1e-3)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    iou = 1 - iou_loss(pred, target, "iou", reduction="none", eps=1e-300)  # I / U
    union = (area(pred) + area(target)) / (1 + iou)
    expected = torch.where(iou > 0, 1e-3 / (union + 1e-3), 0.0)
    torch.testing.assert_close(theirs - ours, expected, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "ciou"])
def test_gradcheck(kind):
    pred, target = random_boxes(6, dtype=torch.float64)
    pred.requires_grad_()
    assert torch.autograd.gradcheck(lambda p: iou_loss(p, target, kind, reduction="none"), (pred,))


def test_ciou_alpha_is_constant_in_the_gradient():
    pred, target = random_boxes(6, dtype=torch.float64)
    pred.requires_grad_()
    with torch.no_grad():
        iou = box_iou_pairwise(pred, target, "iou")
        w, h = pred[:, 2] - pred[:, 0], pred[:, 3] - pred[:, 1]
        wg, hg = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1]
        v = 4 / math.pi**2 * (torch.atan(wg / hg) - torch.atan(w / h)) ** 2
        alpha = v / (1 - iou + v)

    def frozen_alpha_ciou(p):  # DIoU + α·v with α a constant: its true gradient is CIoU's
        w, h = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
        v = 4 / math.pi**2 * (torch.atan(wg / hg) - torch.atan(w / h)) ** 2
        return iou_loss(p, target, "diou", reduction="none") + alpha * v

    assert torch.autograd.gradcheck(frozen_alpha_ciou, (pred,))
    (g_ciou,) = torch.autograd.grad(iou_loss(pred, target, "ciou", reduction="sum"), pred)
    (g_ref,) = torch.autograd.grad(frozen_alpha_ciou(pred).sum(), pred)
    torch.testing.assert_close(g_ciou, g_ref)


@pytest.mark.parametrize("kind", KINDS)
def test_degenerate_boxes(kind):
    pred = torch.tensor([[1.0, 1, 1, 1], [2, 2, 2, 5], [0, 0, 4, 4], [5, 5, 5, 5], [0, 0, 3, 0]], requires_grad=True)
    target = torch.tensor([[1.0, 1, 1, 1], [2, 2, 2, 5], [0, 0, 4, 4], [0, 0, 2, 2], [0, 0, 3, 0]])
    loss = iou_loss(pred, target, kind, reduction="none")
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(pred.grad).all()
    # identical boxes of zero area: IoU 0 and no penalty, so the loss is exactly 1
    assert loss[0].item() == pytest.approx(1.0) and loss[1].item() == pytest.approx(1.0)
    assert loss[2].item() == 0.0  # identical boxes


@pytest.mark.parametrize("kind", KINDS)
def test_empty_input(kind):
    empty = torch.zeros(0, 4, requires_grad=True)
    assert iou_loss(empty, empty.detach(), kind, reduction="none").shape == (0,)
    for reduction in ("mean", "sum"):
        value = iou_loss(empty, empty.detach(), kind, reduction=reduction)
        assert value.item() == 0.0 and value.requires_grad


def test_reductions_and_weight():
    pred, target = random_boxes(10)
    none = iou_loss(pred, target, "giou", reduction="none")
    torch.testing.assert_close(iou_loss(pred, target, "giou", reduction="sum"), none.sum())
    torch.testing.assert_close(iou_loss(pred, target, "giou"), none.mean())
    w = torch.rand(10)
    torch.testing.assert_close(iou_loss(pred, target, "giou", weight=w, reduction="sum"), (none * w).sum())


def test_leading_dims():
    pred, target = random_boxes(12)
    flat = iou_loss(pred, target, "ciou", reduction="none")
    torch.testing.assert_close(
        iou_loss(pred.view(3, 4, 4), target.view(3, 4, 4), "ciou", reduction="none"), flat.view(3, 4)
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_upcast(dtype):
    pred, target = random_boxes(50)
    ref = iou_loss(pred, target, "ciou", reduction="none")
    got = iou_loss(pred.to(dtype), target.to(dtype), "ciou", reduction="none")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=0.05, rtol=0)


def test_autocast_float32():
    pred, target = random_boxes(50)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = CIoULoss()(pred.bfloat16(), target)
    assert got.dtype == torch.float32


def test_modules_and_kinds():
    pred, target = random_boxes(5)
    assert GIoULoss().kind == "giou"
    torch.testing.assert_close(GIoULoss()(pred, target), iou_loss(pred, target, "giou"))
    torch.testing.assert_close(
        IoULoss("eiou", reduction="sum")(pred, target), iou_loss(pred, target, "eiou", reduction="sum")
    )
    with pytest.raises(ValueError, match="kind"):
        IoULoss("xiou")
    with pytest.raises(ValueError, match="kind"):
        GIoULoss(kind="ciou")
    with pytest.raises(ValueError, match="reduction"):
        CIoULoss(reduction="avg")


@pytest.mark.parametrize(
    "pred, target, match",
    [
        (torch.zeros(3, 4), torch.zeros(2, 4), "shape"),
        (torch.zeros(3, 5), torch.zeros(3, 5), "shape"),
        (torch.zeros(1, 4), torch.tensor([[0.0, 0, float("nan"), 1]]), "target contains NaN"),
        (torch.tensor([[0.0, 0, float("inf"), 1]]), torch.zeros(1, 4), "pred contains NaN or inf"),
        (torch.zeros(2, 4), torch.tensor([[0.0, 0, 1, 1], [3.0, 0, 1, 1]]), "target box 1 has x2 < x1"),
        (torch.zeros(1, 4), torch.tensor([[0.0, 2, 1, 1]]), "y2 < y1"),
        (torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4), "floating-point"),
    ],
)
def test_bad_input(pred, target, match):
    with pytest.raises(ValueError, match=match):
        iou_loss(pred, target, "ciou")


def test_bad_weight_and_reduction():
    pred, target = random_boxes(4)
    with pytest.raises(ValueError, match="weight"):
        iou_loss(pred, target, weight=torch.ones(3))
    with pytest.raises(ValueError, match="reduction"):
        iou_loss(pred, target, reduction="avg")


# --------------------------------------------------------------------------------------------------- DFL


def test_dfl_hand_computed():
    # uniform logits over 4 bins: every log-probability is log(1/4), so the loss is log 4 whatever the target
    logits = torch.zeros(1, 4, 4)
    assert dfl_loss(logits, torch.tensor([[0.3, 1.0, 2.5, 1.7]])).item() == pytest.approx(math.log(4), abs=1e-6)
    # one side, bins logits [0, ln 3, 0, 0]: p = [1/6, 1/2, 1/6, 1/6]; target 1.25 → 0.75·(−log ½) + 0.25·(−log ⅙)
    logits = torch.tensor([[[0.0, math.log(3), 0, 0]] * 4])
    expected = 0.75 * math.log(2) + 0.25 * math.log(6)
    assert dfl_loss(logits, torch.full((1, 4), 1.25), reduction="none").item() == pytest.approx(expected, abs=1e-6)


def test_dfl_equals_two_cross_entropies():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(30, 4, 16, generator=g)
    target = torch.rand(30, 4, generator=g) * 18 - 1  # spills over both ends: clamped
    clamped = target.clamp(0, 16 - 1.01)
    left = clamped.floor().long()
    w_left = left + 1 - clamped
    ce = lambda idx: F.cross_entropy(logits.reshape(-1, 16), idx.reshape(-1), reduction="none").view(30, 4)
    ref = (ce(left) * w_left + ce(left + 1) * (1 - w_left)).mean(-1)
    torch.testing.assert_close(dfl_loss(logits, target, reduction="none"), ref)


def test_dfl_gradcheck_and_modules():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 4, 8, dtype=torch.float64, generator=g, requires_grad=True)
    target = torch.rand(5, 4, dtype=torch.float64, generator=g) * 7
    assert torch.autograd.gradcheck(lambda x: dfl_loss(x, target, reduction="none"), (logits,))
    torch.testing.assert_close(DFLoss(reduction="sum")(logits, target), dfl_loss(logits, target, reduction="sum"))


def test_dfl_degenerate_and_bad():
    empty = dfl_loss(torch.zeros(0, 4, 16, requires_grad=True), torch.zeros(0, 4))
    assert empty.item() == 0.0 and empty.requires_grad
    # extreme logits stay finite
    logits = torch.full((2, 4, 16), -1e4)
    logits[..., 3] = 1e4
    assert torch.isfinite(dfl_loss(logits, torch.full((2, 4), 3.0))).all()
    assert dfl_loss(torch.zeros(1, 4, 16, dtype=torch.bfloat16), torch.ones(1, 4)).dtype == torch.float32
    with pytest.raises(ValueError, match="pred_logits must have shape"):
        dfl_loss(torch.zeros(2, 4, 16), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="target contains NaN"):
        dfl_loss(torch.zeros(1, 4, 16), torch.tensor([[0.0, float("nan"), 1, 1]]))
    with pytest.raises(ValueError, match="2 bins"):
        dfl_loss(torch.zeros(1, 4, 1), torch.zeros(1, 4))
