"""What ``detloss-predict`` writes for each kind of data: one writer per kind, chosen by the checkpoint's data
``kind`` (a DataModule's ``task``), registered with :func:`register_writer`.

* ``"detection"`` (:class:`BoxWriter`): ``predictions.json`` in the COCO results format (``image_id``,
  ``category_id``, ``bbox [x, y, w, h]``, ``score``, plus ``file_name``), boxes in the original image's pixels, and
  ``drawn/<name>.png``, the image with its boxes;
* ``"segmentation"`` (:class:`MaskWriter`): ``masks/<name>.png``, the predicted mask at the image's own size (each
  pixel the category id of its class: the mask value of the training masks), and ``drawn/<name>.png``.

* ``"volumetric"`` (:class:`VolumeWriter`): ``masks/<case>.nii.gz``, the predicted label volume of a case given as
  a Decathlon 4D image (``<case>.nii.gz``, ``(x, y, z, C)``) or in the nnU-Net layout (``<case>_0000.nii.gz``,
  ``<case>_0001.nii.gz``, ... one file per channel; a lone file without the channel suffix for one channel), in the
  input's geometry (shape, affine and header), each voxel the label value; a model trained on regions has its
  regions painted back to labels with ``regions_class_order`` (:func:`labels_of`).

``predict.tta=true`` averages the logits over the mirrorings of the input (segmentation and volumes; nnU-Net's
test-time augmentation, :func:`detloss.segmentation.inference.mirror_average`).

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

__all__ = [
    "Item",
    "PredictionWriter",
    "BoxWriter",
    "MaskWriter",
    "VolumeWriter",
    "WRITERS",
    "register_writer",
    "labels_of",
]

WRITERS: dict[str, type[PredictionWriter]] = {}


def register_writer(kind: str) -> Callable[[type[PredictionWriter]], type[PredictionWriter]]:
    """Class decorator: the writer of checkpoints whose data ``kind`` is ``kind``."""

    def add(cls: type[PredictionWriter]) -> type[PredictionWriter]:
        WRITERS[kind] = cls
        return cls

    return add


def labels_of(logits: Tensor, data: Mapping[str, Any]) -> Tensor:
    """The label values ``(B, *spatial)`` (int64) that ``logits (B, C, *spatial)`` predict for data described by
    ``data`` (a checkpoint's data facts).

    With ``data["regions"]`` (one sigmoid channel per region), a voxel is in region ``i`` where its probability is
    above 0.5 (its logit above 0), and the regions are painted with ``data["regions_class_order"]``, later regions
    over earlier ones (nnU-Net's rule, :func:`detloss.data.regions.regions_to_labels`); otherwise the argmax's class,
    written as its ``category_ids`` value (softmax classes).
    """
    if data.get("regions"):
        from .data.regions import regions_to_labels

        order = data.get("regions_class_order")
        if order is None or len(order) != logits.shape[1]:
            raise ValueError(
                f"ckpt_path: a model of {logits.shape[1]} region outputs needs regions_class_order with one label per "
                f"region in its data facts, got {order!r}"
            )
        masks = logits > 0
        return torch.stack([regions_to_labels(m, [int(v) for v in order]) for m in masks])
    ids = torch.as_tensor([int(v) for v in data["category_ids"]], dtype=torch.int64, device=logits.device)
    return ids[logits.argmax(1)]


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
    """2D masks: ``masks/<name>.png`` at the image's size (8-bit, 16-bit past 255; the labels of :func:`labels_of`)
    and ``drawn/<name>.png``; with ``predict.tta`` the logits are averaged over the image's 4 mirrorings
    (:func:`~detloss.segmentation.inference.mirror_average`)."""

    @torch.no_grad()
    def __call__(self, item: Item) -> None:
        from .segmentation.inference import mirror_average

        image = read_image(item.path, channels=int(self.data["in_channels"]))
        resized, back = self.to_size(image)
        batch = resized[None].to(self.task.device)
        raw = mirror_average(self.task.model, batch) if self.options.get("tta") else self.task.model(batch)
        logits = back(raw.float().cpu())
        ids = labels_of(logits, self.data)[0].numpy()
        if self.data.get("regions"):
            shown = logits[0] > 0
        else:
            shown = logits.argmax(1)[0][None] == torch.arange(1, len(self.class_names))[:, None, None]
        name = self.output_name(item)
        mask = (
            Image.fromarray(ids.astype(np.uint8))
            if ids.max(initial=0) <= 255
            else Image.fromarray(ids.astype(np.int32))
        )
        self.save("masks", name, mask)
        if self.options.get("draw", True):
            drawn = draw_segmentation_masks(rgb_uint8(image), shown, alpha=0.5, colors=palette(len(shown)))
            self.save("drawn", name, Image.fromarray(drawn.permute(1, 2, 0).numpy()))


@register_writer("volumetric")
class VolumeWriter(PredictionWriter):
    """3D masks: ``masks/<case>.nii.gz`` per case, by Gaussian-weighted sliding windows as validation infers.

    A case is read in either layout: a Medical Segmentation Decathlon image, one 4D file ``<case>.nii.gz`` of
    ``(x, y, z, C)`` (:func:`detloss.data.nifti.read_channels`), or nnU-Net's channel files ``<case>_0000.nii.gz``,
    ``<case>_0001.nii.gz``, ... up to the checkpoint's ``in_channels`` (the item of channel 0000 stands for its case,
    the others are skipped; a lone 3D file without the suffix for one channel). Each channel is preprocessed as in
    training (:func:`detloss.data.preprocess.preprocess`: the checkpoint's normalisation, resampled to its target
    spacing); the logits are resampled back to the case's own grid (trilinear,
    :func:`~detloss.segmentation.resize_logits`) and turned into labels (:func:`labels_of`), so the written mask has
    the input's shape, affine and header (its first file's, made 3D; the data type int16, unscaled). With
    ``predict.tta`` each window is mirrored (:func:`~detloss.segmentation.inference.mirror_average`). A channel file
    missing, channels of different shapes, or a 4D image of another channel count fail naming the file. No drawing
    (``predict.draw`` does not apply)."""

    extensions = (".nii.gz", ".nii")
    _CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})(?P<ext>\.nii(\.gz)?)$")

    def __init__(self, task, data, out_dir, options) -> None:
        super().__init__(task, data, out_dir, options)
        task.tta = bool(self.options.get("tta", False))  # VolumetricTask.infer mirrors each window with it

    def read_case(self, path: Path) -> tuple[str, list[Path], list[np.ndarray], tuple[float, ...]] | None:
        """``(case, files, channels (D, H, W), spacing)`` of the case ``path`` stands for; ``None`` for a channel
        file after the first (read with its case)."""
        from .data.nifti import read_channels, read_header, read_volume

        channels, found = int(self.data["in_channels"]), self._CHANNEL.match(path.name)
        shape, _ = read_header(path)
        if any(s != 1 for s in shape[3:]):  # the Decathlon's (x, y, z, C)
            volumes, spacing = read_channels(path)
            if len(volumes) != channels:
                raise ValueError(
                    f"{path}: {len(volumes)} channels along its 4th axis (x, y, z, C), the model takes {channels}"
                )
            return path.name.removesuffix(".gz").removesuffix(".nii"), [path], volumes, spacing
        if found is None and channels > 1:
            raise ValueError(
                f"{path}: a case of {channels} channels is one 4D file (x, y, z, C), or one file per channel named "
                "<case>_XXXX.nii.gz (nnU-Net layout)"
            )
        if found is not None and found["channel"] != "0000":
            return None
        case = found["case"] if found else path.name.removesuffix(".gz").removesuffix(".nii")
        paths = [path.with_name(f"{case}_{c:04d}{found['ext']}") for c in range(channels)] if found else [path]
        volumes, spacing = [], None
        for file in paths:
            if not file.is_file():
                raise ValueError(f"{file}: channel file missing for case {case} ({channels} channels expected)")
            volume, zooms = read_volume(file)
            if volumes and volume.shape != volumes[0].shape:
                raise ValueError(
                    f"{file}: shape {volume.shape} differs from its case's first channel {volumes[0].shape}"
                )
            volumes.append(volume)
            spacing = spacing or zooms
        return case, paths, volumes, spacing

    @torch.no_grad()
    def __call__(self, item: Item) -> None:
        import nibabel as nib

        from .data.preprocess import preprocess
        from .segmentation import resize_logits

        read = self.read_case(item.path)
        if read is None:
            return
        case, paths, volumes, spacing = read
        planned = "normalization" in self.data  # a checkpoint of a planned run; an older one used every case as it is
        target = self.data.get("spacing") if planned else None
        image = preprocess(volumes, spacing, target, self.data.get("normalization"), f"case {case!r}")
        logits = self.task.infer(torch.from_numpy(image)[None].to(self.task.device))
        labels = labels_of(resize_logits(logits, volumes[0].shape), self.data)[0].cpu()
        values = labels.numpy().transpose(2, 1, 0)  # (D, H, W) to the file's (x, y, z)
        first = nib.load(str(paths[0]))
        header = first.header.copy()
        header.set_data_shape(values.shape)  # a 4D image's header made 3D
        out = nib.Nifti1Image(np.ascontiguousarray(values.astype(np.int16)), first.affine, header)
        out.set_data_dtype(np.int16)
        out.header.set_slope_inter(1.0, 0.0)  # label values as they are, whatever scaling the image had
        path = self.out_dir / "masks" / f"{Path(item.file_name).parent / case}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(out, str(path))
