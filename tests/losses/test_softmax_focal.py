"""cross_entropy with gamma > 0: the softmax focal loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from detloss.losses import CrossEntropyLoss, cross_entropy


def test_gamma_zero_is_cross_entropy_and_hand_computed_focal():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    target = torch.tensor([0, 2])
    torch.testing.assert_close(cross_entropy(logits, target, gamma=0.0), F.cross_entropy(logits, target))
    p = torch.softmax(logits, 1)
    p0, p1 = p[0, 0].item(), p[1, 2].item()  # p1 = 1/3
    expected = [-((1 - p0) ** 2) * math.log(p0), -((1 - p1) ** 2) * math.log(p1)]
    got = cross_entropy(logits, target, gamma=2.0, reduction="none")
    assert got.tolist() == pytest.approx(expected, rel=1e-6)


def test_focal_ignores_and_normalises_like_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 5, 5), torch.randint(0, 4, (2, 5, 5))
    target[0, :2] = 255
    none = cross_entropy(logits, target, gamma=1.5, reduction="none")
    assert (none[0, :2] == 0).all()
    torch.testing.assert_close(cross_entropy(logits, target, gamma=1.5), none.sum() / (target != 255).sum())
    all_ignored = cross_entropy(logits, torch.full_like(target, 255), gamma=2.0)
    assert all_ignored.item() == 0.0


def test_focal_gradcheck_and_certain_prediction():
    torch.manual_seed(1)
    logits = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 1, 2, 1])
    for gamma in (0.5, 2.0):
        assert torch.autograd.gradcheck(lambda x: cross_entropy(x, target, gamma=gamma, reduction="none"), (logits,))
    probs = torch.softmax(torch.randn(4, 3, dtype=torch.float64), 1)
    assert torch.autograd.gradcheck(lambda x: cross_entropy(x, probs, gamma=2.0, reduction="none"), (logits,))
    certain = torch.tensor([[1e4, 0.0, 0.0]], requires_grad=True)  # p_t = 1: value 0, gradient finite
    out = cross_entropy(certain, torch.tensor([0]), gamma=0.5)
    out.backward()
    assert out.item() == 0.0 and torch.isfinite(certain.grad).all()


def test_bad_gamma():
    with pytest.raises(ValueError, match="gamma"):
        CrossEntropyLoss(gamma=-1)
    with pytest.raises(ValueError, match="gamma"):
        cross_entropy(torch.zeros(1, 2), torch.tensor([0]), gamma=float("nan"))
