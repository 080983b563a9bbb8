"""``detloss-predict`` on volumes as nnU-Net writes them: a Decathlon 4D image ``(x, y, z, C)`` or nnU-Net channel
files in, one label map per case out in the input's geometry (shape, affine, zooms, header), sigmoid regions painted
back to labels with ``regions_class_order`` (later regions over earlier ones), mirroring TTA on request."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import compose_config
from scipy import ndimage
from torch import nn

from detloss.predict import list_inputs
from detloss.prediction import Item, VolumeWriter, labels_of
from detloss.segmentation import SegmentationCriterion
from detloss.tasks import VolumetricTask

SHAPE = (6, 12, 10)  # (D, H, W) of the arrays
BRATS = {"whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3]}


def oblique_affine() -> np.ndarray:
    """Anisotropic voxels (x 0.8, y 1.0, z 3.0 mm), turned 30° about z, moved off the origin."""
    turn = math.radians(30)
    rotation = np.array([[math.cos(turn), -math.sin(turn), 0], [math.sin(turn), math.cos(turn), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, 1.0, 3.0])
    affine[:3, 3] = [-40.0, 12.5, 7.0]
    return affine


def brats_case() -> tuple[list[np.ndarray], np.ndarray]:
    """Three channels, each high inside its region's block (whole tumour, core, enhancing), and a fourth of noise;
    the expected labels: 1 edema, 2 core, 3 enhancing, and an enhancing voxel outside the core painted 3."""
    wt, tc, et = (np.zeros(SHAPE, bool) for _ in range(3))
    wt[1:5, 2:10, 1:9] = True
    tc[2:4, 4:8, 3:7] = True
    et[2:4, 5:7, 4:6] = True
    et[1, 2, 1] = True  # enhancing outside the core: the later region wins
    channels = [np.where(m, 50.0, 10.0).astype(np.float32) for m in (wt, tc, et)]
    channels.append(np.random.default_rng(0).normal(0, 1, SHAPE).astype(np.float32))
    expected = np.zeros(SHAPE, np.int16)
    expected[wt], expected[tc], expected[et] = 1, 2, 3
    return channels, expected


class RegionThreshold:
    """A volumetric task's stand-in whose region logits are the first three (z-scored) channels: positive inside."""

    device = torch.device("cpu")
    tta = False

    def infer(self, images):
        self.seen = tuple(images.shape)
        return images[:, :3]


def region_data(**extra) -> dict:
    return {"kind": "volumetric", "class_names": list(BRATS), "category_ids": [0, 1, 2], "in_channels": 4,
            "regions": BRATS, "regions_class_order": [1, 2, 3], **extra}  # fmt: skip


def save(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """A ``(D, H, W)`` array, or channels ``(C, D, H, W)`` as one 4D file ``(x, y, z, C)``."""
    data = array.transpose(2, 1, 0) if array.ndim == 3 else array.transpose(3, 2, 1, 0)
    image = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, str(path))


def read_mask(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    image = nib.load(str(path))
    return image, np.asarray(image.dataobj).transpose(2, 1, 0)


def assert_input_geometry(out: nib.Nifti1Image, source: Path) -> None:
    given = nib.load(str(source))
    assert out.shape == given.shape[:3]
    assert np.allclose(out.affine, given.affine, atol=1e-6)
    assert np.allclose(out.header.get_zooms(), given.header.get_zooms()[:3], atol=1e-6)
    assert int(out.header["sform_code"]) == int(given.header["sform_code"])
    assert int(out.header["qform_code"]) == int(given.header["qform_code"])
    assert out.header.get_xyzt_units() == given.header.get_xyzt_units()
    assert out.get_data_dtype() == np.int16


# ------------------------------------------------------------------------------------------------ regions


def test_regions_are_painted_back_with_regions_class_order():
    # one voxel per combination of (whole tumour, core, enhancing) logits
    combos = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 1], [0, 1, 0], [1, 0, 1]]).bool()
    logits = torch.where(combos.T, 4.0, -4.0)[None, :, :, None, None]  # (1, 3, 7, 1, 1)
    labels = labels_of(logits, region_data())[0, :, 0, 0]
    assert labels.tolist() == [0, 1, 2, 3, 3, 2, 3]  # later regions overwrite earlier ones
    # another order: the whole tumour painted last takes every voxel it holds
    swapped = labels_of(logits.flip(1), region_data(regions_class_order=[3, 2, 1]))[0, :, 0, 0]
    assert swapped.tolist() == [0, 1, 1, 1, 3, 2, 1]
    assert labels_of(torch.zeros(1, 3, 2, 2, 2), region_data()).eq(0).all()  # sigmoid 0.5 is not above 0.5
    with pytest.raises(ValueError, match="regions_class_order"):
        labels_of(logits, region_data(regions_class_order=None))
    # softmax classes: the argmax, written as the data's category id
    softmax = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]]).T[None, :, :, None, None]
    data = {"category_ids": [0, 4, 9]}
    assert labels_of(softmax, data)[0, :, 0, 0].tolist() == [4, 0]


