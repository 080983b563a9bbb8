"""Per-case volume metrics: Dice, the 95th-percentile Hausdorff distance and the normalised surface Dice, per
foreground label, computed by MONAI's functions and gathered across ranks as a torchmetrics state.

For each validation case and foreground label (voxels of ``ignore_index`` count as background in both prediction and
target, as in the 2D task):

* ``dice``: ``2|P ∩ T| / (|P| + |T|)`` (MONAI ``compute_dice``);
* ``hd95``: the 95th percentile of the symmetric surface distances, in mm with the case's spacing (MONAI
  ``compute_hausdorff_distance(percentile=95)``);
* ``nsd``: the share of both surfaces within ``tolerance`` mm of the other (Nikolov et al., 2021; MONAI
  ``compute_surface_dice``); the tolerance is one value for every label or one per foreground label.

A label absent from **both** prediction and target of a case is left out of that label's mean for all three metrics
(NaN, then ``nanmean`` over the cases): nnU-Net's convention for Dice. MONAI's ``DiceMetric`` would score it 1 with
``ignore_empty=False``, and with ``ignore_empty=True`` leave out every case whose target is empty, false positives
included; here a label predicted where the target has none scores Dice 0 and NSD 0, and hd95 the diagonal of the
volume in mm (the largest distance it holds; MONAI 1.6 gives NaN or inf, which no mean survives); a label missed
entirely scores the same. The reported value of a label is its mean over the cases that score it, and ``dice``,
``hd95``, ``nsd`` are the means over the labels that have one (NaN if none has).

Under DDP each rank keeps its cases' rows and torchmetrics concatenates them across ranks when computing (a rank
without cases adds none), so the values equal one process's over the whole validation set.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
from torch import Tensor
from torchmetrics import Metric

__all__ = ["VolumeMetrics", "METRICS"]

METRICS = ("dice", "hd95", "nsd")


class VolumeMetrics(Metric):
    """Dice, hd95 and NSD per case and foreground label (see the module docstring).

    Args:
        num_classes: classes, background (0) included.
        tolerance: the NSD tolerance in mm, one value or one per foreground label.
        percentile: of the Hausdorff distance (95).
        ignore_index: label counted as background in both prediction and target.

    ``update(pred (B, *spatial), target (B, *spatial), spacing (B, dims))``; ``compute()`` returns
    ``{"dice": (C − 1,), "hd95": ..., "nsd": ...}``, each label's mean over the cases that score it.
    """

    full_state_update = False

    def __init__(
        self,
        num_classes: int,
        tolerance: float | Sequence[float] = 2.0,
        percentile: float = 95.0,
        ignore_index: int | None = 255,
    ) -> None:
        super().__init__()
        self.num_classes, self.percentile, self.ignore_index = int(num_classes), float(percentile), ignore_index
        foreground = self.num_classes - 1
        tolerance = [float(tolerance)] * foreground if isinstance(tolerance, (int, float)) else list(tolerance)
        if len(tolerance) != foreground or not all(math.isfinite(t) and t >= 0 for t in tolerance):
            raise ValueError(
                f"nsd_tolerance must be one number >= 0 (mm) or one per foreground label ({foreground}), got "
                f"{tolerance}"
            )
        self.tolerance = [float(t) for t in tolerance]
        self.add_state("values", default=[], dist_reduce_fx="cat")  # flat rows of (metric, label) per case

    def update(self, pred: Tensor, target: Tensor, spacing: Tensor) -> None:
        if self.ignore_index is not None:
            ignored = target == self.ignore_index
            pred, target = pred.masked_fill(ignored, 0), target.masked_fill(ignored, 0)
        classes = torch.arange(1, self.num_classes, device=pred.device).view(1, -1, *([1] * (pred.ndim - 1)))
        p = (pred.unsqueeze(1) == classes).float()  # foreground one-hot (B, C - 1, *spatial)
        t = (target.unsqueeze(1) == classes).float()
        # MONAI wants a background channel to leave out; a zero channel serves (it is dropped before any use)
        zeros = torch.zeros_like(p[:, :1])
        p, t = torch.cat([zeros, p], 1), torch.cat([zeros, t], 1)
        spacings = [[float(v) for v in row] for row in spacing.detach().cpu()]
        with warnings.catch_warnings():  # MONAI warns of every empty mask; they are handled below
            warnings.simplefilter("ignore")
            dice = compute_dice(p, t, include_background=False, ignore_empty=False)
            hd = compute_hausdorff_distance(
                p, t, include_background=False, percentile=self.percentile, spacing=spacings
            ).to(dice)
            nsd = compute_surface_dice(p, t, self.tolerance, include_background=False, spacing=spacings).to(dice)
        present_p, present_t = p[:, 1:].flatten(2).any(2), t[:, 1:].flatten(2).any(2)
        absent, one_sided = ~(present_p | present_t), present_p ^ present_t
        extent = torch.tensor([[n * s for n, s in zip(pred.shape[1:], row)] for row in spacings], device=dice.device)
        diagonal = extent.square().sum(1, keepdim=True).sqrt().expand_as(hd)
        hd = torch.where(one_sided | torch.isinf(hd), diagonal, hd)  # MONAI: inf or NaN there
        rows = torch.stack([dice, hd, nsd], 1).masked_fill(absent[:, None], math.nan)  # (B, 3, C - 1)
        self.values.append(rows.flatten().float())

    def compute(self) -> dict[str, Tensor]:
        values = self.values if isinstance(self.values, Tensor) else torch.cat(self.values) if self.values else None
        foreground = self.num_classes - 1
        if values is None or values.numel() == 0:
            nan = torch.full((foreground,), math.nan)
            return {name: nan.clone() for name in METRICS}
        rows = values.view(-1, len(METRICS), foreground)
        return {name: rows[:, i].nanmean(0) for i, name in enumerate(METRICS)}
