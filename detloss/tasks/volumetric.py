"""VolumetricTask: a 3D segmenter trained on patches, validated by sliding-window inference over whole volumes.

Training is :class:`~detloss.tasks.LossTask`'s step unchanged: the model's deep-supervision outputs and the batch's
``{"labels", "spacing"}`` go to the segmentation criterion, whose composite holds one group of terms per scale
(logged as ``train/loss/scale0/dice``, …). Validation runs :func:`~detloss.segmentation.sliding_window` over each
whole volume (the model in evaluation returns the full-resolution logits only), logs the loss terms of the full
resolution (``val/loss/scale0/...``) and the metrics of :class:`~detloss.tasks.volume_metrics.VolumeMetrics`.

Predictions: the argmax of the logits for exclusive labels; with ``regions``, ``sigmoid(logit) > 0.5`` per channel
(the logit ``> 0``), regions overlapping. Logged, where ``<name>`` is a foreground label's class name, or a region's
name with every character other than a letter, digit, ``_`` or ``-`` replaced by ``_``:

* ``val/dice/<name>``, ``val/hd95/<name>``, ``val/nsd/<name>``: per case, then the mean over the validation cases
  whose target holds the label or region (MONAI's ``DiceMetric(ignore_empty=True)``); not logged where no case does;
* ``val/dice``, ``val/hd95``, ``val/nsd``: the means of those over the labels or regions (``val/dice`` is the
  optimised metric);
* ``val/fp_cases/<name>``: the number of cases predicted to hold the label or region whose target does not;
* ``val/lesion_dice/<name>``, ``val/lesion_hd95/<name>`` (with regions, or ``lesion_wise=True``): the BraTS 2023
  lesion-wise scores (:mod:`~detloss.tasks.lesion_metrics`), each the mean over all cases.

The 2D task logs ``val/dice`` and ``val/dice/<class>`` with the same definition, an image being a case.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.utils import draw_segmentation_masks, make_grid

from ..composite import Criterion
from ..data.regions import region_names
from ..segmentation import resize_logits, sliding_window
from .base import LossTask
from .segmentation import palette
from .volume_metrics import MEANS, VolumeMetrics, label_masks

__all__ = ["VolumetricTask", "preview_slices"]

PREVIEW_SIDE = 128  # each slice of a preview is drawn at this size (nearest), so volumes of any size line up


def preview_slices(target: Tensor, pred: Tensor, count: int = 3) -> list[int]:
    """``count`` axial slices (first axis) spread through the target's foreground (or the prediction's, or the
    middle of the volume); ``target`` and ``pred`` are label maps or foreground masks ``(D, H, W)``."""
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
        regions: ``{name: label values}`` when the model has one sigmoid output per region (the data's regions, in
            the order of the model's channels; targets are then region masks ``(B, R, D, H, W)``, with the
            criterion's ``ignore_index`` in every channel of an ignored voxel); ``None``: exclusive labels.
        lesion_wise: log the lesion-wise Dice and HD95 per label or region; ``None``: with regions only.
        lesion_dilation, lesion_min_volume: the lesion-wise matching's dilation (voxels) and the volume (mm³) up to
            which a ground-truth lesion is left out: 3 and 50 are BraTS 2023's glioma values.

    Previews: for a few validation volumes, three axial slices through the lesion; rows image (first channel),
    target and prediction, one colour per label or region (the palette of the 2D task; regions overlap).
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
        regions: Mapping[str, Sequence[int]] | None = None,
        lesion_wise: bool | None = None,
        lesion_dilation: int = 3,
        lesion_min_volume: float = 50.0,
    ):
        super().__init__(model, criterion, optimizer, scheduler, class_names, num_previews, nan_guard, channels_last)
        self.num_classes = criterion.num_classes
        self.roi_size = tuple(int(s) for s in roi_size)
        self.sw_overlap, self.sw_batch_size = float(sw_overlap), int(sw_batch_size)
        self.tta = bool(tta)
        self.ignore_index = getattr(criterion, "ignore_index", None)
        if regions is not None:
            if not isinstance(regions, Mapping) or len(regions) != self.num_classes:
                raise ValueError(
                    f"regions must map each of the model's {self.num_classes} output channels to its region's label "
                    f"values, got {regions!r}"
                )
            self.regions = {str(k): [int(v) for v in values] for k, values in regions.items()}
            self.metric_names = region_names(list(self.regions))
        else:
            self.regions, self.metric_names = None, self.class_names[1:]
        self.lesion_wise = regions is not None if lesion_wise is None else bool(lesion_wise)
        self.metrics = VolumeMetrics(
            len(self.metric_names),
            nsd_tolerance,
            hd_percentile,
            lesion_wise=self.lesion_wise,
            lesion_dilation=lesion_dilation,
            lesion_min_volume=lesion_min_volume,
        )

    def apply_memory_format(self, memory_format: torch.memory_format) -> None:
        fmt = torch.channels_last_3d if memory_format == torch.channels_last else memory_format
        self.model.to(memory_format=fmt)

    def infer(self, images: Tensor) -> Tensor:
        """Logits of whole volumes ``(B, C_in, D, H, W)`` by Gaussian-weighted sliding windows (mirrored with
        ``tta``)."""
        return sliding_window(self.model, images, self.roi_size, self.sw_overlap, self.sw_batch_size, tta=self.tta)

    def forward(self, images: Tensor) -> Tensor:
        """Label maps ``(B, D, H, W)``, or with regions the region masks ``(B, R, D, H, W)`` (bool)."""
        logits = self.infer(images)
        return logits > 0 if self.regions is not None else logits.argmax(1)

    def masks(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Foreground masks ``(B, K, *spatial)`` (bool) of the prediction and of the target ``labels``: one per
        foreground label (the argmax for the prediction) or, with regions, one per region (the prediction's
        ``logit > 0``, i.e. ``sigmoid > 0.5``; the target's 1). Voxels the target marks ``ignore_index`` are in
        none of either."""
        if self.regions is None:
            pred, target = label_masks(logits.argmax(1), self.num_classes), label_masks(labels, self.num_classes)
            ignored = None if self.ignore_index is None else (labels == self.ignore_index).unsqueeze(1)
        else:
            if labels.shape != logits.shape:
                raise ValueError(
                    f"with regions the targets must be region masks {tuple(logits.shape)} (one channel per region), "
                    f"got {tuple(labels.shape)}"
                )
            pred, target = logits > 0, labels == 1
            ignored = None if self.ignore_index is None else labels == self.ignore_index
        if ignored is not None:
            pred, target = pred & ~ignored, target & ~ignored
        return pred, target

    def validation_step(self, batch, batch_idx):
        images, targets = batch
        labels = targets["labels"]
        spatial = labels.shape[2:] if self.regions is not None else labels.shape[1:]
        logits = resize_logits(self.infer(images), spatial)  # back to the case's own grid
        self.log_loss("val", self.criterion(logits, targets), len(images))
        pred, target = self.masks(logits, labels)
        self.metrics.update(pred, target, targets["spacing"])
        if len(self._preview) < self.num_previews:
            kept = []
            for b in range(len(images)):
                z = preview_slices(target[b].any(0), pred[b].any(0))
                kept.append((images[b, 0, z], target[b][:, z].cpu(), pred[b][:, z].cpu()))
            self.keep_preview(batch_idx, *zip(*kept))

    def on_validation_epoch_end(self):
        values = {k: v.view(-1) for k, v in self.metrics.compute().items()}  # torchmetrics squeezes one value
        self.metrics.reset()
        names = self.metric_names
        for metric in MEANS:
            per_name = values[metric]
            self.log(f"val/{metric}", per_name.nanmean(), prog_bar=metric == "dice")
            for name, value in zip(names, per_name):
                if not torch.isnan(value):  # no case holds it: no value
                    self.log(f"val/{metric}/{name}", value)
        for name, value in zip(names, values["fp_cases"]):
            self.log(f"val/fp_cases/{name}", value)
        if self.lesion_wise:
            for metric in ("lesion_dice", "lesion_hd95"):
                for name, value in zip(names, values[metric]):
                    self.log(f"val/{metric}/{name}", value)
        self.save_previews(self._draw)

    def _draw(self, image: Tensor, target: Tensor, pred: Tensor) -> Tensor:
        """A montage ``(3, H, W)`` uint8: rows image, target, prediction of the kept slices (``image (S, H, W)``;
        ``target`` and ``pred`` foreground masks ``(K, S, H, W)``)."""
        side = (PREVIEW_SIDE, PREVIEW_SIDE)
        image = F.interpolate(image[None].float(), size=side, mode="bilinear", align_corners=False)[0]
        low, high = image.amin(), image.amax()
        grey = ((image - low) / (high - low).clamp(min=1e-6) * 255).round().to(torch.uint8).cpu()
        masks = [F.interpolate(m.float(), size=side, mode="nearest").bool().cpu() for m in (target, pred)]
        colours = palette(len(target))
        tiles = [g.expand(3, -1, -1) for g in grey]
        for mask in masks:  # (K, S, H, W)
            for g, m in zip(grey, mask.unbind(1)):
                tiles.append(draw_segmentation_masks(g.expand(3, -1, -1), m, 0.5, colours))
        return make_grid(tiles, nrow=len(grey), padding=2, pad_value=255)
