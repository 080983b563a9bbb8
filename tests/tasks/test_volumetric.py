"""Volumetric segmentation: the nnU-Net reader, its split and normalisation, the generator, patch sampling, the 3D
U-Net, the volume metrics and the task end to end (task=volumetric)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric

from detloss.data import Lesions3DDataModule, NnUNetDataModule, NnUNetDataset, cross_validation_split, read_volume
from detloss.data.lesions3d import generate_case, generate_lesions3d
from detloss.data.patches import PatchDataset, crop_or_pad, is_forced
from detloss.models import UNet3D
from detloss.models.unet3d import plan_stages
from detloss.tasks import GradientDiagnostics, VolumeMetrics
from detloss.tasks.volume_metrics import label_masks
from detloss.train import train

#: a small run of task=volumetric: 10 cases of 16 × 32 × 32 voxels, patches of the whole volume
SMALL3D = [
    "task=volumetric",
    "data.num_cases=10",
    "data.shape=[16,32,32]",
    "data.patch_size=[16,32,32]",
    "data.patches_per_epoch=4",
    "model.base_channels=4",
    "model.depth=3",
]
SHAPE, ZOOMS = (6, 8, 10), (0.5, 1.0, 3.0)  # (D, H, W) of the arrays; the files' (x, y, z) zooms


def write(path: Path, array: np.ndarray, zooms=ZOOMS) -> None:
    """A (D, H, W) array as a NIfTI file of (x, y, z) = (W, H, D) voxels, as nnU-Net stores them."""
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), np.diag([*zooms, 1.0])), str(path))


def make_dataset(root: Path, cases: int = 6, channels: int = 2, labels=None) -> Path:
    """A tiny nnU-Net raw dataset: case ``i`` has a block of label 1 and one voxel of label 2."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    spec = {
        "channel_names": {str(c): f"mr{c}" for c in range(channels)},
        "labels": labels or {"background": 0, "tumour": 1, "core": 2},
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(spec))
    rng = np.random.default_rng(0)
    for i in range(cases):
        seg = np.zeros(SHAPE, dtype=np.uint8)
        seg[1:4, 2:5, 3:7] = 1
        seg[2, 3, 4 + i % 2] = 2
        write(root / "labelsTr" / f"case_{i:03d}.nii.gz", seg)
        for c in range(channels):
            image = rng.normal(10 * (c + 1), 3 + c, SHAPE).astype(np.float32)
            write(root / "imagesTr" / f"case_{i:03d}_{c:04d}.nii.gz", image)
    return root


# ------------------------------------------------------------------------------------------------------ reader


def test_reader_layout_spacing_labels_and_normalisation(tmp_path):
    root = make_dataset(tmp_path / "ds")
    array, spacing = read_volume(root / "labelsTr" / "case_000.nii.gz")
    assert array.shape == SHAPE and spacing == (3.0, 1.0, 0.5)  # (z, y, x), as nnU-Net's NibabelIO reads it
    assert array[2, 3, 4] == 2
    data = NnUNetDataset(root)
    assert [c.name for c in data.cases] == [f"case_{i:03d}" for i in range(6)]
    assert data.class_names == ["background", "tumour", "core"] and data.in_channels == 2
    assert data.cases[0].spacing == (3.0, 1.0, 0.5) and data.cases[0].shape == SHAPE
    image = data.image(0)
    assert image.shape == (2, *SHAPE) and image.dtype == np.float32
    for channel in image:  # z-scored per case and channel
        assert abs(channel.mean()) < 1e-5 and abs(channel.std() - 1) < 1e-4
    assert len(data.locations[0][1]) == 1 and tuple(data.locations[0][1][0]) == (2, 3, 4)
    assert len(data.locations[0][0]) == 3 * 3 * 4 - 1


def test_an_ignore_label_becomes_ignore_index(tmp_path):
    root = make_dataset(tmp_path / "ds", labels={"background": 0, "tumour": 1, "core": 2, "ignore": 3})
    seg, _ = read_volume(root / "labelsTr" / "case_000.nii.gz")
    seg[0, 0, 0] = 3
    write(root / "labelsTr" / "case_000.nii.gz", seg)
    data = NnUNetDataset(root)
    assert data.class_names == ["background", "tumour", "core"] and data.labels[0][0, 0, 0] == 255


def test_split_is_seeded_disjoint_and_covers_every_case():
    names = [f"c{i}" for i in range(23)]
    folds = [cross_validation_split(names, f) for f in range(5)]
    vals = [set(v) for _, v in folds]
    assert sum(len(v) for v in vals) == 23 and set().union(*vals) == set(names)
    assert all(not a & b for i, a in enumerate(vals) for b in vals[i + 1 :])
    for fit, val in folds:
        assert not set(fit) & set(val) and len(fit) + len(val) == 23
    assert cross_validation_split(names, 2) == folds[2]  # reproducible
    assert cross_validation_split(list(reversed(names)), 2) == folds[2]  # by name, not by listing order
    assert cross_validation_split(names, 2, seed=1) != folds[2]
    with pytest.raises(ValueError, match=r"fold must be an integer in \[0, 5\)"):
        cross_validation_split(names, 5)
    with pytest.raises(ValueError, match="needs at least 5 cases"):
        cross_validation_split(names[:3], 0)


