"""A box loss in detloss's style: its options, one function, one line of module (detloss docs:
docs/guide/extending.md, "Your own loss").

``center_distance_loss(pred, target)``: the squared distance between the centres of predicted and target boxes
``(n, 4)`` xyxy over the squared diagonal of the target box, per box ``(n,)``. It is DIoU's penalty term alone
(Zheng et al., AAAI 2020) without the box's enclosing hull, so it stays large for far-off boxes. As a composite term
it takes the ``box`` view of :class:`detloss.detection.DetectionCriterion`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from detloss.losses import Checks, LossModule, LossOptions, apply_weight, check_number, loss_function, reduce


@dataclass(frozen=True, kw_only=True)
class CenterDistanceOptions(LossOptions):
    eps: float = 1e-7  # added to the diagonal, so that a degenerate target box gives no division by zero

    def __post_init__(self):
        check_number("eps", self.eps, gt=0)


@loss_function(CenterDistanceOptions)
def center_distance_loss(pred: Tensor, target: Tensor, options: CenterDistanceOptions, *, weight=None,
                         reduction="mean", validate=True) -> Tensor:  # fmt: skip
    """Squared centre distance over the target box's squared diagonal, per box ``(n,)``; ``pred``, ``target``:
    ``(n, 4)`` xyxy."""
    if pred.shape != target.shape or pred.shape[-1:] != (4,):
        shapes = f"{tuple(pred.shape)}, {tuple(target.shape)}"
        raise ValueError(f"pred and target must be (n, 4) boxes of one shape, got {shapes}")
    if validate:
        checks = Checks()
        checks.finite("pred", pred)
        checks.finite("target", target)
        checks.weight(weight)
        checks.run()
    pred, target = pred.float(), target.float()
    centre = ((pred[:, :2] + pred[:, 2:]) - (target[:, :2] + target[:, 2:])) / 2
    diagonal = (target[:, 2:] - target[:, :2]).pow(2).sum(-1)
    return reduce(apply_weight(centre.pow(2).sum(-1) / (diagonal + options.eps), weight), reduction)


class CenterDistanceLoss(LossModule, function=center_distance_loss, name="center_distance"):
    """Module form of :func:`center_distance_loss`."""
