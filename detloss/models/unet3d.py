"""A 3D U-Net in the nnU-Net layout (Isensee et al., *nnU-Net*, Nature Methods 2021; Çiçek et al., *3D U-Net*,
MICCAI 2016), with anisotropy-aware pooling and deep supervision.

Each resolution stage is two (conv, instance norm, leaky ReLU) blocks; max pooling between stages; transposed
convolutions up, concatenating the encoder's skip of the stage. The pooling and the kernels follow nnU-Net's rule
for anisotropic spacing: at each stage, an axis is pooled (factor 2) only if its current spacing is less than twice
the smallest (and, with a patch size, only while the axis keeps at least ``2 · min_size`` voxels, or ``3 · min_size``
when it is the only axis left to pool: nnU-Net's ``get_pool_and_conv_props``); an axis whose
spacing is at least twice the smallest gets kernel 1 instead of 3 until the other axes have caught up (then 3 for
good). With 2 × 1 × 1 mm voxels the first stage convolves 1 × 3 × 3 and pools 1 × 2 × 2, and the spacing is then
isotropic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..plan.rules import plan_stages

__all__ = ["UNet3D", "plan_stages"]

NORMS = ("instance", "batch", "group", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    return nn.Identity()


class ConvBlock(nn.Sequential):
    """(conv ``kernel``, norm, leaky ReLU) × 2: ``[B, c_in, D, H, W] → [B, c_out, D, H, W]``."""

    def __init__(self, c_in: int, c_out: int, kernel: Sequence[int], norm: str):
        padding = tuple(k // 2 for k in kernel)
        layers = []
        for c in (c_in, c_out):
            layers += [
                nn.Conv3d(c, c_out, tuple(kernel), padding=padding, bias=norm == "none"),
                _norm(norm, c_out),
                nn.LeakyReLU(0.01, inplace=True),
            ]
        super().__init__(*layers)


class UNet3D(nn.Module):
    """3D U-Net with anisotropy-aware pooling and deep supervision.

    Args:
        in_channels: image channels (MRI sequences).
        num_classes: output channels ``C``, background included (required).
        base_channels: channels of the first stage; they double at each pooling up to ``max_channels``.
        depth: number of poolings (the bottleneck is stage ``depth``).
        spacing: voxel spacing ``(D, H, W)`` the pooling is planned for (the data's; a training run passes it).
        patch_size: the training patch ``(D, H, W)``, if known: no axis is pooled below ``2 · min_size`` voxels, and
            the patch must be a multiple of :attr:`size_multiple`.
        min_size: the smallest side of a stage's feature map along a pooled axis.
        norm: ``"instance"`` (nnU-Net's), ``"batch"``, ``"group"`` or ``"none"``.
        max_channels: cap of the channels (nnU-Net: 320).
        deep_supervision: return the logits of every decoder stage in training.

    The output's contract: in training (``model.train()``) with ``deep_supervision``, a list of ``depth`` logits
    ``[B, C, D_i, H_i, W_i]`` from the full resolution (``i = 0``) down to the stage just above the bottleneck, stage
    ``i`` smaller by the product of the first ``i`` pooling factors; in evaluation (``model.eval()``), or without deep
    supervision, the full-resolution logits ``[B, C, D, H, W]`` only, so that sliding-window inference and the
    metrics see one tensor. Inputs must be multiples of :attr:`size_multiple` along each axis.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int | None = None,
        base_channels: int = 16,
        depth: int = 4,
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        patch_size: Sequence[int] | None = None,
        min_size: int = 4,
        norm: str = "instance",
        max_channels: int = 320,
        deep_supervision: bool = True,
    ):
        super().__init__()
        if num_classes is None:
            raise ValueError("num_classes is required")
        ints = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "base_channels": base_channels,
            "depth": depth,
            "min_size": min_size,
            "max_channels": max_channels,
        }
        for name, value in ints.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"spacing must be 3 positive numbers (D, H, W), got {spacing}")
        if patch_size is not None and (len(patch_size) != 3 or not all(int(s) >= 1 for s in patch_size)):
            raise ValueError(f"patch_size must be 3 positive integers (D, H, W), got {patch_size}")
        self.kernels, self.pools = plan_stages(spacing, depth, patch_size, min_size)
        self.spacing, self.depth, self.deep_supervision = spacing, depth, bool(deep_supervision)
        #: what each input side must be a multiple of: the product of the pooling factors along that axis
        self.size_multiple = tuple(math.prod(p[a] for p in self.pools) for a in range(3))
        if patch_size is not None and any(int(s) % m for s, m in zip(patch_size, self.size_multiple)):
            raise ValueError(
                f"patch_size {tuple(patch_size)} (data.patch_size) must be a multiple of {self.size_multiple} along "
                f"each axis, the product of the poolings {self.pools} planned for spacing {spacing}"
            )
        channels = [min(base_channels * 2**i, max_channels) for i in range(depth + 1)]
        self.encoder = nn.ModuleList(
            ConvBlock(in_channels if i == 0 else channels[i - 1], channels[i], self.kernels[i], norm)
            for i in range(depth + 1)
        )
        self.downs = nn.ModuleList(nn.MaxPool3d(p, p) for p in self.pools)
        self.ups = nn.ModuleList(
            nn.ConvTranspose3d(channels[i + 1], channels[i], self.pools[i], self.pools[i]) for i in range(depth)
        )
        self.decoder = nn.ModuleList(
            ConvBlock(2 * channels[i], channels[i], self.kernels[i], norm) for i in range(depth)
        )
        self.heads = nn.ModuleList(nn.Conv3d(channels[i], num_classes, 1) for i in range(depth))

    def forward(self, images: Tensor) -> Tensor | list[Tensor]:
        """``images [B, in_channels, D, H, W]`` → logits (see the class docstring for training and evaluation)."""
        if images.ndim != 5 or any(s % m for s, m in zip(images.shape[2:], self.size_multiple)):
            raise ValueError(
                f"images must be [B, C, D, H, W] with D, H, W multiples of {self.size_multiple}, got "
                f"{tuple(images.shape)}"
            )
        skips, x = [], images
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.downs[i - 1](x))
            skips.append(x)
        x = skips.pop()
        supervise = self.training and self.deep_supervision
        outputs = []
        for i in reversed(range(self.depth)):
            x = self.decoder[i](torch.cat((self.ups[i](x), skips[i]), 1))
            if supervise or i == 0:
                outputs.append(self.heads[i](x))
        return outputs[::-1] if supervise else outputs[-1]
