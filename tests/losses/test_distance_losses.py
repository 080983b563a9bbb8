"""The boundary loss, the Hausdorff distance-transform loss and clDice: hand-computed values, MONAI's
implementations, gradcheck in float64, degenerate input, precision; and the distance maps they take.

The hand-computed cases share the 1×2×2×2 input of the region-loss tests: class-1 logits ``d = ln 3, 0, −ln 3,
ln 9`` give p1 = [[0.75, 0.5], [0.25, 0.9]] against labels [[1, 0], [0, 1]], whose signed distance map of class 1 is
[[−1, 1], [1, −1]] (each voxel one pixel from the other side).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import HausdorffDTLoss as MonaiHausdorffDTLoss
from monai.losses import SoftclDiceLoss as MonaiSoftclDiceLoss

import detloss.losses as L
from detloss.losses import (
    BoundaryLoss,
    ClDiceLoss,
    HausdorffDTLoss,
    boundary_loss,
    cldice_loss,
    hausdorff_dt_loss,
)
from detloss.segmentation import boundary_distance, mask_distance, signed_distance

D = [[math.log(3.0), 0.0], [-math.log(3.0), math.log(9.0)]]
LABELS = torch.tensor([[[1, 0], [0, 1]]])


def logits2(dtype=torch.float32) -> torch.Tensor:
    x = torch.zeros(1, 2, 2, 2, dtype=dtype)
    x[0, 1] = torch.tensor(D, dtype=dtype)
    return x


def one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """A float one-hot target: MONAI's HausdorffDTLoss keeps an integer target's distance maps in its dtype, which
    would round them down."""
    return F.one_hot(labels, classes).movedim(-1, 1).double()


def pair(labels: torch.Tensor, logits: torch.Tensor, spacing=None):
    """The two distance inputs of the Hausdorff DT loss, as the criterion builds them."""
    target = boundary_distance(labels, logits.shape[1], spacing).to(logits.dtype)
    prediction = mask_distance(logits.softmax(1) > 0.5, spacing, signed=False).to(logits.dtype)
    return target, prediction


# ----------------------------------------------------------------------------------------------------------- maps


def test_signed_distance_sign_spacing_and_degenerate_masks():
    labels = torch.zeros(1, 5, 5, dtype=torch.long)
    labels[0, 1:4, 1:4] = 1
    phi = signed_distance(labels, 2, spacing=[2.0, 1.0])[0, 1]
    assert phi[2, 2] == -2.0 and phi[1, 2] == -2.0  # two columns of 1 mm from the outside (rows are 2 mm)
    assert phi[1, 1] == -1.0 and phi[0, 2] == 2.0 and phi[2, 0] == 1.0
    assert phi[0, 0] == pytest.approx(math.sqrt(5.0))  # one row and one column diagonally
    assert torch.equal(boundary_distance(labels, 2, [2.0, 1.0])[0, 1], phi.abs())
    # absent and everywhere: no boundary, distances 0; ignored voxels are outside every class
    assert not signed_distance(torch.zeros(1, 3, 3, dtype=torch.long), 3).any()
    ignored = labels.clone()
    ignored[0, 0, 0] = 255
    assert torch.equal(signed_distance(ignored, 2)[0, 1], signed_distance(labels, 2)[0, 1])
    # 3D, per-sample spacing
    vol = torch.zeros(2, 3, 3, 3, dtype=torch.long)
    vol[:, 1, 1, 1] = 1
    phi3 = signed_distance(vol, 2, torch.tensor([[2.0, 1.0, 1.0], [3.0, 1.0, 1.0]]))
    assert phi3[0, 1, 0, 1, 1] == 2.0 and phi3[1, 1, 0, 1, 1] == 3.0 and phi3[0, 1, 1, 1, 1] == -1.0
    with pytest.raises(ValueError, match="spacing must have shape"):
        signed_distance(vol, 2, [1.0, 1.0])
    with pytest.raises(ValueError, match="finite and > 0"):
        signed_distance(vol, 2, [1.0, 0.0, 1.0])


# ------------------------------------------------------------------------------------------------------ by hand


def test_boundary_loss_by_hand():
    x = logits2()
    phi = signed_distance(LABELS, 2)
    assert phi[0, 1].tolist() == [[-1.0, 1.0], [1.0, -1.0]]
    expected = (-0.75 + 0.5 + 0.25 - 0.9) / 4
    torch.testing.assert_close(boundary_loss(x, LABELS, phi), torch.tensor(expected))
    # background too: p0 = 1 - p1 against phi0 = -phi1 gives the same mean
    both = boundary_loss(x, LABELS, phi, include_background=True, reduction="none")
    torch.testing.assert_close(both, torch.tensor([[expected, expected]]))
    # an ignored voxel leaves the mean over the valid ones
    ignored = LABELS.clone()
    ignored[0, 0, 1] = 255
    value = boundary_loss(x, ignored, signed_distance(ignored, 2))
    torch.testing.assert_close(value, torch.tensor((-0.75 + 0.25 - 0.9) / 3))
    assert BoundaryLoss()(x, LABELS, phi) == boundary_loss(x, LABELS, phi)


def test_hausdorff_dt_loss_by_hand():
    x = logits2()
    target, prediction = pair(LABELS, x)
    # the prediction thresholded at 0.5 is the target here, so both maps are 1 everywhere: weights 1 + 1
    assert target[0, 1].eq(1).all() and prediction[0, 1].eq(1).all()
    errors = [(0.75 - 1) ** 2, 0.5**2, 0.25**2, (0.9 - 1) ** 2]
    torch.testing.assert_close(hausdorff_dt_loss(x, LABELS, target, prediction), torch.tensor(2 * sum(errors) / 4))
    cubed = hausdorff_dt_loss(x, LABELS, 2 * target, prediction, alpha=3.0)  # (2^3 + 1^3) = 9
    torch.testing.assert_close(cubed, torch.tensor(9 * sum(errors) / 4))


def test_cldice_by_hand_on_a_line():
    # a one-pixel line is its own skeleton (its erosion is empty); the prediction is 0.8 on it and 0 elsewhere:
    # Tprec = (5·0.8 + 1) / (5·0.8 + 1) = 1, Tsens = (5·0.8 + 1) / (5 + 1) = 5/6, clDice = 1 − 2·(5/6)/(11/6) = 1/11
    target = torch.zeros(1, 1, 5, 5)
    target[0, 0, 2] = 1.0
    logits = torch.where(target > 0, torch.tensor(math.log(4.0)), torch.tensor(-200.0))
    value = cldice_loss(logits, target, mode="multilabel", include_background=True)
    torch.testing.assert_close(value, torch.tensor(1 / 11))
    assert ClDiceLoss(mode="multilabel", include_background=True)(logits, target) == value


# ------------------------------------------------------------------------------------------------------- MONAI


@pytest.mark.parametrize("shape", [(3, 4, 9, 10), (2, 3, 6, 8, 7)], ids=["2d", "3d"])
def test_hausdorff_dt_loss_equals_monai(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64) * 2
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]))
    labels[0] = 0  # a sample with every foreground class absent
    target, prediction = pair(labels, x)
    for include_background in (False, True):
        ours = hausdorff_dt_loss(x, labels, target, prediction, include_background=include_background)
        monai = MonaiHausdorffDTLoss(softmax=True, include_background=include_background)(x, one_hot(labels, shape[1]))
        torch.testing.assert_close(ours, monai)
    per = hausdorff_dt_loss(x, labels, target, prediction, reduction="none")
    monai = MonaiHausdorffDTLoss(softmax=True, reduction="none")(x, one_hot(labels, shape[1]))
    torch.testing.assert_close(per, monai.flatten(1))


@pytest.mark.parametrize("shape", [(3, 2, 12, 11), (2, 2, 8, 9, 10)], ids=["2d", "3d"])
def test_cldice_equals_monai(shape):
    # MONAI pools the classes and adds 1e-4 to the harmonic mean's denominator (its `smooth`); one foreground class
    # and a negligible `smooth` there make the two the same
    torch.manual_seed(1)
    x = torch.randn(*shape, dtype=torch.float64) * 3
    labels = (torch.rand(shape[0], *shape[2:]) > 0.6).long()
    monai = MonaiSoftclDiceLoss(softmax=True, include_background=False, smooth=1e-30, reduction="none")
    expected = monai(x, one_hot(labels, 2))
    torch.testing.assert_close(cldice_loss(x, labels, reduction="none").flatten(), expected)
    torch.testing.assert_close(cldice_loss(x, labels), expected.mean())
    default = MonaiSoftclDiceLoss(softmax=True, include_background=False)(x, one_hot(labels, 2))
    torch.testing.assert_close(cldice_loss(x, labels), default, rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------------------------------------------- gradients


def test_gradcheck_float64():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 2, 3, 3))
    labels[1, 0] = 255
    phi = signed_distance(labels, 3, [2.0, 1.0, 1.0]).double()
    target, prediction = pair(labels, x.detach(), [2.0, 1.0, 1.0])
    w = torch.rand(2, 1, dtype=torch.float64)

    def check(fn, inputs=(x,)):
        assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)

    check(lambda z: boundary_loss(z, labels, phi, weight=w, reduction="none"))
    check(lambda z: hausdorff_dt_loss(z, labels, target, prediction))
    check(lambda z: hausdorff_dt_loss(z, labels, target, prediction, alpha=1.5))
    check(lambda z: cldice_loss(z, labels, reduction="none"))
    check(lambda z: cldice_loss(z, labels, batch_dice=True, iterations=1))
    dense = torch.rand(2, 3, 2, 3, 3, dtype=torch.float64).round()
    check(lambda z: cldice_loss(z, dense, mode="multilabel"))
    planar, planar_labels = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True), torch.rand(1, 5, 6) > 0.5
    check(lambda z: cldice_loss(z, planar_labels.long(), iterations=2), (planar,))  # 2D


# ---------------------------------------------------------------------------------------------------- degenerate

CASES = [
    ("boundary", lambda x, y: boundary_loss(x, y, signed_distance(y.clamp(max=2), 3), reduction="none")),
    ("hausdorff", lambda x, y: hausdorff_dt_loss(x, y, *pair(y.clamp(max=2), x.detach()), reduction="none")),
    ("cldice", lambda x, y: cldice_loss(x, y, reduction="none")),
]


@pytest.mark.parametrize("name, fn", CASES, ids=[c[0] for c in CASES])
def test_degenerate_input_stays_finite(name, fn):
    def run(x, y):
        x = x.clone().requires_grad_(True)
        value = fn(x, y)
        value.sum().backward()
        assert torch.isfinite(value).all() and torch.isfinite(x.grad).all(), name
        return value.detach()

    torch.manual_seed(3)
    x = torch.randn(2, 3, 4, 6, 6)
    empty = torch.zeros(2, 4, 6, 6, dtype=torch.long)  # every foreground class absent
    run(x, empty)
    run(torch.full((2, 3, 4, 6, 6), 50.0), empty)  # and a confident prediction
    run(x * 1e4, torch.randint(0, 3, (2, 4, 6, 6)))  # extreme logits
    ignored = torch.full((2, 4, 6, 6), 255)  # every voxel ignored: exactly 0
    assert torch.equal(run(x, ignored), torch.zeros(2, 2))
    volume = torch.randn(1, 3, 0, 4, 4)  # an empty volume: 0
    assert torch.equal(run(volume, torch.zeros(1, 0, 4, 4, dtype=torch.long)), torch.zeros(1, 2))


@pytest.mark.parametrize("name, fn", CASES, ids=[c[0] for c in CASES])
def test_low_precision_and_autocast_give_float32(name, fn):
    torch.manual_seed(4)
    x, y = torch.randn(2, 3, 4, 8, 8), torch.randint(0, 3, (2, 4, 8, 8))
    ref = fn(x, y)
    for low in (torch.bfloat16, torch.float16):
        out = fn(x.to(low), y)
        assert out.dtype == torch.float32, name
        torch.testing.assert_close(out, ref, rtol=0.05, atol=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(x, y)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)


# ------------------------------------------------------------------------------------------------------- contract


def test_registered_and_checked():
    assert {"boundary", "hausdorff_dt", "cldice"} <= set(L.available())
    assert isinstance(L.build("cldice", iterations=2), ClDiceLoss)
    x, y = torch.randn(1, 3, 4, 4), torch.randint(0, 3, (1, 4, 4))
    phi = signed_distance(y, 3)
    for bad, match in [
        (lambda: BoundaryLoss(mode="binary"), "mode must be one of"),
        (lambda: HausdorffDTLoss(alpha=0), "alpha must be"),
        (lambda: ClDiceLoss(iterations=-1), "iterations must be"),
        (lambda: ClDiceLoss(smooth=0), "smooth must be"),
        (lambda: boundary_loss(x, y, phi[:, :2]), "distance must have the logits' shape"),
        (lambda: boundary_loss(x, y, phi.long()), "floating-point"),
        (lambda: hausdorff_dt_loss(x, y, -phi.abs(), phi.abs()), "target_distance must be >= 0"),
        (lambda: hausdorff_dt_loss(x, y, phi.abs(), phi.abs() * math.nan), "prediction_distance contains NaN"),
        (lambda: boundary_loss(x, torch.full((1, 4, 4), 7), phi), "holds label 7"),
        (lambda: cldice_loss(x, y, weight=-torch.ones(1, 2)), "weight must be >= 0"),
        (lambda: cldice_loss(torch.randn(1, 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long)), "at least 2 channels"),
    ]:
        with pytest.raises(ValueError, match=match):
            bad()
    # validate=False skips the value checks, not the shapes
    boundary_loss(x, torch.full((1, 4, 4), 255), phi, validate=False)
