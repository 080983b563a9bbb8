"""A YOLOv8-style anchor-free detector: CSP backbone with C2f blocks and SPPF, FPN/PAN neck, decoupled DFL head.

Layout (YOLOv8; Jocher et al., Ultralytics 2023), base channels 64, 128, 256, 512, 1024 and C2f repeats 3, 6, 6, 3
(3 in the neck), scaled by ``width`` and ``depth``::

    image ─ Conv/2 ─ Conv/4 C2f ─ Conv/8 C2f ─ Conv/16 C2f ─ Conv/32 C2f SPPF        (backbone: P3, P4, P5)
    P5 ─ up ⊕ P4 ─ C2f ─ up ⊕ P3 ─ C2f ─────────────────────────────────── N3 (stride 8)
                    └──────────── ⊕ Conv/2(N3) ─ C2f ────────────────────── N4 (stride 16)
    P5 ───────────────────────────── ⊕ Conv/2(N4) ─ C2f ─────────────────── N5 (stride 32)

Each level gets a head of two branches: box (3×3, 3×3, 1×1 → 4·reg_max bin logits, sides left, top, right,
bottom) and class (3×3, 3×3, 1×1 → C logits). The raw output of a level is ``[B, 4·reg_max + C, H_l, W_l]``,
distribution channels first, which is what ``detloss.detection.DetectionCriterion`` takes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torchvision
from torch import Tensor, nn

__all__ = ["YOLODetector", "SIZES", "decode", "postprocess"]

SIZES = {
    "nano": {"width": 0.25, "depth": 0.33, "max_channels": 1024},
    "small": {"width": 0.5, "depth": 0.33, "max_channels": 1024},
}

STRIDES = (8, 16, 32)
MAX_CANDIDATES = 30_000  # (anchor, class) pairs handed to NMS per image, the highest scores first


def scale_channels(channels: int, width: float, max_channels: int) -> int:
    """``min(channels, max_channels) · width`` rounded up to a multiple of 8 (the YOLOv8 rule)."""
    return int(math.ceil(min(channels, max_channels) * width / 8) * 8)


def scale_depth(repeats: int, depth: float) -> int:
    """``repeats · depth`` rounded, at least 1."""
    return max(round(repeats * depth), 1)


class Conv(nn.Sequential):
    """Conv2d (no bias, 'same' padding) + BatchNorm2d + SiLU. ``[B, c_in, H, W] → [B, c_out, H/s, W/s]``."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 1, stride: int = 1):
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03),
            nn.SiLU(inplace=True),
        )


class Bottleneck(nn.Module):
    """Two 3×3 Convs, with a residual when ``shortcut`` and the widths match. ``[B, c, H, W] → [B, c, H, W]``."""

    def __init__(self, channels: int, shortcut: bool = True):
        super().__init__()
        self.conv1 = Conv(channels, channels, 3)
        self.conv2 = Conv(channels, channels, 3)
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(x))
        return x + y if self.shortcut else y


