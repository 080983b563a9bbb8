"""Loss-weight schedules: factors on the weights of composite terms (linear warm-up, step, cosine, hand-overs
between two terms or groups, YOLO26's ProgLoss). Not to be confused with the learning-rate schedules of
:mod:`detloss.tasks.lr_schedules`.

A schedule is a factor on the term's configured weight, a function of the training position alone (optimizer
step, epoch, and the run's length), so that resuming a run from a checkpoint (which restores step and epoch)
restores it, with no state of its own. In a loss config a term names it under ``schedule``::

    box: {loss: {_target_: detloss.losses.CIoULoss}, weight: 7.5, view: box,
          schedule: {_target_: detloss.composite.LinearWarmup, duration: 3, unit: epoch}}

A term without a schedule keeps its configured weight (factor 1); a group of terms may carry one too, which then
applies to each of its terms. The task (:class:`~detloss.tasks.LossTask`) sets every scheduled weight before each
optimizer step and logs it as ``train/weight/<term>``.

``HandOver`` moves a weight from one term (or group) to another: on ``a`` with ``to: b`` it multiplies ``a``'s
weight by ``1 − s`` and ``b``'s by ``s``, ``s`` rising from 0 to 1 between ``begin`` and ``end`` (fractions of
training), a curriculum between two terms; ``to`` may also name several terms or groups (``to: [dice, ce]``), each
multiplied by ``s``. ``ProgLoss`` is YOLO26's hand-over from the one-to-many head to the one-to-one head, stepped
once per epoch; ``Rebalance`` is Kervadec et al.'s ``α`` between the region terms and the boundary loss, stepped
once per epoch.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..losses import check_number

__all__ = ["Position", "WeightSchedule", "LinearWarmup", "Step", "Cosine", "HandOver", "ProgLoss", "Rebalance"]

UNITS = ("step", "epoch")


@dataclass(frozen=True)
class Position:
    """Where training is: ``step`` (optimizer steps done), ``epoch`` (fractional: 2.5 = half-way through the
    third), and the run's length: ``total_steps`` (for fractions of training) and ``epochs``."""

    step: int
    epoch: float
    total_steps: int
    epochs: int = 1

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / max(1, self.total_steps))

    def at(self, unit: str) -> float:
        return float(self.step) if unit == "step" else self.epoch


def _check_unit(unit: str) -> str:
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    return unit


def _check_nonneg(name: str, value: float) -> float:
    return check_number(name, value, ge=0)


def _check_to(to) -> str | tuple[str, ...]:
    """A term or group name, or a non-empty sequence of them (kept as a tuple)."""
    names = [to] if isinstance(to, str) else list(to) if isinstance(to, Sequence) else [None]
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(
            f"to must name the term (or group of terms), or a list of them, that takes the weight over, got {to!r}"
        )
    return to if isinstance(to, str) else tuple(names)


class WeightSchedule:
    """A factor on a term's weight at a :class:`Position`."""

    def factor(self, position: Position) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class LinearWarmup(WeightSchedule):
    """From ``start`` to 1, linearly over the first ``duration`` steps or epochs, then 1."""

    def __init__(self, duration: float, unit: str = "epoch", start: float = 0.0):
        self.duration = _check_nonneg("duration", duration)
        self.unit = _check_unit(unit)
        self.start = _check_nonneg("start", start)

    def factor(self, position: Position) -> float:
        if self.duration == 0:
            return 1.0
        t = min(1.0, position.at(self.unit) / self.duration)
        return self.start + (1.0 - self.start) * t


class Step(WeightSchedule):
    """Multiplied by ``gamma`` at each of the ``milestones`` (steps or epochs) passed."""

    def __init__(self, milestones: Sequence[float], gamma: float = 0.1, unit: str = "epoch"):
        milestones = [_check_nonneg("milestones", float(m)) for m in milestones]
        if milestones != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {milestones}")
        self.milestones = milestones
        self.gamma = _check_nonneg("gamma", gamma)
        self.unit = _check_unit(unit)

    def factor(self, position: Position) -> float:
        return self.gamma ** bisect.bisect_right(self.milestones, position.at(self.unit))


