"""Deep supervision through the composite: replicated groups of terms, hand-overs to several terms, Kervadec's
Rebalance schedule, and the segmentation criterion's per-scale views."""

import math

import pytest
import torch

from detloss.composite import CompositeLoss, HandOver, Position, Rebalance, View
from detloss.losses import BoundaryLoss, ClDiceLoss, CrossEntropyLoss, DiceLoss, HausdorffDTLoss, dice_loss
from detloss.segmentation import SegmentationCriterion, deep_supervision_weights


def dice_ce(**ce):
    return CompositeLoss(
        {
            "dice": {"loss": DiceLoss(include_background=False), "weight": 1.0, "view": "pixels"},
            "ce": {"loss": CrossEntropyLoss(), "weight": 2.0, "view": "pixels", **ce},
        }
    )


def at(epoch: float) -> Position:
    return Position(step=int(epoch * 10), epoch=epoch, total_steps=100, epochs=10)


def test_deep_supervision_weights_are_nnunets():
    # 1/2^i, the lowest resolution off, normalised
    assert deep_supervision_weights(4) == pytest.approx([4 / 7, 2 / 7, 1 / 7, 0.0])
    assert deep_supervision_weights(3) == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights([1, 0.5, 0]) == [1.0, 0.5, 0.0]  # a list is taken as given
    for bad, match in [(0, ">= 1"), ([0, 0], "not all be 0"), ([-1, 1], ">= 0"), ("x", "list of weights")]:
        with pytest.raises(ValueError, match=match):
            deep_supervision_weights(bad)


def test_replicate_copies_every_term_into_weighted_groups():
    base = dice_ce(schedule=HandOver(to="dice"))
    loss = base.replicate({"scale0": 0.5, "scale1": 0.25, "scale2": 0.0})
    assert loss.names == [f"scale{i}/{t}" for i in range(3) for t in ("dice", "ce")]
    assert loss.views["scale1/ce"] == "scale1/pixels"
    assert loss.base_weights == pytest.approx(
        {"scale0/dice": 0.5, "scale0/ce": 1.0, "scale1/dice": 0.25, "scale1/ce": 0.5, "scale2/dice": 0, "scale2/ce": 0}
    )
    assert loss.losses["scale0/dice"] is not loss.losses["scale1/dice"] is not base.losses["dice"]
    # the hand-over acts within each group, as it did in the original
    assert loss.schedules["scale1/ce"].to == "scale1/dice"
    loss.update(Position(step=50, epoch=0.5, total_steps=100))
    assert loss.weights["scale1/ce"] == pytest.approx(0.25) and loss.weights["scale1/dice"] == pytest.approx(0.125)

    logits, labels = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    out = loss({"scale0/pixels": View((logits, labels)), "scale1/pixels": View((logits, labels))})
    dice = dice_loss(logits, labels, include_background=False)
    torch.testing.assert_close(out.terms["scale0/dice"], dice * loss.weights["scale0/dice"])
    assert out.terms["scale2/ce"] == 0  # weight 0: logged as 0, view not needed, not computed
    # only_given: the terms whose view is missing are left out (evaluation of a deeply supervised model)
    partial = loss({"scale0/pixels": View((logits, labels))}, only_given=True)
    assert set(partial.terms) == {"scale0/dice", "scale0/ce"}
    torch.testing.assert_close(partial.total, out.terms["scale0/dice"] + out.terms["scale0/ce"])
    with pytest.raises(ValueError, match="asks for view 'scale1/pixels'"):
        loss({"scale0/pixels": View((logits, labels))})


