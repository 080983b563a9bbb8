"""CompositeLoss: terms, weights, views, reduction and normalisation in one place."""

import pytest
import torch
from torch import nn

from detloss.composite import CompositeLoss, LossOutput, View
from detloss.losses import CIoULoss, CrossEntropyLoss, DiceLoss, L1Loss, iou_loss


class Exploding(nn.Module):
    reduction = "mean"

    def forward(self, *args, **kwargs):
        raise AssertionError("a term of weight 0 must not be computed")


def boxes():
    pred = torch.tensor([[0.0, 0, 2, 2], [1, 1, 4, 5], [0, 0, 1, 1]], requires_grad=True)
    target = torch.tensor([[0.0, 0, 2, 3], [1, 2, 4, 4], [5, 5, 6, 6]])
    return pred, target


def test_weighted_sum_with_norm_and_per_item_weight():
    pred, target = boxes()
    w = torch.tensor([1.0, 0.5, 0.0])
    loss = CompositeLoss(
        {
            "box": {"loss": CIoULoss(), "weight": 7.5, "view": "box"},
            "l1": {"loss": L1Loss(), "weight": 2.0, "view": "box"},  # (M, 4) values, (M,) weight
        }
    )
    out = loss({"box": View((pred, target), weight=w, norm=torch.tensor(4.0))})
    assert isinstance(out, LossOutput) and set(out.terms) == {"box", "l1"}
    ciou = (iou_loss(pred, target, "ciou", reduction="none") * w).sum() / 4 * 7.5
    l1 = ((pred - target).abs() * w[:, None]).sum() / 4 * 2.0
    torch.testing.assert_close(out.terms["box"], ciou.detach())
    torch.testing.assert_close(out.terms["l1"], l1.detach())
    torch.testing.assert_close(out.total, ciou + l1)
    assert not out.terms["box"].requires_grad and out.total.requires_grad
    out.total.backward()
    assert torch.equal(pred.grad[2], torch.zeros(4))  # weight 0: no gradient


def test_view_without_norm_uses_each_loss_mean():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, 0] = 255
    loss = CompositeLoss(
        {
            "dice": {"loss": DiceLoss(), "weight": 1.0, "view": "pixels"},
            "ce": {"loss": CrossEntropyLoss(), "weight": 0.5, "view": "pixels"},
        }
    )
    out = loss({"pixels": View((logits, target))})
    expected_ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=255) * 0.5
    torch.testing.assert_close(out.terms["ce"], expected_ce)
    torch.testing.assert_close(out.total, out.terms["dice"] + out.terms["ce"])


def test_zero_weight_and_null_terms():
    pred, target = boxes()
    loss = CompositeLoss(
        {
            "box": {"loss": CIoULoss(), "weight": 1.0, "view": "box"},
            "off": {"loss": Exploding(), "weight": 0, "view": "box"},
            "gone": None,
        }
    )
    out = loss({"box": View((pred, target), norm=1.0)})
    assert loss.names == ["box", "off"]
    assert out.terms["off"].item() == 0.0
    loss.set_weight("off", 0.0)
    loss.set_weight("box", 0.0)
    out = loss({"box": View((pred, target), norm=1.0)})
    assert out.total.item() == 0.0 and out.total.requires_grad  # still attached, DDP sees every parameter


def test_weights_change_between_steps():
    pred, target = boxes()
    loss = CompositeLoss({"box": {"loss": CIoULoss(), "weight": 1.0, "view": "box"}})
    v = {"box": View((pred, target), norm=1.0)}
    first = loss(v).total
    loss.set_weight("box", 3.0)
    torch.testing.assert_close(loss(v).total, 3 * first)


@pytest.mark.parametrize(
    "terms, match",
    [
        ({}, "at least one term"),
        ({"a": {"loss": CIoULoss(), "weight": -1, "view": "box"}}, "weight must be a finite number >= 0"),
        ({"a": {"loss": CIoULoss(), "weight": float("nan"), "view": "box"}}, "weight"),
        ({"a": {"loss": CIoULoss(), "weight": 1}}, "missing"),
        ({"a": {"loss": "ciou", "weight": 1, "view": "box"}}, "nn.Module"),
        ({"a": {"loss": CIoULoss(), "weight": 1, "view": "box", "extra": 1}}, "unknown keys"),
        ({"a": 3}, "mapping"),
    ],
)
def test_bad_terms(terms, match):
    with pytest.raises(ValueError, match=match):
        CompositeLoss(terms)


def test_bad_views():
    pred, target = boxes()
    loss = CompositeLoss({"box": {"loss": CIoULoss(), "weight": 1, "view": "box"}})
    with pytest.raises(ValueError, match="asks for view 'box'"):
        loss({"cls": View((pred, target))})
    with pytest.raises(ValueError, match="does not build"):
        loss.check_views({"cls"}, "SomeCriterion")
    with pytest.raises(ValueError, match="leading dimensions"):
        loss({"box": View((pred, target), weight=torch.ones(2), norm=1.0)})
    with pytest.raises(ValueError, match="unknown term"):
        loss.set_weight("nope", 1.0)


def test_tensor_options_made_in_inference_mode_serve_training():
    """A device copy of class weights first made during validation (inference mode) must work in a backward."""
    loss = CrossEntropyLoss(class_weights=[1.0, 2.0, 0.5])
    logits, target = torch.randn(4, 3, requires_grad=True), torch.tensor([0, 1, 2, 1])
    with torch.inference_mode():
        loss(logits.detach(), target)
    loss(logits.double(), target).backward()  # another dtype: a new copy
    loss(logits, target).backward()
    assert torch.isfinite(logits.grad).all()


def test_segmentation_criterion_names_a_non_finite_logit():
    from detloss.segmentation import SegmentationCriterion

    logits, masks = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    logits[1, 2, 0, 3] = float("-inf")
    with pytest.raises(ValueError, match=r"logits contains NaN or inf at index \(1, 2, 0, 3\)"):
        SegmentationCriterion(3)(logits, masks)
