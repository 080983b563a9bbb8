"""Sliding-window inference over whole volumes, through MONAI's ``sliding_window_inference`` (the medical
ecosystem's implementation; nnU-Net's predictor does the same).

Windows of the training patch size overlap by ``overlap`` (a fraction of the window along each axis); each window's
logits are weighted by a Gaussian centred on the window (``sigma_scale = 0.125`` of its size, MONAI's default and
nnU-Net's 1/8) and the weighted sum is divided by the summed weights, so that the windows' borders, where a network
sees the least context, count the least. A volume smaller than the window along an axis is padded (zeros, the mean of
a z-scored channel) and cropped back. The model must return one tensor of logits in evaluation (:class:`UNet3D` does:
its deep supervision outputs exist only in training).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from torch import Tensor

from ..losses import check_number

__all__ = ["sliding_window", "resize_logits"]


@torch.no_grad()
def sliding_window(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    roi_size: Sequence[int],
    overlap: float = 0.5,
    batch_size: int = 2,
    mode: str = "gaussian",
) -> Tensor:
    """Logits ``(B, C, D, H, W)`` of ``images (B, C_in, D, H, W)`` from windows of ``roi_size``.

    Args:
        model: called on ``(batch_size, C_in, *roi_size)`` windows, returns their logits.
        roi_size: the window (the training patch).
        overlap: the fraction of a window its neighbours overlap, in [0, 1).
        batch_size: windows per forward pass.
        mode: ``"gaussian"`` (the default) or ``"constant"`` weighting of each window's logits.
    """
    check_number("overlap", overlap, ge=0, lt=1)
    check_number("sw_batch_size", batch_size, integer=True, ge=1)
    roi_size = [int(s) for s in roi_size]
    if images.ndim != 5 or len(roi_size) != 3:
        raise ValueError(f"images must be (B, C, D, H, W) and roi_size 3 sides, got {tuple(images.shape)}, {roi_size}")
    logits = sliding_window_inference(images, roi_size, batch_size, model, overlap=overlap, mode=mode)
    return logits.as_tensor() if hasattr(logits, "as_tensor") else logits


def resize_logits(logits: Tensor, shape: Sequence[int]) -> Tensor:
    """``logits (B, C, D, H, W)`` resized to ``shape`` (trilinear, in float32), to be scored or argmax-ed there: how
    a prediction at the plan's target spacing goes back to a case's own grid (nnU-Net resamples its probabilities
    with order 1 too). Unchanged when the shape is already ``shape``."""
    if tuple(logits.shape[2:]) == tuple(int(s) for s in shape):
        return logits
    return F.interpolate(logits.float(), size=tuple(int(s) for s in shape), mode="trilinear", align_corners=False)