class Cosine(WeightSchedule):
    """From 1 to ``end`` along a half cosine over training (or its first ``duration`` steps or epochs)."""

    def __init__(self, end: float = 0.0, duration: float | None = None, unit: str = "epoch"):
        self.end = _check_nonneg("end", end)
        self.duration = None if duration is None else _check_nonneg("duration", duration)
        self.unit = _check_unit(unit)

    def factor(self, position: Position) -> float:
        if self.duration is None:
            t = position.fraction
        else:
            t = 1.0 if self.duration == 0 else min(1.0, position.at(self.unit) / self.duration)
        return self.end + (1.0 - self.end) * 0.5 * (1.0 + math.cos(math.pi * t))


class HandOver(WeightSchedule):
    """This term's weight × ``1 − s``, term ``to``'s weight × ``s`` (each of them, if ``to`` is a list); ``s`` goes
    linearly from 0 to 1 between the fractions ``begin`` and ``end`` of training."""

    def __init__(self, to: str, begin: float = 0.0, end: float = 1.0):
        begin, end = _check_nonneg("begin", begin), _check_nonneg("end", end)
        if not begin <= end <= 1:
            raise ValueError(f"need 0 <= begin <= end <= 1, got begin={begin}, end={end}")
        self.to, self.begin, self.end = _check_to(to), begin, end

    @property
    def receivers(self) -> tuple[str, ...]:
        """The terms or groups that ``to`` names."""
        return (self.to,) if isinstance(self.to, str) else tuple(self.to)

    def share(self, position: Position) -> float:
        """``s``: the part of the hand-over done."""
        if self.end == self.begin:
            return float(position.fraction >= self.end)
        return min(1.0, max(0.0, (position.fraction - self.begin) / (self.end - self.begin)))

    def factor(self, position: Position) -> float:
        return 1.0 - self.share(position)


class ProgLoss(HandOver):
    """YOLO26's ProgLoss (Ultralytics 8.4, ``E2ELoss``): this term or group (the one-to-many head) × ``w``, ``to``
    (the one-to-one head) × ``1 − w``, with ``w = end + (start − end) · max(1 − e / (E − 1), 0)`` at epoch ``e``
    (0-based, whole epochs: ``w`` changes once per epoch) of ``E``; ``start`` in the first epoch, ``end`` in the
    last (``E = 1``: ``start``)."""

    def __init__(self, to: str, start: float = 0.8, end: float = 0.1):
        self.to = _check_to(to)
        self.start = check_number("start", start, ge=0, le=1)
        self.end = check_number("end", end, ge=0, le=1)

    def share(self, position: Position) -> float:
        epoch = math.floor(position.epoch + 1e-9)
        w = self.end + (self.start - self.end) * max(1.0 - epoch / max(position.epochs - 1, 1), 0.0)
        return 1.0 - w


class Rebalance(HandOver):
    """Kervadec et al.'s schedule (*Boundary loss for highly unbalanced segmentation*, MIDL 2019): the total is
    ``α · L_region + (1 − α) · L_boundary``, ``α`` starting at 1 and falling by ``step`` (the paper: 0.01) after each
    epoch until it reaches ``floor`` (0.01). On the boundary term with ``to`` the region terms (``to: [dice, ce]``):
    this term × ``1 − α``, each of ``to`` × ``α``, with ``α = max(floor, 1 − step · e)`` at epoch ``e`` (0-based, whole
    epochs). In the first epoch the boundary term has weight 0 and is not computed."""

    def __init__(self, to, step: float = 0.01, floor: float = 0.01):
        self.to = _check_to(to)
        self.step = check_number("step", step, ge=0, le=1)
        self.floor = check_number("floor", floor, ge=0, le=1)

    def share(self, position: Position) -> float:
        epoch = math.floor(position.epoch + 1e-9)
        return max(self.floor, 1.0 - self.step * epoch)
