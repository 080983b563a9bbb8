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

from .. import runtime as buffers
from ..composite import CompositeLoss, Criterion, ProgLoss, View
from ..losses import BCEWithLogitsLoss, CIoULoss, DFLoss, DistanceL1Loss, check_number
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


def _read_sides(feats: Sequence[Tensor], num_sides: int, batch: Tensor, anchor: Tensor, sync: bool) -> Tensor:
    """``(P, num_sides)``: the side channels of the pairs ``(batch[i], anchor[i])``, read from the per-level maps
    (anchors numbered level by level, row-major within a level, as :func:`~detloss.detection.make_anchors`)."""
    # with sync each pair is written once (the levels partition the anchors); without, torch.where fills zeros
    out = (feats[0].new_empty if sync else feats[0].new_zeros)(anchor.shape[0], num_sides)
    sizes = [f.shape[2] * f.shape[3] for f in feats]
    for f, (rows, local, which) in zip(feats, _level_pairs(sizes, batch, anchor, sync)):
        values = f.flatten(2)[rows, :num_sides, local]  # flatten: a view of a contiguous or channels-last map
        if sync:
            out[which] = values
        else:
            out = torch.where(which.unsqueeze(1), values, out)
    return out


def _level_pairs(sizes: Sequence[int], batch: Tensor, anchor: Tensor, sync: bool):
    """For each level of ``sizes[l]`` anchors, the pairs on it as ``(rows, local, which)``: their images, their
    indices within the level and which pairs they are. With ``sync`` those pairs alone, ``which`` their indices
    (found with a host sync, for the sparse assignment, which syncs anyway); without, every pair at an index clamped
    into the level, ``which`` a mask of those truly on it (no host sync)."""
    start = 0
    for size in sizes:
        local = anchor - start
        on_level = (local >= 0) & (local < size)
        if sync:
            which = on_level.nonzero().squeeze(1)
            yield batch[which], local[which], which
        else:
            yield batch, local.clamp(0, size - 1), on_level
        start += size


class _HeadMaps(torch.autograd.Function):
    """The two things the views read from a head's per-level maps ``[B, S + C, H, W]`` (``S`` side channels):
    ``cls (B, C, A)``, all the class channels (concatenated beforehand, without grad, for the assigner), and
    ``sides (M, S)``, the side channels of the ``M`` slots alone.

    Backward writes each level's gradient straight into one fresh map: the class gradient copied in, the slots'
    side gradients added at their anchors, zeros elsewhere. Gathering the slots from an anchor-major copy of every
    anchor's sides instead would cost that copy forward, and backward a zero-filled tensor of its size, a scatter
    into it and a transposing copy back.
    """

    @staticmethod
    def forward(ctx, num_sides: int, sync: bool, cls: Tensor, batch: Tensor, anchor: Tensor, *feats: Tensor):
        ctx.num_sides, ctx.sync, ctx.maps = num_sides, sync, [(f.shape, _memory_format(f)) for f in feats]
        ctx.save_for_backward(batch, anchor)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not a full-size zero tensor
        return cls.view_as(cls), _read_sides(feats, num_sides, batch, anchor, sync)

    @staticmethod
    def backward(ctx, grad_cls: Tensor | None, grad_sides: Tensor | None):
        if grad_cls is None and grad_sides is None:
            return (None,) * (5 + len(ctx.maps))
        batch, anchor = ctx.saved_tensors
        s, ref = ctx.num_sides, grad_cls if grad_cls is not None else grad_sides
        grads, start = [], 0
        sizes = [shape[2] * shape[3] for shape, _ in ctx.maps]
        levels = _level_pairs(sizes, batch, anchor, ctx.sync)
        for (shape, memory_format), size, (rows, local, which) in zip(ctx.maps, sizes, levels):
            g = buffers.empty(shape, dtype=ref.dtype, device=ref.device, memory_format=memory_format)
            flat = g.flatten(2)
            if grad_cls is None:
                flat[:, s:].zero_()
            else:
                flat[:, s:].copy_(grad_cls[:, :, start : start + size])
            sides = flat[:, :s].zero_().transpose(1, 2)  # (B, H·W, S)
            if grad_sides is not None:
                added = grad_sides[which] if ctx.sync else grad_sides * which.unsqueeze(1)
                sides.index_put_((rows, local), added, accumulate=True)
            grads.append(g)
            start += size
        return (None, None, None, None, None, *grads)


def _memory_format(f: Tensor) -> torch.memory_format:
    """Channels-last for a channels-last map (so its gradient needs no conversion in the conv's backward)."""
    if not f.is_contiguous() and f.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


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
        a = sum(f.shape[2] * f.shape[3] for f in feats)
        cls_values = buffers.empty((batch_size, self.num_classes, a), dtype=feats[0].dtype, device=device)
        with torch.no_grad():  # (B, C, A), for the assigner; _HeadMaps puts it in the graph after the assignment
            torch.cat([f[:, 4 * r :].flatten(2) for f in feats], 2, out=cls_values)
        points, stride = self._anchors(feats, cls_values.dtype, device)
        detached, sync = [f.detach() for f in feats], self.assigner.is_sparse(device)

        def pred_boxes(batch: Tensor, anchor: Tensor) -> Tensor:  # pixels; the assigner decodes only what it needs
            sides = _read_sides(detached, 4 * r, batch, anchor, sync).view(-1, 4, r)
            return decode_boxes(sides, points[anchor]) * stride[anchor]

        levels = [(f.shape[2], f.shape[3], s) for f, s in zip(feats, self.strides)]
        assignment = self.assigner(
            cls_values, pred_boxes, points * stride, packed.boxes, packed.labels, packed.mask, levels
        )

        # the slots' boxes are decoded again, in the graph: the gradient never touches the other anchors
        b, anc = assignment.batch, assignment.anchor
        cls_logits, slot_sides = _HeadMaps.apply(4 * r, sync, cls_values, b, anc, *feats)
        slot_bins = slot_sides.view(-1, 4, r)  # (M, 4, R)
        slot_points, slot_stride = points[anc], stride[anc]
        weight = assignment.scores
        target_boxes = assignment.boxes / slot_stride  # grid units of each anchor's level
        if r > 1:  # DFL: bin logits against distances in bins
            dist_view = (slot_bins, bbox2dist(slot_points, target_boxes, r - 1))
        else:  # L1: distances in fractions of the input's width and height, unclamped
            size = (
                torch.tensor([feats[0].shape[3], feats[0].shape[2]] * 2, dtype=slot_sides.dtype, device=device)
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
    _single_thread_on_cpu = True

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
    _single_thread_on_cpu = True

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
