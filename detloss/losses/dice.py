"""Region-overlap losses for segmentation: Dice, generalized Dice, Tversky, focal Tversky and Jaccard.

All five are built from three soft counts per sample ``b`` and class ``c``. With ``p`` the predicted
probabilities (softmax over the channels for ``mode="multiclass"``, sigmoid for ``"multilabel"`` and
``"binary"``), ``t`` the target and ``m`` the valid-element mask (see ``ignore_index``)::

    I = Σ p·t·m        P = Σ p·m        T = Σ t·m        (squared=True: P = Σ p²·m,  T = Σ t²·m)

the sums running over the spatial dims, and over the batch too with ``batch_dice=True``. With ``s = smooth``:

* ``dice_loss``: ``1 − (2I + s) / (P + T + s)`` (Milletari et al., V-Net, 2016);
* ``generalized_dice_loss``: ``1 − (2 Σ_c w_c I_c + s) / (Σ_c w_c (P_c + T_c) + s)``, one value per sample,
  ``w_c = 1 / T_c²`` by default (Sudre et al., 2017);
* ``tversky_loss``: ``1 − TI``, ``TI = (I + s) / (I + α·FP + β·FN + s)`` (Salehi et al., 2017);
* ``focal_tversky_loss``: ``(1 − TI)^γ`` (Abraham & Khan, 2019);
* ``jaccard_loss``: ``1 − (I + s) / (P + T − I + s)`` (soft Jaccard index / IoU);

with ``FP = P − I`` and ``FN = T − I``.

Shared conventions (every function and module of this file; the options are :class:`RegionOptions`, checked
once when they are made, which a module does at construction):

* ``logits``: ``(B, C, *spatial)``, e.g. ``(B, C, H, W)`` or ``(B, C, D, H, W)``; half / bfloat16 are upcast
  to float32 (also under autocast), float64 stays float64.
* ``target``, by ``mode``:

  - ``"multiclass"``: class indices ``(B, *spatial)`` or ``(B, 1, *spatial)`` of an integer dtype, or a
    one-hot / soft tensor of the logits' shape;
  - ``"binary"``: logits ``(B, 1, *spatial)``; labels {0, 1} ``(B, *spatial)`` / ``(B, 1, *spatial)`` of an
    integer dtype, or a float / bool tensor of either shape;
  - ``"multilabel"``: a tensor of the logits' shape, values in {0, 1} (soft values in [0, 1] allowed).

* ``ignore_index`` (``None`` to switch off): with class indices, pixels equal to it are left out for every class;
  with a dense target (one-hot, soft, multilabel, binary) an *element* equal to it is left out for its class
  only. For dense targets it must lie outside [0, 1], where it would collide with real target values.
* ``include_background=False`` drops channel 0 after the probabilities are computed (the softmax still runs
  over all channels). Not available for ``mode="binary"`` or a single-channel multiclass head.
* ``class_weights``: one non-negative value per class kept (``C' = C`` or ``C − 1``), with a positive sum.
* Reduction of the per-class losses (``(B', C')``, ``B' = B``, or ``1`` with ``batch_dice``): ``"none"``
  returns them times ``class_weights`` times ``weight``; ``"sum"`` their sum; ``"mean"`` that sum divided by
  ``B' · Σ_c class_weights[c]`` (``B' · C'`` without class weights), a weighted average that is the plain
  mean when all class weights are 1. ``weight`` must broadcast to ``(B', C')`` without enlarging it, e.g.
  ``(B, 1)`` per sample or ``(C',)`` per class; it is not part of the ``"mean"`` denominator.
* ``validate=True`` checks label values and target ranges (one host sync); shapes are always checked.

Degenerate input stays finite, in value and gradient, because ``smooth > 0`` is required:

* every pixel of a sample ignored (or a class empty in target and prediction): ``I = P = T = 0``, so every
  ratio is ``(0 + s) / (0 + s) = 1`` and the loss is exactly 0 for that sample and class;
* a class absent from the target only (empty mask): Dice / Jaccard / Tversky tend to ``1 − s / (P + s)``,
  i.e. near 1 if the class is predicted and near 0 if it is not (``P ≪ s``);
* a batch of one and 3-D volumes ``(B, C, D, H, W)`` need nothing special.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._api import LossModule, LossOptions, as_options_tensor, loss_function
from ._region import Counts, check_dense_ignore_index, class_weights_for, reduce_classes, region_stats, sudre_weights
from ._stable import ratio
from ._utils import apply_weight, check_choice, check_number, reduce

__all__: list[str] = []

MODES = ("multiclass", "multilabel", "binary")
WEIGHT_TYPES = ("square", "simple", "uniform")


# --------------------------------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RegionOptions(LossOptions):
    """Options of every region loss (see the module docstring for their meaning).

    ``mode``: ``"multiclass"`` (softmax over dim 1), ``"multilabel"`` or ``"binary"`` (sigmoid);
    ``include_background``: ``False`` drops channel 0 after the softmax (not for ``"binary"``); ``smooth``: ``s > 0``
    on numerator and denominator; ``batch_dice``: sum the counts over the batch too; ``class_weights``: ``(C',)``
    non-negative weights, one per class kept, with a positive sum; ``ignore_index``: label left out (``None``:
    none), outside [0, 1] for dense targets; ``squared``: ``Σ p²``, ``Σ t²`` in ``P`` and ``T``.
    """

    mode: str = "multiclass"
    include_background: bool = True
    smooth: float = 1e-5
    batch_dice: bool = False
    class_weights: Tensor | None = field(default=None, compare=False)
    ignore_index: int | None = 255
    squared: bool = False

    def __post_init__(self):
        check_choice("mode", self.mode, MODES)
        if self.mode == "binary" and not self.include_background:
            raise ValueError(
                "include_background=False is not available for mode='binary': a binary head (B, 1, ...) has no "
                "background channel to drop"
            )
        check_number("smooth", self.smooth, gt=0)  # keeps empty classes defined
        if self.ignore_index is not None:
            check_number("ignore_index", self.ignore_index, integer=True)
        if self.mode != "multiclass":
            check_dense_ignore_index(self.ignore_index)
        weights = as_options_tensor("class_weights", self.class_weights, ndim=1)
        if weights is not None and (weights.numel() == 0 or not float(weights.sum()) > 0):
            raise ValueError(f"class_weights must be non-empty with a positive sum, got {weights.tolist()}")
        object.__setattr__(self, "class_weights", weights)


@dataclass(frozen=True, kw_only=True)
class GeneralizedDiceOptions(RegionOptions):
    """:class:`RegionOptions` and ``weight_type``: ``"square"`` (``1/T²``), ``"simple"`` (``1/T``), ``"uniform"``."""

    weight_type: str = "square"

    def __post_init__(self):
        super().__post_init__()
        check_choice("weight_type", self.weight_type, WEIGHT_TYPES)


@dataclass(frozen=True, kw_only=True)
class TverskyOptions(RegionOptions):
    """:class:`RegionOptions` and ``alpha`` (on false positives), ``beta`` (on false negatives): >= 0, not both 0;
    ``squared=True`` needs ``alpha == beta`` (otherwise the index could exceed 1)."""

    alpha: float = 0.5
    beta: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        check_number("alpha", self.alpha, ge=0)
        check_number("beta", self.beta, ge=0)
        if self.alpha == 0 and self.beta == 0:
            raise ValueError("alpha and beta must not both be 0 (the Tversky index would be 1 for any prediction)")
        if self.squared and self.alpha != self.beta:
            # α·(Σp² − Σpt) + β·(Σt² − Σpt) is >= 0 for every p, t only when α == β (then it is α·Σ(p − t)²)
            raise ValueError(
                f"squared=True needs alpha == beta for the Tversky index to stay <= 1, got {self.alpha}, {self.beta}"
            )


@dataclass(frozen=True, kw_only=True)
class FocalTverskyOptions(TverskyOptions):
    """:class:`TverskyOptions` and ``gamma > 0``, the exponent of ``(1 − TI)``."""

    gamma: float = 0.75

    def __post_init__(self):
        super().__post_init__()
        check_number("gamma", self.gamma, gt=0)


def _one_minus_tversky(c: Counts, o: TverskyOptions) -> Tensor:
    """``1 − TI = (α·FP + β·FN) / (α·FP + β·FN + I + s)`` (with ``squared``, where ``α = β``: ``α·Σ(p − t)²``)."""
    off = o.alpha * c.mismatch if c.fp is None else o.alpha * c.fp + o.beta * c.fn
    return ratio(off, c.inter + o.smooth)


# --------------------------------------------------------------------------------------------------------------
# the losses (inputs, options and the call keywords as every loss of the library; see the module docstring)
# --------------------------------------------------------------------------------------------------------------

_ARGS = """
    Args:
        logits: ``(B, C, *spatial)`` raw scores, e.g. ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
        target: by ``mode``: class indices ``(B, *spatial)`` / ``(B, 1, *spatial)`` or a one-hot / soft tensor of
            the logits' shape (``"multiclass"``); the logits' shape, values in [0, 1] (``"multilabel"``); labels
            {{0, 1}} ``(B, *spatial)`` / ``(B, 1, *spatial)`` or a float tensor, for logits ``(B, 1, *spatial)``
            (``"binary"``).
        options: see {options}.
        weight: optional, >= 0, rescales the unreduced values elementwise (e.g. ``(B, 1)`` per sample).
        reduction: {reduction}
        validate: check label values, target ranges and the weight's sign (one host sync); shapes are checked
            regardless.
"""
_PER_CLASS = (
    "``\"none\"``: the ``(B', C')`` values times ``class_weights`` and ``weight``, ``B' = B`` or 1 with\n"
    '            ``batch_dice``; ``"sum"``: their sum; ``"mean"``: the sum over ``B\' · Σ_c class_weights[c]``, the\n'
    "            plain mean without class weights."
)


def _documented(options: str, reduction: str = _PER_CLASS):
    def wrap(fn):
        fn.__doc__ += _ARGS.format(options=options, reduction=reduction)
        return fn

    return wrap


@loss_function(RegionOptions)
@_documented(":class:`RegionOptions`")
def dice_loss(
    logits: Tensor,
    target: Tensor,
    options: RegionOptions,
    *,
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """Soft Dice loss, ``1 − (2I + s) / (P + T + s)`` per sample and class (Milletari et al., V-Net, 2016).

    ``I = Σ p·t·m``, ``P = Σ p·m``, ``T = Σ t·m`` over the spatial dims (and the batch with ``batch_dice``);
    ``squared=True`` uses ``Σ p²·m`` and ``Σ t²·m`` in the denominator, as in V-Net. Degenerate input, all finite
    in value and gradient: a sample/class with every pixel ignored, or empty in both target and prediction, gives
    ``(0 + s) / (0 + s)``, i.e. loss 0; a class absent from the target but predicted gives a loss near 1.

    Reference form: :func:`detloss.losses.reference.dice_loss`.
    """
    c = region_stats(logits, target, options, weight, validate)
    loss = ratio(c.mismatch, 2.0 * c.inter + options.smooth)  # = 1 − (2I + s) / (P + T + s), nothing cancelling
    return reduce_classes(loss, options, weight, reduction)


@loss_function(GeneralizedDiceOptions)
@_documented(
    ":class:`GeneralizedDiceOptions`",
    '``"none"`` returns ``(B,)``, or ``(1,)`` with ``batch_dice``; ``"mean"`` / ``"sum"`` over it.',
)
def generalized_dice_loss(
    logits: Tensor,
    target: Tensor,
    options: GeneralizedDiceOptions,
    *,
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """Generalized Dice loss (Sudre et al., 2017): one value per sample, the classes pooled with weights.

    ``GDL = 1 − (2 Σ_c w_c I_c + s) / (Σ_c w_c (P_c + T_c) + s)`` with ``w_c = 1 / T_c²`` (``weight_type=
    "square"``), ``1 / T_c`` (``"simple"``) or ``1`` (``"uniform"``), ``T_c`` the target volume of the class
    (``Σ t²·m`` with ``squared``). The weights are constants (no gradient). A class absent from the target of a
    sample (``T_c = 0``) takes the largest finite weight of that sample, or 1 if every class is absent.
    ``class_weights``, when given, multiply ``w_c``. ``smooth`` acts on the weighted sums, so with ``"square"``
    weights and large images keep it small. A sample with every pixel ignored has ``I = P = T = 0`` and weights 1,
    so its loss is exactly 0. Value and gradient stay finite where tiny soft targets put ``1 / T_c²`` near the
    dtype's largest value (the sums are formed with ``w_c`` and ``s`` divided by ``max_c w_c``: the same ratio).

    Reference form: :func:`detloss.losses.reference.generalized_dice_loss`.
    """
    c = region_stats(logits, target, options, weight, validate)
    w = sudre_weights(c.true, options.weight_type)
    # The ratio is the same with every w_c and s divided by k = max_c w_c > 0; so divided, the weights lie in
    # (0, 1] and the weighted sums cannot overflow where a tiny target volume puts 1/T² near the dtype's largest
    # value. s / k is kept >= the smallest normal number, so that the denominator stays > 0 where it underflows.
    k = w.amax(1, keepdim=True)
    w = w / k
    cw = class_weights_for(w, options)
    if cw is not None:
        w = w * cw
    smooth = (options.smooth / k.squeeze(1)).clamp_min(torch.finfo(w.dtype).tiny)
    # 1 − (2 Σ w·I + s) / (Σ w·(P + T) + s) = Σ w·(P + T − 2I) / (Σ w·(P + T − 2I) + 2 Σ w·I + s)
    loss = ratio((w * c.mismatch).sum(1), 2.0 * (w * c.inter).sum(1) + smooth)  # (B',)
    return reduce(apply_weight(loss, weight), reduction)


@loss_function(TverskyOptions)
@_documented(":class:`TverskyOptions`")
def tversky_loss(
    logits: Tensor,
    target: Tensor,
    options: TverskyOptions,
    *,
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """Tversky loss (Salehi et al., 2017), ``1 − TI`` per sample and class.

    ``TI = (I + s) / (I + α·FP + β·FN + s)``, ``FP = P − I``, ``FN = T − I``. ``α = β = 0.5`` gives Dice (up to
    ``smooth``), ``α = β = 1`` Jaccard; ``β > α`` weighs missed foreground more. A sample/class with every pixel
    ignored (or empty in target and prediction) gives ``TI = 1``, loss 0; all finite.

    Reference form: :func:`detloss.losses.reference.tversky_loss`.
    """
    loss = _one_minus_tversky(region_stats(logits, target, options, weight, validate), options)
    return reduce_classes(loss, options, weight, reduction)


@loss_function(FocalTverskyOptions)
@_documented(":class:`FocalTverskyOptions`")
def focal_tversky_loss(
    logits: Tensor,
    target: Tensor,
    options: FocalTverskyOptions,
    *,
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """Focal Tversky loss (Abraham & Khan, 2019), ``(1 − TI)^γ`` per sample and class.

    ``TI`` as in :func:`tversky_loss`; ``γ > 0`` (``γ = 1`` is the Tversky loss, ``γ < 1`` the paper's choice that
    keeps the gradient large on well-segmented classes). Where ``1 − TI = 0`` the value is exactly 0 and the
    gradient 0, not NaN (``x^γ`` has an infinite slope at 0 for ``γ < 1``).

    Reference form: :func:`detloss.losses.reference.focal_tversky_loss`.
    """
    base = _one_minus_tversky(region_stats(logits, target, options, weight, validate), options)
    # base >= 0; feed pow a safe base where it is 0, and output exactly 0 there
    positive = base > 0
    safe = torch.where(positive, base, torch.ones_like(base))
    loss = torch.where(positive, safe.pow(options.gamma), torch.zeros_like(base))
    return reduce_classes(loss, options, weight, reduction)


@loss_function(RegionOptions)
@_documented(":class:`RegionOptions`")
def jaccard_loss(
    logits: Tensor,
    target: Tensor,
    options: RegionOptions,
    *,
    weight: Tensor | None = None,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """Soft Jaccard (IoU) loss, ``1 − (I + s) / (P + T − I + s)`` per sample and class.

    With ``squared=True`` the union is ``Σ p²·m + Σ t²·m − I``, still ``>= I``. A sample/class with every pixel
    ignored (or empty in target and prediction) gives loss 0; a class absent from the target but predicted gives a
    loss near 1; all finite.

    Reference form: :func:`detloss.losses.reference.jaccard_loss`.
    """
    c = region_stats(logits, target, options, weight, validate)
    loss = ratio(c.mismatch, c.inter + options.smooth)  # = 1 − (I + s) / (P + T − I + s)
    return reduce_classes(loss, options, weight, reduction)


class DiceLoss(LossModule, function=dice_loss, name="dice"):
    """Module form of :func:`dice_loss`."""


class GeneralizedDiceLoss(LossModule, function=generalized_dice_loss, name="generalized_dice"):
    """Module form of :func:`generalized_dice_loss`."""


class TverskyLoss(LossModule, function=tversky_loss, name="tversky"):
    """Module form of :func:`tversky_loss`."""


class FocalTverskyLoss(LossModule, function=focal_tversky_loss, name="focal_tversky"):
    """Module form of :func:`focal_tversky_loss`."""


class JaccardLoss(LossModule, function=jaccard_loss, name="jaccard"):
    """Module form of :func:`jaccard_loss`."""
