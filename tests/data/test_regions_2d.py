"""Regions of 2D masks (``data=masks data.regions=...``): the data module's region masks (made after the letterbox,
ignored pixels in every channel), its facts and counts; the 2D task's metrics per region against hand-computed
values; a whole run (the region loss chosen by itself) and its predictions painted back to mask values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import compose_config, quiet_trainer
from PIL import Image
from test_data import make_masks
from test_predict import TINY, run_predict
from torch import nn

from detloss.data import MaskDataModule
from detloss.train import build_task, train

#: over make_masks' labels 1 (a 6 × 15 block) and 2 (an 8 × 6 block), 255 its top row
REGIONS = {"whole tumor": [1, 2], "core": [2]}


def region_data(root, **kwargs) -> MaskDataModule:
    return MaskDataModule(root, num_classes=3, image_size=32, batch_size=2, regions=REGIONS, **kwargs)


def test_a_mask_folder_with_regions_gives_region_masks_and_region_facts(tmp_path):
    root = make_masks(tmp_path / "ds")
    plain = MaskDataModule(root, num_classes=3, image_size=32, batch_size=2)
    data = region_data(root)
    assert data.class_names == ["whole tumor", "core"] and data.label_names == ["class_0", "class_1", "class_2"]
    facts = data.describe()
    assert facts["regions"] == {"whole tumor": [1, 2], "core": [2]} and facts["regions_class_order"] == [1, 2]
    assert facts["label_names"] == data.label_names and facts["category_ids"] == [0, 1, 2]
    images, labels = next(iter(plain.val_dataloader()))
    region_images, masks = next(iter(data.val_dataloader()))
    assert torch.equal(images, region_images) and masks.shape == (1, 2, 32, 32)
    ignored = labels[0] == 255  # the mask's top row and the letterbox's padding
    assert ignored.sum() > 32 and (masks[0][:, ignored] == 255).all()
    kept = ~ignored
    assert torch.equal(masks[0, 0][kept], ((labels[0] == 1) | (labels[0] == 2))[kept].long())
    assert torch.equal(masks[0, 1][kept], (labels[0] == 2)[kept].long())
    _, train_masks = next(iter(data.train_dataloader()))
    assert train_masks.shape == (2, 2, 32, 32)
    counts = plain.class_counts()  # pixels per mask value; per region, those of its values
    assert data.class_counts() == [counts[1] + counts[2], counts[2]]


def test_regions_that_the_masks_cannot_hold_are_refused(tmp_path):
    root = make_masks(tmp_path / "ds")
    with pytest.raises(ValueError, match=r"data.regions: region 'core' holds label values \[3\]"):
        MaskDataModule(root, num_classes=3, regions={"core": [3]})
    with pytest.raises(ValueError, match="data.regions_class_order is set but data.regions is not"):
        MaskDataModule(root, num_classes=3, regions_class_order=[1])


class Fixed(nn.Module):
    """Confident logits (+8 inside, −8 outside) of fixed region masks ``(R, H, W)``, whatever the image."""

    def __init__(self, masks: torch.Tensor):
        super().__init__()
        self.register_buffer("masks", masks.float())
        self.scale = nn.Parameter(torch.tensor(8.0))

    def forward(self, images):
        return ((self.masks * 2 - 1) * self.scale).expand(len(images), *self.masks.shape)


def test_the_2d_task_scores_each_region_on_its_sigmoid_channel(tmp_path):
    root = make_masks(tmp_path / "ds")
    data = region_data(root)
    regions = "data.regions={whole_tumor:[1,2],core:[2]}"  # the task's regions: a fact of the data's config
    cfg = compose_config("task=segmentation", "data=masks", f"data.root={root}", "data.num_classes=3",
                         "data.image_size=32", regions, "loss=dice_bce_regions", "model.base_channels=8",
                         "model.depth=2")  # fmt: skip
    task = build_task(cfg, data.describe())
    assert task.regions == {"whole_tumor": [1, 2], "core": [2]} and task.metric_names == ["whole_tumor", "core"]
    _, masks = next(iter(data.val_dataloader()))
    target = masks[0].clone()
    pred = (target == 1).long()
    pred[0][target[0] == 255] = 1  # whole tumour found, and "found" in ignored pixels too: they count nowhere
    pred[1] = 0  # the core missed
    task.model = Fixed(pred)
    (result,) = quiet_trainer(default_root_dir=tmp_path).validate(task, data.val_dataloader(), verbose=False)
    assert result["val/dice/whole_tumor"] == pytest.approx(1.0) and result["val/dice/core"] == pytest.approx(0.0)
    assert result["val/dice"] == pytest.approx(0.5)
    assert result["val/dice_pooled/whole_tumor"] == pytest.approx(1.0)
    assert result["val/dice_pooled"] == pytest.approx(0.5)
    assert result["val/fp_cases/whole_tumor"] == 0 and result["val/fp_cases/core"] == 0
    assert result["val/generalized_dice"] < 1.0
    predicted = task(torch.zeros(1, 3, 32, 32))
    assert predicted.dtype == torch.bool and torch.equal(predicted[0], pred.bool())


def test_a_run_on_masks_with_regions_trains_the_region_recipe_and_predicts_mask_values(tmp_path):
    root = make_masks(tmp_path / "data")
    run = tmp_path / "run"
    cfg = compose_config(f"paths.output_dir={run}", "task=segmentation", "data=masks", f"data.root={root}",
                         "data.num_classes=3", "data.image_size=32", "data.regions={whole_tumor:[1,2],core:[2]}",
                         *TINY)  # fmt: skip
    metrics = train(cfg)
    assert set(cfg.loss.terms) == {"dice", "bce"}  # loss=dice_bce_regions, chosen because the data has regions
    assert {"val/dice/whole_tumor", "val/fp_cases/core", "val/dice_pooled"} <= set(metrics)
    assert all(np.isfinite(v) for v in metrics.values())
    run_predict(f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"input={root / 'images' / 'val'}", "output=out",
                cwd=tmp_path)  # fmt: skip
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "c.png"))
    assert mask.shape == (24, 32) and set(np.unique(mask)) <= {0, 1, 2}
