"""The YOLO detection criteria: decode the head, assign, build the views, and let the composite weigh the terms.

:class:`DetectionCriterion` is the YOLOv8 formulation: one head; default composite ``box`` = CIoU × 7.5, ``cls`` =
BCE over all anchors and classes × 0.5, ``dfl`` = Distribution Focal Loss × 1.5; every term divided by the
target-score sum clamped at 1. :class:`EndToEndCriterion` is YOLO26's: the same views for two heads (one-to-many and
one-to-one), ``reg_max = 1`` and an L1 term on the box sides instead of DFL (see its docstring). Neither multiplies
by the batch size.

Views of one head (prefixed ``<head>/`` by the end-to-end criterion):

* ``box``: ``(pred_boxes (M, 4), target_boxes (M, 4))`` in grid units of each anchor's level, weight = the
  anchor's target score;
* ``dist``: with ``reg_max > 1``, ``(bin_logits (M, 4, reg_max), target_dist (M, 4))`` in bins, the target clamped
  to ``[0, reg_max − 1.01]`` (for DFL); with ``reg_max == 1``, ``(pred_dist (M, 4), target_dist (M, 4))``, the
  left/top/right/bottom distances times the anchor's stride divided by the input's width (left, right) or height
  (top, bottom), neither clamped (for an L1 term); same weight;
* ``cls``: ``(class_logits (B, C, A), target_scores (B, C, A))``, no weight.

``M = B · G · topk`` slots, one per claim of the assigner: exactly one slot stands for each foreground anchor and the
rest carry weight 0 (the composite multiplies each term's unreduced values by it), so no host sync is needed to
compact the foreground.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from ..composite import CompositeLoss, Criterion, ProgLoss, View
from ..losses import BCEWithLogitsLoss, CIoULoss, DFLoss, DistanceL1Loss
from ..losses._utils import check_number
from .assigner import Assignment, TaskAlignedAssigner
from .geometry import bbox2dist, decode_boxes, make_anchors
from .targets import Targets, check_feats, check_values, pack_targets

__all__ = [
    "DetectionCriterion",
    "EndToEndCriterion",
    "HEADS",
    "default_detection_loss",
    "default_end_to_end_loss",
]

HEADS = ("one2many", "one2one")
"""The heads of an end-to-end detector; a YOLOv8 head is a one-to-many head."""


class _SplitHead(torch.autograd.Function):
    """Per-level head maps -> ``bins (B, A, 4·R)`` (anchor-major, for a softmax over the last dim) and
    ``cls (B, C, A)`` (channel-major, as the head wrote them).

    One copy forward; the backward writes each level's gradient straight into one fresh tensor, where
    slicing and concatenating through autograd would zero-fill and add full-size gradients twice.
    """

    @staticmethod
    def forward(ctx, num_bins: int, *feats: Tensor):
        batch = feats[0].shape[0]
        sizes = [f.shape[2] * f.shape[3] for f in feats]
        bins = torch.cat([f[:, :num_bins].reshape(batch, num_bins, -1).transpose(1, 2) for f in feats], 1)
        cls = torch.cat([f[:, num_bins:].reshape(batch, f.shape[1] - num_bins, -1) for f in feats], 2)
        ctx.num_bins, ctx.sizes, ctx.shapes = num_bins, sizes, [f.shape for f in feats]
        return bins, cls

    @staticmethod
    def backward(ctx, grad_bins: Tensor | None, grad_cls: Tensor | None):
        grads, start = [], 0
        for size, shape in zip(ctx.sizes, ctx.shapes):
            g = grad_bins.new_empty(shape) if grad_bins is not None else grad_cls.new_empty(shape)
            flat = g.view(shape[0], shape[1], size)
            if grad_bins is None:
                flat[:, : ctx.num_bins].zero_()
            else:
                flat[:, : ctx.num_bins].copy_(grad_bins[:, start : start + size].transpose(1, 2))
            if grad_cls is None:
                flat[:, ctx.num_bins :].zero_()
            else:
                flat[:, ctx.num_bins :].copy_(grad_cls[:, :, start : start + size])
            grads.append(g)
            start += size
        return (None, *grads)


def default_detection_loss() -> CompositeLoss:
    """CIoU 7.5 + BCE 0.5 + DFL 1.5: the YOLOv8 composite (``configs/loss/yolo.yaml``)."""
    return CompositeLoss(
        {
            "box": {"loss": CIoULoss(), "weight": 7.5, "view": "box"},
            "cls": {"loss": BCEWithLogitsLoss(), "weight": 0.5, "view": "cls"},
            "dfl": {"loss": DFLoss(), "weight": 1.5, "view": "dist"},
        }
    )


def default_end_to_end_loss() -> CompositeLoss:
    """YOLO26's composite (``configs/loss/yolo26.yaml``): per head CIoU 7.5 + BCE 0.5 + L1 on the sides 1.5, the
    one-to-many head weighted ``w`` and the one-to-one head ``1 − w`` by :class:`~detloss.composite.ProgLoss`."""

    def head(name: str) -> dict:
        return {
            "box": {"loss": CIoULoss(), "weight": 7.5, "view": f"{name}/box"},
            "cls": {"loss": BCEWithLogitsLoss(), "weight": 0.5, "view": f"{name}/cls"},
            "l1": {"loss": DistanceL1Loss(), "weight": 1.5, "view": f"{name}/dist"},
        }

    return CompositeLoss(
        {"one2many": {"schedule": ProgLoss(to="one2one"), **head("one2many")}, "one2one": head("one2one")}
    )


class _Head:
    """What the two criteria share: the views of one head's maps, given the checked and packed targets."""

    def __init__(self, num_classes: int, strides: Sequence[float], reg_max: int, assigner: TaskAlignedAssigner):
        self.num_classes, self.strides, self.reg_max, self.assigner = num_classes, tuple(strides), reg_max, assigner
        if assigner.min_box_side is None:
            assigner.min_box_side = float(self.strides[len(self.strides) // 2])
        self._anchor_key, self._anchor_cache = None, None

    def views(self, feats: Sequence[Tensor], packed: Targets) -> tuple[dict[str, View], Assignment]:
        batch_size, device = feats[0].shape[0], feats[0].device
        feats = [f if f.dtype in (torch.float32, torch.float64) else f.float() for f in feats]
        r = self.reg_max
        bins, cls_logits = _SplitHead.apply(4 * r, *feats)  # (B, A, 4R), (B, C, A): one copy, no permutes
        a = cls_logits.shape[2]
        bin_logits = bins.view(batch_size, a, 4, r)

        points, stride = self._anchors(feats, cls_logits.dtype, device)
        detached = bin_logits.detach()

        def pred_boxes(batch: Tensor, anchor: Tensor) -> Tensor:  # pixels; the assigner decodes only what it needs
            return decode_boxes(detached[batch, anchor], points[anchor]) * stride[anchor]

        levels = [(f.shape[2], f.shape[3], s) for f, s in zip(feats, self.strides)]
        assignment = self.assigner(
            cls_logits.detach(), pred_boxes, points * stride, packed.boxes, packed.labels, packed.mask, levels
        )

        # the slots' boxes are decoded again, in the graph: the gradient never touches the other anchors
        b, anc = assignment.batch, assignment.anchor
        slot_bins = bin_logits[b, anc]  # (M, 4, R)
        slot_points, slot_stride = points[anc], stride[anc]
        weight = assignment.scores
        target_boxes = assignment.boxes / slot_stride  # grid units of each anchor's level
        if r > 1:  # DFL: bin logits against distances in bins
            dist_view = (slot_bins, bbox2dist(slot_points, target_boxes, r - 1))
        else:  # L1: distances in fractions of the input's width and height, unclamped
            size = (
                torch.tensor([feats[0].shape[3], feats[0].shape[2]] * 2, dtype=bins.dtype, device=device)
                * self.strides[0]
            )
            scale = slot_stride / size  # (M, 4)
            dist_view = (slot_bins[..., 0] * scale, bbox2dist(slot_points, target_boxes) * scale)
        norm = _normaliser(weight.sum())
        views = {
            "box": View((decode_boxes(slot_bins, slot_points), target_boxes), weight, norm, checked=True),
            "dist": View(dist_view, weight, norm, checked=True),
            "cls": View(
                (cls_logits, assignment.target_scores(batch_size, self.num_classes, a)), None, norm, checked=True
            ),
        }
        return views, assignment

    def _anchors(self, feats: Sequence[Tensor], dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        key = (tuple(f.shape[-2:] for f in feats), dtype, device)
        if self._anchor_key != key:
            sizes = [tuple(f.shape[-2:]) for f in feats]
            self._anchor_cache = make_anchors(sizes, self.strides, dtype=dtype, device=device)
            self._anchor_key = key
        return self._anchor_cache


def _normaliser(score_sum: Tensor) -> Tensor:
    """The target-score sum, global across ranks, clamped at 1 and divided by the world size.

    DDP averages gradients over ``W`` ranks; dividing each rank's terms by ``max(Σ_ranks s, 1) / W`` makes the
    averaged gradient that of one process on the whole batch. Only where gradients are recorded: in evaluation
    (no grad) the ranks may run different numbers of batches, so a collective there could wait forever; the value is
    then normalised per rank.
    """
    if torch.is_grad_enabled() and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        score_sum = score_sum.detach().clone()
        dist.all_reduce(score_sum)
        return score_sum.clamp(min=1.0) / dist.get_world_size()
    return score_sum.detach().clamp(min=1.0)


def _check_strides(strides) -> tuple[float, ...]:
    if not strides or not isinstance(strides, Sequence):
        raise ValueError(f"strides must be a non-empty sequence of positive numbers, got {strides!r}")
    return tuple(check_number("strides", s, gt=0) for s in strides)


class DetectionCriterion(Criterion):
    """Loss of an anchor-free detection head (YOLOv8 style).

    Args:
        num_classes: number of classes ``C``.
        strides: stride of each feature level, in pixels.
        reg_max: bins of the distance distribution of each box side (DFL); 1: one channel per side, the distance
            itself (the ``dist`` view then serves an L1 term).
        loss: the composite of terms over the views ``box``, ``dist``, ``cls``; ``None`` for the default.
        assigner: ``None`` for ``TaskAlignedAssigner()``; its ``min_box_side=None`` becomes the middle stride.
        validate: check that the head maps are finite and the targets valid (one host sync per call, naming the
            level or target and the first bad index); the terms never check again (the views are marked ``checked``).

    Call as ``criterion(feats, targets)``: ``feats`` a list of per-level maps ``[B, 4·reg_max + C, H_l, W_l]``
    (side channels first), ``targets`` a list of ``B`` dicts ``{"boxes": (n, 4) xyxy pixels, "labels": (n,)
    int64}``, ``n`` possibly 0. Returns :class:`~detloss.composite.LossOutput`.
    """

    views = frozenset({"box", "dist", "cls"})
    single_thread_on_cpu = True

    def __init__(
        self,
        num_classes: int,
        strides: Sequence[int] = (8, 16, 32),
        reg_max: int = 16,
        loss: CompositeLoss | None = None,
        assigner: TaskAlignedAssigner | None = None,
        validate: bool = True,
    ):
        super().__init__(num_classes, default_detection_loss() if loss is None else loss)
        self.strides = _check_strides(strides)
        self.reg_max = check_number("reg_max", reg_max, integer=True, ge=1)
        self.assigner = TaskAlignedAssigner() if assigner is None else assigner
        self._head = _Head(self.num_classes, self.strides, self.reg_max, self.assigner)
        self.validate = validate

    def build_views(self, feats: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]]) -> dict[str, View]:
        return self.match(feats, targets)[0]

    def match(
        self, feats: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]]
    ) -> tuple[dict[str, View], Assignment]:
        """The views the composite's terms receive, and the assignment behind them."""
        if isinstance(feats, Mapping):
            raise ValueError(
                "feats is a dict of heads (an end-to-end model): train it with loss=yolo26 (EndToEndCriterion), "
                "or use a model with end2end=false"
            )
        check_feats(feats, self.strides, 4 * self.reg_max + self.num_classes)
        with torch.autocast(feats[0].device.type, enabled=False):
            packed = pack_targets(targets, feats[0].shape[0], feats[0].device)
            if self.validate:
                check_values({"feats": feats}, self.strides, targets, packed, self.num_classes)
            return self._head.views(feats, packed)

    def assignments(self, feats, targets) -> dict[str, tuple[Assignment, Targets]]:
        """``{"one2many": (assignment, packed targets)}`` of a batch, for diagnostics (no gradient)."""
        with torch.no_grad():
            _, assignment = self.match(feats, targets)
            return {"one2many": (assignment, pack_targets(targets, feats[0].shape[0], feats[0].device))}