def _break(root: Path, how: str) -> str:
    """Damage the dataset at ``root``; return what the error must name."""
    labels, images = root / "labelsTr", root / "imagesTr"
    if how == "missing channel":
        (images / "case_003_0001.nii.gz").unlink()
        return "case_003_0001.nii.gz"
    if how == "label shape":
        write(labels / "case_002.nii.gz", np.zeros((6, 8, 9), dtype=np.uint8))
        return "case_002.nii.gz: label shape"
    if how == "label values":
        seg, _ = read_volume(labels / "case_004.nii.gz")
        seg[0, 0, :2] = [5, 7]
        write(labels / "case_004.nii.gz", seg)
        return r"case_004.nii.gz: label values \[5, 7\] are absent from .*dataset.json"
    if how == "channel spacing":
        write(images / "case_001_0001.nii.gz", np.zeros(SHAPE, np.float32), zooms=(0.5, 1.0, 2.5))
        return "case_001_0001.nii.gz: spacing"
    if how == "missing label":
        (labels / "case_005.nii.gz").unlink()
        return "label file not found: .*case_005.nii.gz"
    if how == "numTraining":
        spec = json.loads((root / "dataset.json").read_text())
        (root / "dataset.json").write_text(json.dumps({**spec, "numTraining": 9}))
        return "numTraining is 9 but imagesTr holds 6 cases"
    if how == "no dataset.json":
        (root / "dataset.json").unlink()
        return "dataset.json not found"
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    [
        "missing channel",
        "label shape",
        "label values",
        "channel spacing",
        "missing label",
        "numTraining",
        "no dataset.json",
    ],
)
def test_a_malformed_dataset_fails_at_construction_naming_the_file(tmp_path, how):
    root = make_dataset(tmp_path / "ds")
    match = _break(root, how)
    error = FileNotFoundError if how in ("missing channel", "missing label", "no dataset.json") else ValueError
    with pytest.raises(error, match=match):
        NnUNetDataModule(root, patch_size=(4, 8, 8))


# --------------------------------------------------------------------------------------------------- generator


def test_the_generator_is_deterministic_and_written_once(tmp_path):
    a = generate_case(np.random.default_rng([3, 1]), (12, 24, 24))
    b = generate_case(np.random.default_rng([3, 1]), (12, 24, 24))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    image, labels = a
    assert image.shape == (2, 12, 24, 24) and set(np.unique(labels)) <= {0, 1, 2, 3} and labels.any()
    root = generate_lesions3d(5, (12, 24, 24), seed=3, cache_dir=tmp_path)
    assert generate_lesions3d(5, (12, 24, 24), seed=3, cache_dir=tmp_path) == root  # read back, not rewritten
    assert generate_lesions3d(5, (12, 24, 24), seed=4, cache_dir=tmp_path) != root
    spec = json.loads((root / "dataset.json").read_text())
    assert spec["channel_names"] == {"0": "FLAIR", "1": "T1ce"} and spec["numTraining"] == 5
    data = NnUNetDataset(root)  # the same reader reads it
    assert data.cases[0].spacing == (2.0, 1.0, 1.0) and np.array_equal(
        data.labels[1], generate_case(np.random.default_rng([3, 1]), (12, 24, 24))[1]
    )


# ------------------------------------------------------------------------------------------------------ patches


def test_a_third_of_the_patches_hold_foreground_and_big_patches_pad(tmp_path):
    assert [is_forced(i, 1 / 3) for i in range(6)] == [False, False, True, False, False, True]
    assert sum(is_forced(i, 0.3333333333) for i in range(300)) == 100
    data = NnUNetDataset(make_dataset(tmp_path / "ds"))
    torch.manual_seed(0)
    patches = PatchDataset(data, range(6), (2, 2, 2), length=60, foreground_fraction=1 / 3, augment=True)
    held = [bool((patches[i][1]["labels"] > 0).any()) for i in range(60)]
    assert all(held[2::3])  # every forced patch holds foreground; the random ones mostly do not
    assert sum(held) < 40
    # a patch larger than the volume: whole axes, padded with 0 and ignore_index
    image, target = PatchDataset(data, [0], (8, 8, 16), length=1, augment=False)[0]
    assert image.shape == (2, 8, 8, 16) and target["labels"].shape == (8, 8, 16)
    assert (target["labels"][0] == 255).all() and (image[:, 0] == 0).all()  # 1 of 2 padded slices before
    assert (target["labels"][:, :, :3] == 255).all() and not (target["labels"][1:7, :, 3:13] == 255).any()
    assert torch.equal(target["spacing"], torch.tensor([3.0, 1.0, 0.5]))
    # around a centre, the centre stays inside
    rng = np.random.default_rng(0)
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    for centre in [(0, 0, 0), (19, 19, 19), (10, 3, 17)]:
        labels[:] = 0
        labels[centre] = 1
        for _ in range(10):
            _, patch = crop_or_pad(np.zeros((1, 20, 20, 20)), labels, (6, 8, 10), rng, centre)
            assert patch.sum() == 1


