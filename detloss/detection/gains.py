"""detloss's term weights and Ultralytics' loss gains (``hyp.box``, ``hyp.cls``, ``hyp.dfl``): one from the other.

What Ultralytics does with its gains (``ultralytics/utils/loss.py``, ``v8DetectionLoss``, and
``ultralytics/engine/trainer.py``; read in version 8.4):

* The criterion computes, on the ``b`` images a rank holds, the CIoU, BCE and DFL terms ``L_box, L_cls, L_dfl``,
  each divided by that batch's target-score sum clamped at 1, multiplies them by the gains and returns them times
  the batch: ``loss = b · (g_box · L_box, g_cls · L_cls, g_dfl · L_dfl)``.
* The trainer backpropagates ``loss.sum()``, times the world size ``W`` under DDP (each rank holds ``b = batch / W``
  of the ``batch`` images), and DDP averages the ranks' gradients: the gradient of one batch is that of
  ``batch · Σ_k g_k · L_k`` (each rank's terms divided by its own target-score sum).
* It adds up the gradients of ``accumulate = max(round(nbs / batch), 1)`` batches before each optimizer step
  (``nbs = 64``, the nominal batch), without dividing them (the warm-up raises ``accumulate`` from 1 to that value;
  it is capped at the run's number of batches), and scales weight decay by ``batch · accumulate / nbs``. Gradients
  are clipped to norm 10 after that sum.

detloss's :class:`~detloss.detection.DetectionCriterion` computes the same ``L_k`` (its target-score sum is summed over
the ranks) and the composite's total ``Σ_k w_k · L_k``, without the batch; Lightning averages the ranks' gradients and
divides each accumulated batch's loss by ``accumulate_grad_batches``. So, with ``K = batch · accumulate``
(:func:`ultralytics_step_factor`; ``K = nbs`` when ``batch`` divides ``nbs``):

* with ``w_k = g_k`` the terms keep Ultralytics' proportions, and one batch's total is Ultralytics' loss divided by
  ``batch``: the translation for an Adam-type optimizer, whose steps do not follow the gradient's scale (but for its
  ``eps``), detloss's default;
* with ``w_k = K · g_k`` an optimizer step's gradient is Ultralytics' (exactly on one process; under DDP when the
  ranks' target-score sums are equal): the translation for SGD at Ultralytics' learning rate.

The gain ``dfl`` weighs the distance term of the head: DFL with ``reg_max > 1`` (``loss=yolo``: term ``dfl``), the L1
on the sides with ``reg_max = 1`` (``loss=yolo26``: the terms ``<head>/l1``, which Ultralytics also weighs by
``hyp.dfl``).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..losses import check_number

__all__ = ["GAINS", "ultralytics_step_factor", "from_ultralytics_gains", "ultralytics_gains"]

GAINS = ("box", "cls", "dfl")
"""Ultralytics' detection gains, named as detloss's terms of ``loss=yolo``."""


def ultralytics_step_factor(batch: int, nbs: int = 64) -> int:
    """``K = batch · max(round(nbs / batch), 1)``: Ultralytics' gradient per optimizer step over that of
    ``Σ_k g_k · L_k`` (``batch``: its ``batch`` argument, all ranks together; ``nbs``: its nominal batch)."""
    batch = check_number("batch", batch, integer=True, ge=1)
    nbs = check_number("nbs", nbs, integer=True, ge=1)
    return batch * max(round(nbs / batch), 1)


def _factor(batch: int | None, nbs: int) -> float:
    return 1.0 if batch is None else float(ultralytics_step_factor(batch, nbs))


def _check(name: str, values: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(values, Mapping):
        raise ValueError(f"{name} must map {', '.join(GAINS)} to numbers, got {type(values).__name__}")
    unknown = sorted(set(values) - set(GAINS))
    if unknown:
        raise ValueError(f"{name}: {unknown} are not Ultralytics detection gains; expected some of {', '.join(GAINS)}")
    return {k: check_number(f"{name}[{k!r}]", float(v), ge=0) for k, v in values.items()}


def from_ultralytics_gains(gains: Mapping[str, float], batch: int | None = None, nbs: int = 64) -> dict[str, float]:
    """detloss's weights of the terms ``box``, ``cls``, ``dfl`` for Ultralytics' ``gains`` (e.g. ``{"box": 7.5,
    "cls": 0.5, "dfl": 1.5}``): the gains themselves (``batch=None``: the same proportions), or ``K`` times them
    for Ultralytics' ``batch`` and ``nbs`` (the same gradient per optimizer step); see the module docstring."""
    factor = _factor(batch, nbs)
    return {k: v * factor for k, v in _check("gains", gains).items()}


def ultralytics_gains(weights: Mapping[str, float], batch: int | None = None, nbs: int = 64) -> dict[str, float]:
    """Ultralytics' gains for detloss's ``weights`` of ``box``, ``cls``, ``dfl``: the inverse of
    :func:`from_ultralytics_gains` with the same ``batch`` and ``nbs``."""
    factor = _factor(batch, nbs)
    return {k: v / factor for k, v in _check("weights", weights).items()}
