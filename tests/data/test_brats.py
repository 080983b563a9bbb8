"""The embedded BraTS-like data (data=brats): the generator, its Decathlon folder, and task=brats end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detloss.data import BRATS_REGIONS, BraTSDataModule, MSDDataset, generate_brats
from detloss.data.brats import TISSUE, generate_brats_case
from detloss.train import train

#: a tiny run of task=brats: 10 cases of 16 × 32 × 32 voxels, patches of the whole volume
SMALL = [
    "task=brats",
    "data.num_cases=10",
    "data.shape=[16,32,32]",
    "data.patch_size=[16,32,32]",
    "data.patches_per_epoch=4",
    "model.base_channels=4",
    "model.depth=3",
]


def test_a_case_has_four_contrasts_nested_labels_and_look_alikes():
    image, labels = generate_brats_case(np.random.default_rng([0, 3]))
    assert image.shape == (4, 40, 48, 48) and image.dtype == np.float32 and labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3}
    assert np.isfinite(image).all() and (image >= 0).all()
    flair, t1ce = image[0], image[2]
    # the enhancing rim is bright on T1ce, the non-enhancing core dark; edema is bright on FLAIR
    assert t1ce[labels == 3].mean() > t1ce[labels == 2].mean() + 0.3
    assert flair[labels == 1].mean() > flair[(labels == 0) & (flair > 0.2)].mean() + 0.2
    # look-alikes outside the tumour: T1ce as bright as the rim (vessels) and FLAIR as bright as edema (the cap)
    outside = labels == 0
    assert (t1ce[outside] > TISSUE["enhancing"][2] - 0.1).sum() > 10
    assert (flair[outside] > TISSUE["cap"][0] - 0.1).sum() > 10
    empty = generate_brats_case(np.random.default_rng([0, 3]), p_empty=1.0)[1]
    assert not empty.any()


def test_written_once_in_the_decathlon_layout(tmp_path):
    root = generate_brats(5, (16, 24, 24), seed=3, cache_dir=tmp_path)
    assert generate_brats(5, (16, 24, 24), seed=3, cache_dir=tmp_path) == root  # read back, not rewritten
    assert generate_brats(5, (16, 24, 24), seed=4, cache_dir=tmp_path) != root
    spec = json.loads((root / "dataset.json").read_text())
    assert spec["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"} and spec["numTraining"] == 5
    assert spec["training"][0] == {"image": "./imagesTr/BRATS_000.nii.gz", "label": "./labelsTr/BRATS_000.nii.gz"}
    data = MSDDataset(root)
    assert data.in_channels == 4 and data.cases[0].shape == (16, 24, 24) and data.cases[0].spacing == (1.5, 1.5, 1.5)
    expected = generate_brats_case(np.random.default_rng([3, 1]), (16, 24, 24))
    assert np.allclose(np.stack(data.read_channels(1)), expected[0]) and np.array_equal(data.raw_labels(1), expected[1])
    with pytest.raises(ValueError, match="shape must be 3 sides >= 16"):
        generate_brats(5, (8, 24, 24), cache_dir=tmp_path)


def test_the_data_module_trains_the_brats_regions(tmp_path):
    dm = BraTSDataModule(num_cases=10, shape=(16, 32, 32), patch_size=(16, 32, 32), cache_dir=tmp_path)
    facts = dm.describe()
    assert facts["class_names"] == list(BRATS_REGIONS) and facts["regions_class_order"] == [1, 2, 3]
    assert facts["label_names"] == ["background", "edema", "non-enhancing tumor", "enhancing tumour"]
    _, target = dm.val_dataset[0]
    wt, tc, et = target["labels"].bool()
    assert (tc <= wt).all() and (et <= tc).all() and et.any()


def test_one_epoch_of_task_brats(tmp_path, compose):
    cfg = compose(*SMALL, f"data.cache_dir={tmp_path / 'cache'}", "+trainer.fast_dev_run=2", "callbacks=none")
    assert set(cfg.loss.terms) == {"dice", "bce"} and cfg.task_name == "brats"
    metrics = train(cfg)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "ok"
    for key in ("val/dice/whole_tumor", "val/dice/tumor_core", "val/dice/enhancing_tumor", "val/loss/scale0/bce"):
        assert key in metrics, key
    assert {"train/loss/scale0/dice", "train/loss/scale1/bce"} <= set(record["train"])
