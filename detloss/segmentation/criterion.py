"""The segmentation criterion, 2D and 3D: the views of segmentation terms, per scale under deep supervision.

Views (each built only when a term of non-zero weight asks for it):

* ``pixels``: ``(logits (B, C, *spatial), labels (B, *spatial))``, for the region and cross-entropy terms;
* ``distance``: ``(logits, labels, signed distance (B, C, *spatial))``, the target's signed distance map of each
  class (negative inside), for the boundary loss;
* ``distance_pair``: ``(logits, labels, target distance, prediction distance)``, each voxel's distance to the boundary
  of the target and of the thresholded prediction (softmax > 0.5, without gradient), for the Hausdorff DT loss.

Regions (``regions``: the label values of each region, e.g. BraTS' whole tumour, tumour core, enhancing tumour;
:mod:`detloss.data.regions`): one sigmoid output channel per region, the regions overlapping. The targets are then
region masks ``(B, R, *spatial)`` (1 inside, 0 outside, ``ignore_index`` where a voxel counts nowhere), or class
indices ``(B, *spatial)``, which the criterion turns into them; the views are

* ``pixels``: ``(logits (B, R, *spatial), masks (B, R, *spatial) float)``, ignored elements equal to
  ``ignore_index``, for the region terms in ``mode="multilabel"`` (e.g. ``DiceLoss``, which leaves them out);
* ``masked``: ``(logits, masks with 0 at ignored elements)``, weighted by the valid elements and normalised by their
  count, so that an elementwise term (``BCEWithLogitsLoss``) takes its mean over the valid elements only.

A term that is a softmax over exclusive classes (``CrossEntropyLoss``, a region loss in ``mode="multiclass"``) or that
asks for a distance view is refused at construction, naming the term (``configs/loss/dice_bce_regions.yaml`` is the
region recipe: Dice per region and BCE, as nnU-Net trains regions).

Distances are in the units of the voxel spacing (mm; 1 per pixel when the batch carries none), computed once per
sample and step (:mod:`.distance`). Each term reduces by its own mean, so no view carries a ``norm``.

Deep supervision (``deep_supervision``): the model returns a list of logits from the full resolution down, and the
composite is replicated into groups ``scale0``, ``scale1``, … (:meth:`~detloss.composite.CompositeLoss.replicate`),
each holding a copy of every configured term on the views ``scale<i>/pixels``, …, weighted by the scale's weight.
The target of scale ``i`` is the label volume resampled to that output's size by nearest-neighbour (``nearest-exact``,
as nnU-Net v2's ``DownsampleSegForDSTransform``; ``ignore_index`` survives it), its spacing the full-resolution
spacing times the size ratio. Given a single tensor (evaluation: the model returns the full-resolution logits only),
only the ``scale0`` terms are computed.

Default composite (``configs/loss/dice_ce.yaml``): Dice over the foreground classes + cross-entropy, weight 1 each,
``ignore_index`` 255: the nnU-Net habit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..composite import CompositeLoss, Criterion, LossOutput, View
from ..data.regions import region_targets
from ..losses import Checks, CrossEntropyLoss, DiceLoss, check_number
from .distance import class_masks, mask_distance

__all__ = [
    "SegmentationCriterion",
    "default_segmentation_loss",
    "deep_supervision_weights",
    "exclusive_terms",
    "VIEWS",
    "REGION_VIEWS",
]

VIEWS = ("pixels", "distance", "distance_pair")
"""The views of one scale."""
REGION_VIEWS = ("pixels", "masked")
"""The views of one scale with regions (sigmoid channels)."""


def default_segmentation_loss(ignore_index: int = 255) -> CompositeLoss:
    """Dice over the foreground classes + cross-entropy, weight 1 each."""
    return CompositeLoss(
        {
            "dice": {
                "loss": DiceLoss(include_background=False, ignore_index=ignore_index),
                "weight": 1.0,
                "view": "pixels",
            },
            "ce": {"loss": CrossEntropyLoss(ignore_index=ignore_index), "weight": 1.0, "view": "pixels"},
        }
    )


def deep_supervision_weights(spec: int | Sequence[float]) -> list[float]:
    """The weight of each output scale, full resolution first.

    An integer ``n`` gives nnU-Net's: ``1 / 2^i`` for ``i = 0 … n − 1``, the lowest resolution ``0``, normalised to
    sum 1 (``n = 4``: 0.571, 0.286, 0.143, 0; ``n = 1``: 1). A sequence is taken as given (each >= 0, one > 0).
    """
    if isinstance(spec, int) and not isinstance(spec, bool):
        n = check_number("deep_supervision", spec, integer=True, ge=1)
        raw = [0.5**i for i in range(n)]
        if n > 1:
            raw[-1] = 0.0
        return [w / sum(raw) for w in raw]
    if not isinstance(spec, Sequence) or isinstance(spec, str) or not spec:
        raise ValueError(
            f"deep_supervision must be null, a number of output scales, or a list of weights (one per scale, full "
            f"resolution first), got {spec!r}"
        )
    weights = [check_number("deep_supervision weights", w, ge=0) for w in spec]
    if not any(weights):
        raise ValueError(f"deep_supervision weights must not all be 0, got {weights}")
    return weights


def _resample(labels: Tensor, size: Sequence[int]) -> Tensor:
    """Class indices ``(B, *spatial)`` or region masks ``(B, R, *spatial)`` resampled to ``size`` by nearest
    neighbour (``nearest-exact``)."""
    channels = labels.ndim == len(size) + 2
    if tuple(labels.shape[2 if channels else 1 :]) == tuple(size):
        return labels
    if channels:
        return F.interpolate(labels.float(), size=tuple(size), mode="nearest-exact").to(labels.dtype)
    return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest-exact")[:, 0].long()


def _exclusive(loss) -> bool:
    """Whether a term's loss is a softmax over exclusive classes."""
    return isinstance(loss, CrossEntropyLoss) or getattr(getattr(loss, "options", None), "mode", None) == "multiclass"