class EndToEndCriterion(Criterion):
    """Loss of an end-to-end detector's two heads (YOLO26, Ultralytics 8.4: ``E2ELoss``).

    The one-to-many head is assigned as YOLOv8's (task-aligned, top-k 10); the one-to-one head with top-k 7, then a
    second top-k of 1 on the alignment (``topk2``), so that each ground truth keeps at most one anchor. Both enlarge
    ground-truth sides smaller than the middle stride to it for the candidate test (STAL, ``min_box_side``). Each
    head gets the views of :class:`DetectionCriterion`, named ``one2many/box``, ``one2one/cls``, …, each normalised
    by that head's own target-score sum; the default composite (:func:`default_end_to_end_loss`) weighs the heads by
    ProgLoss.

    Args:
        num_classes: number of classes ``C``.
        strides: stride of each feature level, in pixels.
        reg_max: 1 (YOLO26: each side's distance is one channel, no bins); > 1 trains DFL heads end to end.
        loss: the composite over the views ``<head>/box``, ``<head>/dist``, ``<head>/cls``; ``None``: YOLO26's.
        one2many_assigner, one2one_assigner: ``None`` for YOLO26's (``topk=10``; ``topk=7, topk2=1``).
        validate: as :class:`DetectionCriterion`, for both heads in one host sync.

    Call as ``criterion({"one2many": feats, "one2one": feats}, targets)``, ``targets`` as
    :class:`DetectionCriterion` takes them.
    """

    views = frozenset(f"{head}/{view}" for head in HEADS for view in ("box", "dist", "cls"))
    single_thread_on_cpu = True

    def __init__(
        self,
        num_classes: int,
        strides: Sequence[int] = (8, 16, 32),
        reg_max: int = 1,
        loss: CompositeLoss | None = None,
        one2many_assigner: TaskAlignedAssigner | None = None,
        one2one_assigner: TaskAlignedAssigner | None = None,
        validate: bool = True,
    ):
        super().__init__(num_classes, default_end_to_end_loss() if loss is None else loss)
        self.strides = _check_strides(strides)
        self.reg_max = check_number("reg_max", reg_max, integer=True, ge=1)
        self.one2many_assigner = TaskAlignedAssigner(topk=10) if one2many_assigner is None else one2many_assigner
        self.one2one_assigner = TaskAlignedAssigner(topk=7, topk2=1) if one2one_assigner is None else one2one_assigner
        self._heads = {
            "one2many": _Head(self.num_classes, self.strides, self.reg_max, self.one2many_assigner),
            "one2one": _Head(self.num_classes, self.strides, self.reg_max, self.one2one_assigner),
        }
        self.validate = validate

    def build_views(self, outputs: Mapping[str, Sequence[Tensor]], targets) -> dict[str, View]:
        return self.match(outputs, targets)[0]

    def match(self, outputs: Mapping[str, Sequence[Tensor]], targets) -> tuple[dict[str, View], dict[str, Assignment]]:
        """The views of both heads, and the assignment of each."""
        if not isinstance(outputs, Mapping) or set(outputs) != set(HEADS):
            raise ValueError(
                f"outputs must be a dict {{'one2many': feats, 'one2one': feats}} (an end-to-end model, "
                f"model.end2end=true), got {type(outputs).__name__}"
                + (f" with keys {sorted(outputs)}" if isinstance(outputs, Mapping) else "")
            )
        channels = 4 * self.reg_max + self.num_classes
        for head in HEADS:
            check_feats(outputs[head], self.strides, channels, name=f"outputs['{head}']")
        first = outputs["one2many"][0]
        with torch.autocast(first.device.type, enabled=False):
            packed = pack_targets(targets, first.shape[0], first.device)
            if self.validate:
                named = {f"outputs['{head}']": outputs[head] for head in HEADS}
                check_values(named, self.strides, targets, packed, self.num_classes)
            views, assignments = {}, {}
            for head in HEADS:
                head_views, assignments[head] = self._heads[head].views(outputs[head], packed)
                views.update({f"{head}/{name}": view for name, view in head_views.items()})
        return views, assignments

    def assignments(self, outputs, targets) -> dict[str, tuple[Assignment, Targets]]:
        """``{head: (assignment, packed targets)}`` of a batch, for diagnostics (no gradient)."""
        with torch.no_grad():
            _, assignments = self.match(outputs, targets)
            first = outputs["one2many"][0]
            packed = pack_targets(targets, first.shape[0], first.device)
            return {head: (assignment, packed) for head, assignment in assignments.items()}
