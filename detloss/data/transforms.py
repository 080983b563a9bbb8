"""Sample transforms built on ``torchvision.transforms.v2`` and ``tv_tensors``.

The images, boxes and masks travel as ``tv_tensors`` through the pipelines, so every geometric op (letterbox,
flip, affine zoom, rotation) moves the boxes and masks with the pixels. Samples:

* detection: ``(Image (3, H, W) float32 in [0, 1], {"boxes": BoundingBoxes (n, 4) xyxy, "labels": (n,) int64})``
* segmentation: ``(Image (C, H, W) float32 in [0, 1], Mask (H, W) int64)``

:func:`apply_detection` and :func:`apply_segmentation` wrap plain tensors into ``tv_tensors``, run a pipeline and
hand plain tensors back, the form the datasets return.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..runtime import one_thread

__all__ = [
    "PAD_VALUE",
    "letterbox",
    "letterbox_params",
    "unletterbox_boxes",
    "Letterbox",
    "detection_transforms",
    "segmentation_transforms",
    "apply_detection",
    "apply_segmentation",
]

PAD_VALUE = 114 / 255
"""Grey of the letterbox padding (and of the area an affine zoom-out uncovers) on float images."""


def letterbox_params(height: int, width: int, size: int) -> tuple[float, tuple[int, int], tuple[int, int, int, int]]:
    """Geometry of letterboxing an ``height x width`` image into a ``size x size`` square.

    Returns:
        ``scale`` (resize factor of both axes), the resized ``(new_h, new_w)`` (longest side = ``size``), and the
        padding ``(left, top, right, bottom)``; the content is centred, odd padding puts the extra pixel
        right / bottom.
    """
    if height <= 0 or width <= 0 or size <= 0:
        raise ValueError(f"letterbox needs positive sizes, got image {height}x{width} and size {size}")
    scale = size / max(height, width)
    new_h = min(size, max(1, round(height * scale)))
    new_w = min(size, max(1, round(width * scale)))
    pad_w, pad_h = size - new_w, size - new_h
    left, top = pad_w // 2, pad_h // 2
    return scale, (new_h, new_w), (left, top, pad_w - left, pad_h - top)


def _letterbox_one(inpt, size: int, image_fill: float, mask_fill: int):
    """Letterbox one image / mask / box tensor (any tv_tensor) to ``size``; see :func:`letterbox_params`."""
    height, width = F.get_size(inpt)
    _, (new_h, new_w), padding = letterbox_params(height, width, size)
    if (new_h, new_w) != (height, width):
        inpt = F.resize(inpt, [new_h, new_w], antialias=True)  # masks are resized nearest by torchvision
    if any(padding):
        fill = mask_fill if isinstance(inpt, tv_tensors.Mask) else image_fill
        inpt = F.pad(inpt, list(padding), fill=fill)
    return inpt


def letterbox(image: Tensor, size: int, fill: float = PAD_VALUE) -> tuple[Tensor, float, tuple[int, int]]:
    """Resize ``image (C, H, W)`` so its longest side is ``size`` (bilinear) and pad it to ``(C, size, size)``.

    Returns:
        the letterboxed image, the ``scale`` and the ``(pad_left, pad_top)`` offset: a point ``(x, y)`` of the
        input lands on ``(x * scale + pad_left, y * scale + pad_top)``; :func:`unletterbox_boxes` goes back.
    """
    height, width = image.shape[-2:]
    scale, _, (left, top, _, _) = letterbox_params(height, width, size)
    out = _letterbox_one(tv_tensors.Image(image), size, fill, 0)
    return out.as_subclass(Tensor), scale, (left, top)


def unletterbox_boxes(boxes: Tensor, scale: float, pad: tuple[int, int]) -> Tensor:
    """Map ``xyxy`` boxes ``(..., 4)`` of a letterboxed image back to the original image's pixels."""
    offset = boxes.new_tensor([pad[0], pad[1], pad[0], pad[1]])
    return (boxes - offset) / scale


class Letterbox(v2.Transform):
    """v2 transform: letterbox images, masks and boxes of a sample to ``size x size`` (see :func:`letterbox`).

    Images are padded with ``fill`` (114/255 grey by default), masks with ``mask_fill`` (use the
    ``ignore_index`` for segmentation); boxes are scaled and shifted.
    """

    def __init__(self, size: int, fill: float = PAD_VALUE, mask_fill: int = 0) -> None:
        super().__init__()
        self.size = int(size)
        self.fill = float(fill)
        self.mask_fill = int(mask_fill)

    def transform(self, inpt, params):
        return _letterbox_one(inpt, self.size, self.fill, self.mask_fill)