def exclusive_terms(loss: CompositeLoss) -> list[str]:
    """The terms of ``loss`` that are a softmax over exclusive classes (refused with regions)."""
    return [name for name, term in loss.losses.items() if _exclusive(term)]


class SegmentationCriterion(Criterion):
    """Loss of a segmentation head, 2D or 3D, with optional deep supervision.

    Args:
        num_classes: classes of the head, background (0) included.
        loss: a composite whose terms take the views ``pixels``, ``distance``, ``distance_pair``; ``None`` for
            Dice + CE.
        ignore_index: label of voxels that count nowhere.
        validate: check that the logits are finite and the labels valid (one host sync, naming the first bad index);
            the terms never check again (the views are marked ``checked``).
        deep_supervision: ``None`` (one output), the number of output scales (nnU-Net's weights, see
            :func:`deep_supervision_weights`) or a list of scale weights, full resolution first.
        regions: the label values of each region (one output channel each, ``num_classes`` of them), or ``None``
            for exclusive classes (see the module docstring).

    Called as ``criterion(outputs, targets)``: ``outputs`` the logits ``(B, C, *spatial)`` (or, with deep supervision,
    a list of them from the full resolution down); ``targets`` the labels ``(B, *spatial)`` int64, or a mapping
    ``{"labels": (B, *spatial), "spacing": (B, dims)}`` (volumes: the spacing of each sample, for the distances);
    with regions, the labels may be region masks ``(B, R, *spatial)``. Returns :class:`~detloss.composite.LossOutput`.
    """

    min_classes = 2  # background included

    def __init__(
        self,
        num_classes: int,
        loss: CompositeLoss | None = None,
        ignore_index: int = 255,
        validate: bool = True,
        deep_supervision: int | Sequence[float] | None = None,
        regions: Sequence[Sequence[int]] | Mapping[str, Sequence[int]] | None = None,
    ):
        check_number("ignore_index", ignore_index, integer=True)
        self.regions = None if regions is None else self._check_regions(regions, num_classes, ignore_index)
        if loss is None and self.regions is not None:
            raise ValueError("with regions the criterion needs a loss of sigmoid terms, e.g. loss=dice_bce_regions")
        loss = default_segmentation_loss(ignore_index) if loss is None else loss
        own = REGION_VIEWS if self.regions is not None else VIEWS
        if self.regions is not None and isinstance(loss, CompositeLoss):
            loss.check_views(frozenset(own), f"{type(self).__name__} with regions")
            if exclusive := exclusive_terms(loss):
                named = ", ".join(f"{n!r} ({type(loss.losses[n]).__name__})" for n in exclusive)
                raise ValueError(
                    f"term(s) {named}: a softmax over exclusive classes, but with regions each output channel is a "
                    "sigmoid of its own region (the regions overlap); use loss=dice_bce_regions, or sigmoid terms "
                    "(BCEWithLogitsLoss, DiceLoss with mode=multilabel)"
                )
        self.scale_weights = None if deep_supervision is None else deep_supervision_weights(deep_supervision)
        if self.scale_weights is None:
            views = own
        else:
            if not isinstance(loss, CompositeLoss):
                raise ValueError(f"loss must be a detloss.composite.CompositeLoss, got {type(loss).__name__}")
            loss.check_views(frozenset(own), type(self).__name__)
            loss = loss.replicate({f"scale{i}": w for i, w in enumerate(self.scale_weights)})
            views = [f"scale{i}/{v}" for i in range(len(self.scale_weights)) for v in own]
        super().__init__(num_classes, loss, views=views)
        self.ignore_index, self.validate = ignore_index, validate

    @staticmethod
    def _check_regions(regions, num_classes: int, ignore_index: int) -> list[tuple[int, ...]]:
        values = list(regions.values()) if isinstance(regions, Mapping) else list(regions)
        if len(values) != num_classes:
            raise ValueError(
                f"regions: the head has {num_classes} output channels but {len(values)} regions are given (one "
                "channel per region)"
            )
        if ignore_index in (0, 1):
            raise ValueError(
                f"ignore_index must not be 0 or 1 with regions (the values of a region mask), got {ignore_index}"
            )
        for v in values:
            if (
                isinstance(v, (str, bytes))
                or not isinstance(v, Sequence)
                or not v
                or not all(isinstance(x, int) for x in v)
            ):
                raise ValueError(f"regions must give each region's label values as a non-empty list, got {regions!r}")
        return [tuple(int(x) for x in v) for v in values]

    def forward(self, outputs: Tensor | Sequence[Tensor], targets: Tensor | Mapping[str, Tensor]) -> LossOutput:
        partial = self.scale_weights is not None and isinstance(outputs, Tensor)  # evaluation: scale 0 only
        out = self.loss(self.build_views(outputs, targets), only_given=partial)
        if isinstance(outputs, Tensor) or not torch.is_grad_enabled():
            return out
        # a scale of weight 0 (the lowest, by default) is not computed; a zero on every output keeps all of them in
        # the graph, so that DDP sees a gradient, if 0, for each head's parameters
        anchor = sum(o.float().sum() for o in outputs if o.requires_grad) * 0.0
        return out._replace(total=out.total + anchor)

    def needed(self) -> set[str]:
        """The views that the terms of non-zero weight (now: schedules move weights) ask for."""
        return {self.loss.views[name] for name, weight in self.loss.weights.items() if weight != 0}

    def build_views(self, outputs: Tensor | Sequence[Tensor], targets: Tensor | Mapping[str, Tensor]) -> dict:
        labels, spacing = self._targets(targets)
        scales = self._scales(outputs)
        if self.regions is not None and labels.ndim == scales[0].ndim - 1:  # class indices: to region masks
            labels = region_targets(labels, self.regions, self.ignore_index, dim=1)
        lead = 2 if self.regions is not None else 1  # (B, R, *spatial) or (B, *spatial)
        full = tuple(labels.shape[lead:])
        for i, logits in enumerate(scales):
            if logits.ndim != labels.ndim + 2 - lead or logits.shape[:2] != (labels.shape[0], self.num_classes):
                raise ValueError(
                    f"logits{'' if len(scales) == 1 else f'[{i}]'} must have shape (B, {self.num_classes}, *spatial) "
                    f"with B = {labels.shape[0]} and {labels.ndim - lead} spatial dims as the labels "
                    f"{tuple(labels.shape)}, got {tuple(logits.shape)}"
                )
        if tuple(scales[0].shape[1:lead]) + tuple(scales[0].shape[2:]) != tuple(labels.shape[1:]):
            what = "region masks (B, R, *spatial)" if lead == 2 else "labels"
            raise ValueError(
                f"{what} must have the shape of the logits {tuple(scales[0].shape[lead - 1 :])} after the batch, got "
                f"{tuple(labels.shape[1:])}"
            )
        if self.validate:
            checks = Checks()
            for i, logits in enumerate(scales):
                checks.finite("logits" if len(scales) == 1 else f"logits[{i}]", logits)
            # region masks hold 0, 1 or ignore_index
            checks.labels("labels", labels, self.num_classes if lead == 1 else 2, self.ignore_index)
            checks.run()
        needed, views = self.needed(), {}
        for i, logits in enumerate(scales):
            prefix = "" if self.scale_weights is None else f"scale{i}/"
            wanted = {v for v in (VIEWS if lead == 1 else REGION_VIEWS) if prefix + v in needed}
            if not wanted:
                continue
            size = logits.shape[2:]
            scaled = _resample(labels, size)
            views.update({prefix + k: v for k, v in self._views(logits.float(), scaled, spacing, full, wanted).items()})
        return views

    def _views(self, logits: Tensor, labels: Tensor, spacing: Tensor | None, full, wanted: set[str]) -> dict:
        views = {}
        if self.regions is not None:
            if "pixels" in wanted:
                views["pixels"] = View((logits, labels.float()), checked=True)
            if "masked" in wanted:
                valid = labels != self.ignore_index
                masks = (labels == 1).float()
                views["masked"] = View(
                    (logits, masks), weight=valid.float(), norm=valid.sum().clamp_min(1), checked=True
                )
            return views
        if "pixels" in wanted:
            views["pixels"] = View((logits, labels), checked=True)
        if wanted & {"distance", "distance_pair"}:
            ratio = torch.tensor([f / s for f, s in zip(full, logits.shape[2:])], dtype=torch.float64)
            spacing = ratio if spacing is None else spacing.double().cpu() * ratio
            signed = mask_distance(class_masks(labels, self.num_classes), spacing, signed=True)
            if "distance" in wanted:
                views["distance"] = View((logits, labels, signed), checked=True)
            if "distance_pair" in wanted:
                predicted = mask_distance(logits.detach().softmax(1) > 0.5, spacing, signed=False)
                views["distance_pair"] = View((logits, labels, signed.abs(), predicted), checked=True)
        return views

    def _scales(self, outputs) -> list[Tensor]:
        if isinstance(outputs, Tensor):
            return [outputs]
        if not isinstance(outputs, Sequence) or not outputs or not all(isinstance(o, Tensor) for o in outputs):
            raise ValueError(f"outputs must be a tensor of logits or a list of them, got {type(outputs).__name__}")
        if self.scale_weights is None:
            raise ValueError(
                f"the model returns {len(outputs)} outputs (deep supervision) but the criterion has no scale weights; "
                "set criterion.deep_supervision (e.g. to the number of outputs)"
            )
        if len(outputs) != len(self.scale_weights):
            raise ValueError(
                f"the model returns {len(outputs)} outputs but criterion.deep_supervision has "
                f"{len(self.scale_weights)} scale weights {self.scale_weights}"
            )
        return list(outputs)

    def _targets(self, targets) -> tuple[Tensor, Tensor | None]:
        if isinstance(targets, Tensor):
            return targets.long(), None
        if not isinstance(targets, Mapping) or "labels" not in targets:
            raise ValueError(
                "targets must be labels (B, *spatial) or a mapping {'labels': (B, *spatial), 'spacing': (B, dims)}, "
                f"got {type(targets).__name__}"
            )
        spacing = targets.get("spacing")
        return targets["labels"].long(), (None if spacing is None else torch.as_tensor(spacing))