def test_a_hand_over_to_several_terms_and_kervadecs_rebalance():
    spec = {
        "dice": {"loss": DiceLoss(), "view": "pixels"},
        "ce": {"loss": CrossEntropyLoss(), "view": "pixels"},
        "boundary": {"loss": BoundaryLoss(), "view": "distance", "schedule": Rebalance(to=["dice", "ce"])},
    }
    loss = CompositeLoss(spec)
    assert loss.weights == {"dice": 1.0, "ce": 1.0, "boundary": 0.0}  # epoch 0: alpha = 1
    for epoch, alpha in [(0.9, 1.0), (1.0, 0.99), (3.5, 0.97), (99.0, 0.01), (500.0, 0.01)]:
        loss.update(at(epoch))
        assert loss.weights["dice"] == pytest.approx(alpha) and loss.weights["ce"] == pytest.approx(alpha)
        assert loss.weights["boundary"] == pytest.approx(1 - alpha)
    assert Rebalance(to=["dice"], step=0.1, floor=0.5).share(at(7)) == pytest.approx(0.5)
    for bad, match in [
        (dict(to=[]), "to must name"),
        (dict(to=["a", ""]), "to must name"),
        (dict(to="a", step=2), "step"),
    ]:
        with pytest.raises(ValueError, match=match):
            Rebalance(**bad)
    with pytest.raises(ValueError, match="hands its weight over to 'nope'"):
        CompositeLoss({**spec, "boundary": {**spec["boundary"], "schedule": Rebalance(to=["dice", "nope"])}})
    # replicated per scale, each scale's boundary term hands over to that scale's region terms
    scaled = CompositeLoss(spec).replicate({"scale0": 0.75, "scale1": 0.25})
    assert scaled.schedules["scale1/boundary"].to == ("scale1/dice", "scale1/ce")
    scaled.update(at(10))
    assert scaled.weights["scale1/dice"] == pytest.approx(0.25 * 0.9)
    assert scaled.weights["scale0/boundary"] == pytest.approx(0.75 * 0.1)


def test_criterion_builds_each_scale_against_a_downsampled_target():
    criterion = SegmentationCriterion(3, dice_ce(), deep_supervision=3)
    assert criterion.scale_weights == pytest.approx([2 / 3, 1 / 3, 0])
    labels = torch.zeros(2, 8, 8, 8, dtype=torch.long)
    labels[:, 2:6, 2:6, 2:6] = 1
    labels[0, 0, 0, 0] = 255
    outputs = [torch.randn(2, 3, 8 // 2**i, 8 // 2**i, 8 // 2**i, requires_grad=True) for i in range(3)]
    views = criterion.build_views(outputs, labels)
    assert set(views) == {"scale0/pixels", "scale1/pixels"}  # scale 2 has weight 0: no view built
    small = views["scale1/pixels"].args[1]
    expected = torch.nn.functional.interpolate(labels[:, None].float(), size=(4, 4, 4), mode="nearest-exact")
    assert torch.equal(small, expected[:, 0].long()) and small.shape == (2, 4, 4, 4)
    out = criterion(outputs, labels)
    assert set(out.terms) == {f"scale{i}/{t}" for i in range(3) for t in ("dice", "ce")}
    ce1 = torch.nn.functional.cross_entropy(outputs[1], small, ignore_index=255)
    torch.testing.assert_close(out.terms["scale1/ce"], (ce1 * 2 / 3).detach())  # weight 2 × scale 1/3
    out.total.backward()
    assert outputs[2].grad is None or not outputs[2].grad.any()
    # evaluation: the full-resolution logits only, so the scale-0 terms
    assert set(criterion(outputs[0].detach(), labels).terms) == {"scale0/dice", "scale0/ce"}
    with pytest.raises(ValueError, match="returns 2 outputs but criterion.deep_supervision has 3"):
        criterion(outputs[:2], labels)
    with pytest.raises(ValueError, match="set criterion.deep_supervision"):
        SegmentationCriterion(3, dice_ce())(outputs, labels)


def test_criterion_builds_distance_views_only_when_a_term_asks():
    loss = CompositeLoss(
        {
            "dice": {"loss": DiceLoss(include_background=False), "view": "pixels"},
            "boundary": {"loss": BoundaryLoss(), "weight": 0.0, "view": "distance"},
            "hd": {"loss": HausdorffDTLoss(), "view": "distance_pair"},
            "cl": {"loss": ClDiceLoss(), "view": "pixels"},
        }
    )
    criterion = SegmentationCriterion(3, loss)
    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[0, 1:4, 1:4] = 2
    logits = torch.randn(1, 3, 6, 6)
    views = criterion.build_views(logits, {"labels": labels, "spacing": torch.tensor([[2.0, 1.0]])})
    assert set(views) == {"pixels", "distance_pair"}  # boundary has weight 0: its view is not built
    _, _, target_distance, prediction_distance = views["distance_pair"].args
    assert target_distance[0, 2, 0, 2] == 2.0  # one row (2 mm) above the square
    assert target_distance[0, 2, 2, 0] == 1.0  # one column (1 mm) left of it
    assert (prediction_distance >= 0).all() and math.isfinite(criterion(logits, labels).total)
