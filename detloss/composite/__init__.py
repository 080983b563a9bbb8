"""Composite losses: named, weighted terms over the views a criterion builds, and how their weights move.

* :class:`CompositeLoss`, :class:`View`, :class:`LossOutput` (``loss.py``): the weighted sum, reduced and
  normalised in one place;
* :class:`Criterion` (``criterion.py``): the contract between a task and the loss of a head;
* the loss-config check (``checks.py``): :func:`check_loss` when a composite is built, and ``detloss-check``;
* loss-weight schedules (``weight_schedules.py``): stateless factors on term weights read from the
  training :class:`Position`;
* learned balancing (``balancing.py``): uncertainty weighting, dynamic weight averaging; and, updated every
  optimizer step (``step_balancing.py``), FAMO, GradNorm and random loss weighting.

This package knows terms, weights, views, reductions and the training position; it does not know what a box or a
voxel is.
"""

from .balancing import Balancer, DynamicWeightAverage, UncertaintyWeighting
from .checks import Finding, LossConfigWarning, check_loss, check_views
from .criterion import Criterion
from .loss import CompositeLoss, LossOutput, View
from .step_balancing import FAMO, GradNorm, RandomLossWeighting
from .weight_schedules import Cosine, HandOver, LinearWarmup, Position, ProgLoss, Rebalance, Step, WeightSchedule

__all__ = [
    "CompositeLoss",
    "LossOutput",
    "View",
    "Criterion",
    "Finding",
    "LossConfigWarning",
    "check_loss",
    "check_views",
    "Position",
    "WeightSchedule",
    "LinearWarmup",
    "Step",
    "Cosine",
    "HandOver",
    "ProgLoss",
    "Rebalance",
    "Balancer",
    "UncertaintyWeighting",
    "DynamicWeightAverage",
    "FAMO",
    "GradNorm",
    "RandomLossWeighting",
]
