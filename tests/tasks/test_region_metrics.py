"""Metrics per region (sigmoid channels) and per class, per case then over the cases that hold them: the volume
metrics against MONAI and hand-computed values, the volumetric task's logged names, and 2 DDP ranks against one."""

import math

import lightning as L
import pytest
import torch
from conftest import quiet_trainer
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from monai.metrics import DiceMetric, compute_surface_dice
from torch import nn
from torch.utils.data import DataLoader

from detloss.composite import CompositeLoss, Criterion, View
from detloss.losses import MSELoss
from detloss.tasks import VolumetricTask
from detloss.tasks.volume_metrics import VolumeMetrics

SHAPE = (8, 12, 12)
REGIONS = {"whole tumor": [1, 2, 3], "core": [2, 3]}  # logged as whole_tumor and core


def box(z, y, x) -> torch.Tensor:
    mask = torch.zeros(SHAPE, dtype=torch.bool)
    mask[z[0] : z[1], y[0] : y[1], x[0] : x[1]] = True
    return mask


EMPTY = torch.zeros(SHAPE, dtype=torch.bool)
WHOLE = box((1, 5), (2, 8), (2, 8))  # 144 voxels
CORE = box((2, 4), (3, 6), (3, 6))  # 18 voxels, inside WHOLE
HALF = box((1, 5), (2, 8), (2, 5))  # WHOLE's first half: Dice 2·72 / (72 + 144) = 2/3

#: (prediction, target) per case, channels (whole tumor, core)
CASES = [
    ((WHOLE, CORE), (WHOLE, CORE)),  # perfect
    ((HALF, CORE), (WHOLE, EMPTY)),  # whole tumour 2/3; core predicted where the target has none
    ((EMPTY, EMPTY), (EMPTY, EMPTY)),  # nothing to find, nothing found
    ((WHOLE, EMPTY), (WHOLE, CORE)),  # core missed
]
#: per region: the mean Dice over the cases whose target holds it, and the false-positive cases
EXPECTED_DICE = {"whole_tumor": (1 + 2 / 3 + 1) / 3, "core": (1 + 0) / 2}
EXPECTED_FP = {"whole_tumor": 0, "core": 1}


def stacked(index: int) -> torch.Tensor:
    return torch.stack([torch.stack(case[index]) for case in CASES])  # (cases, regions, *SHAPE)


def test_region_dice_is_monai_dice_metric_with_ignore_empty():
    pred, target = stacked(0), stacked(1)
    metrics = VolumeMetrics(2, tolerance=1.0)
    metrics.update(pred[:2], target[:2], torch.ones(2, 3))
    metrics.update(pred[2:], target[2:], torch.ones(2, 3))
    values = metrics.compute()
    monai = DiceMetric(include_background=True, reduction="mean_batch", ignore_empty=True)
    monai(pred.float(), target.float())
    torch.testing.assert_close(values["dice"], monai.aggregate().float())
    torch.testing.assert_close(values["dice"], torch.tensor(list(EXPECTED_DICE.values())))
    assert values["fp_cases"].tolist() == list(EXPECTED_FP.values())
    half = compute_surface_dice(HALF[None, None].float(), WHOLE[None, None].float(), [1.0]).item()
    assert 0 < half < 1 and values["nsd"].tolist() == pytest.approx([(1 + half + 1) / 3, (1 + 0) / 2])
    assert values["hd95"][1] == pytest.approx(math.sqrt(8**2 + 12**2 + 12**2) / 2)  # missed core: the diagonal


def test_bad_masks_are_named():
    metrics = VolumeMetrics(2)
    with pytest.raises(ValueError, match=r"\(B, 2, \*spatial\)"):
        metrics.update(torch.zeros(1, 3, *SHAPE), torch.zeros(1, 3, *SHAPE))
    with pytest.raises(ValueError, match="nsd_tolerance"):
        VolumeMetrics(2, tolerance=[1.0])


# ------------------------------------------------------------------------------------------------- the task


class RegionEcho(nn.Module):
    """The image's channels are the prediction's region masks: echoed as confident logits (+8 inside, −8 out)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(8.0))

    def forward(self, images):
        return (images * 2 - 1) * self.scale


class RegionMSE(Criterion):
    """MSE between the sigmoid of each region's logit and its target mask: a stand-in of the region losses."""

    views = frozenset({"regions"})
    ignore_index = 255

    def __init__(self, num_classes: int):
        super().__init__(num_classes, CompositeLoss({"mse": {"loss": MSELoss(), "weight": 1.0, "view": "regions"}}))

    def build_views(self, outputs, targets):
        labels = targets["labels"].float()
        return {"regions": View((outputs.sigmoid(), labels.clamp(max=1)))}


