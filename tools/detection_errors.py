"""What a trained detector's false positives are, and what each kind of them costs in mAP@0.5.

    python tools/detection_errors.py CKPT [--nms IOU] [--score 0.1] [--backend faster_coco_eval] [key=value ...]

Rebuilds the checkpoint's run from the config it carries (``key=value`` overrides it, e.g. ``data.num_val=64``),
runs its evaluation model (the EMA, as validation does) over the validation split with the task's own
``postprocess`` (NMS, or for an end-to-end model its NMS-free top-k) and sorts every detection into one kind, by
matching each image's detections in decreasing score order at IoU 0.5, per class (COCO's greedy rule):

* ``tp``: the best-overlapping object of its class not matched yet, at IoU ≥ 0.5;
* ``duplicate``: an object of its class at IoU ≥ 0.5, but every such object was already matched by a higher score;
* ``wrong_class``: no object of its class at IoU ≥ 0.5, an object of another class at IoU ≥ 0.5;
* ``localisation``: an object of its class at 0.1 ≤ IoU < 0.5;
* ``background``: none of these.

It prints the count of each kind among the detections scored at least ``--score``, and mAP@0.5 over all
detections and with each kind of false positive removed, an oracle in the manner of TIDE (Bolya et al., ECCV 2020,
"TIDE: A General Toolbox for Identifying Object Detection Errors"): the mAP the kind costs. ``--nms IOU`` first
applies class-wise NMS at that IoU to the detections the postprocess gave, which shows, for an NMS-free head,
what NMS would have removed. This is how docs/benchmarks/yolo26.md ("Errors by kind") tells
duplicates from class confusion.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import batched_nms, box_iou

from detloss.config import CHECKPOINT_CONFIG, read_checkpoint
from detloss.predict import load_task
from detloss.tasks import DetectionTask

KINDS = ("tp", "duplicate", "wrong_class", "localisation", "background")
FALSE_POSITIVES = KINDS[1:]


def classify_detections(
    pred: dict[str, Tensor], target: dict[str, Tensor], iou_threshold: float = 0.5, loc_threshold: float = 0.1
) -> Tensor:
    """The kind of each of one image's detections (an index into :data:`KINDS`), ``(D,)`` int64.

    ``pred``: ``boxes (D, 4)`` xyxy, ``scores (D,)``, ``labels (D,)``; ``target``: ``boxes (G, 4)``, ``labels (G,)``.
    Detections are matched in decreasing score order (ties: the order given), each to the unmatched object of its
    class it overlaps most at IoU ≥ ``iou_threshold``; the module docstring defines the kinds.
    """
    count = len(pred["scores"])
    kinds = torch.full((count,), KINDS.index("background"), dtype=torch.long)
    if count == 0 or len(target["labels"]) == 0:
        return kinds
    iou = box_iou(pred["boxes"].float(), target["boxes"].float())  # (D, G)
    same = pred["labels"].view(-1, 1) == target["labels"].view(1, -1)
    same_iou = torch.where(same, iou, torch.zeros_like(iou))
    other_best = torch.where(same, torch.zeros_like(iou), iou).amax(1)
    matched = torch.zeros(len(target["labels"]), dtype=torch.bool)
    for d in torch.sort(pred["scores"], descending=True, stable=True).indices.tolist():
        row = same_iou[d]
        free = torch.where(matched, torch.zeros_like(row), row)
        best = int(free.argmax())
        if free[best] >= iou_threshold:
            matched[best] = True
            kinds[d] = KINDS.index("tp")
        elif row.max() >= iou_threshold:
            kinds[d] = KINDS.index("duplicate")
        elif other_best[d] >= iou_threshold:
            kinds[d] = KINDS.index("wrong_class")
        elif row.max() >= loc_threshold:
            kinds[d] = KINDS.index("localisation")
    return kinds


def error_breakdown(
    pairs: Iterable[tuple[dict[str, Tensor], dict[str, Tensor]]], score: float = 0.1, backend: str = "faster_coco_eval"
) -> dict:
    """Counts of each kind among detections scored ≥ ``score``, and mAP@0.5 with all detections (``all``), with
    each kind of false positive removed (``without_<kind>``) and with all removed (``without_all``).

    ``pairs``: ``(pred, target)`` per image, as :func:`classify_detections` takes them.
    """
    variants = ("all", *(f"without_{k}" for k in FALSE_POSITIVES), "without_all")
    metrics = {v: MeanAveragePrecision(iou_type="bbox", backend=backend) for v in variants}
    counts = dict.fromkeys(KINDS, 0)
    objects = 0
    for pred, target in pairs:
        kinds = classify_detections(pred, target)
        objects += len(target["labels"])
        shown = pred["scores"] >= score
        for i, kind in enumerate(KINDS):
            counts[kind] += int((shown & (kinds == i)).sum())
        found = kinds == KINDS.index("tp")
        keeps = {"all": torch.ones_like(found), "without_all": found}
        keeps.update({f"without_{k}": kinds != KINDS.index(k) for k in FALSE_POSITIVES})
        for variant, metric in metrics.items():
            keep = keeps[variant]
            metric.update([{k: pred[k][keep] for k in ("boxes", "scores", "labels")}], [target])
    map_50 = {v: float(m.compute()["map_50"]) for v, m in metrics.items()}
    return {"objects": objects, "score": score, "counts": counts, "map_50": map_50}


def class_nms(pred: dict[str, Tensor], iou_threshold: float) -> dict[str, Tensor]:
    """``pred`` after class-wise NMS at ``iou_threshold`` (in decreasing score order)."""
    keep = batched_nms(pred["boxes"].float(), pred["scores"].float(), pred["labels"], iou_threshold)
    return {k: v[keep] for k, v in pred.items()}


@torch.no_grad()
def validation_pairs(checkpoint_path: str, overrides: Sequence[str] = (), nms: float | None = None):
    """``(pred, target)`` of every validation image of the checkpoint's run (on the CPU)."""
    checkpoint = read_checkpoint(checkpoint_path)
    if CHECKPOINT_CONFIG not in checkpoint:
        raise ValueError(f"ckpt_path: {checkpoint_path} carries no run config (written by an older detloss)")
    cfg = OmegaConf.merge(OmegaConf.create(checkpoint[CHECKPOINT_CONFIG]), OmegaConf.from_dotlist(list(overrides)))
    task, _ = load_task(cfg, checkpoint)
    if not isinstance(task, DetectionTask):
        raise ValueError(f"ckpt_path: {checkpoint_path} is a {type(task).__name__} checkpoint, not a detector's")
    datamodule = instantiate(cfg.data)
    datamodule.setup("validate")
    model = task.eval_model.eval()
    for images, targets in datamodule.val_dataloader():
        preds = model.postprocess(model(images), image_size=tuple(images.shape[-2:]), **task.post)
        for pred, target in zip(preds, targets):
            yield (pred if nms is None else class_nms(pred, nms)), target


