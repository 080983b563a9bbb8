"""The YOLO detection criterion: decode the head, assign, build the views, and let the composite weigh the terms.

Default composite (the YOLOv8 formulation): ``box`` = CIoU, weight 7.5; ``cls`` = BCE over all anchors and
classes, weight 0.5; ``dfl`` = Distribution Focal Loss, weight 1.5; every term divided by the target-score sum
clamped at 1. The total is not multiplied by the batch size.

Views built for the composite's terms:

* ``box``: ``(pred_boxes (M, 4), target_boxes (M, 4))`` in grid units of each anchor's level, weight = the
  anchor's target score;
* ``dist``: ``(bin_logits (M, 4, reg_max), target_dist (M, 4))`` in bins, same weight;
* ``cls``: ``(class_logits (B, C, A), target_scores (B, C, A))``, no weight.

``M = B · G · topk`` slots, one per claim of the assigner: exactly one slot stands for each foreground anchor
and the rest carry weight 0 (the composite multiplies each term's unreduced values by it), so no host sync is
needed to compact the foreground.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from ..composite import CompositeLoss, Criterion, View
from ..losses import BCEWithLogitsLoss, CIoULoss, DFLoss
from ..losses._utils import Checks, check_number
from .assigner import Assignment, TaskAlignedAssigner
from .geometry import bbox2dist, decode_boxes, make_anchors

__all__ = ["DetectionCriterion", "default_detection_loss"]


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
    """CIoU 7.5 + BCE 0.5 + DFL 1.5: the YOLOv8 composite."""
    return CompositeLoss(
        {
            "box": {"loss": CIoULoss(), "weight": 7.5, "view": "box"},
            "cls": {"loss": BCEWithLogitsLoss(), "weight": 0.5, "view": "cls"},
            "dfl": {"loss": DFLoss(), "weight": 1.5, "view": "dist"},
        }
    )


class DetectionCriterion(Criterion):
    """Loss of an anchor-free, DFL-regressing detection head (YOLOv8 style).

    Args:
        num_classes: number of classes ``C``.
        strides: stride of each feature level, in pixels.
        reg_max: bins of the distance distribution of each box side.
        loss: the composite of terms over the views ``box``, ``dist``, ``cls``; ``None`` for the default.
        assigner: ``None`` for ``TaskAlignedAssigner()``; its ``min_box_side=None`` becomes the middle stride.
        validate: check that the head maps are finite and the targets valid (one host sync per call, naming the
            level or target and the first bad index); the terms never check again (the views are marked ``checked``).

    Call as ``criterion(feats, targets)``: ``feats`` a list of per-level maps ``[B, 4·reg_max + C, H_l, W_l]``
    (distribution channels first), ``targets`` a list of ``B`` dicts ``{"boxes": (n, 4) xyxy pixels,
    "labels": (n,) int64}``, ``n`` possibly 0. Returns :class:`~detloss.composite.LossOutput`.
    """

    views = frozenset({"box", "dist", "cls"})

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
        if not strides or not isinstance(strides, Sequence):
            raise ValueError(f"strides must be a non-empty sequence of positive numbers, got {strides!r}")
        self.strides = tuple(check_number("strides", s, gt=0) for s in strides)
        self.reg_max = check_number("reg_max", reg_max, integer=True, ge=2)
        self.assigner = TaskAlignedAssigner() if assigner is None else assigner
        if self.assigner.min_box_side is None:
            self.assigner.min_box_side = float(self.strides[len(self.strides) // 2])
        self.validate = validate

    def build_views(self, feats: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]]) -> dict[str, View]:
        return self.match(feats, targets)[0]

    def match(
        self, feats: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]]
    ) -> tuple[dict[str, View], Assignment]:
        """The views the composite's terms receive, and the assignment behind them."""
        self._check_feats(feats)
        batch_size = feats[0].shape[0]
        self._check_targets_structure(targets, batch_size)
        device = feats[0].device
        with torch.autocast(device.type, enabled=False):
            gt_boxes, gt_labels, gt_mask = self._pack_targets(targets, device)
            if self.validate:
                self._check_values(feats, targets, gt_boxes, gt_labels, gt_mask)

            # one copy of the head output; no permutes
            feats = [f if f.dtype in (torch.float32, torch.float64) else f.float() for f in feats]
            r = self.reg_max
            bins, cls_logits = _SplitHead.apply(4 * r, *feats)  # (B, A, 4R), (B, C, A)
            a = cls_logits.shape[2]
            bin_logits = bins.view(batch_size, a, 4, r)

            points, stride = self._anchors(feats, cls_logits.dtype, device)
            with torch.no_grad():  # every anchor's box, for the assigner only
                boxes = decode_boxes(bin_logits, points)  # (B, A, 4), grid units

            assignment = self.assigner(
                cls_logits.detach(), boxes.detach() * stride, points * stride, gt_boxes, gt_labels, gt_mask
            )

            # the slots' boxes are decoded again, in the graph: the gradient never touches the other anchors
            b, anc = assignment.batch, assignment.anchor
            slot_bins = bin_logits[b, anc]  # (M, 4, R)
            slot_points = points[anc]
            weight = assignment.scores
            target_boxes = assignment.boxes / stride[anc]  # grid units of each anchor's level
            norm = self._normaliser(weight.sum())
            views = {
                "box": View((decode_boxes(slot_bins, slot_points), target_boxes), weight, norm, checked=True),
                "dist": View((slot_bins, bbox2dist(slot_points, target_boxes, r - 1)), weight, norm, checked=True),
                "cls": View(
                    (cls_logits, assignment.target_scores(batch_size, self.num_classes, a)), None, norm, checked=True
                ),
            }
        return views, assignment

    @staticmethod
    def _normaliser(score_sum: Tensor) -> Tensor:
        """The target-score sum, global across ranks, clamped at 1 and divided by the world size.

        DDP averages gradients over ``W`` ranks; dividing each rank's terms by ``max(Σ_ranks s, 1) / W`` makes
        the averaged gradient that of one process on the whole batch. Only where gradients are recorded: in
        evaluation (no grad) the ranks may run different numbers of batches, so a collective there could wait
        forever; the value is then normalised per rank.
        """
        if torch.is_grad_enabled() and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            score_sum = score_sum.detach().clone()
            dist.all_reduce(score_sum)
            return score_sum.clamp(min=1.0) / dist.get_world_size()
        return score_sum.detach().clamp(min=1.0)

    def _anchors(self, feats: Sequence[Tensor], dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        key = (tuple(f.shape[-2:] for f in feats), dtype, device)
        if getattr(self, "_anchor_key", None) != key:
            self._anchor_cache = make_anchors(
                [tuple(f.shape[-2:]) for f in feats], self.strides, dtype=dtype, device=device
            )
            self._anchor_key = key
        return self._anchor_cache

    # ----------------------------------------------------------------------------------------- input checks

    def _check_feats(self, feats: Sequence[Tensor]) -> None:
        if not isinstance(feats, (list, tuple)) or not all(isinstance(f, Tensor) for f in feats):
            raise ValueError("feats must be a list of per-level tensors [B, 4·reg_max + C, H, W]")
        if len(feats) != len(self.strides):
            raise ValueError(f"feats has {len(feats)} levels but strides {self.strides} has {len(self.strides)}")
        channels = 4 * self.reg_max + self.num_classes
        for i, f in enumerate(feats):
            if f.ndim != 4 or f.shape[1] != channels:
                raise ValueError(
                    f"feats[{i}] must have shape [B, {channels}, H, W] (4·reg_max + num_classes channels), "
                    f"got {tuple(f.shape)}"
                )
            if not f.is_floating_point():
                raise ValueError(f"feats[{i}] must be floating point, got {f.dtype}")
            if f.shape[0] != feats[0].shape[0]:
                raise ValueError(f"feats[{i}] has batch size {f.shape[0]}, feats[0] has {feats[0].shape[0]}")
            for axis, name in ((2, "height"), (3, "width")):
                if f.shape[axis] * self.strides[i] != feats[0].shape[axis] * self.strides[0]:
                    raise ValueError(
                        f"feats[{i}] {name} {f.shape[axis]} × stride {self.strides[i]} does not match the image "
                        f"{name} {feats[0].shape[axis] * self.strides[0]} of feats[0]"
                    )

    def _check_targets_structure(self, targets, batch_size: int) -> None:
        if not isinstance(targets, (list, tuple)) or len(targets) != batch_size:
            n = len(targets) if isinstance(targets, (list, tuple)) else type(targets).__name__
            raise ValueError(f"targets must be a list of {batch_size} dicts (one per image), got {n}")
        for i, t in enumerate(targets):
            if not isinstance(t, Mapping) or "boxes" not in t or "labels" not in t:
                raise ValueError(f"targets[{i}] must be a dict with 'boxes' and 'labels'")
            boxes, labels = t["boxes"], t["labels"]
            if not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
                raise ValueError(
                    f"targets[{i}]['boxes'] must be a float tensor of shape (n, 4), got {_describe(boxes)}"
                )
            if not isinstance(labels, Tensor) or labels.shape != boxes.shape[:1] or labels.is_floating_point():
                raise ValueError(
                    f"targets[{i}]['labels'] must be an integer tensor of shape ({boxes.shape[0]},), "
                    f"got {_describe(labels)}"
                )

    def _check_values(self, feats, targets, gt_boxes: Tensor, gt_labels: Tensor, gt_mask: Tensor) -> None:
        """Finite head maps, finite and upright target boxes, labels in range: one host sync for all of it."""
        checks = Checks()
        for i, f in enumerate(feats):
            checks.finite(f"feats[{i}] (the head output of stride {self.strides[i]:g})", f)
        x1, y1, x2, y2 = gt_boxes.unbind(-1)
        bad_box = ~torch.isfinite(gt_boxes).all(-1) | (x2 < x1) | (y2 < y1)
        bad_label = (gt_labels < 0) | (gt_labels >= self.num_classes)
        bad = (bad_box | bad_label) & gt_mask
        checks.add(bad.any(), lambda: self._target_problem(targets, bad, bad_label, gt_labels))
        checks.run()

    def _target_problem(self, targets, bad: Tensor, bad_label: Tensor, gt_labels: Tensor) -> str:
        image, index = (int(v) for v in bad.nonzero()[0])
        if bool(bad_label[image, index]):
            label = int(gt_labels[image, index])
            return f"targets[{image}]['labels'][{index}] = {label} is outside [0, {self.num_classes})"
        box = targets[image]["boxes"][index].tolist()
        problem = "has NaN or inf" if not all(abs(v) < float("inf") for v in box) else "has x2 < x1 or y2 < y1"
        return f"targets[{image}]['boxes'][{index}] = {box} {problem}"

    @staticmethod
    def _pack_targets(targets, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        counts = [t["boxes"].shape[0] for t in targets]
        if max(counts, default=0) == 0:
            b = len(targets)
            return (
                torch.zeros(b, 0, 4, device=device),
                torch.zeros(b, 0, dtype=torch.long, device=device),
                torch.zeros(b, 0, dtype=torch.bool, device=device),
            )
        boxes = pad_sequence([t["boxes"].to(device=device, dtype=torch.float32) for t in targets], batch_first=True)
        labels = pad_sequence([t["labels"].to(device=device, dtype=torch.long) for t in targets], batch_first=True)
        mask = torch.arange(boxes.shape[1]).unsqueeze(0) < torch.tensor(counts).unsqueeze(1)
        return boxes, labels, mask.to(device, non_blocking=True)


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__
