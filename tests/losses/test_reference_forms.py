"""Each loss that runs a fused kernel equals its reference form (:mod:`detloss.losses.reference`) in values and
gradients, in float64; each reference form equals a hand-computed case or torch / torchvision / MONAI; and the IoU
family has one owner of its arithmetic, which the assigner's dense blocks call."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import detloss.losses as L
from detloss.detection._dense import dense_metrics, pair_ciou
from detloss.detection.assigner import TaskAlignedAssigner
from detloss.losses import _modulated_bce as M
from detloss.losses import reference as R

D = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_same(fused_fn, ref_fn, inputs, weight=None):
    """Values and the gradients in every input that requires grad (and in ``weight``) agree to float64 rounding."""
    leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    if weight is not None:
        weight = weight.clone().requires_grad_(True)
        leaves.append(weight)
    fused, ref = fused_fn(*inputs, weight), ref_fn(*inputs, weight)
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-12)
    g = torch.rand(fused.shape, generator=_gen(9), dtype=D)  # a non-trivial output gradient
    for a, b in zip(torch.autograd.grad(fused, leaves, g), torch.autograd.grad(ref, leaves, g)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------- sigmoid family

SIGMOID = [
    ("bce_with_logits", {}),
    ("bce_with_logits", {"label_smoothing": 0.1}),
    ("bce_with_logits", {"pos_weight": 2.5}),
    ("focal_loss", {}),
    ("focal_loss", {"alpha": -1.0, "gamma": 1.5}),
    ("focal_loss", {"alpha": 0.6, "gamma": 0.5}),
    ("varifocal_loss", {}),
    ("varifocal_loss", {"alpha": 0.5, "gamma": 3.0}),
    ("quality_focal_loss", {}),
    ("quality_focal_loss", {"beta": 1.5}),
]


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("size", [(3, 50, 7), (2, 11000, 3)], ids=["dense", "sparse"])
@pytest.mark.parametrize(("name", "options"), SIGMOID, ids=lambda v: str(v) if isinstance(v, str) else "")
def test_sigmoid_losses_equal_their_reference_form(name, options, size, reduction):
    g = _gen(1)
    x = (torch.randn(size, generator=g, dtype=D) * 4).requires_grad_(True)
    t = torch.rand(size, generator=g, dtype=D)
    t[torch.rand(size, generator=g) < (0.97 if size[1] > 1000 else 0.5)] = 0
    t[torch.rand(size, generator=g) < 0.01] = 1
    assert M._is_sparse(t.reshape(-1)) == (size[1] > 1000)  # mostly 0 takes the sparse route
    for weight in (None, torch.rand(size[-1], generator=g, dtype=D)):
        assert_same(
            lambda x, t, w: getattr(L, name)(x, t, **options, weight=w, reduction=reduction),
            lambda x, t, w: getattr(R, name)(x, t, **options, weight=w, reduction=reduction),
            (x, t),
            weight,
        )


def test_sigmoid_reference_forms_equal_torch_and_torchvision():
    ops = pytest.importorskip("torchvision.ops")
    g = _gen(2)
    x, t = torch.randn(6, 9, generator=g, dtype=D) * 3, (torch.rand(6, 9, generator=g) > 0.7).to(D)
    pos = torch.rand(9, generator=g, dtype=D) * 3
    torch.testing.assert_close(
        R.bce_with_logits(x, t, pos_weight=pos, reduction="sum"),
        F.binary_cross_entropy_with_logits(x, t, pos_weight=pos, reduction="sum"),
    )
    for alpha, gamma in ((0.25, 2.0), (-1.0, 1.0), (0.9, 0.0)):
        torch.testing.assert_close(
            R.focal_loss(x, t, alpha=alpha, gamma=gamma, reduction="none"),
            ops.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction="none"),
        )


def test_varifocal_and_quality_focal_reference_forms_by_hand():
    x, q = torch.tensor([0.0, math.log(3.0)], dtype=D), torch.tensor([0.5, 0.0], dtype=D)  # σ = 1/2, 3/4
    bce = torch.tensor([math.log(2.0), math.log(4.0)], dtype=D)  # −log(1/2); −log(1 − 3/4)
    vfl = R.varifocal_loss(x, q, alpha=0.75, gamma=2.0, reduction="none")
    torch.testing.assert_close(vfl, bce * torch.tensor([0.5, 0.75 * 0.75**2], dtype=D))
    qfl = R.quality_focal_loss(x, q, beta=2.0, reduction="none")
    torch.testing.assert_close(qfl, bce * torch.tensor([0.0, 0.75**2], dtype=D))


# ---------------------------------------------------------------------------------------------- softmax family

CE = [
    {},
    {"label_smoothing": 0.1},
    {"class_weights": [0.5, 1.0, 2.0, 0.25, 1.5]},
    {"gamma": 2.0},
    {"class_weights": [0.5, 1.0, 2.0, 0.25, 1.5], "label_smoothing": 0.2, "gamma": 1.5},
    {"ignore_index": 2},
]


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("options", CE, ids=lambda o: "-".join(o) or "plain")
def test_cross_entropy_equals_its_reference_form(options, reduction):
    g = _gen(3)
    x = (torch.randn(4, 5, 6, 7, generator=g, dtype=D) * 3).requires_grad_(True)
    y = torch.randint(0, 5, (4, 6, 7), generator=g)
    y[0, :2] = options.get("ignore_index", 255)  # ignored positions
    kw = {**options, "class_weights": None}
    cw = options.get("class_weights")
    kw["class_weights"] = None if cw is None else torch.tensor(cw, dtype=D)
    for weight in (None, torch.rand(4, 1, 7, generator=g, dtype=D)):
        assert_same(
            lambda x, y, w: L.cross_entropy(x, y, **options, weight=w, reduction=reduction),
            lambda x, y, w: R.cross_entropy(x, y, **kw, weight=w, reduction=reduction),
            (x, y),
            weight,
        )
    q = torch.softmax(torch.randn(4, 5, 6, 7, generator=g, dtype=D), 1)  # class probabilities
    assert_same(
        lambda x, q, w: L.cross_entropy(x, q, **options, weight=w, reduction=reduction),
        lambda x, q, w: R.cross_entropy(x, q, **kw, weight=w, reduction=reduction),
        (x, q),
    )


def test_cross_entropy_reference_form_equals_torch():
    g = _gen(4)
    x, y = torch.randn(8, 5, 3, generator=g, dtype=D), torch.randint(0, 5, (8, 3), generator=g)
    y[:2] = 255
    w = torch.rand(5, generator=g, dtype=D) + 0.1
    for reduction in ("none", "mean", "sum"):
        for eps in (0.0, 0.1):
            torch.testing.assert_close(
                R.cross_entropy(x, y, class_weights=w, label_smoothing=eps, reduction=reduction),
                F.cross_entropy(x, y, weight=w, label_smoothing=eps, ignore_index=255, reduction=reduction),
            )
    q = torch.softmax(torch.randn(8, 5, 3, generator=g, dtype=D), 1)
    torch.testing.assert_close(R.cross_entropy(x, q, label_smoothing=0.1), F.cross_entropy(x, q, label_smoothing=0.1))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_dfl_equals_its_reference_form(reduction):
    g = _gen(5)
    x = (torch.randn(700, 4, 16, generator=g, dtype=D) * 2).requires_grad_(True)  # several blocks of the kernel
    y = torch.rand(700, 4, generator=g, dtype=D) * 17 - 0.5  # some beyond both ends of the clamp
    for weight in (None, torch.rand(700, generator=g, dtype=D)):
        assert_same(
            lambda x, y, w: L.dfl_loss(x, y, weight=w, reduction=reduction),
            lambda x, y, w: R.dfl_loss(x, y, weight=w, reduction=reduction),
            (x, y),
            weight,
        )


def test_dfl_reference_form_by_hand():
    x = torch.zeros(1, 4, 4, dtype=D)  # uniform over 4 bins: −log S = log 4 at every bin
    torch.testing.assert_close(R.dfl_loss(x, torch.full((1, 4), 1.25, dtype=D)), torch.tensor(math.log(4), dtype=D))
    x = torch.tensor([[[0.0, math.log(3.0), 0.0]]], dtype=D)  # S = (1/5, 3/5, 1/5)
    expected = -(0.75 * math.log(0.2) + 0.25 * math.log(0.6))  # y = 0.25 between bins 0 and 1
    torch.testing.assert_close(R.dfl_loss(x, torch.tensor([[0.25]], dtype=D)), torch.tensor(expected, dtype=D))


# ---------------------------------------------------------------------------------------------- region losses

REGION = ["dice_loss", "jaccard_loss", "tversky_loss", "focal_tversky_loss", "generalized_dice_loss"]
REGION_OPTIONS = [
    {},
    {"include_background": False, "batch_dice": True},
    {"squared": True, "class_weights": [1.0, 2.0, 0.5, 4.0]},
    {"ignore_index": None, "smooth": 1.0},
]
EXTRA = {"tversky_loss": {"alpha": 0.3, "beta": 0.7}, "focal_tversky_loss": {"alpha": 0.3, "beta": 0.7}}


def _region_kw(name: str, options: dict) -> tuple[dict, dict]:
    fused = {**options, **({} if options.get("squared") else EXTRA.get(name, {}))}
    ref = dict(fused)
    if "class_weights" in ref:
        ref["class_weights"] = torch.tensor(ref["class_weights"], dtype=D)
    return fused, ref


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("options", REGION_OPTIONS, ids=lambda o: "-".join(o) or "plain")
@pytest.mark.parametrize("name", REGION)
def test_region_losses_equal_their_reference_form_multiclass(name, options, reduction):
    if options.get("class_weights") and not options.get("include_background", True):
        pytest.skip("the class weights above are for 4 classes kept")
    fused_kw, ref_kw = _region_kw(name, options)
    g = _gen(6)
    x = (torch.randn(3, 4, 9, 8, generator=g, dtype=D) * 2).requires_grad_(True)
    y = torch.randint(0, 4, (3, 9, 8), generator=g)
    y[0, :3] = 255 if "ignore_index" not in options else 0  # ignored
    y[1][y[1] == 2] = 1  # a class absent from a sample
    weight = torch.rand(3 if not options.get("batch_dice") else 1, 1, generator=g, dtype=D)
    for w in (None, weight if name != "generalized_dice_loss" else weight.squeeze(1)):
        assert_same(
            lambda x, y, w: getattr(L, name)(x, y, **fused_kw, weight=w, reduction=reduction),
            lambda x, y, w: getattr(R, name)(x, y, **ref_kw, weight=w, reduction=reduction),
            (x, y),
            w,
        )


@pytest.mark.parametrize("mode", ["multilabel", "binary"])
@pytest.mark.parametrize("name", REGION)
def test_region_losses_equal_their_reference_form_sigmoid(name, mode):
    fused_kw, ref_kw = _region_kw(name, {"mode": mode})
    g = _gen(7)
    channels = 3 if mode == "multilabel" else 1
    x = (torch.randn(2, channels, 7, 6, generator=g, dtype=D) * 2).requires_grad_(True)
    t = torch.rand(2, channels, 7, 6, generator=g, dtype=D)  # soft targets
    t[:, :, 0, :2] = 255  # ignored elements
    for reduction in ("none", "mean", "sum"):
        assert_same(
            lambda x, t, w: getattr(L, name)(x, t, **fused_kw, reduction=reduction),
            lambda x, t, w: getattr(R, name)(x, t, **ref_kw, reduction=reduction),
            (x, t),
        )


def test_region_reference_forms_by_hand_and_against_monai():
    # one sample, one class, two pixels: p = (1/2, 3/4), t = (1, 0): I = 1/2, P = 5/4, T = 1, FP = 3/4, FN = 1/2
    x = torch.tensor([[[0.0, math.log(3.0)]]], dtype=D)
    t = torch.tensor([[[1.0, 0.0]]], dtype=D)
    kw = {"mode": "multilabel", "smooth": 1e-300, "reduction": "none"}
    torch.testing.assert_close(R.dice_loss(x, t, **kw), torch.tensor([[1 - 1 / 2.25]], dtype=D))
    torch.testing.assert_close(R.jaccard_loss(x, t, **kw), torch.tensor([[1 - 0.5 / 1.75]], dtype=D))
    ti = 0.5 / (0.5 + 0.3 * 0.75 + 0.7 * 0.5)
    torch.testing.assert_close(R.tversky_loss(x, t, alpha=0.3, beta=0.7, **kw), torch.tensor([[1 - ti]], dtype=D))

    monai = pytest.importorskip("monai.losses")
    g = _gen(8)
    x = torch.randn(2, 4, 6, 5, generator=g, dtype=D)
    y = torch.randint(0, 4, (2, 1, 6, 5), generator=g)
    for squared in (False, True):
        theirs = monai.DiceLoss(softmax=True, to_onehot_y=True, squared_pred=squared, smooth_nr=1e-5, smooth_dr=1e-5)
        ours = R.dice_loss(x, y, squared=squared, ignore_index=None)
        torch.testing.assert_close(ours, theirs(x, y))


# ---------------------------------------------------------------------------------------------- one owner of IoU


def _boxes(g: torch.Generator, *shape: int) -> torch.Tensor:
    xy = torch.rand(*shape, 2, generator=g) * 50
    return torch.cat([xy, xy + torch.rand(*shape, 2, generator=g) * 40], -1)


def test_the_assigners_ciou_is_the_library_ciou_to_the_bit():
    g = _gen(10)
    pred, gt = _boxes(g, 2, 7), _boxes(g, 2, 3)  # (B, A, 4), (B, G, 4)
    gt[0, 0] = pred[0, 2]  # an identical pair
    gt[1, 1, 3] = gt[1, 1, 1]  # a zero-height ground truth
    pred[0, 3, 2:] = pred[0, 3, :2] - 2.0  # an inverted prediction
    pred[1, 4, 2:] = pred[1, 4, :2] + 1e-3  # a tiny one, whose aspect term fades
    expected = L.box_iou_pairwise(pred[:, None], gt[:, :, None], "ciou").clamp(min=0)  # (B, G, A)

    points = torch.rand(7, 2, generator=g) * 90
    everywhere = torch.tensor([-1e4, -1e4, 1e4, 1e4]).expand(2, 3, 4)  # every anchor is a candidate
    mask, labels = torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.long)
    for chunk in (1 << 23, 7):  # one block, and a block per (image, ground truth) row
        assigner = TaskAlignedAssigner(pairs="dense", chunk_elements=chunk)
        _, ciou = dense_metrics(assigner, torch.zeros(2, 1, 7), pred, points, gt, labels, mask, everywhere)
        assert torch.equal(ciou, expected)
    b, gi, a = torch.meshgrid(torch.arange(2), torch.arange(3), torch.arange(7), indexing="ij")
    assert torch.equal(pair_ciou(pred[b, a].reshape(-1, 4), gt[b, gi].reshape(-1, 4)), expected.reshape(-1))


def test_every_iou_kind_is_the_one_core():
    g = _gen(11)
    pred, target = _boxes(g, 30).double(), _boxes(g, 30).double()
    for kind in L.IOU_KINDS:
        core = L.box_loss_corners(pred.unbind(-1), target.unbind(-1), kind)
        assert torch.equal(L.iou_loss(pred, target, kind=kind, reduction="none"), core)
        assert torch.equal(L.box_iou_pairwise(pred, target, kind), 1 - core)


# ---------------------------------------------------------------------------------------------- the public names


def test_each_fused_loss_names_its_reference_form():
    for name in R.__all__:
        assert name in L.__all__, name
        assert f"Reference form: :func:`detloss.losses.reference.{name}`" in getattr(L, name).__doc__, name


def test_the_extension_api_is_public():
    for name in ("Checks", "apply_weight", "check_number", "check_choice", "check_reduction", "reduce", "as_float"):
        assert name in L.__all__ and getattr(L, name) is not None