def detection_transforms(
    image_size: int,
    train: bool = False,
    *,
    hflip: float = 0.5,
    jitter: float = 0.2,
    hue: float | None = None,
    scale: tuple[float, float] | None = (0.5, 1.5),
    translate: float = 0.1,
    min_box_size: float = 2.0,
) -> v2.Compose:
    """Detection pipeline on ``(Image, {"boxes": BoundingBoxes, "labels": ...})`` samples.

    Train: colour jitter (brightness / contrast / saturation ``jitter``, hue ``hue``, by default ``jitter / 4``;
    the hue shift is the costliest of them, a third of the pipeline's time at 128 px), letterbox to
    ``image_size``, horizontal flip with probability ``hflip``, random zoom in / out by a factor in ``scale``
    with a shift of up to ``translate`` of the side (an affine map without rotation, so boxes stay exact;
    ``scale=None`` turns it off), then boxes are clamped to the image and those thinner than ``min_box_size``
    pixels dropped together with their labels. Val (``train=False``): letterbox, clamp, drop degenerate boxes.
    """
    ops: list[v2.Transform] = []
    if train and jitter > 0:
        hue = min(0.5, jitter / 4) if hue is None else hue
        ops.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=hue or None))
    ops.append(Letterbox(image_size))
    if train and hflip > 0:
        ops.append(v2.RandomHorizontalFlip(hflip))
    if train and scale is not None:
        scale = (float(scale[0]), float(scale[1]))  # also from a Hydra ListConfig
        ops.append(v2.RandomAffine(degrees=0.0, translate=(translate, translate), scale=scale, fill=PAD_VALUE))
    ops += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=min_box_size if train else 1.0)]
    return v2.Compose(ops)


def segmentation_transforms(
    image_size: int,
    train: bool = False,
    *,
    mode: str = "letterbox",
    ignore_index: int = 255,
    fill: float = 0.0,
    hflip: float = 0.5,
    vflip: float = 0.0,
    rotate: float = 0.0,
    jitter: float = 0.0,
) -> v2.Compose:
    """Segmentation pipeline on ``(Image, Mask)`` samples.

    ``mode="letterbox"`` keeps the aspect ratio (image padded with ``fill``, mask with ``ignore_index``);
    ``mode="resize"`` stretches to ``image_size x image_size``. Images are resized bilinearly, masks nearest.
    Train adds flips with probabilities ``hflip`` / ``vflip``, a rotation of up to ``rotate`` degrees (uncovered
    mask pixels become ``ignore_index``) and brightness / contrast jitter ``jitter``.
    """
    if mode == "letterbox":
        ops: list[v2.Transform] = [Letterbox(image_size, fill=fill, mask_fill=ignore_index)]
    elif mode == "resize":
        ops = [v2.Resize((image_size, image_size), antialias=True)]
    else:
        raise ValueError(f"mode must be 'letterbox' or 'resize', got {mode!r}")
    if train:
        if jitter > 0:
            ops.append(v2.ColorJitter(brightness=jitter, contrast=jitter))
        if hflip > 0:
            ops.append(v2.RandomHorizontalFlip(hflip))
        if vflip > 0:
            ops.append(v2.RandomVerticalFlip(vflip))
        if rotate > 0:
            ops.append(v2.RandomRotation(rotate, fill={tv_tensors.Image: fill, tv_tensors.Mask: ignore_index}))
    return v2.Compose(ops)


def apply_detection(
    transforms: Callable | None, image: Tensor, boxes: Tensor, labels: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """Run ``transforms`` on a detection sample of plain tensors and return plain tensors.

    Args:
        image: ``(3, H, W)`` float32 in [0, 1]; boxes: ``(n, 4)`` xyxy pixels; labels: ``(n,)`` int64.

    Returns:
        ``image (3, H', W')`` float32 and ``{"boxes": (m, 4) float32, "labels": (m,) int64}``, ``m <= n``.
    """
    if transforms is not None:
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(image.shape[-2:])),
            "labels": labels,
        }
        with one_thread():
            image, target = transforms(tv_tensors.Image(image), target)
        boxes, labels = target["boxes"], target["labels"]
    return (
        image.as_subclass(Tensor).float(),
        {"boxes": boxes.as_subclass(Tensor).float().reshape(-1, 4), "labels": labels.as_subclass(Tensor).long()},
    )


def apply_segmentation(transforms: Callable | None, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Run ``transforms`` on ``image (C, H, W)`` float32 and ``mask (H, W)`` int64; plain tensors back."""
    if transforms is not None:
        with one_thread():
            image, mask = transforms(tv_tensors.Image(image), tv_tensors.Mask(mask))
    return image.as_subclass(Tensor).float(), mask.as_subclass(Tensor).long()