class C2f(nn.Module):
    """CSP block with two convolutions and ``n`` bottlenecks. ``[B, c_in, H, W] → [B, c_out, H, W]``.

    A 1×1 conv splits into two halves of ``c_out / 2``; the bottlenecks run on the second half one after another,
    and every intermediate (both halves and each bottleneck output) is concatenated and fused by a 1×1 conv.
    """

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = False):
        super().__init__()
        self.hidden = c_out // 2
        self.conv1 = Conv(c_in, 2 * self.hidden)
        self.blocks = nn.ModuleList(Bottleneck(self.hidden, shortcut) for _ in range(n))
        self.conv2 = Conv((2 + n) * self.hidden, c_out)

    def forward(self, x: Tensor) -> Tensor:
        ys = list(self.conv1(x).chunk(2, 1))
        for block in self.blocks:
            ys.append(block(ys[-1]))
        return self.conv2(torch.cat(ys, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5×5 max-pools, concatenated.

    ``[B, c_in, H, W] → [B, c_out, H, W]``.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 5):
        super().__init__()
        hidden = c_in // 2
        self.conv1 = Conv(c_in, hidden)
        self.pool = nn.MaxPool2d(kernel_size, 1, kernel_size // 2)
        self.conv2 = Conv(4 * hidden, c_out)

    def forward(self, x: Tensor) -> Tensor:
        ys = [self.conv1(x)]
        for _ in range(3):
            ys.append(self.pool(ys[-1]))
        return self.conv2(torch.cat(ys, 1))


def head_branch(c_in: int, hidden: int, c_out: int) -> nn.Sequential:
    """3×3 Conv, 3×3 Conv, 1×1 Conv2d with bias. ``[B, c_in, H, W] → [B, c_out, H, W]``."""
    return nn.Sequential(Conv(c_in, hidden, 3), Conv(hidden, hidden, 3), nn.Conv2d(hidden, c_out, 1))


class YOLODetector(nn.Module):
    """YOLOv8-style detector with raw per-level outputs.

    Args:
        num_classes: number of classes ``C``.
        width: channel multiplier of the base widths 64…1024 (rounded up to multiples of 8).
        depth: multiplier of the C2f repeats 3, 6, 6, 3 (neck 3), rounded, at least 1.
        reg_max: bins of the distance distribution of each box side.
        in_channels: image channels.
        max_channels: cap on the base widths before ``width`` applies.

    ``forward(images [B, in_channels, H, W])`` with H, W multiples of 32 returns 3 maps
    ``[B, 4·reg_max + C, H/s, W/s]`` for ``s`` in ``strides`` = (8, 16, 32); ``postprocess`` turns them into
    torchvision-style detections.
    """

    strides = STRIDES

    def __init__(
        self,
        num_classes: int,
        width: float = 0.25,
        depth: float = 0.33,
        reg_max: int = 16,
        in_channels: int = 3,
        max_channels: int = 1024,
    ):
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("max_channels", max_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(reg_max, int) or isinstance(reg_max, bool) or reg_max < 2:
            raise ValueError(f"reg_max must be an integer >= 2, got {reg_max!r}")
        for name, value in (("width", width), ("depth", depth)):
            if not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        self.num_classes, self.reg_max = num_classes, reg_max
        self.width, self.depth = float(width), float(depth)

        c1, c2, c3, c4, c5 = (scale_channels(c, width, max_channels) for c in (64, 128, 256, 512, 1024))
        n1, n2, n3, n4, n_neck = (scale_depth(n, depth) for n in (3, 6, 6, 3, 3))
        self.channels = (c3, c4, c5)  # of the neck outputs N3, N4, N5

        # backbone: P3 (stride 8), P4 (16), P5 (32)
        self.stem = Conv(in_channels, c1, 3, 2)
        self.stage1 = nn.Sequential(Conv(c1, c2, 3, 2), C2f(c2, c2, n1, shortcut=True))
        self.stage2 = nn.Sequential(Conv(c2, c3, 3, 2), C2f(c3, c3, n2, shortcut=True))
        self.stage3 = nn.Sequential(Conv(c3, c4, 3, 2), C2f(c4, c4, n3, shortcut=True))
        self.stage4 = nn.Sequential(Conv(c4, c5, 3, 2), C2f(c5, c5, n4, shortcut=True), SPPF(c5, c5))

        # neck: top-down (FPN) then bottom-up (PAN)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.top_down4 = C2f(c5 + c4, c4, n_neck)
        self.top_down3 = C2f(c4 + c3, c3, n_neck)
        self.down3 = Conv(c3, c3, 3, 2)
        self.bottom_up4 = C2f(c3 + c4, c4, n_neck)
        self.down4 = Conv(c4, c4, 3, 2)
        self.bottom_up5 = C2f(c4 + c5, c5, n_neck)

        # decoupled head, one per level
        box_hidden = max(16, c3 // 4, 4 * reg_max)
        cls_hidden = max(c3, min(num_classes, 100))
        self.box_heads = nn.ModuleList(head_branch(c, box_hidden, 4 * reg_max) for c in self.channels)
        self.cls_heads = nn.ModuleList(head_branch(c, cls_hidden, num_classes) for c in self.channels)
        self.reset_head_bias()

    @classmethod
    def nano(cls, num_classes: int, **kwargs) -> YOLODetector:
        """Width 0.25, depth 0.33 (YOLOv8n: 3.16 M parameters at 80 classes)."""
        return cls(num_classes, **{**SIZES["nano"], **kwargs})

    @classmethod
    def small(cls, num_classes: int, **kwargs) -> YOLODetector:
        """Width 0.5, depth 0.33 (YOLOv8s: 11.2 M parameters at 80 classes)."""
        return cls(num_classes, **{**SIZES["small"], **kwargs})

    @torch.no_grad()
    def reset_head_bias(self) -> None:
        """Box bias 1.0; class bias ``log(5 / C / (640 / s)²)``: ~5 objects per 640 px image at init."""
        for box, cls, stride in zip(self.box_heads, self.cls_heads, self.strides):
            box[-1].bias.fill_(1.0)
            cls[-1].bias.fill_(math.log(5 / self.num_classes / (640 / stride) ** 2))

    def forward(self, images: Tensor) -> list[Tensor]:
        """``images [B, in_channels, H, W]`` → 3 raw maps ``[B, 4·reg_max + C, H/s, W/s]``, s = 8, 16, 32."""
        if images.ndim != 4 or images.shape[-2] % 32 or images.shape[-1] % 32:
            raise ValueError(f"images must be [B, C, H, W] with H and W multiples of 32, got {tuple(images.shape)}")
        p3 = self.stage2(self.stage1(self.stem(images)))
        p4 = self.stage3(p3)
        p5 = self.stage4(p4)

        t4 = self.top_down4(torch.cat((self.up(p5), p4), 1))
        n3 = self.top_down3(torch.cat((self.up(t4), p3), 1))
        n4 = self.bottom_up4(torch.cat((self.down3(n3), t4), 1))
        n5 = self.bottom_up5(torch.cat((self.down4(n4), p5), 1))

        return [
            torch.cat((box(x), cls(x)), 1) for x, box, cls in zip((n3, n4, n5), self.box_heads, self.cls_heads)
        ]

    def postprocess(
        self,
        feats: Sequence[Tensor],
        image_size: tuple[int, int] | None = None,
        conf_threshold: float = 0.001,
        iou_threshold: float = 0.7,
        max_det: int = 300,
    ) -> list[dict[str, Tensor]]:
        """Detections of each image; see :func:`postprocess`."""
        return postprocess(
            feats, self.num_classes, self.strides, self.reg_max, image_size, conf_threshold, iou_threshold, max_det
        )


def decode(feats: Sequence[Tensor], strides: Sequence[int], reg_max: int) -> tuple[Tensor, Tensor]:
    """Boxes and class logits of every anchor, levels in order, row-major within a level.

    Args:
        feats: raw maps ``[B, 4·reg_max + C, H_l, W_l]``.
        strides: stride of each level, pixels.
        reg_max: bins per box side.

    Returns:
        ``boxes (B, A, 4)`` xyxy pixels (float32) and ``logits (B, A, C)`` (float32), ``A = Σ H_l·W_l``.
        Each side is the expectation of the softmax over its bins, in grid units, from the anchor at the cell
        centre ``(col + 0.5, row + 0.5)``; ``(ax − l, ay − t, ax + r, ay + b) × stride``.
    """
    batch, device = feats[0].shape[0], feats[0].device
    head = torch.cat([f.float().flatten(2) for f in feats], 2)  # (B, 4R + C, A)
    num_anchors = head.shape[2]
    bins = torch.arange(reg_max, dtype=torch.float32, device=device).view(1, 1, reg_max, 1)
    dist = (head[:, : 4 * reg_max].view(batch, 4, reg_max, num_anchors).softmax(2) * bins).sum(2)  # (B, 4, A)

    points, scale = [], []
    for f, stride in zip(feats, strides):
        h, w = f.shape[-2:]
        ys = torch.arange(h, dtype=torch.float32, device=device) + 0.5
        xs = torch.arange(w, dtype=torch.float32, device=device) + 0.5
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((xx.flatten(), yy.flatten())))
        scale.append(torch.full((h * w,), float(stride), device=device))
    points, scale = torch.cat(points, 1), torch.cat(scale)  # (2, A), (A,)

    boxes = torch.cat((points - dist[:, :2], points + dist[:, 2:]), 1) * scale  # (B, 4, A)
    return boxes.transpose(1, 2), head[:, 4 * reg_max :].transpose(1, 2)


@torch.no_grad()
def postprocess(
    feats: Sequence[Tensor],
    num_classes: int,
    strides: Sequence[int] = STRIDES,
    reg_max: int = 16,
    image_size: tuple[int, int] | None = None,
    conf_threshold: float = 0.001,
    iou_threshold: float = 0.7,
    max_det: int = 300,
) -> list[dict[str, Tensor]]:
    """Decode, score, threshold, class-wise NMS.

    Args:
        feats: raw maps ``[B, 4·reg_max + C, H_l, W_l]`` of the levels in ``strides``.
        num_classes: ``C``.
        image_size: ``(H, W)`` to clip the boxes to; ``None``: the size the first level implies.
        conf_threshold: keep the (anchor, class) pairs whose sigmoid score exceeds it (multi-label).
        iou_threshold: IoU above which a lower-scored box of the same class is suppressed.
        max_det: detections kept per image, the highest scores.

    Returns:
        ``B`` dicts ``{"boxes": (n, 4) float32 xyxy pixels, "scores": (n,) float32, "labels": (n,) int64}``,
        sorted by decreasing score.
    """
    is_list = isinstance(feats, (list, tuple)) and all(isinstance(f, Tensor) for f in feats)
    if not is_list or len(feats) != len(strides):
        raise ValueError(f"feats must be a list of {len(strides)} tensors [B, 4·reg_max + C, H, W]")
    channels = 4 * reg_max + num_classes
    for i, f in enumerate(feats):
        if f.ndim != 4 or f.shape[1] != channels or f.shape[0] != feats[0].shape[0]:
            raise ValueError(f"feats[{i}] must have shape [B, {channels}, H, W], got {tuple(f.shape)}")
    if not 0 <= conf_threshold <= 1 or not 0 <= iou_threshold <= 1:
        raise ValueError(f"conf_threshold and iou_threshold must lie in [0, 1], got {conf_threshold}, {iou_threshold}")
    if not isinstance(max_det, int) or max_det < 1:
        raise ValueError(f"max_det must be a positive integer, got {max_det!r}")
    if image_size is None:
        image_size = (feats[0].shape[-2] * strides[0], feats[0].shape[-1] * strides[0])

    boxes, logits = decode(feats, strides, reg_max)
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, image_size[1])
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, image_size[0])
    scores = logits.sigmoid_()

    results = []
    for image_boxes, image_scores in zip(boxes, scores):
        anchor, label = (image_scores > conf_threshold).nonzero(as_tuple=True)
        score = image_scores[anchor, label]
        if score.numel() > MAX_CANDIDATES:
            top = score.topk(MAX_CANDIDATES).indices
            anchor, label, score = anchor[top], label[top], score[top]
        box = image_boxes[anchor]
        keep = torchvision.ops.batched_nms(box, score, label, iou_threshold)[:max_det]
        results.append({"boxes": box[keep], "scores": score[keep], "labels": label[keep]})
    return results
