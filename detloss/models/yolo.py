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

End to end (``end2end=True``, YOLO26, Ultralytics 8.4): a second copy of the head branches, the one-to-one head,
runs on the *detached* neck features, so its gradient never reaches the backbone or the neck; ``forward`` returns
``{"one2many": maps, "one2one": maps}`` (what ``EndToEndCriterion`` takes) and ``postprocess`` keeps the
one-to-one head's top scores, without NMS. With ``reg_max = 1`` each side is one channel, the distance itself.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ..detection.postprocess import postprocess
from ..losses import check_number
from .pretrained import UltralyticsWeights, read_ultralytics

__all__ = ["YOLODetector"]

STRIDES = (8, 16, 32)  # of the neck outputs N3, N4, N5


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
        reg_max: bins of the distance distribution of each box side; 1: one channel per side, the distance.
        end2end: add the one-to-one head (module docstring); ``forward`` then returns a dict of both heads.
        in_channels: image channels.
        max_channels: cap on the base widths before ``width`` applies.
        strides: the strides of the three output levels; the layout makes them (8, 16, 32), and the configs read
            them from here (``criterion.strides: ${model.strides}``), so this is their one source.
        cls_hidden: width of the class branches; ``None``: YOLOv8's ``max(C3, min(num_classes, 100))``.
        pretrained: an Ultralytics YOLOv8 checkpoint to start from (``model.pretrained=yolov8n.pt``; see
            :meth:`load_ultralytics`); its layout must be this model's, and ``cls_hidden`` defaults to its.

    The presets are configs: ``configs/model/yolo_nano.yaml`` (width 0.25, depth 0.33; YOLOv8n: 3.16 M parameters
    at 80 classes) and ``yolo_small.yaml`` (width 0.5; YOLOv8s: 11.2 M).

    ``forward(images [B, in_channels, H, W])`` with H, W multiples of ``size_multiple`` (32, the largest stride)
    returns 3 maps ``[B, 4·reg_max + C, H/s, W/s]`` for ``s`` in ``strides`` (a dict of two such lists with
    ``end2end``); ``postprocess`` turns them into torchvision-style detections.
    """

    def __init__(
        self,
        num_classes: int,
        width: float = 0.25,
        depth: float = 0.33,
        reg_max: int = 16,
        in_channels: int = 3,
        max_channels: int = 1024,
        strides: Sequence[int] = STRIDES,
        end2end: bool = False,
        cls_hidden: int | None = None,
        pretrained: str | None = None,
    ):
        super().__init__()
        weights = read_ultralytics(pretrained) if pretrained else None
        if cls_hidden is None and weights is not None:
            cls_hidden = weights.cls_hidden
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("max_channels", max_channels)):
            check_number(name, value, integer=True, ge=1)
        check_number("reg_max", reg_max, integer=True, ge=1)
        for name, value in (("width", width), ("depth", depth)):
            check_number(name, value, gt=0)
        if tuple(strides) != STRIDES:
            raise ValueError(f"strides must be {list(STRIDES)} (the P3-P5 outputs of this layout), got {list(strides)}")
        self.num_classes, self.reg_max, self.strides, self.end2end = num_classes, reg_max, STRIDES, bool(end2end)
        #: what the image height and width must be multiples of: the largest stride
        self.size_multiple = max(STRIDES)
        self.width, self.depth, self.in_channels = float(width), float(depth), int(in_channels)

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
        cls_hidden = max(c3, min(num_classes, 100)) if cls_hidden is None else cls_hidden
        check_number("cls_hidden", cls_hidden, integer=True, ge=1)
        self.box_heads = nn.ModuleList(head_branch(c, box_hidden, 4 * reg_max) for c in self.channels)
        self.cls_heads = nn.ModuleList(head_branch(c, cls_hidden, num_classes) for c in self.channels)
        if self.end2end:
            self.one2one_box_heads = copy.deepcopy(self.box_heads)
            self.one2one_cls_heads = copy.deepcopy(self.cls_heads)
        self.reset_head_bias()
        if weights is not None:
            self.load_ultralytics(weights)

    @classmethod
    def from_ultralytics(cls, path: str | Path, num_classes: int | None = None, **kwargs) -> YOLODetector:
        """The detector of an Ultralytics YOLOv8 checkpoint (``yolov8n.pt``, ``yolov8s.pt``, ...), its weights loaded.

        Reading the file needs ``ultralytics`` (``pip install "detloss[pretrained]"``). ``num_classes``: ``None``
        keeps the checkpoint's (80 for COCO); another count re-initialises the last layer of every class branch
        (see :meth:`load_ultralytics`). ``kwargs`` go to the constructor (e.g. ``end2end``).
        """
        weights = read_ultralytics(path)
        count = weights.num_classes if num_classes is None else num_classes
        model = cls(num_classes=count, **weights.layout(), **kwargs)
        model.load_ultralytics(weights)
        return model

    @torch.no_grad()
    def load_ultralytics(self, weights: UltralyticsWeights | str | Path) -> None:
        """Copy an Ultralytics YOLOv8 checkpoint's weights (:func:`~detloss.models.pretrained.read_ultralytics`) in.

        Every weight and buffer of the checkpoint goes to the module of the same place in the layout; when the
        class counts differ, the last convolution of each class branch keeps its fresh initialisation (bias at
        the prior of :meth:`reset_head_bias`). An end-to-end model's one-to-one head starts as a copy of the
        loaded head.

        Raises:
            ValueError: the checkpoint's layout is not this model's (naming both), or a tensor does not fit.
        """
        if not isinstance(weights, UltralyticsWeights):
            weights = read_ultralytics(weights)
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("one2one_")}
        fresh = set()
        if weights.num_classes != self.num_classes:
            fresh = {f"cls_heads.{i}.2.{p}" for i in range(len(self.strides)) for p in ("weight", "bias")}
        wanted, given = set(own) - fresh, set(weights.state) - fresh
        mine = {"width": self.width, "depth": self.depth, "reg_max": self.reg_max, "in_channels": self.in_channels}
        mismatch = sorted(wanted ^ given) or [k for k in sorted(wanted) if own[k].shape != weights.state[k].shape]
        if mismatch:
            raise ValueError(
                f"model.pretrained: {weights.path} does not fit this detector ({mine}, cls_hidden "
                f"{self.cls_heads[0][0][0].out_channels}); its layout is {weights.layout()} (first difference: "
                f"{mismatch[0]}); choose the model config of its size (yolov8n: model=yolo_nano, yolov8s: "
                "model=yolo_small)"
            )
        for name in wanted:
            own[name].copy_(weights.state[name])
        if self.end2end:
            self.one2one_box_heads.load_state_dict(self.box_heads.state_dict())
            self.one2one_cls_heads.load_state_dict(self.cls_heads.state_dict())

    def heads(self) -> dict[str, tuple[nn.ModuleList, nn.ModuleList]]:
        """The (box, class) branches of each head: ``one2many``, and ``one2one`` with ``end2end``."""
        heads = {"one2many": (self.box_heads, self.cls_heads)}
        if self.end2end:
            heads["one2one"] = (self.one2one_box_heads, self.one2one_cls_heads)
        return heads

    @torch.no_grad()
    def reset_head_bias(self) -> None:
        """Box bias 2.0 (with one channel per side: distances of 2 grid units at init; any constant for bins);
        class bias ``log(5 / C / (640 / s)²)``: ~5 objects per 640 px image at init (Ultralytics' ``bias_init``)."""
        for box_heads, cls_heads in self.heads().values():
            for box, cls, stride in zip(box_heads, cls_heads, self.strides):
                box[-1].bias.fill_(2.0)
                cls[-1].bias.fill_(math.log(5 / self.num_classes / (640 / stride) ** 2))

    def forward(self, images: Tensor) -> list[Tensor] | dict[str, list[Tensor]]:
        """``images [B, in_channels, H, W]`` → 3 raw maps ``[B, 4·reg_max + C, H/s, W/s]``, s = 8, 16, 32 (with
        ``end2end``: ``{"one2many": maps, "one2one": maps}``, the second on detached neck features)."""
        k = self.size_multiple
        if images.ndim != 4 or images.shape[-2] % k or images.shape[-1] % k:
            raise ValueError(f"images must be [B, C, H, W] with H and W multiples of {k}, got {tuple(images.shape)}")
        p3 = self.stage2(self.stage1(self.stem(images)))
        p4 = self.stage3(p3)
        p5 = self.stage4(p4)

        t4 = self.top_down4(torch.cat((self.up(p5), p4), 1))
        n3 = self.top_down3(torch.cat((self.up(t4), p3), 1))
        n4 = self.bottom_up4(torch.cat((self.down3(n3), t4), 1))
        n5 = self.bottom_up5(torch.cat((self.down4(n4), p5), 1))

        necks = (n3, n4, n5)
        maps = [torch.cat((box(x), cls(x)), 1) for x, box, cls in zip(necks, self.box_heads, self.cls_heads)]
        if not self.end2end:
            return maps
        detached = [x.detach() for x in necks]
        one2one = zip(detached, self.one2one_box_heads, self.one2one_cls_heads)
        return {"one2many": maps, "one2one": [torch.cat((box(x), cls(x)), 1) for x, box, cls in one2one]}

    def postprocess(
        self,
        feats: Sequence[Tensor] | dict[str, Sequence[Tensor]],
        image_size: tuple[int, int] | None = None,
        conf_threshold: float = 0.001,
        iou_threshold: float = 0.7,
        max_det: int = 300,
    ) -> list[dict[str, Tensor]]:
        """Detections of each image; see :func:`~detloss.detection.postprocess`: class-wise NMS of the head, or with
        ``end2end`` the one-to-one head's top ``max_det`` scores, without NMS."""
        if self.end2end:
            if not isinstance(feats, dict) or "one2one" not in feats:
                raise ValueError("an end-to-end detector's postprocess takes its forward's dict of heads")
            feats, method = feats["one2one"], "topk"
        else:
            method = "nms"
        return postprocess(
            feats, self.num_classes, self.strides, self.reg_max, image_size, conf_threshold, iou_threshold, max_det,
            method,
        )  # fmt: skip
