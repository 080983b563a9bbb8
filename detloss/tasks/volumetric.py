"""VolumetricTask: a 3D segmenter trained on patches, validated by sliding-window inference over whole volumes.

Training is :class:`~detloss.tasks.LossTask`'s step unchanged: the model's deep-supervision outputs and the batch's
``{"labels", "spacing"}`` go to the segmentation criterion, whose composite holds one group of terms per scale
(logged as ``train/loss/scale0/dice``, …). Validation runs :func:`~detloss.segmentation.sliding_window` over each
whole volume (the model in evaluation returns the full-resolution logits only), logs the loss terms of the full
resolution (``val/loss/scale0/...``) and the metrics of :class:`~detloss.tasks.volume_metrics.VolumeMetrics`:
``val/dice`` (the mean over the foreground labels: the optimised metric), ``val/dice/<label>``, ``val/hd95`` and
``val/nsd`` (and per label).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.utils import draw_segmentation_masks, make_grid

from ..composite import Criterion
from ..segmentation import resize_logits, sliding_window
from .base import LossTask
from .segmentation import palette
from .volume_metrics import METRICS, VolumeMetrics

__all__ = ["VolumetricTask", "preview_slices"]

PREVIEW_SIDE = 128  # each slice of a preview is drawn at this size (nearest), so volumes of any size line up


def preview_slices(target: Tensor, pred: Tensor, count: int = 3) -> list[int]:
    """``count`` axial slices (first axis) spread through the target's foreground (or the prediction's, or the
    middle of the volume)."""
    for mask in (target > 0, pred > 0):
        depth = mask.flatten(1).any(1).nonzero().flatten()
        if len(depth):
            low, high = int(depth[0]), int(depth[-1])
            return [round(low + (high - low) * (k + 1) / (count + 1)) for k in range(count)]
    return [target.shape[0] // 2] * count


class VolumetricTask(LossTask):
    """Train a 3D segmenter on patches; validate by sliding windows over whole volumes.

    Args:
        model: in training ``forward(patches) -> logits`` or a list of them (deep supervision); in evaluation the
            full-resolution logits ``(B, C, D, H, W)``.
        criterion: e.g. :class:`~detloss.segmentation.SegmentationCriterion` with ``deep_supervision``.
        optimizer, scheduler, class_names, num_previews, nan_guard, channels_last: see :class:`LossTask`
            (``channels_last`` means NDHWC for 3D convolutions).
        roi_size: the sliding window (the training patch size).
        sw_overlap: the fraction of a window its neighbours overlap (0.5: nnU-Net's step of half a window).
        sw_batch_size: windows per forward pass.
        nsd_tolerance: the normalised surface Dice's tolerance in mm, one value or one per foreground label.
        hd_percentile: the percentile of the Hausdorff distance (95).
        tta: mirroring test-time augmentation in :meth:`infer` (validation and prediction): each window's logits
            averaged over its flips along every axis, as nnU-Net predicts
            (:func:`~detloss.segmentation.inference.mirror_average`); off by default (8 forward passes a window).

    Previews: for a few validation volumes, three axial slices through the lesion; rows image (first channel),
    target and prediction, one colour per label (the palette of the 2D task).
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: Criterion,
        optimizer: Callable,
        scheduler: Callable | None = None,
        class_names: Sequence[str] | None = None,
        num_previews: int = 4,
        nan_guard: str = "stop",
        channels_last: bool = False,
        roi_size: Sequence[int] = (32, 64, 64),
        sw_overlap: float = 0.5,
        sw_batch_size: int = 2,
        nsd_tolerance: float | Sequence[float] = 2.0,
        hd_percentile: float = 95.0,
        tta: bool = False,
    ):
        super().__init__(model, criterion, optimizer, scheduler, class_names, num_previews, nan_guard, channels_last)
        self.num_classes = criterion.num_classes
        self.roi_size = tuple(int(s) for s in roi_size)
        self.sw_overlap, self.sw_batch_size = float(sw_overlap), int(sw_batch_size)
        self.tta = bool(tta)
        ignore = getattr(criterion, "ignore_index", None)
        self.metrics = VolumeMetrics(self.num_classes, nsd_tolerance, hd_percentile, ignore)

    def apply_memory_format(self, memory_format: torch.memory_format) -> None:
        fmt = torch.channels_last_3d if memory_format == torch.channels_last else memory_format
        self.model.to(memory_format=fmt)

    def infer(self, images: Tensor) -> Tensor:
        """Logits of whole volumes ``(B, C_in, D, H, W)`` by Gaussian-weighted sliding windows (mirrored with
        ``tta``)."""
        return sliding_window(self.model, images, self.roi_size, self.sw_overlap, self.sw_batch_size, tta=self.tta)

    def forward(self, images: Tensor) -> Tensor:
        return self.infer(images).argmax(1)

    def validation_step(self, batch, batch_idx):
        images, targets = batch
        logits = resize_logits(self.infer(images), targets["labels"].shape[1:])  # back to the case's own grid
        self.log_loss("val", self.criterion(logits, targets), len(images))
        pred, labels = logits.argmax(1), targets["labels"]
        self.metrics.update(pred, labels, targets["spacing"])
        if len(self._preview) < self.num_previews:
            kept = []
            for b in range(len(images)):
                z = preview_slices(labels[b], pred[b])
                kept.append((images[b, 0, z], labels[b, z], pred[b, z]))
            self.keep_preview(batch_idx, *zip(*kept))

    def on_validation_epoch_end(self):
        values = self.metrics.compute()
        self.metrics.reset()
        names = self.class_names[1:]
        for metric in METRICS:
            per_label = values[metric]
            self.log(f"val/{metric}", per_label.nanmean(), prog_bar=metric == "dice")
            for name, value in zip(names, per_label):
                self.log(f"val/{metric}/{name}", value)
        self.save_previews(self._draw)

    def _draw(self, image: Tensor, target: Tensor, pred: Tensor) -> Tensor:
        """A montage ``(3, H, W)`` uint8: rows image, target, prediction of the kept slices."""
        side = (PREVIEW_SIDE, PREVIEW_SIDE)
        image = F.interpolate(image[None].float(), size=side, mode="bilinear", align_corners=False)[0]
        low, high = image.amin(), image.amax()
        grey = ((image - low) / (high - low).clamp(min=1e-6) * 255).round().to(torch.uint8).cpu()
        masks = [F.interpolate(m[None].float(), size=side, mode="nearest")[0].long().cpu() for m in (target, pred)]
        classes = torch.arange(1, self.num_classes)
        colours = palette(self.num_classes - 1)
        tiles = [g.expand(3, -1, -1) for g in grey]
        for mask in masks:
            for g, m in zip(grey, mask):
                tiles.append(
                    draw_segmentation_masks(g.expand(3, -1, -1), m[None] == classes[:, None, None], 0.5, colours)
                )
        return make_grid(tiles, nrow=len(grey), padding=2, pad_value=255)
