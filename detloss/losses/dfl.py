"""Distribution Focal Loss (Li et al., "Generalized Focal Loss", NeurIPS 2020).

A box side is predicted as a discrete distribution over ``reg_max`` bins 0, 1, …, reg_max − 1. For a target
distance ``y`` (in bin units) between the bins ``y_l = ⌊y⌋`` and ``y_r = y_l + 1``, the loss is the cross-entropy
to both neighbours, weighted by closeness::

    DFL(S, y) = −((y_r − y)·log S_{y_l} + (y − y_l)·log S_{y_r})

The target is clamped to ``[0, reg_max − 1 − 0.01]`` first, so that ``y_r`` is always a valid bin (the habit of
the YOLOv8 family). The value is the mean over the four sides of a box. ``−log S`` and its gradient come from
:func:`._stable.index_nll`, to full relative precision for confident bins, where ``log_softmax`` and its
gradient ``S − target`` lose it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._api import LossModule, loss_function
from ._stable import index_nll
from ._utils import Checks, apply_weight, as_float, as_target, reduce

__all__: list[str] = []


@loss_function()
def dfl_loss(
    pred_logits: Tensor,
    target: Tensor,
    options,
    *,
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """Distribution Focal Loss of each box.

    Reference form: :func:`detloss.losses.reference.dfl_loss`.

    Args:
        pred_logits: ``(N, 4, reg_max)`` bin logits of the four sides (left, top, right, bottom).
        target: ``(N, 4)`` distances in bin units (stride-normalised); clamped to ``[0, reg_max − 1.01]``.
        weight: optional per-box weight broadcastable to ``(N,)``.
        reduction: ``"none"`` returns ``(N,)``, the mean over the 4 sides; ``"mean"``/``"sum"`` a scalar.
        validate: check the target for NaN/inf and the weight's sign (one host sync).

    Returns:
        float32 for half/bfloat16 input, else the input's dtype. No boxes: ``(0,)``, or 0 for mean and sum.
    """
    pred_logits = as_float("pred_logits", pred_logits)
    target = as_target("target", target, pred_logits)
    if pred_logits.ndim != target.ndim + 1 or pred_logits.shape[:-1] != target.shape:
        raise ValueError(
            f"pred_logits must have shape target.shape + (reg_max,), got {tuple(pred_logits.shape)} "
            f"for target {tuple(target.shape)}"
        )
    reg_max = pred_logits.shape[-1]
    if reg_max < 2:
        raise ValueError(f"pred_logits needs at least 2 bins in its last dimension, got {reg_max}")
    if validate:
        checks = Checks()
        checks.finite("target", target)
        checks.weight(weight)
        checks.run()

    target = target.clamp(0, reg_max - 1.01)
    left = target.floor()
    w_right = target - left
    bins = left.long().unsqueeze(-1) + torch.tensor([0, 1], device=left.device)  # (..., 2): y_l, y_r
    loss = index_nll(pred_logits, bins, -1, weight=torch.stack([1 - w_right, w_right], -1)).squeeze(-1)
    loss = loss.mean(-1) if loss.shape[-1] else loss.sum(-1)
    return reduce(apply_weight(loss, weight), reduction)


class DFLoss(LossModule, function=dfl_loss, name="dfl"):
    """Module form of :func:`dfl_loss`."""
