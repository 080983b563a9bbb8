"""``detloss-predict``: boxes in the original image's pixels with the data's own category ids, masks at the
image's size, drawn pictures, from the checkpoint alone."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config
from PIL import Image
from test_data import make_coco, make_masks, save_png
from torch import nn

from detloss.predict import list_inputs
from detloss.prediction import BoxWriter, Item, MaskWriter, VolumeWriter
from detloss.train import train

TINY = ["data.batch_size=3", "data.num_workers=0", "trainer.max_epochs=1", "logger=none", "task.num_previews=0"]


def run_predict(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "detloss.predict", *args], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


class FixedDetector(nn.Module):
    """Predicts one box, ``[10, 20, 30, 40]`` in the letterboxed input, of label 1 and score 0.9."""

    def forward(self, images):
        self.seen = images.shape
        return images

    def postprocess(self, feats, image_size=None, **kwargs):
        box = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
        return [{"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}]


class StubTask:
    device = torch.device("cpu")

    def __init__(self, model):
        self.model = self.eval_model = model


def test_boxes_are_written_in_the_original_pixels_with_the_datas_category_ids(tmp_path):
    save_png(tmp_path / "wide.png", np.full((100, 200, 3), 50))  # 200 x 100 -> 64 x 32, 16 px of padding on top
    data = {"class_names": ["cat", "dog"], "category_ids": [3, 7], "image_size": 64, "fill": 0.5, "in_channels": 3}
    options = {"conf_threshold": 0.25, "iou_threshold": 0.7, "max_det": 10, "draw": True}
    writer = BoxWriter(StubTask(FixedDetector()), data, tmp_path / "out", options)
    writer(Item(tmp_path / "wide.png", "wide.png", 5))
    writer.close()
    assert writer.model.seen == (1, 3, 64, 64)
    [result] = json.loads((tmp_path / "out" / "predictions.json").read_text())
    # scale 64 / 200 = 0.32: x (10 - 0) / 0.32, y (20 - 16) / 0.32; w 20 / 0.32, h 20 / 0.32
    assert result == {"image_id": 5, "file_name": "wide.png", "category_id": 7, "bbox": [31.25, 12.5, 62.5, 62.5],
                      "score": 0.9}  # fmt: skip
    assert Image.open(tmp_path / "out" / "drawn" / "wide.png").size == (200, 100)


class HalfMask(nn.Module):
    """Class 2 on the left half of its input, class 0 on the right."""

    def forward(self, images):
        logits = torch.zeros(images.shape[0], 3, *images.shape[-2:])
        logits[:, 2, :, : images.shape[-1] // 2] = 5.0
        logits[:, 0, :, images.shape[-1] // 2 :] = 5.0
        return logits


@pytest.mark.parametrize("resize", ["letterbox", "resize"])
def test_masks_are_written_at_the_images_size(tmp_path, resize):
    save_png(tmp_path / "tall.png", np.full((40, 20), 80))  # 20 x 40, grey
    data = {"class_names": ["bg", "a", "b"], "category_ids": [0, 1, 2], "image_size": 32, "in_channels": 1,
            "resize": resize, "fill": 0.0}  # fmt: skip
    writer = MaskWriter(StubTask(HalfMask()), data, tmp_path / "out", {"draw": True})
    writer(Item(tmp_path / "tall.png", "tall.png", "tall.png"))
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "tall.png"))
    assert mask.shape == (40, 20) and set(np.unique(mask)) == {0, 2}
    # letterboxed, the image fills the middle 16 of 32 columns: the model's left half is its left 8 px (of 16)
    assert (mask[:, :9] == 2).all() and (mask[:, 11:] == 0).all()
    assert Image.open(tmp_path / "out" / "drawn" / "tall.png").size == (20, 40)


def test_inputs_from_a_file_a_folder_or_a_coco_file(tmp_path):
    images, annotations = make_coco(tmp_path)
    assert [i.file_name for i in list_inputs(images, (".png",))] == ["a.png", "b.png", "c.png"]
    assert list_inputs(images / "b.png", (".png",)) == [Item(images / "b.png", "b.png", "b.png")]
    coco = list_inputs(annotations, (".png",), image_dir=images)
    assert [(i.image_id, i.file_name) for i in coco] == [(10, "a.png"), (11, "b.png"), (12, "c.png")]
    with pytest.raises(FileNotFoundError, match=r"input: .*train\.json: image file not found"):
        list_inputs(annotations, (".png",))  # relative to the JSON's folder, where they are not
    with pytest.raises(FileNotFoundError, match="input: no file or folder at"):
        list_inputs(tmp_path / "nope", (".png",))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="input: no files of"):
        list_inputs(tmp_path / "empty", (".png",))


def test_predict_a_coco_file_with_a_detection_checkpoint(tmp_path):
    train_split, val_split = make_coco(tmp_path, "train"), make_coco(tmp_path, "val")
    paths = [f"data.train_images={train_split[0]}", f"data.train_annotations={train_split[1]}",
             f"data.val_images={val_split[0]}", f"data.val_annotations={val_split[1]}"]  # fmt: skip
    train(compose_config(f"paths.output_dir={tmp_path / 'run'}", "data=coco", "data.image_size=64", *paths, *TINY))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    images, annotations = val_split
    run_predict(f"ckpt_path={ckpt}", f"input={annotations}", f"predict.image_dir={images}", "output=out",
                "predict.conf_threshold=0", "predict.max_det=5", cwd=tmp_path)  # fmt: skip
    results = json.loads((tmp_path / "out" / "predictions.json").read_text())
    sizes = {10: (64, 48), 11: (40, 80), 12: (32, 32)}
    per_image = [sum(r["image_id"] == i for r in results) for i in sizes]  # boxes left in the padding are dropped
    assert all(1 <= n <= 5 for n in per_image), per_image
    assert {r["category_id"] for r in results} <= {3, 7, 42}
    for r in results:
        x, y, w, h = r["bbox"]
        width, height = sizes[r["image_id"]]
        assert r["file_name"] in ("a.png", "b.png", "c.png") and 0 <= x <= x + w <= width and 0 <= y <= y + h <= height
    assert sorted(p.name for p in (tmp_path / "out" / "drawn").iterdir()) == ["a.png", "b.png", "c.png"]


def test_predict_a_folder_with_a_segmentation_checkpoint(tmp_path):
    root = make_masks(tmp_path / "data")
    overrides = ["task=segmentation", "data=masks", f"data.root={root}", "data.num_classes=3", "data.image_size=32"]
    train(compose_config(f"paths.output_dir={tmp_path / 'run'}", *overrides, *TINY))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    run_predict(f"ckpt_path={ckpt}", f"input={root / 'images' / 'val'}", "output=out", cwd=tmp_path)
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "c.png"))
    assert mask.shape == (24, 32) and set(np.unique(mask)) <= {0, 1, 2}
    assert (tmp_path / "out" / "drawn" / "c.png").is_file()


class ThresholdTask(StubTask):
    """Class 2 where the first channel is above 0 (after the z-score), else 0: a volumetric task's ``infer``."""

    def infer(self, images):
        self.seen = images.shape
        high = (images[:, :1] > 0).float()
        return torch.cat([1 - high, torch.zeros_like(high), high], 1)


