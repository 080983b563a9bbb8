"""DetectionTask: a YOLO-style detector trained on a detection criterion; mAP tracked by torchmetrics."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.utils import draw_bounding_boxes

from ..composite import Criterion
from ..detection import HEADS, EndToEndCriterion
from ..models import ModelEMA
from .base import LossTask, rgb_uint8

__all__ = ["DetectionTask", "pad_to_equal_image_counts", "quiet_coco_eval", "MAP_BACKENDS"]

MAP_BACKENDS = ("faster_coco_eval", "pycocotools")
"""The COCO evaluations torchmetrics can run; both give the same values (tests/tasks/test_tasks.py)."""
#: the loggers of the COCO evaluations: faster_coco_eval logs its progress and its 12-line summary table at INFO
COCO_EVAL_LOGGERS = ("faster_coco_eval",)


@contextmanager
def quiet_coco_eval() -> Iterator[None]:
    """Inside, the COCO evaluation's loggers (:data:`COCO_EVAL_LOGGERS`) pass warnings and errors only, so that a
    validation's console holds the progress bar and detloss's own lines, not the evaluator's INFO table; their
    levels are restored on the way out. The values computed are not touched."""
    loggers = [logging.getLogger(name) for name in COCO_EVAL_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.level, logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def pad_to_equal_image_counts(metric: MeanAveragePrecision) -> None:
    """Under ``torch.distributed``, add empty images to ``metric`` until every rank holds as many: torchmetrics
    gathers the per-image list states one tensor at a time, so unequal counts would issue mismatched collectives.
    An image without boxes or predictions changes no COCO metric."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    count = len(metric.groundtruth_labels)  # one entry per image updated on this rank
    most = torch.tensor(count, device=metric.device)
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    empty_pred = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    empty_target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    for _ in range(int(most) - count):
        metric.update([empty_pred], [empty_target])


def check_heads(model: nn.Module, criterion: Criterion) -> None:
    """Refuse a model whose heads the criterion does not train, when the run is built: an end-to-end model (two
    heads) needs :class:`~detloss.detection.EndToEndCriterion` (``loss=yolo26``), a one-head model the YOLOv8
    criterion; and both must agree on ``reg_max``. Models without a ``heads()`` method / ``reg_max`` are not
    checked."""
    heads = getattr(model, "heads", None)
    if inspect.ismethod(heads):  # YOLODetector.heads(); a user's model may hold a module of that name
        have, want = set(heads()), set(HEADS) if isinstance(criterion, EndToEndCriterion) else {"one2many"}
        if have != want:
            raise ValueError(
                f"the model has the heads {sorted(have)} but {type(criterion).__name__} trains {sorted(want)}: "
                "an end-to-end model (model.end2end=true, e.g. model=yolo26_nano) trains with loss=yolo26 or "
                "loss=yolo26_vfl, a one-head model with the YOLOv8 losses"
            )
    model_bins, criterion_bins = getattr(model, "reg_max", None), getattr(criterion, "reg_max", None)
    if model_bins is not None and criterion_bins is not None and model_bins != criterion_bins:
        raise ValueError(f"model.reg_max ({model_bins}) and criterion.reg_max ({criterion_bins}) differ")


