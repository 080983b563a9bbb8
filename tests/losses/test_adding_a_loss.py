"""Adding a loss: one options type, one function and one line of module, usable from a Hydra config by
``_target_`` and from the registry by name (docs/guide/extending.md, "Your own loss")."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from hydra.utils import instantiate
from torch import Tensor, nn

import detloss.losses as L
from detloss.composite import CompositeLoss, View
from detloss.losses import Checks, LossModule, LossOptions, apply_weight, check_number, loss_function, reduce


@dataclass(frozen=True, kw_only=True)
class LogCoshOptions(LossOptions):
    scale: float = 1.0

    def __post_init__(self):
        check_number("scale", self.scale, gt=0)


@loss_function(LogCoshOptions)
def log_cosh_loss(
    pred: Tensor, target: Tensor, options: LogCoshOptions, *, weight=None, reduction="mean", validate=True
) -> Tensor:
    """``log cosh((pred − target) / scale)`` elementwise."""
    if validate:
        checks = Checks()
        checks.finite("target", target)
        checks.weight(weight)
        checks.run()
    d = (pred - target) / options.scale
    loss = d.abs() + torch.nn.functional.softplus(-2 * d.abs()) - torch.log(torch.tensor(2.0, dtype=d.dtype))
    return reduce(apply_weight(loss, weight), reduction)


class LogCoshLoss(LossModule, function=log_cosh_loss, name="log_cosh_test"):
    """Module form of :func:`log_cosh_loss`."""


def test_the_function_has_the_public_signature_and_checks_its_options():
    params = inspect.signature(log_cosh_loss).parameters
    assert list(params) == ["pred", "target", "scale", "weight", "reduction", "validate"]
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(log_cosh_loss(x, y, scale=2.0), torch.log(torch.cosh((x - y) / 2)).mean())
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        log_cosh_loss(x, y, scale=0)
    with pytest.raises(ValueError, match="its options are: scale"):
        log_cosh_loss(x, y, scal=2.0)
    with pytest.raises(ValueError, match="weight must be >= 0"):
        log_cosh_loss(x, y, weight=-torch.ones(5, 4))


def test_the_module_is_registered_exported_and_takes_reduction_per_call():
    assert "log_cosh_test" in L.available() and isinstance(L.build("log_cosh_test", scale=3.0), LogCoshLoss)
    assert {"log_cosh_loss", "LogCoshLoss", "LogCoshOptions"} <= set(globals()["__all__"])
    loss = LogCoshLoss(scale=3.0, reduction="sum")
    assert loss.scale == 3.0 and "scale=3.0" in repr(loss)
    with pytest.raises(AttributeError):
        loss.scale = 1.0  # options are fixed at construction, never silently changed
    x, y = torch.randn(5, 4), torch.randn(5, 4)
    torch.testing.assert_close(loss(x, y, reduction="none").sum(), loss(x, y))
    assert loss.reduction == "sum"  # a per-call reduction changes nothing in the module


def test_the_loss_is_a_composite_term_from_a_config_by_target():
    target = f"{__name__}.LogCoshLoss"
    cfg = compose_config(f"+loss.terms.logcosh={{loss: {{_target_: {target}, scale: 2.0}}, weight: 0.5, view: box}}")
    loss = instantiate(cfg.loss)
    assert isinstance(loss, CompositeLoss) and isinstance(loss.losses["logcosh"], LogCoshLoss)
    xy = torch.rand(6, 2)
    pred, target_boxes = torch.cat([xy, xy + 1], 1).requires_grad_(), torch.cat([xy, xy + 2], 1)
    w = torch.tensor([1.0, 0, 1, 1, 0, 1])
    out = loss(
        {
            "box": View((pred, target_boxes), w, torch.tensor(4.0)),
            "dist": View((torch.zeros(6, 4, 16), torch.ones(6, 4)), w, 4.0),
            "cls": View((torch.zeros(2, 3), torch.zeros(2, 3)), None, 4.0),
        }
    )
    expected = (log_cosh_loss(pred, target_boxes, scale=2.0, reduction="none") * w[:, None]).sum() / 4 * 0.5
    torch.testing.assert_close(out.terms["logcosh"], expected.detach())


def test_a_term_must_take_reduction_per_call():
    class MeanOnly(nn.Module):
        def forward(self, pred, target):
            return (pred - target).abs().mean()

    with pytest.raises(ValueError, match="must take a `reduction` keyword"):
        CompositeLoss({"a": {"loss": MeanOnly(), "weight": 1.0, "view": "box"}})


def test_the_docs_and_the_example_plugin_use_public_names_only():
    root = Path(__file__).resolve().parents[2]
    page = (root / "docs" / "guide" / "extending.md").read_text()
    section = page.split("## Your own loss", 1)[1].split("\n## ", 1)[0]
    sources = [section, *(p.read_text() for p in (root / "examples").rglob("*.py"))]
    for text in sources:
        assert "detloss.losses._" not in text and "from detloss.detection._" not in text
    names = {"Checks", "apply_weight", "check_number", "check_choice", "check_reduction", "reduce", "as_float"}
    assert names <= set(L.__all__)