def table(result: dict, name: str) -> str:
    """Two markdown rows (counts, mAP@0.5) of ``result`` under the label ``name``."""
    counts, maps = result["counts"], result["map_50"]
    head = "| detections | objects | " + " | ".join(KINDS) + " |"
    lines = [head, "| --- | ---: |" + " ---: |" * len(KINDS)]
    lines.append(f"| {name}, score ≥ {result['score']:g} | {result['objects']} | " + " | ".join(
        str(counts[k]) for k in KINDS) + " |")  # fmt: skip
    columns = list(maps)
    lines += ["", "| mAP@0.5 | " + " | ".join(c.replace("_", " ") for c in columns) + " |"]
    lines += [
        "| --- |" + " ---: |" * len(columns),
        f"| {name} | " + " | ".join(f"{maps[c]:.3f}" for c in columns) + " |",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the checkpoint's config")
    parser.add_argument("--score", type=float, default=0.1, help="count the detections scored at least this")
    parser.add_argument("--nms", type=float, default=None, help="class-wise NMS at this IoU after the postprocess")
    parser.add_argument("--backend", default="faster_coco_eval", help="torchmetrics' mAP backend")
    parser.add_argument("--json", default=None, help="also write the result to this file")
    args = parser.parse_args(argv)
    for item in args.overrides:
        if "=" not in item:
            parser.error(f"overrides are key=value, got {item!r}")
    result = error_breakdown(validation_pairs(args.checkpoint, args.overrides, args.nms), args.score, args.backend)
    name = "with NMS" if args.nms is not None else "as evaluated"
    print(table(result, name))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"checkpoint": args.checkpoint, "nms": args.nms, **result}, f, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