# -------------------------------------------------------------------------------------------------------- model


def test_anisotropy_aware_pooling_and_output_contract():
    kernels, pools = plan_stages((2.0, 1.0, 1.0), depth=3, patch_size=(24, 48, 48))
    assert pools == [(1, 2, 2), (2, 2, 2), (2, 2, 2)]  # the coarse axis waits until the others catch up
    assert kernels[0] == (1, 3, 3) and kernels[1:] == [(3, 3, 3)] * 3
    assert plan_stages((1.0, 1.0, 1.0), 2)[1] == [(2, 2, 2)] * 2
    assert plan_stages((5.0, 1.0, 1.0), 3, (8, 64, 64))[1] == [(1, 2, 2), (1, 2, 2), (2, 2, 2)]
    assert plan_stages((1.0, 1.0, 1.0), 3, (8, 64, 64))[1][1:] == [(1, 2, 2)] * 2  # a thin patch stops pooling D
    with pytest.raises(ValueError, match="too small for depth 4"):
        plan_stages((1.0, 1.0, 1.0), 4, (8, 8, 8))
    model = UNet3D(2, 4, base_channels=4, depth=3, spacing=(2.0, 1.0, 1.0), patch_size=(16, 32, 32))
    assert model.size_multiple == (4, 8, 8)
    x = torch.randn(2, 2, 8, 16, 16)
    outs = model(x)
    assert [tuple(o.shape) for o in outs] == [(2, 4, 8, 16, 16), (2, 4, 8, 8, 8), (2, 4, 4, 4, 4)]
    model.eval()
    assert model(x).shape == (2, 4, 8, 16, 16)
    with pytest.raises(ValueError, match="multiples of"):
        model(torch.randn(1, 2, 6, 16, 16))
    with pytest.raises(ValueError, match=r"data\.patch_size\) must be a multiple of \(4, 8, 8\)"):
        UNet3D(2, 4, depth=3, spacing=(2.0, 1.0, 1.0), patch_size=(18, 32, 32))


# ------------------------------------------------------------------------------------------------------ metrics


def test_metrics_of_absent_labels():
    metrics = VolumeMetrics(3, tolerance=1.0)
    target = torch.zeros(3, 6, 8, 8, dtype=torch.long)
    target[:, 2:4, 2:5, 2:5] = 1
    pred = target.clone()
    pred[1, 0, 0, 0] = 2  # case 1: label 2 predicted where the target has none
    pred[2, 2:4, 2:5, 2:5] = 0  # case 2: label 1 missed
    target[0, 4, 4, 4] = 2  # case 0: label 2 missed (one voxel)
    target[2, 1, 1, 1] = 255  # ignored: in no mask
    spacing = torch.tensor([[2.0, 1.0, 1.0]] * 3)
    metrics.update(label_masks(pred, 4, 255), label_masks(target, 4, 255), spacing)
    values = metrics.compute()
    diagonal = math.sqrt(12**2 + 8**2 + 8**2)  # the volume's diagonal in mm: a missed label's hd95
    # label 1: perfect in cases 0 and 1, missed in case 2
    assert values["dice"][0] == pytest.approx(2 / 3) and values["nsd"][0] == pytest.approx(2 / 3)
    assert values["hd95"][0] == pytest.approx(diagonal / 3)
    # label 2: held by case 0's target only (missed there); case 1's false positive is counted, not averaged
    assert values["dice"][1] == 0 and values["nsd"][1] == 0 and values["hd95"][1] == pytest.approx(diagonal)
    assert values["fp_cases"].tolist() == [0, 1, 0]
    assert all(math.isnan(values[m][2]) for m in ("dice", "hd95", "nsd"))  # label 3 in no target
    # MONAI's DiceMetric(ignore_empty=True) gives the same per-label means
    onehot = lambda x: torch.nn.functional.one_hot(x.clamp(max=3), 4).movedim(-1, 1)  # noqa: E731
    monai = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    monai(onehot(pred.masked_fill(target == 255, 0)), onehot(target.masked_fill(target == 255, 0)))
    torch.testing.assert_close(values["dice"][:2], monai.aggregate()[:2].float())
    metrics.reset()
    empty = metrics.compute()
    assert all(torch.isnan(empty[m]).all() for m in ("dice", "hd95", "nsd")) and not empty["fp_cases"].any()