# ------------------------------------------------------------------------------------------------ layouts


def test_a_decathlon_4d_case_is_written_in_its_geometry(tmp_path):
    channels, expected = brats_case()
    save(tmp_path / "BRATS_007.nii.gz", np.stack(channels), oblique_affine())
    (tmp_path / "._BRATS_007.nii.gz").write_bytes(b"\x00" * 16)  # a macOS copy in the archive: not an input
    items = list_inputs(tmp_path, VolumeWriter.extensions)
    assert [i.file_name for i in items] == ["BRATS_007.nii.gz"]
    task = RegionThreshold()
    writer = VolumeWriter(task, region_data(), tmp_path / "out", {})
    writer(items[0])
    assert task.seen == (1, 4, *SHAPE)
    out, mask = read_mask(tmp_path / "out" / "masks" / "BRATS_007.nii.gz")
    assert_input_geometry(out, tmp_path / "BRATS_007.nii.gz")
    assert np.array_equal(mask, expected)


def test_nnunet_channel_files_are_written_in_their_geometry(tmp_path):
    channels, expected = brats_case()
    for c, channel in enumerate(channels):
        save(tmp_path / f"BRATS_007_{c:04d}.nii.gz", channel, oblique_affine())
    task = RegionThreshold()
    writer = VolumeWriter(task, region_data(), tmp_path / "out", {})
    for item in list_inputs(tmp_path, VolumeWriter.extensions):
        writer(item)
    assert task.seen == (1, 4, *SHAPE)
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == ["BRATS_007.nii.gz"]
    out, mask = read_mask(tmp_path / "out" / "masks" / "BRATS_007.nii.gz")
    assert_input_geometry(out, tmp_path / "BRATS_007_0000.nii.gz")
    assert np.array_equal(mask, expected)


def test_a_planned_spacing_is_undone_before_writing(tmp_path):
    # the plan's 1 mm grid is (18, 12, 8) voxels; the mask comes back on the case's (6, 12, 10)
    channels, expected = brats_case()
    save(tmp_path / "BRATS_007.nii.gz", np.stack(channels), oblique_affine())
    data = region_data(spacing=[1.0, 1.0, 1.0], normalization=[{"scheme": "zscore"}] * 4)
    task = RegionThreshold()
    VolumeWriter(task, data, tmp_path / "out", {})(Item(tmp_path / "BRATS_007.nii.gz", "BRATS_007.nii.gz", 0))
    assert task.seen == (1, 4, 18, 12, 8)
    out, mask = read_mask(tmp_path / "out" / "masks" / "BRATS_007.nii.gz")
    assert_input_geometry(out, tmp_path / "BRATS_007.nii.gz")
    # away from the blocks' borders, where resampling twice blurs, the labels are the case's
    inner = ndimage.minimum_filter(expected, 3) == ndimage.maximum_filter(expected, 3)
    assert inner.sum() > 100 and np.array_equal(mask[inner], expected[inner])


def test_an_image_scaled_in_its_header_gives_unscaled_labels(tmp_path):
    channels, expected = brats_case()
    image = nib.Nifti1Image(np.ascontiguousarray(np.stack(channels).transpose(3, 2, 1, 0)), oblique_affine())
    image.header.set_slope_inter(2.0, -5.0)
    nib.save(image, str(tmp_path / "scaled.nii.gz"))
    VolumeWriter(RegionThreshold(), region_data(), tmp_path / "out", {})(
        Item(tmp_path / "scaled.nii.gz", "scaled.nii.gz", 0)
    )
    out, mask = read_mask(tmp_path / "out" / "masks" / "scaled.nii.gz")
    assert np.array_equal(mask, expected) and out.dataobj.slope == 1 and out.dataobj.inter == 0


