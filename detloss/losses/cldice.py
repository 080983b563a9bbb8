"""clDice: a topology-aware overlap of soft skeletons (Shit et al., *clDice — a Novel Topology-Preserving Loss
Function for Tubular Structure Segmentation*, CVPR 2021).

With ``S(·)`` the soft skeleton (the paper's Algorithm 1: iterated soft erosion and opening by min / max pooling),
``p`` the probabilities, ``t`` the target and ``s = smooth``, per sample and class::

    Tprec = (Σ S(p)·t + s) / (Σ S(p) + s)       Tsens = (Σ S(t)·p + s) / (Σ S(t) + s)
    clDice = 1 − 2 · Tprec · Tsens / (Tprec + Tsens)

the sums running over the valid voxels (and over the batch too with ``batch_dice``). The target's skeleton is a
constant of the step; the prediction's is differentiable. ``smooth = 1`` as in the paper's code, which keeps every
ratio in (0, 1] and the harmonic mean's denominator positive, so an empty class (in target and prediction: loss 0),
a sample with every voxel ignored (loss 0) and an empty target with a confident prediction stay finite in value
and gradient. MONAI's ``SoftclDiceLoss`` is the same with ``smooth_nr = smooth_dr = 1`` and the classes pooled;
its ``smooth`` (1e-4) on the harmonic mean's denominator is the one difference.

Soft erosion is the minimum over the axis-aligned 3-neighbourhoods (a cross), soft dilation the maximum over the
3 × … × 3 cube; in 2D and 3D alike. ``iterations`` is the paper's ``k`` (3 in its code): skeleton parts thicker than
about ``2k`` voxels are missed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ._api import LossModule, LossOptions, loss_function
from ._region import dense_inputs
from ._utils import Checks, apply_weight, autocast_off, check_choice, check_number, reduce

__all__: list[str] = []

MODES = ("multiclass", "multilabel")
_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


@dataclass(frozen=True, kw_only=True)
class ClDiceOptions(LossOptions):
    """``iterations``: the skeleton's ``k`` (>= 0); ``smooth > 0``; ``mode``: ``"multiclass"`` (softmax) or
    ``"multilabel"`` (sigmoid); ``include_background``; ``batch_dice``: pool the sums over the batch;
    ``ignore_index``: target value left out (``None``: none)."""

    iterations: int = 3
    smooth: float = 1.0
    mode: str = "multiclass"
    include_background: bool = False
    batch_dice: bool = False
    ignore_index: int | None = 255

    def __post_init__(self):
        check_number("iterations", self.iterations, integer=True, ge=0)
        check_number("smooth", self.smooth, gt=0)
        check_choice("mode", self.mode, MODES)
        if self.ignore_index is not None:
            check_number("ignore_index", self.ignore_index, integer=True)


def _pool(x: Tensor, kernel: tuple[int, ...]) -> Tensor:
    """Max over a ``kernel`` window centred on each voxel (stride 1, same size); ``(B, C, *spatial)``."""
    return _POOL[x.ndim - 2](x, kernel, 1, tuple(k // 2 for k in kernel))


def soft_erode(x: Tensor) -> Tensor:
    """Minimum over the axis-aligned 3-neighbourhoods of each voxel."""
    dims = x.ndim - 2
    lines = [tuple(3 if a == axis else 1 for a in range(dims)) for axis in range(dims)]
    out = -_pool(-x, lines[0])
    for kernel in lines[1:]:
        out = torch.minimum(out, -_pool(-x, kernel))
    return out


def soft_dilate(x: Tensor) -> Tensor:
    """Maximum over the 3 × … × 3 neighbourhood of each voxel."""
    return _pool(x, (3,) * (x.ndim - 2))


def soft_skeleton(x: Tensor, iterations: int) -> Tensor:
    """The paper's soft skeleton of ``x (B, C, *spatial)`` in [0, 1]: ``relu(x − open(x))``, then for each of
    ``iterations`` erosions of ``x`` the new skeleton voxels not yet in it. An empty volume has an empty skeleton."""
    if x.numel() == 0:
        return x * 0.0
    skeleton = F.relu(x - soft_dilate(soft_erode(x)))
    for _ in range(iterations):
        x = soft_erode(x)
        delta = F.relu(x - soft_dilate(soft_erode(x)))
        skeleton = skeleton + F.relu(delta - skeleton * delta)
    return skeleton


@loss_function(ClDiceOptions)
def cldice_loss(
    logits: Tensor,
    target: Tensor,
    options: ClDiceOptions,
    *,
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """Soft clDice loss (Shit et al., CVPR 2021), per sample (or batch) and class; see the module docstring.

    Args:
        logits: ``(B, C, *spatial)`` raw scores, 2D or 3D.
        target: class indices ``(B, *spatial)`` / ``(B, 1, *spatial)`` or a one-hot tensor of the logits' shape
            (``"multiclass"``); a tensor of the logits' shape in [0, 1] (``"multilabel"``).
        options: see :class:`ClDiceOptions`.
        weight: optional, >= 0, broadcasting to the ``(B', C')`` values without enlarging them.
        reduction: ``"none"``: the ``(B', C')`` values (``B' = 1`` with ``batch_dice``); ``"mean"`` / ``"sum"``.
        validate: check label values, target range and the weight's sign (one host sync).
    """
    o = options
    if logits.ndim - 2 not in _POOL:
        raise ValueError(f"logits must be (B, C, *spatial) with 1 to 3 spatial dims, got {tuple(logits.shape)}")
    checks = Checks() if validate else None
    with autocast_off(logits.device):
        (probs, complement), onehot, valid = dense_inputs(
            logits, target, o.mode, o.include_background, o.ignore_index, checks
        )
        if validate:
            checks.weight(weight)
            checks.run()
        return reduce(apply_weight(_cldice(probs, complement, onehot, valid, o), weight), reduction)


def _cldice(probs: Tensor, complement: Tensor, onehot: Tensor, valid: Tensor | None, o: ClDiceOptions) -> Tensor:
    if valid is not None:
        probs = probs * valid
    with torch.no_grad():
        target_skeleton = soft_skeleton(onehot, o.iterations)
    pred_skeleton = soft_skeleton(probs, o.iterations)
    dims = tuple(range(2, probs.ndim))
    if o.batch_dice:
        dims = (0, *dims)

    def total(x: Tensor) -> Tensor:
        return x.sum(dims, keepdim=True).flatten(1)

    # 1 − 2PS / (P + S) = (P·(1 − S) + S·(1 − P)) / (P + S), with each 1 − x a sum of non-negative terms (the
    # complement of p without subtraction): no cancellation near a perfect prediction
    s = o.smooth
    pred_total, target_total = total(pred_skeleton) + s, total(target_skeleton) + s
    precision = (total(pred_skeleton * onehot) + s) / pred_total
    sensitivity = (total(target_skeleton * probs) + s) / target_total
    imprecision = total(pred_skeleton * (1 - onehot)) / pred_total
    insensitivity = total(target_skeleton * complement) / target_total
    return (precision * insensitivity + sensitivity * imprecision) / (precision + sensitivity)


class ClDiceLoss(LossModule, function=cldice_loss, name="cldice"):
    """Module form of :func:`cldice_loss`."""
