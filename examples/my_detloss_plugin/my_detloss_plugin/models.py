"""A small detector that keeps detloss's detection contract (detloss docs: docs/guide/extending.md, "Your own model").

The contract, for any detector trained with ``DetectionCriterion`` and validated by ``DetectionTask``:

* ``forward(images (B, C_in, H, W))`` returns one raw map per level, ``[B, 4·reg_max + C, H / s, W / s]`` for
  each stride ``s`` in ``strides``, the ``4·reg_max`` side-distance bins first (left, top, right, bottom), then the
  ``C`` class logits;
* ``postprocess(feats, image_size=None, conf_threshold=..., iou_threshold=..., max_det=...)`` turns them into one
  dict per image, ``{"boxes": (n, 4) xyxy pixels, "scores": (n,), "labels": (n,)}``; detloss's own
  :func:`detloss.detection.postprocess` does it for maps of this layout;
* ``num_classes``, ``reg_max`` and ``strides`` (the configs read the last two: ``criterion.strides:
  ${model.strides}``) and, optionally, ``size_multiple``, what the image side must be a multiple of.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detloss.detection import postprocess


def conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())


class TinyDetector(nn.Module):
    """A plain strided-convolution backbone, strides 8, 16 and 32, with one head per level."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 16, reg_max: int = 16,
                 strides: Sequence[int] = (8, 16, 32)):  # fmt: skip
        super().__init__()
        if tuple(strides) != (8, 16, 32):
            raise ValueError(f"strides must be [8, 16, 32], got {list(strides)}")
        self.num_classes, self.reg_max, self.strides = num_classes, reg_max, (8, 16, 32)
        self.size_multiple = 32
        w = width
        self.stem = nn.Sequential(conv(in_channels, w, 2), conv(w, 2 * w, 2), conv(2 * w, 2 * w, 2))  # stride 8
        self.down16, self.down32 = conv(2 * w, 4 * w, 2), conv(4 * w, 4 * w, 2)
        self.heads = nn.ModuleList(
            nn.Sequential(conv(c, c), nn.Conv2d(c, 4 * reg_max + num_classes, 1)) for c in (2 * w, 4 * w, 4 * w)
        )
        with torch.no_grad():  # class logits start at a prior of 1 %, as detection heads do
            for head in self.heads:
                head[-1].bias[4 * reg_max :] = math.log(0.01 / 0.99)

    def forward(self, images: Tensor) -> list[Tensor]:
        p3 = self.stem(images)
        p4 = self.down16(p3)
        p5 = self.down32(p4)
        return [head(x) for head, x in zip(self.heads, (p3, p4, p5))]

    def postprocess(self, feats, image_size=None, conf_threshold=0.001, iou_threshold=0.7, max_det=300):
        return postprocess(
            feats, self.num_classes, self.strides, self.reg_max, image_size, conf_threshold, iou_threshold, max_det
        )