def region_batches(cases=CASES, ignore_voxel: bool = False) -> list:
    """One case per batch: ``(images (1, R, *SHAPE), {"labels": uint8 masks, "spacing"})``."""
    out = []
    for pred, target in cases:
        labels = torch.stack(target).to(torch.uint8)
        if ignore_voxel:
            labels[:, 0, 0, 0] = 255
        spacing = torch.tensor([[2.0, 1.0, 1.0]])
        out.append((torch.stack(pred).float()[None], {"labels": labels[None], "spacing": spacing}))
    return out


def region_task(**options) -> VolumetricTask:
    return VolumetricTask(
        RegionEcho(),
        RegionMSE(len(REGIONS)),
        torch.optim.SGD,
        class_names=["whole tumor", "core"],
        roi_size=SHAPE,
        regions=REGIONS,
        lesion_min_volume=0.0,
        **options,
    )


def collate(items):
    return items[0]


def test_the_task_logs_each_region_its_mean_and_false_positive_cases(tmp_path):
    task = region_task(num_previews=2)
    batches = region_batches(ignore_voxel=True)  # a voxel outside every mask, ignored: changes nothing
    trainer = quiet_trainer(default_root_dir=tmp_path)
    (result,) = trainer.validate(task, DataLoader(batches, batch_size=1, collate_fn=collate), verbose=False)
    for name, dice in EXPECTED_DICE.items():
        assert result[f"val/dice/{name}"] == pytest.approx(dice)
        assert result[f"val/fp_cases/{name}"] == EXPECTED_FP[name]
        assert f"val/hd95/{name}" in result and f"val/nsd/{name}" in result
    assert result["val/dice"] == pytest.approx(sum(EXPECTED_DICE.values()) / 2)
    assert result["val/hd95"] == pytest.approx((result["val/hd95/whole_tumor"] + result["val/hd95/core"]) / 2)
    # lesion-wise, every case counted (no lesion is small here): whole tumour 1, 2/3, 1, 1 and HD95 0, h, 0, 0;
    # core 1, false positive (0, 374), (1, 0), missed (0, 374)
    assert result["val/lesion_dice/whole_tumor"] == pytest.approx((3 + 2 / 3) / 4)
    assert result["val/lesion_dice/core"] == pytest.approx(0.5)
    assert result["val/lesion_hd95/core"] == pytest.approx(374 / 2)
    assert (tmp_path / "previews" / "epoch_000.png").is_file()


def test_lesion_wise_metrics_are_off_without_regions_unless_asked():
    task = VolumetricTask(RegionEcho(), RegionMSE(3), torch.optim.SGD, roi_size=SHAPE)
    assert not task.lesion_wise and task.metric_names == ["1", "2"]
    assert VolumetricTask(RegionEcho(), RegionMSE(3), torch.optim.SGD, roi_size=SHAPE, lesion_wise=True).lesion_wise


def test_regions_that_do_not_fit_the_model_are_refused():
    with pytest.raises(ValueError, match="regions must map each of the model's 3 output channels"):
        VolumetricTask(RegionEcho(), RegionMSE(3), torch.optim.SGD, roi_size=SHAPE, regions=REGIONS)
    task = region_task()
    labels = torch.zeros(1, *SHAPE, dtype=torch.long)  # label maps, not region masks
    with pytest.raises(ValueError, match="region masks"):
        task.masks(torch.zeros(1, 2, *SHAPE), labels)


# ------------------------------------------------------------------------------------------------------ DDP


class RegionCases(L.LightningDataModule):
    """Each case to exactly one rank, as detloss's DataModules split validation (5 cases: 3 and 2)."""

    def val_dataloader(self):
        batches = region_batches([*CASES, CASES[3]])
        trainer, sampler = self.trainer, None
        if trainer.world_size > 1:
            sampler = UnrepeatedDistributedSampler(
                batches, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
            )
        return DataLoader(batches, batch_size=1, sampler=sampler, collate_fn=collate)


def test_two_processes_give_the_metrics_of_one():
    keys = [f"val/{m}/{n}" for m in ("dice", "hd95", "nsd", "fp_cases", "lesion_dice", "lesion_hd95") for n in
            ("whole_tumor", "core")] + ["val/dice", "val/hd95", "val/nsd"]  # fmt: skip
    (one,) = quiet_trainer().validate(region_task(num_previews=0), RegionCases(), verbose=False)
    ddp = quiet_trainer(devices=2, strategy="ddp_spawn", use_distributed_sampler=False)
    (two,) = ddp.validate(region_task(num_previews=0), RegionCases(), verbose=False)
    # core: cases 0 and 4 (Dice 1 and 0) on rank 0, case 3 (0) on rank 1: the mean over the cases is 1/3, the mean
    # of the ranks' means would be 1/4
    assert one["val/dice/core"] == pytest.approx(1 / 3) and one["val/fp_cases/core"] == 1
    for key in keys:
        assert two[key] == pytest.approx(one[key], abs=1e-6), key
