"""What ``detloss-predict`` writes for each kind of data: one writer per kind, chosen by the checkpoint's data
``kind`` (a DataModule's ``task``), registered with :func:`register_writer`.

* ``"detection"`` (:class:`BoxWriter`): ``predictions.json`` in the COCO results format (``image_id``,
  ``category_id``, ``bbox [x, y, w, h]``, ``score``, plus ``file_name``), boxes in the original image's pixels, and
  ``drawn/<name>.png``, the image with its boxes;
* ``"segmentation"`` (:class:`MaskWriter`): ``masks/<name>.png``, the predicted mask at the image's own size (each
  pixel the category id of its class: the mask value of the training masks), and ``drawn/<name>.png``.

* ``"volumetric"`` (:class:`VolumeWriter`): ``masks/<case>.nii.gz``, the predicted label volume of a case in the
  nnU-Net layout (``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``, ... one file per channel; a lone file without
  the channel suffix for one channel) with the first channel's affine and header, each voxel the label value.

A writer for another kind subclasses :class:`PredictionWriter`, says which files it reads (``extensions``) and
registers itself under its kind; nothing else changes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from .data.base import IMAGE_EXTENSIONS, clamp_boxes, read_image
from .data.transforms import letterbox, letterbox_params, unletterbox_boxes
from .tasks.base import rgb_uint8
from .tasks.segmentation import palette

__all__ = ["Item", "PredictionWriter", "BoxWriter", "MaskWriter", "VolumeWriter", "WRITERS", "register_writer"]

WRITERS: dict[str, type[PredictionWriter]] = {}


def register_writer(kind: str) -> Callable[[type[PredictionWriter]], type[PredictionWriter]]:
    """Class decorator: the writer of checkpoints whose data ``kind`` is ``kind``."""

    def add(cls: type[PredictionWriter]) -> type[PredictionWriter]:
        WRITERS[kind] = cls
        return cls

    return add


@dataclass(frozen=True)
class Item:
    """One input: its ``path``, its ``file_name`` (relative to the input folder, or a COCO file's) and the
    ``image_id`` its results carry (a COCO file's id, otherwise the file name)."""

    path: Path
    file_name: str
    image_id: Any


class PredictionWriter:
    """Predict one input at a time and write what comes of it under ``out_dir``.

    Args:
        task: the Lightning task, its weights loaded (a detection task's EMA included), in eval mode.
        data: what the checkpoint keeps of its data (a DataModule's ``describe()``).
        out_dir: where the files go.
        options: the entry point's ``predict`` options (thresholds, ``draw``).
    """

    extensions: tuple[str, ...] = IMAGE_EXTENSIONS

    def __init__(self, task, data: Mapping[str, Any], out_dir: Path, options: Mapping[str, Any]) -> None:
        self.task, self.data, self.out_dir, self.options = task, data, Path(out_dir), dict(options)
        self.class_names = list(data["class_names"])
        self.category_ids = list(data["category_ids"])
        self._names: set[str] = set()

    def __call__(self, item: Item) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Write what was gathered over all inputs."""

    def output_name(self, item: Item) -> str:
        """``<file_name without its suffix>.png``, unique among this run's outputs (the suffix is kept on a clash)."""
        name = Path(item.file_name).with_suffix(".png").as_posix()
        if name in self._names:
            name = f"{item.file_name}.png"
        self._names.add(name)
        return name

    def save(self, folder: str, name: str, image: Image.Image) -> None:
        path = self.out_dir / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)

    def to_size(self, image: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """``image (C, H, W)`` brought to the model's input as the validation transforms bring it
        (``data["resize"]``: letterbox or stretch to ``image_size``), and the map of a ``(.., size, size)`` output
        back to ``(.., H, W)``."""
        size, (height, width) = int(self.data["image_size"]), image.shape[-2:]
        if self.data.get("resize", "letterbox") == "resize":
            resized = F.interpolate(image[None], (size, size), mode="bilinear", antialias=True, align_corners=False)
            return resized[0], lambda out: F.interpolate(out, (height, width), mode="bilinear", align_corners=False)
        boxed, _, _ = letterbox(image, size, float(self.data.get("fill", 0.0)))
        _, (new_h, new_w), (left, top, _, _) = letterbox_params(height, width, size)

        def back(out: Tensor) -> Tensor:
            crop = out[..., top : top + new_h, left : left + new_w]
            return F.interpolate(crop, (height, width), mode="bilinear", align_corners=False)

        return boxed, back


@register_writer("detection")
class BoxWriter(PredictionWriter):
    """Boxes: ``predictions.json`` (COCO results, plus ``file_name``) and ``drawn/<name>.png``."""

    def __init__(self, task, data, out_dir, options) -> None:
        super().__init__(task, data, out_dir, options)
        self.model = task.eval_model
        self.results: list[dict[str, Any]] = []

    @torch.no_grad()
    def __call__(self, item: Item) -> None:
        image = read_image(item.path, channels=3)
        height, width = image.shape[-2:]
        size = int(self.data["image_size"])
        boxed, scale, pad = letterbox(image, size, float(self.data.get("fill", 0.0)))
        post = {k: self.options[k] for k in ("conf_threshold", "iou_threshold", "max_det")}
        pred = self.model.postprocess(self.model(boxed[None].to(self.task.device)), image_size=(size, size), **post)[0]
        boxes, keep = clamp_boxes(unletterbox_boxes(pred["boxes"].float().cpu(), scale, pad), width, height)
        boxes, scores, labels = boxes[keep], pred["scores"].cpu()[keep], pred["labels"].cpu()[keep]
        for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            x0, y0, x1, y1 = box
            self.results.append(
                {
                    "image_id": item.image_id,
                    "file_name": item.file_name,
                    "category_id": self.category_ids[label],
                    "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                    "score": round(score, 5),
                }
            )
        if self.options.get("draw", True):
            drawn = rgb_uint8(image)
            if len(boxes):
                colours = palette(len(self.class_names))
                texts = [f"{self.class_names[c]} {s:.2f}" for c, s in zip(labels.tolist(), scores.tolist())]
                drawn = draw_bounding_boxes(drawn, boxes, texts, [colours[c] for c in labels.tolist()], width=2)
            self.save("drawn", self.output_name(item), Image.fromarray(drawn.permute(1, 2, 0).numpy()))

    def close(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "predictions.json").write_text(json.dumps(self.results))


@register_writer("segmentation")
class MaskWriter(PredictionWriter):
    """2D masks: ``masks/<name>.png`` at the image's size (8-bit, 16-bit past 255) and ``drawn/<name>.png``."""

    @torch.no_grad()
    def __call__(self, item: Item) -> None:
        image = read_image(item.path, channels=int(self.data["in_channels"]))
        resized, back = self.to_size(image)
        logits = back(self.task.model(resized[None].to(self.task.device)).float().cpu())
        labels = logits.argmax(1)[0]
        ids = torch.as_tensor(self.category_ids)[labels].numpy()
        name = self.output_name(item)
        mask = (
            Image.fromarray(ids.astype(np.uint8))
            if ids.max(initial=0) <= 255
            else Image.fromarray(ids.astype(np.int32))
        )
        self.save("masks", name, mask)
        if self.options.get("draw", True):
            classes = torch.arange(1, len(self.class_names))
            drawn = draw_segmentation_masks(
                rgb_uint8(image), labels[None] == classes[:, None, None], alpha=0.5, colors=palette(len(classes))
            )
            self.save("drawn", name, Image.fromarray(drawn.permute(1, 2, 0).numpy()))


@register_writer("volumetric")
class VolumeWriter(PredictionWriter):
    """3D masks: ``masks/<case>.nii.gz`` per case, by Gaussian-weighted sliding windows as validation infers.

    The channels of a case are read as the nnU-Net layout names them (``<case>_XXXX.nii.gz``, ``XXXX`` from 0000 up
    to the checkpoint's ``in_channels``; the item of channel 0000 stands for its case, the others are skipped), each
    preprocessed as in training (:func:`detloss.data.preprocess.preprocess`: the checkpoint's normalisation,
    resampled to its target spacing); the logits are resampled back to the case's own grid (trilinear) before the
    argmax, so the written mask has the input's shape and geometry. A channel file missing, or channels of different
    shapes, fail naming the file. No drawing (``predict.draw`` does not apply)."""

    extensions = (".nii.gz", ".nii")
    _CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})(?P<ext>\.nii(\.gz)?)$")

    @torch.no_grad()
    def __call__(self, item: Item) -> None:
        import nibabel as nib

        from .data.nnunet import read_volume
        from .data.preprocess import preprocess
        from .segmentation import resize_logits

        channels, found = int(self.data["in_channels"]), self._CHANNEL.match(item.path.name)
        if found is None and channels > 1:
            raise ValueError(f"{item.path}: a case of {channels} channels is named <case>_XXXX.nii.gz (nnU-Net layout)")
        if found is not None and found["channel"] != "0000":
            return  # read with its case's channel 0000
        case = found["case"] if found else item.path.name.removesuffix(".gz").removesuffix(".nii")
        paths = (
            [item.path.with_name(f"{case}_{c:04d}{found['ext']}") for c in range(channels)] if found else [item.path]
        )
        volumes, spacing = [], None
        for path in paths:
            if not path.is_file():
                raise ValueError(f"{path}: channel file missing for case {case} ({channels} channels expected)")
            volume, zooms = read_volume(path)
            if volumes and volume.shape != volumes[0].shape:
                raise ValueError(
                    f"{path}: shape {volume.shape} differs from its case's first channel {volumes[0].shape}"
                )
            volumes.append(volume)
            spacing = spacing or zooms
        planned = "normalization" in self.data  # a checkpoint of a planned run; an older one used every case as it is
        target = self.data.get("spacing") if planned else None
        image = preprocess(volumes, spacing, target, self.data.get("normalization"))
        logits = self.task.infer(torch.from_numpy(image)[None].to(self.task.device))
        labels = resize_logits(logits, volumes[0].shape).argmax(1)[0].cpu()
        ids = torch.as_tensor(self.category_ids, dtype=torch.int16)[labels].numpy().transpose(2, 1, 0)  # to (x, y, z)
        first = nib.load(str(paths[0]))
        out = nib.Nifti1Image(np.ascontiguousarray(ids), first.affine, first.header)
        out.set_data_dtype(np.int16)
        path = self.out_dir / "masks" / f"{Path(item.file_name).parent / case}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(out, str(path))
