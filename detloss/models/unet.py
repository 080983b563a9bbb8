"""A 2D U-Net (Ronneberger et al., "U-Net", MICCAI 2015) with 'same' padding, so the logits match the input size.

Encoder: a double 3×3 conv block (conv-norm-ReLU ×2) per level, max-pool 2×2 between levels, channels
``base_channels · 2^i`` at level ``i = 0 … depth``. Decoder: upsample ×2 (2×2 transposed conv halving the channels,
or bilinear), concatenate the encoder's skip of that level, double conv block. A 1×1 conv gives the class logits.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["UNet"]

NORMS = ("batch", "instance", "group", "none")
UPSAMPLINGS = ("transpose", "bilinear")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm2d, InstanceNorm2d (affine), GroupNorm (up to 8 groups) or Identity."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    return nn.Identity()


class DoubleConv(nn.Sequential):
    """(3×3 conv, norm, ReLU) ×2. ``[B, c_in, H, W] → [B, c_out, H, W]``."""

    def __init__(self, c_in: int, c_out: int, norm: str = "batch"):
        bias = norm == "none"
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias),
            norm_layer(norm, c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias),
            norm_layer(norm, c_out),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Upsample ×2, concatenate the skip, DoubleConv.

    ``x [B, c_in, H, W]``, ``skip [B, c_skip, 2H, 2W]`` → ``[B, c_out, 2H, 2W]``.
    """

    def __init__(self, c_in: int, c_skip: int, c_out: int, mode: str = "transpose", norm: str = "batch"):
        super().__init__()
        if mode == "transpose":
            self.up = nn.ConvTranspose2d(c_in, c_in // 2, 2, stride=2)
            c_up = c_in // 2
        else:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            c_up = c_in
        self.conv = DoubleConv(c_up + c_skip, c_out, norm)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat((self.up(x), skip), 1))


class UNet(nn.Module):
    """2D U-Net returning per-pixel class logits.

    Args:
        in_channels: image channels.
        num_classes: output channels ``C`` (required).
        base_channels: channels of the first level; they double at each downsampling.
        depth: number of downsamplings (H and W must be divisible by ``2**depth``).
        norm: ``"batch"``, ``"instance"``, ``"group"`` or ``"none"`` (then the convs carry a bias).
        up: ``"transpose"`` (2×2 transposed conv) or ``"bilinear"``.
        background_prior: the softmax probability of class 0 (the background) at initialisation, the rest shared
            evenly by the other classes, set through the bias of the 1×1 head (the prior of RetinaNet's and
            YOLO's class heads); ``None`` leaves PyTorch's default initialisation (logits near 0, each class
            ``1/C``). Most pixels are background; starting at ``1/C`` the optimiser spends its first hundreds of
            steps learning only that (docs/benchmarks/segmentation_2d.md).

    ``forward(images [B, in_channels, H, W]) → logits [B, C, H, W]``, H and W multiples of ``size_multiple``
    (``2**depth``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int | None = None,
        base_channels: int = 16,
        depth: int = 4,
        norm: str | None = "batch",
        up: str = "transpose",
        background_prior: float | None = None,
    ):
        super().__init__()
        if num_classes is None:
            raise ValueError("num_classes is required")
        sizes = {"in_channels": in_channels, "num_classes": num_classes, "base_channels": base_channels}
        for name, value in sizes.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
            raise ValueError(f"depth must be a positive integer, got {depth!r}")
        norm = "none" if norm is None else norm
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS} (or None), got {norm!r}")
        if up not in UPSAMPLINGS:
            raise ValueError(f"up must be one of {UPSAMPLINGS}, got {up!r}")
        if background_prior is not None and not (0 < background_prior < 1 and num_classes > 1):
            raise ValueError(
                f"background_prior must lie in (0, 1), with num_classes > 1, got {background_prior!r} and {num_classes}"
            )
        self.depth = depth
        #: what the image height and width must be multiples of: ``2**depth``, one halving per downsampling
        self.size_multiple = 2**depth

        channels = [base_channels * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList([DoubleConv(in_channels, channels[0], norm)])
        self.encoder.extend(DoubleConv(channels[i - 1], channels[i], norm) for i in range(1, depth + 1))
        self.pool = nn.MaxPool2d(2)
        self.decoder = nn.ModuleList(
            Up(channels[i], channels[i - 1], channels[i - 1], up, norm) for i in range(depth, 0, -1)
        )
        self.head = nn.Conv2d(channels[0], num_classes, 1)
        if background_prior is not None:
            with torch.no_grad():
                self.head.bias.fill_(math.log((1 - background_prior) / (num_classes - 1)))
                self.head.bias[0] = math.log(background_prior)

    def forward(self, images: Tensor) -> Tensor:
        """``images [B, in_channels, H, W]`` → logits ``[B, C, H, W]``."""
        k = self.size_multiple
        if images.ndim != 4 or images.shape[-2] % k or images.shape[-1] % k:
            raise ValueError(f"images must be [B, C, H, W] with H and W divisible by {k}, got {tuple(images.shape)}")
        skips = []
        x = images
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up in self.decoder:
            x = up(x, skips.pop())
        return self.head(x)