def test_cases_of_the_wrong_layout_are_named(tmp_path):
    channels, _ = brats_case()
    save(tmp_path / "three.nii.gz", np.stack(channels[:3]), oblique_affine())
    writer = VolumeWriter(RegionThreshold(), region_data(), tmp_path / "out", {})
    with pytest.raises(ValueError, match=r"three.nii.gz: 3 channels along its 4th axis .* the model takes 4"):
        writer(Item(tmp_path / "three.nii.gz", "three.nii.gz", 0))
    save(tmp_path / "lone.nii.gz", channels[0], oblique_affine())
    with pytest.raises(ValueError, match=r"lone.nii.gz: a case of 4 channels is one 4D file"):
        writer(Item(tmp_path / "lone.nii.gz", "lone.nii.gz", 0))


# ------------------------------------------------------------------------------------------------ TTA


class WidthRamp(nn.Module):
    """Logits ``(0, w − 2.5)`` at width index ``w`` of its window: class 1 from ``w = 3`` on."""

    def forward(self, x):
        ramp = (torch.arange(x.shape[-1], dtype=x.dtype) - 2.5).expand(x.shape[0], 1, *x.shape[2:])
        return torch.cat([torch.zeros_like(ramp), ramp], 1)


@pytest.mark.parametrize("tta", [False, True])
def test_predict_tta_mirrors_each_window(tmp_path, tta):
    # one window of the whole (4, 6, 8) case: mirrored, the logit is the mean of w − 2.5 and (7 − w) − 2.5, i.e. 1
    save(tmp_path / "case.nii.gz", np.ones((4, 6, 8), np.float32), oblique_affine())
    task = VolumetricTask(WidthRamp(), SegmentationCriterion(2), torch.optim.SGD, roi_size=(4, 6, 8)).eval()
    data = {"class_names": ["background", "tumour"], "category_ids": [0, 5], "in_channels": 1}
    VolumeWriter(task, data, tmp_path / "out", {"tta": tta})(Item(tmp_path / "case.nii.gz", "case.nii.gz", 0))
    assert task.tta is tta
    _, mask = read_mask(tmp_path / "out" / "masks" / "case.nii.gz")
    expected = np.full((4, 6, 8), 5) if tta else np.broadcast_to(np.where(np.arange(8) >= 3, 5, 0), (4, 6, 8))
    assert np.array_equal(mask, expected)


# ------------------------------------------------------------------------------------------------ end to end


def write_decathlon(root: Path, cases: int = 5) -> Path:
    """A tiny Decathlon Task01-like folder: 4D images of 4 modalities, labels 1 edema, 2 core, 3 enhancing."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(1)
    affine = oblique_affine()
    training = []
    for i in range(cases):
        channels, labels = brats_case()
        channels = [c + rng.normal(0, 2, SHAPE).astype(np.float32) for c in channels]
        labels = np.roll(labels, i % 2, axis=2)
        channels = [np.roll(c, i % 2, axis=2) for c in channels]
        save(root / "imagesTr" / f"BRATS_{i:03d}.nii.gz", np.stack(channels), affine)
        save(root / "labelsTr" / f"BRATS_{i:03d}.nii.gz", labels.astype(np.uint8), affine)
        training.append({"image": f"./imagesTr/BRATS_{i:03d}.nii.gz", "label": f"./labelsTr/BRATS_{i:03d}.nii.gz"})
    spec = {"name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
            "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
            "numTraining": cases, "training": training}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


def test_predict_decathlon_images_with_a_region_checkpoint(tmp_path):
    from detloss.train import train

    root = write_decathlon(tmp_path / "Task01_BrainTumour")
    regions = "data.regions={whole_tumor:[1,2,3],tumor_core:[2,3],enhancing_tumor:[3]}"
    overrides = ["task=volumetric", "data=msd", f"data.root={root}", regions, "data.patch_size=[4,8,8]",
                 "data.batch_size=2", "data.patches_per_epoch=4", "data.num_workers=0", "model.base_channels=4",
                 "model.depth=1", "trainer.max_epochs=1", "logger=none", "task.num_previews=0"]  # fmt: skip
    train(compose_config(f"paths.output_dir={tmp_path / 'run'}", *overrides))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    command = [sys.executable, "-m", "detloss.predict", f"ckpt_path={ckpt}", f"input={root / 'imagesTr'}",
               "output=out", "predict.tta=true"]  # fmt: skip
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    masks = sorted(p.name for p in (tmp_path / "out" / "masks").iterdir())
    assert masks == [f"BRATS_{i:03d}.nii.gz" for i in range(5)]
    out, mask = read_mask(tmp_path / "out" / "masks" / masks[0])
    assert_input_geometry(out, root / "imagesTr" / masks[0])
    assert set(np.unique(mask).tolist()) <= {0, 1, 2, 3}
