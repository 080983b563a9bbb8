"""Per-case segmentation metrics, per class or region: Dice, HD95, NSD, false-positive cases and the lesion-wise
scores, computed by MONAI's functions (and :mod:`~detloss.tasks.lesion_metrics`) and gathered across ranks as a
torchmetrics state.

A case is one validation volume (3D) or image (2D). Its foreground is given as one binary mask per channel
(``(B, K, *spatial)``): for exclusive labels, channel ``k`` is label ``k + 1`` (:func:`label_masks`, voxels of
``ignore_index`` background in prediction and target); for regions, channel ``k`` is region ``k``. For each case
and channel, with ``P`` the predicted and ``T`` the target mask:

* ``dice``: ``2|P ∩ T| / (|P| + |T|)`` (MONAI ``compute_dice``);
* ``hd95``: the 95th percentile of the symmetric surface distances, in mm with the case's spacing (MONAI
  ``compute_hausdorff_distance(percentile=95)``); a channel missed entirely (``T`` not empty, ``P`` empty) scores
  the diagonal of the volume in mm, the largest distance it holds (MONAI gives inf or NaN there, which no mean
  survives);
* ``nsd``: the share of both surfaces within ``tolerance`` mm of the other (Nikolov et al., 2021; MONAI
  ``compute_surface_dice``), one tolerance for every channel or one per channel;
* ``fp``: whether ``P`` is not empty where ``T`` is;
* ``lesion_dice``, ``lesion_hd95`` (``lesion_wise=True``): the BraTS 2023 lesion-wise scores
  (:func:`~detloss.tasks.lesion_metrics.lesion_wise`).

Aggregation over the cases (:meth:`VolumeMetrics.compute`): ``dice``, ``hd95`` and ``nsd`` of a channel are their
means over the cases whose target holds the channel (``T`` not empty), as MONAI's ``DiceMetric(ignore_empty=True)``
does, NaN if none does; a prediction in a case without the channel is counted in ``fp_cases`` (the number of such
cases) and scored by the lesion-wise metrics, not in these means. ``lesion_dice`` and ``lesion_hd95`` are means over
all cases (a case with nothing to find and nothing found scores 1 and 0, as the challenge scores it).

Under DDP each rank keeps its cases' rows and torchmetrics concatenates them across ranks when computing (a rank
without cases adds none): the values are means over the cases, not means of the ranks' means, and equal one
process's over the whole validation set.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
from torch import Tensor
from torchmetrics import Metric

from .lesion_metrics import lesion_wise

__all__ = ["VolumeMetrics", "label_masks", "MEANS"]

#: the statistics averaged over the cases whose target holds the channel (logged with a mean over the channels)
MEANS = ("dice", "hd95", "nsd")


def label_masks(labels: Tensor, num_classes: int, ignore_index: int | None = None) -> Tensor:
    """Foreground masks ``(B, C − 1, *spatial)`` (bool) of label maps ``(B, *spatial)``: channel ``k`` is label
    ``k + 1``; ``ignore_index`` voxels are in none."""
    if ignore_index is not None:
        labels = labels.masked_fill(labels == ignore_index, 0)
    classes = torch.arange(1, num_classes, device=labels.device).view(1, -1, *([1] * (labels.ndim - 1)))
    return labels.unsqueeze(1) == classes


class VolumeMetrics(Metric):
    """Per-case metrics of ``channels`` foreground masks (see the module docstring).

    Args:
        channels: foreground channels ``K`` (classes without the background, or regions).
        tolerance: the NSD tolerance in mm, one value or one per channel.
        percentile: of the Hausdorff distances (95).
        surface: compute ``hd95`` and ``nsd`` (the 2D task leaves them out).
        lesion_wise: compute the BraTS lesion-wise scores.
        lesion_dilation, lesion_min_volume: the lesion-wise matching's dilation and smallest lesion volume (mm³).

    ``update(pred (B, K, *spatial), target (B, K, *spatial), spacing (B, dims) or None)`` with binary masks
    (``None``: 1 mm); ``compute()`` returns ``{"dice": (K,), "hd95", "nsd", "fp_cases", "lesion_dice",
    "lesion_hd95"}`` (those computed; torchmetrics returns a single channel's values as scalars).
    """

    full_state_update = False

    def __init__(
        self,
        channels: int,
        tolerance: float | Sequence[float] = 2.0,
        percentile: float = 95.0,
        surface: bool = True,
        lesion_wise: bool = False,
        lesion_dilation: int = 3,
        lesion_min_volume: float = 50.0,
    ) -> None:
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive integer (the foreground classes or regions), got {channels}")
        self.channels, self.percentile = channels, float(percentile)
        self.surface, self.lesion_wise = bool(surface), bool(lesion_wise)
        self.lesion_dilation, self.lesion_min_volume = int(lesion_dilation), float(lesion_min_volume)
        tolerance = [float(tolerance)] * channels if isinstance(tolerance, (int, float)) else list(tolerance)
        if len(tolerance) != channels or not all(math.isfinite(t) and t >= 0 for t in tolerance):
            raise ValueError(
                f"nsd_tolerance must be one number >= 0 (mm) or one per foreground class or region ({channels}), got "
                f"{tolerance}"
            )
        self.tolerance = [float(t) for t in tolerance]
        self.stats = ("dice", *(("hd95", "nsd") if surface else ()), "fp")
        self.stats += ("lesion_dice", "lesion_hd95") if lesion_wise else ()
        self.add_state("values", default=[], dist_reduce_fx="cat")  # flat rows of (statistic, channel) per case

    def update(self, pred: Tensor, target: Tensor, spacing: Tensor | None = None) -> None:
        if pred.shape != target.shape or pred.ndim < 3 or pred.shape[1] != self.channels:
            raise ValueError(
                f"pred and target must be masks of the same shape (B, {self.channels}, *spatial), got "
                f"{tuple(pred.shape)} and {tuple(target.shape)}"
            )
        p, t = pred.bool(), target.bool()
        dims = p.ndim - 2
        if spacing is None:
            spacings = [[1.0] * dims for _ in range(len(p))]
        else:
            spacings = [[float(v) for v in row] for row in spacing.detach().cpu()]
        present_p, present_t = p.flatten(2).any(2), t.flatten(2).any(2)  # (B, K)
        pf, tf = p.float(), t.float()
        rows = {}
        with warnings.catch_warnings():  # MONAI warns of every empty mask; they are handled below
            warnings.simplefilter("ignore")
            rows["dice"] = compute_dice(pf, tf, include_background=True, ignore_empty=True).float()
            if self.surface:
                hd = compute_hausdorff_distance(
                    pf, tf, include_background=True, percentile=self.percentile, spacing=spacings
                ).to(rows["dice"])
                nsd = compute_surface_dice(pf, tf, self.tolerance, include_background=True, spacing=spacings)
                extent = torch.tensor([[n * s for n, s in zip(p.shape[2:], row)] for row in spacings])
                diagonal = extent.square().sum(1, keepdim=True).sqrt().to(hd).expand_as(hd)
                rows["hd95"] = torch.where(present_t & ~present_p, diagonal, hd)
                rows["nsd"] = nsd.to(rows["dice"])
        empty = ~present_t
        for name in MEANS:
            if name in rows:
                rows[name] = rows[name].masked_fill(empty, math.nan)  # left out of the channel's mean
        rows["fp"] = (present_p & empty).float()
        if self.lesion_wise:
            scores = [
                [
                    lesion_wise(p[b, k], t[b, k], spacings[b], self.lesion_dilation, self.lesion_min_volume)
                    for k in range(self.channels)
                ]
                for b in range(len(p))
            ]
            lesion = torch.tensor(scores, dtype=torch.float32, device=p.device)  # (B, K, 2)
            rows["lesion_dice"], rows["lesion_hd95"] = lesion[..., 0], lesion[..., 1]
        stacked = torch.stack([rows[name].to(p.device, torch.float32) for name in self.stats], 1)  # (B, S, K)
        self.values.append(stacked.flatten())

    def compute(self) -> dict[str, Tensor]:
        values = self.values if isinstance(self.values, Tensor) else torch.cat(self.values) if self.values else None
        if values is None or values.numel() == 0:
            out = {name: torch.full((self.channels,), math.nan) for name in self.stats if name != "fp"}
            return {**out, "fp_cases": torch.zeros(self.channels)}
        rows = values.view(-1, len(self.stats), self.channels)
        out = {}
        for i, name in enumerate(self.stats):
            column = rows[:, i]
            if name == "fp":
                out["fp_cases"] = column.sum(0)
            elif name in MEANS:
                out[name] = column.nanmean(0)
            else:
                out[name] = column.mean(0)
        return out
