"""tools/detection_errors.py: each kind of false positive on hand-built detections, the mAP each costs by hand, and
the tool end to end on a checkpoint."""

import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_config

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from detection_errors import KINDS, class_nms, classify_detections, error_breakdown, main  # noqa: E402

from detloss.train import train  # noqa: E402


def det(boxes, scores, labels):
    return {"boxes": torch.as_tensor(boxes, dtype=torch.float32), "scores": torch.as_tensor(scores),
            "labels": torch.as_tensor(labels)}  # fmt: skip


def gt(boxes, labels):
    return {"boxes": torch.as_tensor(boxes, dtype=torch.float32), "labels": torch.as_tensor(labels)}


def kinds_of(pred, target):
    return [KINDS[k] for k in classify_detections(pred, target).tolist()]


def test_each_kind_of_detection_is_told_apart():
    target = gt([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1])
    pred = det(
        [
            [0, 0, 10, 10],  # class 0 on object 0: matched first
            [0, 0, 10, 9],  # class 0 on object 0 again (IoU 0.9): a duplicate
            [0, 0, 10, 10],  # class 2 on object 0: the wrong class
            [20, 20, 40, 40],  # class 1 on object 1 at IoU 0.25: localisation
            [50, 50, 60, 60],  # class 0 on nothing: background
        ],
        [0.9, 0.8, 0.7, 0.6, 0.5],
        [0, 0, 2, 1, 0],
    )
    assert kinds_of(pred, target) == ["tp", "duplicate", "wrong_class", "localisation", "background"]


def test_matching_follows_the_scores_not_the_overlap():
    target = gt([[0, 0, 10, 10]], [0])
    pred = det([[0, 0, 10, 10], [0, 0, 10, 7]], [0.4, 0.8], [0, 0])  # the worse box (IoU 0.7) scores higher
    assert kinds_of(pred, target) == ["duplicate", "tp"]


def test_a_second_object_is_matched_before_a_duplicate_is_declared():
    target = gt([[0, 0, 10, 10], [0, 0, 10, 8]], [0, 0])  # two overlapping objects of one class (IoU 0.8)
    pred = det([[0, 0, 10, 10], [0, 0, 10, 9]], [0.9, 0.8], [0, 0])
    assert kinds_of(pred, target) == ["tp", "tp"]


def test_images_without_objects_or_detections():
    assert kinds_of(det([[0, 0, 5, 5]], [0.5], [1]), gt(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))) == [
        "background"
    ]
    assert classify_detections(det(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long)),
                               gt([[0, 0, 5, 5]], [0])).shape == (0,)  # fmt: skip


def test_the_map_a_duplicate_costs_by_hand():
    # image 1: its object found at 0.5 and again at 0.4; image 2: its object found at 0.3. Ranked: TP, FP, TP:
    # precision 1 up to recall 0.5, then 2/3 up to recall 1. COCO's 101 recall points: (51 · 1 + 50 · 2/3) / 101.
    pairs = [
        (det([[0, 0, 10, 10], [0, 0, 10, 9]], [0.5, 0.4], [0, 0]), gt([[0, 0, 10, 10]], [0])),
        (det([[5, 5, 20, 20]], [0.3], [0]), gt([[5, 5, 20, 20]], [0])),
    ]
    result = error_breakdown(pairs, score=0.35)
    assert result["objects"] == 2
    assert result["counts"] == {"tp": 1, "duplicate": 1, "wrong_class": 0, "localisation": 0, "background": 0}
    assert result["map_50"]["all"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-4)
    assert result["map_50"]["without_duplicate"] == pytest.approx(1.0)
    assert result["map_50"]["without_wrong_class"] == pytest.approx(result["map_50"]["all"])
    assert result["map_50"]["without_all"] == pytest.approx(1.0)


def test_class_nms_removes_the_lower_overlapping_box_of_a_class_only():
    pred = det([[0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 10, 9]], [0.9, 0.8, 0.7], [0, 0, 1])
    kept = class_nms(pred, 0.7)
    assert kept["scores"].tolist() == pytest.approx([0.9, 0.7]) and kept["labels"].tolist() == [0, 1]


def test_the_tool_on_a_trained_checkpoint(tmp_path, capsys):
    tiny = ["data.num_train=16", "data.num_val=8", "data.batch_size=8", "data.image_size=64", "trainer.max_epochs=1",
            "logger=none", "task.num_previews=0", "loss=yolo26"]  # fmt: skip
    train(compose_config(f"paths.output_dir={tmp_path}", *tiny))
    ckpt = next(tmp_path.glob("**/last.ckpt"))
    result = main([str(ckpt), "data.num_val=4", "--score", "0.0", "--json", str(tmp_path / "errors.json")])
    assert result["objects"] > 0 and sum(result["counts"].values()) > 0  # a 1-epoch model gives its top-k scores
    assert all(0 <= v <= 1 for v in result["map_50"].values())
    assert result["map_50"]["without_all"] >= result["map_50"]["all"]
    assert "| mAP@0.5 | all |" in capsys.readouterr().out and (tmp_path / "errors.json").is_file()
    with_nms = main([str(ckpt), "data.num_val=4", "--score", "0.0", "--nms", "0.5"])
    assert sum(with_nms["counts"].values()) <= sum(result["counts"].values())