def save_nifti(path: Path, zyx: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.ascontiguousarray(zyx.transpose(2, 1, 0)), affine), str(path))


def test_volumes_are_written_as_nifti_masks_with_the_cases_affine(tmp_path):
    import nibabel as nib

    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    affine[:3, 3] = [5.0, -3.0, 7.0]
    ramp = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8)  # (D, H, W): the upper half above its mean
    for name in ("case1_0000.nii.gz", "case1_0001.nii.gz"):
        save_nifti(tmp_path / name, ramp, affine)
    data = {"class_names": ["background", "edema", "tumour"], "category_ids": [0, 1, 7], "in_channels": 2}
    task = ThresholdTask(None)
    writer = VolumeWriter(task, data, tmp_path / "out", {})
    items = list_inputs(tmp_path, VolumeWriter.extensions)
    assert [i.file_name for i in items] == ["case1_0000.nii.gz", "case1_0001.nii.gz"]
    for item in items:  # the item of channel 0001 is read with its case
        writer(item)
    assert task.seen == (1, 2, 4, 6, 8)
    out = nib.load(str(tmp_path / "out" / "masks" / "case1.nii.gz"))
    assert np.allclose(out.affine, affine) and out.shape == (8, 6, 4)
    mask = np.asarray(out.dataobj).transpose(2, 1, 0)
    assert np.array_equal(mask, np.where(ramp > ramp.mean(), 7, 0))  # label 2 written as its category id 7
    (tmp_path / "case2_0000.nii.gz").write_bytes((tmp_path / "case1_0000.nii.gz").read_bytes())
    with pytest.raises(ValueError, match=r"case2_0001.nii.gz: channel file missing for case case2"):
        writer(Item(tmp_path / "case2_0000.nii.gz", "case2_0000.nii.gz", "case2_0000.nii.gz"))


def test_predict_volumes_with_a_volumetric_checkpoint(tmp_path):
    data = ["task=volumetric", f"data.cache_dir={tmp_path / 'cache'}", "data.num_cases=5", "data.shape=[16,32,32]"]
    data += ["data.patch_size=[16,32,32]", "data.patches_per_epoch=4", "data.batch_size=2"]
    train(compose_config(f"paths.output_dir={tmp_path / 'run'}", *data, *TINY[1:]))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    images = next((tmp_path / "cache").rglob("imagesTr"))
    run_predict(f"ckpt_path={ckpt}", f"input={images}", "output=out", cwd=tmp_path)
    masks = sorted(p.name for p in (tmp_path / "out" / "masks").iterdir())
    assert len(masks) == 5 and all(m.endswith(".nii.gz") for m in masks)
    import nibabel as nib

    mask = nib.load(str(tmp_path / "out" / "masks" / masks[0]))
    assert mask.shape == (32, 32, 16) and set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2, 3}