# --------------------------------------------------------------------------------------------------------- task


def test_fast_dev_run_of_the_volumetric_task(tmp_path, compose):
    cfg = compose(*SMALL3D, f"data.cache_dir={tmp_path / 'cache'}", "+trainer.fast_dev_run=2", "callbacks=none")
    assert cfg.model._target_.endswith("UNet3D") and cfg.criterion.deep_supervision == 3
    diagnostics = GradientDiagnostics(every_n_steps=1)
    metrics = train(cfg, callbacks=[diagnostics])
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "ok" and record["optimized_metric"] == "val/dice"
    for key in ("val/dice", "val/hd95", "val/nsd", "val/dice/edema", "val/nsd/enhancing", "val/loss/scale0/dice"):
        assert key in record["metrics"], key
    assert metrics["val/dice"] == record["value"]
    # each scale's terms logged, the lowest scale off; scale weights 1/2^i normalised
    for name in ("train/loss/scale0/dice", "train/loss/scale1/ce", "train/loss/scale2/dice", "train/weight/scale1/ce"):
        assert name in record["train"], name
    assert record["train"]["train/weight/scale0/dice"] == pytest.approx(2 / 3)
    assert record["train"]["train/weight/scale1/ce"] == pytest.approx(1 / 3)
    assert record["train"]["train/loss/scale2/dice"] == 0
    assert list((tmp_path / "previews").glob("*.png"))
    # the gradient diagnostics see every computed term of every scale (scale 2 has weight 0: not computed)
    assert {"diag/grad_norm/scale0/dice", "diag/grad_share/scale1/ce"} <= set(diagnostics.last)
    assert not any("scale2" in key for key in diagnostics.last)


def test_scales_are_reweighed_from_the_command_line(tmp_path, compose):
    from detloss.train import build

    cfg = compose(
        *SMALL3D, f"data.cache_dir={tmp_path}", "criterion.deep_supervision=[0.5,0.3,0.2]", "loss=dice_ce_boundary"
    )
    _, task = build(cfg)
    loss = task.criterion.loss
    assert loss.base_weights["scale2/dice"] == pytest.approx(0.2) and loss.base_weights["scale1/boundary"] == 0.3
    assert loss.weights["scale0/boundary"] == 0  # Rebalance: the boundary term starts at weight 0
    assert task.model.size_multiple == (4, 8, 8) and task.model.spacing == (2.0, 1.0, 1.0)  # from the data


def test_the_data_module_trains_on_patches_and_validates_whole_volumes(tmp_path):
    dm = Lesions3DDataModule(num_cases=10, shape=(16, 32, 32), patch_size=(8, 16, 16), cache_dir=tmp_path)
    assert dm.in_channels == 2 and dm.num_classes == 4 and dm.spacing == (2.0, 1.0, 1.0)
    assert len(dm.train_cases) == 8 and len(dm.val_cases) == 2
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 2, 8, 16, 16) and targets["labels"].shape == (2, 8, 16, 16)
    images, targets = next(iter(dm.val_dataloader()))
    assert images.shape == (1, 2, 16, 32, 32) and targets["spacing"].tolist() == [[2.0, 1.0, 1.0]]


@pytest.mark.slow
def test_two_processes_validate_as_one(tmp_path):
    """trainer=ddp_sim: the weight-0 scale keeps DDP's every parameter used, and the metrics gathered over the ranks
    (one validation volume each) equal one process's on the same checkpoint."""
    import lightning as L
    from conftest import compose_config

    from detloss.train import build

    small = [*SMALL3D, "data.num_cases=10", f"data.cache_dir={tmp_path / 'cache'}", "data.patches_per_epoch=8"]
    run = tmp_path / "run"
    metrics = train(compose_config(f"paths.output_dir={run}", *small, "trainer=ddp_sim", "trainer.max_epochs=1"))
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "ok" and record["steps"] == 2  # 8 patches, batch 2, 2 ranks
    cfg = compose_config(f"paths.output_dir={tmp_path / 'single'}", *small)
    datamodule, task = build(cfg)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    (single,) = trainer.validate(task, datamodule=datamodule, ckpt_path=str(run / "checkpoints" / "last.ckpt"))
    for key in ("val/dice", "val/hd95", "val/nsd", "val/dice/edema", "val/nsd/enhancing", "val/fp_cases/edema"):
        if key not in single:  # no validation case holds the label: logged by neither
            assert key not in metrics, key
        elif math.isnan(single[key]):
            assert math.isnan(metrics[key]), key
        else:
            assert metrics[key] == pytest.approx(single[key], abs=1e-5), key
