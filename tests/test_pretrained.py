"""Ultralytics YOLOv8 checkpoints as detloss weights: the same raw head maps as Ultralytics' own model.

The checkpoint is one that Ultralytics writes itself (``YOLO("yolov8n.yaml").save(...)``: random weights, nothing
downloaded), its BatchNorm statistics and affine parameters randomised first so that evaluation-mode BatchNorm is
no identity. Needs ``ultralytics`` (the ``pretrained`` extra); skipped without it.
"""

import sys

import pytest
import torch
from conftest import compose_config

from detloss.models import YOLODetector
from detloss.models.pretrained import read_ultralytics
from detloss.train import build

ultralytics = pytest.importorskip("ultralytics", reason="reading Ultralytics checkpoints needs ultralytics")


@pytest.fixture(scope="module")
def yolov8n(tmp_path_factory):
    """A ``yolov8n.pt`` of random weights, written by Ultralytics."""
    torch.manual_seed(0)
    yolo = ultralytics.YOLO("yolov8n.yaml")
    with torch.no_grad():
        for module in yolo.model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
    path = tmp_path_factory.mktemp("ultralytics") / "yolov8n.pt"
    yolo.save(path)
    return path


def theirs(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"].float()


def flat(maps, reg_max=16):
    """detloss's per-level maps as Ultralytics' raw dict: boxes (B, 4·reg_max, A), scores (B, C, A)."""
    return (
        torch.cat([m[:, : 4 * reg_max].flatten(2) for m in maps], 2),
        torch.cat([m[:, 4 * reg_max :].flatten(2) for m in maps], 2),
    )


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_the_raw_head_maps_equal_ultralytics(yolov8n, mode):
    ours, reference = YOLODetector.from_ultralytics(yolov8n), theirs(yolov8n)
    assert (ours.width, ours.num_classes, ours.reg_max) == (0.25, 80, 16)
    getattr(ours, mode)(), getattr(reference, mode)()
    images = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        raw = reference(images)
        raw = raw[1] if mode == "eval" else raw  # in eval mode Ultralytics returns (decoded, raw)
        boxes, scores = flat(ours(images))
    assert boxes.shape == raw["boxes"].shape and scores.shape == raw["scores"].shape == (2, 80, 12 * 16 + 6 * 8 + 3 * 4)
    torch.testing.assert_close(boxes, raw["boxes"], atol=1e-4, rtol=0)
    torch.testing.assert_close(scores, raw["scores"], atol=1e-4, rtol=0)


def test_another_class_count_reinitialises_the_last_class_layer_only(yolov8n):
    full, three = YOLODetector.from_ultralytics(yolov8n), YOLODetector.from_ultralytics(yolov8n, num_classes=3)
    fresh = {f"cls_heads.{i}.2.{p}" for i in range(3) for p in ("weight", "bias")}
    kept = full.state_dict()
    for name, tensor in three.state_dict().items():
        if name in fresh:
            assert tensor.shape[0] == 3 and tensor.shape != kept[name].shape
        else:
            assert torch.equal(tensor, kept[name]), name
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(flat(three.eval()(images))[0], flat(full.eval()(images))[0])  # the box branch is unchanged


def test_model_pretrained_in_the_config(yolov8n, tmp_path):
    cfg = compose_config(f"paths.output_dir={tmp_path}", f"model.pretrained={yolov8n}", "data.num_train=8",
                         "data.num_val=8")  # fmt: skip
    _, task = build(cfg)
    expected = YOLODetector.from_ultralytics(yolov8n, num_classes=5).state_dict()
    got = task.model.state_dict()
    fresh = {f"cls_heads.{i}.2.{p}" for i in range(3) for p in ("weight", "bias")}
    assert all(torch.equal(got[k], expected[k]) for k in expected if k not in fresh)
    with pytest.raises(Exception, match=r"model\.pretrained: .*yolov8n\.pt does not fit .*model=yolo_nano"):
        build(compose_config(f"paths.output_dir={tmp_path}", "model=yolo_small", f"model.pretrained={yolov8n}"))


def test_a_file_of_another_layout_fails_naming_it(tmp_path):
    torch.save({"model": torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt: not an Ultralytics YOLOv8 detection checkpoint"):
        read_ultralytics(tmp_path / "other.pt")


def test_without_ultralytics_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # import ultralytics now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "detloss\[pretrained\]"'):
        read_ultralytics(tmp_path / "yolov8n.pt")
