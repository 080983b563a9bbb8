"""SegmentationTask: a 2D segmenter trained on a segmentation criterion; Dice per image (MONAI) and pooled
(torchmetrics), per class or, with regions, per region."""

from __future__ import annotations

import colorsys
from collections.abc import Callable, Mapping, Sequence

import torch
from monai.metrics import compute_generalized_dice
from torch import nn
from torchmetrics.aggregation import MeanMetric
from torchmetrics.segmentation import DiceScore
from torchvision.utils import draw_segmentation_masks, make_grid

from ..composite import Criterion
from ..data.regions import region_names
from .base import LossTask, rgb_uint8
from .volume_metrics import VolumeMetrics, label_masks

__all__ = ["SegmentationTask", "palette"]


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` RGB colours of evenly spaced hues (full saturation and value), starting at red: the same for the same
    ``n``, and distinct for any ``n`` up to 1,530 (the 8-bit colours of full saturation and value)."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    return [tuple(round(255 * c) for c in colorsys.hsv_to_rgb(i / n, 1.0, 1.0)) for i in range(n)]


class SegmentationTask(LossTask):
    """Train a segmenter; validate Dice on the argmax of its logits, or with regions on each sigmoid channel.

    Args:
        model: ``forward(images) -> logits (B, C, H, W)``.
        criterion: e.g. :class:`~detloss.segmentation.SegmentationCriterion`.
        optimizer, scheduler, num_previews, nan_guard, channels_last: see :class:`~detloss.tasks.base.LossTask`.
        num_classes: classes, background (0) included.
        class_names: names of the classes (for ``val/dice/<class>``).
        regions: ``{name: label values}`` when the model has one sigmoid output per region (the data's regions,
            :mod:`detloss.data.regions`); the targets are then region masks ``(B, R, H, W)``.

    The criterion's ``ignore_index`` pixels are excluded from the metrics: they are set to background in both
    prediction and target, so they count in no foreground class or region.

    Logged, for the argmax prediction ``P`` and the target ``T`` of each foreground class (ignored pixels set to
    background in both), or with regions for ``P = sigmoid(logit) > 0.5`` and the region mask ``T`` of each region
    (``<class>`` is then the region's name, made safe as :func:`~detloss.data.regions.region_names` makes it):

    * ``val/dice/<class>``: the per-image Dice ``2|P ∩ T| / (|P| + |T|)`` averaged over the validation images whose
      target holds the class (MONAI's ``DiceMetric(ignore_empty=True)``), not logged where none does; ``val/dice``:
      the mean of those over the classes (the optimised metric). The 3D task's ``val/dice`` is the same statistic,
      a volume being the case (:mod:`~detloss.tasks.volumetric`);
    * ``val/fp_cases/<class>``: the number of images predicted to hold the class whose target does not;
    * ``val/dice_pooled/<class>``: the Dice of all validation pixels pooled (torchmetrics' ``DiceScore`` with
      ``aggregation_level="global"``), not logged where the class is absent from targets and predictions of the
      whole set; ``val/dice_pooled``: their mean over the classes;
    * ``val/generalized_dice``: the generalized Dice of each image over its foreground classes or regions ``k``,
      ``2 Σ_k w_k |P_k ∩ T_k| / Σ_k w_k (|P_k| + |T_k|)`` with ``w_k = 1 / |T_k|²`` (Sudre et al., DLMIA 2017) and,
      for a class absent from the image's target, the largest weight of the image's other classes (1 if it has
      none): MONAI's ``compute_generalized_dice``; averaged over the images with foreground in the target or the
      prediction. Each image is scored alone, so the value does not depend on how the images are batched
      (torchmetrics' ``GeneralizedDiceScore`` takes an absent class's weight from the other images of the batch).

    Under DDP the per-image values are gathered (not the ranks' means averaged) and the pooled counts summed, so
    every value equals one process's.
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
        regions: Mapping[str, Sequence[int]] | None = None,
    ):
        super().__init__(model, criterion, optimizer, scheduler, class_names, num_previews, nan_guard, channels_last)
        num_classes = self.num_classes = criterion.num_classes
        self.ignore_index = getattr(criterion, "ignore_index", None)
        if regions is not None:
            if not isinstance(regions, Mapping) or len(regions) != num_classes:
                raise ValueError(
                    f"regions must map each of the model's {num_classes} output channels to its region's label "
                    f"values, got {regions!r}"
                )
            self.regions = {str(k): [int(v) for v in values] for k, values in regions.items()}
            self.metric_names = region_names(list(self.regions))
            kw = dict(num_classes=num_classes, include_background=True, input_format="one-hot")
        else:
            self.regions, self.metric_names = None, self.class_names[1:]
            kw = dict(num_classes=num_classes, include_background=False, input_format="index")
        self.per_image = VolumeMetrics(len(self.metric_names), surface=False)
        self.dice = DiceScore(average="none", aggregation_level="global", **kw)
        self.generalized_dice = MeanMetric()

    def forward(self, images):
        """Label maps ``(B, H, W)``, or with regions the region masks ``(B, R, H, W)`` (bool)."""
        logits = self.model(images)
        return logits > 0 if self.regions is not None else logits.argmax(1)

    def validation_step(self, batch, batch_idx):
        images, masks = batch
        logits = self.model(images)
        self.log_loss("val", self.criterion(logits, masks), len(images))
        if self.regions is not None:
            if masks.shape != logits.shape:
                raise ValueError(
                    f"with regions the targets must be region masks {tuple(logits.shape)} (one channel per region), "
                    f"got {tuple(masks.shape)}"
                )
            pred, target = (logits > 0).long(), masks
        else:
            pred, target = logits.argmax(1), masks
        if self.ignore_index is not None:
            ignored = masks == self.ignore_index
            pred, target = pred.masked_fill(ignored, 0), masks.masked_fill(ignored, 0)
        self.dice.update(pred, target)
        if self.regions is not None:
            pred_masks, target_masks = pred.bool(), target.bool()
        else:
            pred_masks, target_masks = label_masks(pred, self.num_classes), label_masks(target, self.num_classes)
        self.per_image.update(pred_masks, target_masks)
        # the generalized Dice averages over the images that have something to score
        scored = pred_masks.flatten(1).any(1) | target_masks.flatten(1).any(1)
        p, t = pred_masks[scored].float(), target_masks[scored].float()
        self.generalized_dice.update(compute_generalized_dice(p, t, sum_over_classes=True).view(-1))
        self.keep_preview(batch_idx, images, pred, target)

    def on_validation_epoch_end(self):
        names = self.metric_names
        values = {k: v.view(-1) for k, v in self.per_image.compute().items()}  # torchmetrics squeezes one value
        self.per_image.reset()
        self.log("val/dice", values["dice"].nanmean(), prog_bar=True)
        for name, value, fp in zip(names, values["dice"], values["fp_cases"]):
            if not torch.isnan(value):  # no image holds the class: no value
                self.log(f"val/dice/{name}", value)
            self.log(f"val/fp_cases/{name}", fp)
        pooled = self.dice.compute().view(-1)
        self.dice.reset()
        # a class absent from targets and predictions of the whole set has no pooled Dice (0/0): left out
        present = ~torch.isnan(pooled)
        if present.any():
            self.log("val/dice_pooled", pooled[present].mean())
        for name, value, ok in zip(names, pooled, present.tolist()):
            if ok:
                self.log(f"val/dice_pooled/{name}", value)
        generalized = self.generalized_dice.compute()  # every rank computes: the value is reduced over them
        self.generalized_dice.reset()
        if not torch.isnan(generalized):  # NaN: no image with foreground in its target or prediction, no value
            self.log("val/generalized_dice", generalized)
        self.save_previews(self._draw)

    def _draw(self, image, pred, target):
        image = rgb_uint8(image)
        colours = palette(len(self.metric_names))  # one per foreground class or region
        if self.regions is not None:
            true, guess = target.cpu().bool(), pred.cpu().bool()
        else:
            classes = torch.arange(1, self.num_classes)[:, None, None]
            true, guess = target.cpu()[None] == classes, pred.cpu()[None] == classes
        true = draw_segmentation_masks(image, true, alpha=0.5, colors=colours)
        guess = draw_segmentation_masks(image, guess, alpha=0.5, colors=colours)
        return make_grid([true, guess], nrow=1, padding=2, pad_value=255)
