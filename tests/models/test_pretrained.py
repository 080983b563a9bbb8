"""Ultralytics YOLOv8 checkpoints as detloss weights: the same raw head maps as Ultralytics' own model.

The checkpoints are built with the installed Ultralytics (the ``dev`` extra) from ``yolov8n.yaml``, nothing
downloaded: a ``DetectionModel`` of random weights, its BatchNorm statistics and affine parameters randomised first
so that evaluation-mode BatchNorm is no identity, saved as Ultralytics' trainer saves one (``last.pt``: ``"model"``
``None`` and the model in half precision under ``"ema"``) and as its ``strip_optimizer`` then finishes it
(``best.pt``, ``yolov8n.pt``: the half-precision model under ``"model"``). Ultralytics checks nothing online here
(``YOLO_OFFLINE``, set before it is imported). Skipped without ``ultralytics``.
"""

import copy
import os
import socket
import sys

import pytest
import torch
from conftest import compose_config

from detloss.models import YOLODetector
from detloss.models.pretrained import YOLOV8_CLASS_BRANCH, read_ultralytics
from detloss.train import build

os.environ.setdefault("YOLO_OFFLINE", "1")  # no DNS look-up when ultralytics is imported
ultralytics = pytest.importorskip("ultralytics", reason="reading Ultralytics checkpoints needs ultralytics")
from ultralytics.nn.modules.head import Detect  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402
from ultralytics.utils.torch_utils import strip_optimizer  # noqa: E402


@pytest.fixture(autouse=True)
def as_a_fresh_process(monkeypatch):
    """``Detect.legacy`` as a process that only loads checkpoints sees it (the class default; building a YOLOv8
    model sets the class attribute to ``True``), and no network."""
    monkeypatch.setattr(Detect, "legacy", False)

    def offline(*args, **kwargs):
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    monkeypatch.setattr(socket.socket, "connect", offline)


def yolov8n_model() -> DetectionModel:
    """Ultralytics' YOLOv8n from its yaml, random weights, BatchNorm randomised."""
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", verbose=False)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """``{"last": path, "best": path, "float": the model in float32}``: Ultralytics' two checkpoint forms."""
    model = yolov8n_model()
    folder = tmp_path_factory.mktemp("ultralytics")
    last, best = folder / "last.pt", folder / "yolov8n.pt"
    # what ultralytics.engine.trainer.BaseTrainer.save_model writes, less its bookkeeping of the run
    torch.save(
        {
            "epoch": 0,
            "best_fitness": None,
            "model": None,  # resume and final checkpoints derive from the EMA
            "ema": copy.deepcopy(model).half(),
            "updates": 0,
            "optimizer": None,
            "train_args": {},
            "version": ultralytics.__version__,
        },
        last,
    )
    strip_optimizer(last, best)  # the final checkpoint: "model" is the EMA, in half precision
    return {"last": last, "best": best, "float": model}


@pytest.fixture(scope="module")
def yolov8n(checkpoints):
    """A ``yolov8n.pt`` of random weights, written by Ultralytics."""
    return checkpoints["best"]


def theirs(path):
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return (checkpoint.get("ema") or checkpoint["model"]).float()


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


@pytest.mark.parametrize("form, legacy", [("last", False), ("best", True)])
def test_a_checkpoint_saved_as_ultralytics_saves_it_loads_with_its_outputs(checkpoints, form, legacy, monkeypatch):
    # whatever Detect.legacy (a class attribute) holds, False as in a process that only loads: the head is read
    # from its layers
    monkeypatch.setattr(Detect, "legacy", legacy)
    path = checkpoints[form]
    ours, reference = YOLODetector.from_ultralytics(path).eval(), theirs(path).eval()
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        boxes, scores = flat(ours(images))
        raw = reference(images)[1]
        original = checkpoints["float"](images)[1]  # the float32 model before the checkpoint's half precision
    torch.testing.assert_close(boxes, raw["boxes"], atol=1e-4, rtol=0)
    torch.testing.assert_close(scores, raw["scores"], atol=1e-4, rtol=0)
    for ours_, full in ((boxes, original["boxes"]), (scores, original["scores"])):
        torch.testing.assert_close(ours_, full, atol=0.05 * float(full.abs().max()), rtol=1e-2)  # half's rounding


def test_a_depthwise_class_branch_is_refused_naming_the_layers(checkpoints, tmp_path):
    model = copy.deepcopy(checkpoints["float"])
    head = model.model[-1]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Detect, "legacy", False)  # Detect builds YOLO11's depthwise class branches
        head.cv3 = Detect(nc=head.nc, ch=tuple(b[0].conv.in_channels for b in head.cv3)).cv3
    torch.save({"model": model.half(), "ema": None}, tmp_path / "yolo11_head.pt")
    with pytest.raises(ValueError, match=r"yolo11_head\.pt: its head is not YOLOv8's \(class branches Sequential, "):
        read_ultralytics(tmp_path / "yolo11_head.pt")
    assert YOLOV8_CLASS_BRANCH == ("Conv", "Conv", "Conv2d")


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