class DetectionTask(LossTask):
    """Train a detector; validate on post-processed predictions of the (EMA) model.

    Args:
        model: a detector with ``forward(images) -> feats`` and ``postprocess(feats, ...) -> [dicts]``.
        criterion: e.g. :class:`~detloss.detection.DetectionCriterion`.
        optimizer, scheduler, class_names, num_previews, nan_guard, channels_last: see
            :class:`~detloss.tasks.base.LossTask`.
        ema: evaluate an exponential moving average of the weights (the YOLO habit).
        ema_decay, ema_tau: its decay ``d · (1 − exp(−updates / τ))``.
        map_per_class: also log ``val/map/<class>``. A value torchmetrics cannot compute (``map_large`` without
            large objects, a class absent from targets and predictions) is not logged, rather than logged as -1.
        conf_threshold, iou_threshold, max_det: post-processing for the metric (low threshold: mAP needs the
            whole precision–recall curve).
        map_backend: the COCO evaluation behind the mAP (:data:`MAP_BACKENDS`): ``faster_coco_eval`` (C++) gives
            pycocotools' values, faster (docs/benchmarks/training_step.md).

    Under DDP the validation sampler gives every image to exactly one rank (see the DataModules), and the metric
    state, lists of per-image tensors, is gathered at ``compute``. torchmetrics gathers such a list one tensor at
    a time, so ranks holding different numbers of images would issue different collectives and hang; the rank
    with fewer images is padded with empty ones (no boxes, no predictions), which COCO evaluation skips.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: Criterion,
        optimizer: Callable,
        scheduler: Callable | None = None,
        class_names: Sequence[str] | None = None,
        num_previews: int = 4,
        nan_guard: str = "stop",
        channels_last: bool = False,
        ema: bool = True,
        ema_decay: float = 0.9999,
        ema_tau: float = 2000.0,
        map_per_class: bool = False,
        conf_threshold: float = 0.001,
        iou_threshold: float = 0.7,
        max_det: int = 300,
        map_backend: str = "faster_coco_eval",
    ):
        super().__init__(model, criterion, optimizer, scheduler, class_names, num_previews, nan_guard, channels_last)
        check_heads(model, criterion)
        # not a submodule: it is neither trained nor in train mode; checkpoints carry it (on_save_checkpoint)
        self.ema = ModelEMA(model, decay=ema_decay, tau=ema_tau) if ema else None
        self.map_per_class = map_per_class
        self.post = dict(conf_threshold=conf_threshold, iou_threshold=iou_threshold, max_det=max_det)
        if map_backend not in MAP_BACKENDS:
            raise ValueError(f"map_backend must be one of {MAP_BACKENDS}, got {map_backend!r}")
        self.map_metric = MeanAveragePrecision(
            box_format="xyxy", iou_type="bbox", class_metrics=map_per_class, backend=map_backend
        )

    @property
    def eval_model(self) -> nn.Module:
        if self.ema is None:
            return self.model
        if next(self.ema.module.parameters()).device != self.device:
            self.ema.to(self.device)
        return self.ema.module

    def forward(self, images):
        return self.eval_model.postprocess(self.eval_model(images), **self.post)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        super().on_train_batch_end(outputs, batch, batch_idx)
        if self.ema is not None:
            self.ema.update(self.model)

    def validation_step(self, batch, batch_idx):
        images, targets = batch
        feats = self.eval_model(images)
        self.log_loss("val", self.criterion(feats, targets), len(images))
        preds = self.eval_model.postprocess(feats, image_size=tuple(images.shape[-2:]), **self.post)
        self.map_metric.update(preds, targets)
        self.keep_preview(batch_idx, images, preds, targets)

    def on_validation_epoch_end(self):
        pad_to_equal_image_counts(self.map_metric)
        with quiet_coco_eval():
            result = self.map_metric.compute()
        self.map_metric.reset()
        # torchmetrics writes -1 where a value does not exist (no object of a size, a class absent everywhere):
        # such values are left out of the logs and of metrics.json, never logged as -1
        for key in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100"):
            if result[key] >= 0:
                self.log(f"val/{key}", result[key].float(), prog_bar=key == "map_50")
        if self.map_per_class and result["classes"].numel():
            per_class = result["map_per_class"].view(-1)
            for cls, value in zip(result["classes"].view(-1).tolist(), per_class):
                if value >= 0:
                    self.log(f"val/map/{self._name(cls)}", value.float())
        self.save_previews(self._draw)

    def apply_memory_format(self, memory_format):
        super().apply_memory_format(memory_format)
        if self.ema is not None:
            self.ema.module.to(memory_format=memory_format)

    def on_train_start(self):
        if self.ema is not None:
            self.ema.to(self.device)

    def on_save_checkpoint(self, checkpoint):
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint):
        if self.ema is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])

    def _name(self, cls: int) -> str:
        return self.class_names[cls] if 0 <= cls < len(self.class_names) else str(cls)

    def _draw(self, image, pred, target):
        """Targets in green, predictions scoring at least 0.25 in red with their score."""
        image = rgb_uint8(image)
        if len(target["boxes"]):
            true = [self._name(int(c)) for c in target["labels"]]
            image = draw_bounding_boxes(image, target["boxes"].cpu(), labels=true, colors="lime", width=1)
        keep = pred["scores"] >= 0.25
        if keep.any():
            shown = [f"{self._name(int(c))} {s:.2f}" for c, s in zip(pred["labels"][keep], pred["scores"][keep])]
            image = draw_bounding_boxes(image, pred["boxes"][keep].cpu(), labels=shown, colors="red", width=1)
        return image
