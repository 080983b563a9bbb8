"""The Decathlon layout (data=msd) and its checks, regions for volumes (data.regions, an nnU-Net dataset.json of list
labels), the criterion's sigmoid region views against MONAI and torch, and the refusal of softmax terms."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from monai.losses import DiceLoss as MonaiDiceLoss

from detloss.composite import CompositeLoss
from detloss.data import MSDDataModule, MSDDataset, NnUNetDataModule, labels_to_regions, region_targets
from detloss.losses import BCEWithLogitsLoss, CrossEntropyLoss, DiceLoss
from detloss.plan import volume_fingerprint
from detloss.segmentation import SegmentationCriterion

SHAPE, ZOOMS = (6, 8, 10), (0.5, 1.0, 3.0)  # (D, H, W) of the arrays; the files' (x, y, z) zooms
BRATS = {"whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3]}


def save(path: Path, array: np.ndarray, zooms=ZOOMS) -> None:
    """``(D, H, W)`` or ``(C, D, H, W)`` written as the Decathlon stores it: ``(x, y, z[, C])``."""
    order = (2, 1, 0) if array.ndim == 3 else (3, 2, 1, 0)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array.transpose(order)), np.diag([*zooms, 1.0])), str(path))


def labels_of(i: int, shape=SHAPE) -> np.ndarray:
    """Case ``i``'s labels: a block of edema (1) holding a core (2) and one enhancing voxel (3)."""
    seg = np.zeros(shape, dtype=np.uint8)
    seg[1:5, 2:7, 2:8] = 1
    seg[2:4, 3:6, 3:6] = 2
    seg[3, 4, 4 + i % 2] = 3
    return seg


def make_msd(root: Path, cases: int = 6, modalities=("FLAIR", "T1w"), shape=SHAPE, zooms=ZOOMS) -> Path:
    """A tiny Decathlon task folder: 4D images (3D with one modality), case ``i``'s channel ``c`` of mean 10 (c + 1)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    rng = np.random.default_rng(0)
    for i in range(cases):
        name = f"BRATS_{i:03d}.nii.gz"
        count = len(modalities)
        image = np.stack([rng.normal(10 * (c + 1), 2, shape) for c in range(count)]).astype(np.float32)
        save(root / "imagesTr" / name, image[0] if count == 1 else image, zooms)
        save(root / "labelsTr" / name, labels_of(i, shape), zooms)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    spec = {
        "name": "tiny",
        "modality": {str(c): m for c, m in enumerate(modalities)},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": cases,
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


# ------------------------------------------------------------------------------------------------------ reader


def test_the_reader_splits_4d_images_into_channels(tmp_path):
    root = make_msd(tmp_path / "msd")
    data = MSDDataset(root)
    assert [c.name for c in data.cases] == [f"BRATS_{i:03d}" for i in range(6)]
    assert data.channel_names == ["FLAIR", "T1w"] and data.in_channels == 2
    assert data.class_names == ["background", "edema", "non-enhancing tumor", "enhancing tumour"]
    assert data.cases[0].spacing == (3.0, 1.0, 0.5) and data.cases[0].shape == SHAPE
    channels = data.read_channels(0)
    assert len(channels) == 2 and channels[0].shape == SHAPE
    assert abs(channels[0].mean() - 10) < 1 and abs(channels[1].mean() - 20) < 1  # (x, y, z, C) split along C
    assert np.array_equal(data.raw_labels(1), labels_of(1))
    image = data.image(0)
    assert image.shape == (2, *SHAPE) and abs(float(image[1].mean())) < 1e-5  # z-scored per channel
    fingerprint = volume_fingerprint(data, cache=False)  # read through the same reader
    assert fingerprint.channel_names == ["FLAIR", "T1w"]
    assert abs(fingerprint.intensities[0]["mean"] - 10) < 1 and abs(fingerprint.intensities[1]["mean"] - 20) < 1


def test_one_modality_is_a_3d_image_and_ct_is_normalised_as_ct(tmp_path):
    dm = MSDDataModule(make_msd(tmp_path / "ct", modalities=("CT",)), patch_size=(4, 8, 8))
    assert dm.in_channels == 1 and dm.normalization[0]["scheme"] == "ct"
    assert dm.describe()["regions"] is None and dm.num_classes == 4


@pytest.mark.parametrize("how", ["image", "label", "channels", "shape", "values"])
def test_the_four_checks_name_the_case(tmp_path, how):
    root = make_msd(tmp_path / "msd")
    case = "BRATS_002"
    if how == "image":
        (root / "imagesTr" / f"{case}.nii.gz").unlink()
        error, match = FileNotFoundError, f"case '{case}': image file listed in dataset.json not found"
    elif how == "label":
        (root / "labelsTr" / f"{case}.nii.gz").unlink()
        error, match = FileNotFoundError, f"case '{case}': label file listed in dataset.json not found"
    elif how == "channels":
        save(root / "imagesTr" / f"{case}.nii.gz", np.zeros((3, *SHAPE), np.float32))
        error, match = ValueError, rf"case '{case}': .* holds 3 channel\(s\) .* modality names 2"
    elif how == "shape":
        save(root / "labelsTr" / f"{case}.nii.gz", np.zeros((6, 8, 9), np.uint8))
        error, match = ValueError, f"case '{case}': label shape"
    else:
        seg = labels_of(2)
        seg[0, 0, 0] = 7
        save(root / "labelsTr" / f"{case}.nii.gz", seg)
        error, match = ValueError, rf"case '{case}': .* label values \[7\] are absent"
    with pytest.raises(error, match=match):
        MSDDataset(root)


def test_a_malformed_dataset_json_is_named(tmp_path):
    root = make_msd(tmp_path / "msd")
    spec = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**spec, "numTraining": 5}))
    with pytest.raises(ValueError, match="numTraining is 5 but training lists 6 cases"):
        MSDDataset(root)
    del spec["modality"]
    (root / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"missing keys \['modality'\]"):
        MSDDataset(root)
    (root / "dataset.json").unlink()
    with pytest.raises(FileNotFoundError, match="Decathlon dataset.json not found"):
        MSDDataset(root)


# ----------------------------------------------------------------------------------------------------- regions


def test_regions_give_region_targets_and_one_channel_each(tmp_path):
    dm = MSDDataModule(make_msd(tmp_path / "msd"), patch_size=(4, 8, 8), batch_size=2, regions=BRATS)
    facts = dm.describe()
    assert dm.num_classes == 3 and facts["class_names"] == list(BRATS)
    assert facts["regions"] == BRATS and facts["regions_class_order"] == [1, 2, 3]
    assert facts["label_names"][1] == "edema"
    image, target = dm.val_dataset[0]
    case = dm.val_cases[0]
    expected = labels_to_regions(torch.from_numpy(labels_of(case).astype(np.int64)), BRATS)
    assert target["labels"].dtype == torch.uint8 and torch.equal(target["labels"].bool(), expected)
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 2, 4, 8, 8) and targets["labels"].shape == (2, 3, 4, 8, 8)
    assert set(targets["labels"].unique().tolist()) <= {0, 1, 255}
    with pytest.raises(ValueError, match=r"region 'x' holds label values \[4\]"):
        MSDDataModule(dm.source.root, regions={"x": [4]})
    with pytest.raises(ValueError, match="region 'tumor_core' holds no label values that no later region holds"):
        MSDDataModule(dm.source.root, regions={"a": [1], "tumor_core": [3], "c": [3]})


def test_nnunet_list_labels_are_read_as_regions(tmp_path):
    root = tmp_path / "nn"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(5):
        save(root / "labelsTr" / f"case_{i}.nii.gz", labels_of(i))
        save(root / "imagesTr" / f"case_{i}_0000.nii.gz", np.random.default_rng(i).normal(0, 1, SHAPE).astype("f4"))
    labels = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}
    spec = {"channel_names": {"0": "FLAIR"}, "labels": labels, "regions_class_order": [1, 2, 3]}
    (root / "dataset.json").write_text(json.dumps(spec | {"numTraining": 5, "file_ending": ".nii.gz"}))
    dm = NnUNetDataModule(root, patch_size=(4, 8, 8))
    assert dm.class_names == ["whole tumor", "tumor core", "enhancing tumor"] and dm.num_classes == 3
    assert dm.regions == {"whole tumor": (1, 2, 3), "tumor core": (2, 3), "enhancing tumor": (3,)}
    assert dm.regions_class_order == [1, 2, 3]
    assert dm.label_names == ["background", "label_1", "label_2", "label_3"]
    assert dm.val_dataset[0][1]["labels"].shape == (3, *SHAPE)
    (root / "dataset.json").write_text(
        json.dumps({**spec, "numTraining": 5, "file_ending": ".nii.gz"} | {"regions_class_order": [1, 3, 2]})
    )
    with pytest.raises(ValueError, match="2 is not a label value of region 'enhancing tumor'"):
        NnUNetDataModule(root)
    del spec["regions_class_order"]
    (root / "dataset.json").write_text(json.dumps(spec | {"numTraining": 5, "file_ending": ".nii.gz"}))
    with pytest.raises(ValueError, match="need regions_class_order"):
        NnUNetDataModule(root)


# --------------------------------------------------------------------------------------------------- criterion


def region_loss() -> CompositeLoss:
    dice = DiceLoss(mode="multilabel", include_background=True, ignore_index=255)
    return CompositeLoss(
        {"dice": {"loss": dice, "view": "pixels"}, "bce": {"loss": BCEWithLogitsLoss(), "view": "masked"}}
    )


def hand_built(ignore: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Two volumes of labels 0 … 3 (nested blocks) and logits that see them roughly."""
    labels = torch.zeros(2, 8, 8, 8, dtype=torch.long)
    labels[:, 1:7, 1:7, 1:7] = 1
    labels[0, 2:5, 2:6, 2:6] = 2
    labels[0, 3, 3:5, 3:5] = 3
    labels[1, 4:6, 4:6, 4:6] = 3
    if ignore:
        labels[1, 7] = 255
    generator = torch.Generator().manual_seed(0)
    regions = labels_to_regions(labels.clamp(max=3), list(BRATS.values())).movedim(0, 1).double()
    logits = 3 * (regions - 0.5) + torch.randn(regions.shape, generator=generator, dtype=torch.float64)
    return labels, logits


def test_region_terms_equal_monai_dice_and_torch_bce():
    labels, logits = hand_built()
    criterion = SegmentationCriterion(3, region_loss(), regions=list(BRATS.values()))
    target = region_targets(labels, BRATS, dim=1).double()
    monai = MonaiDiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)(logits, target)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    out = criterion(logits, {"labels": labels})  # class indices, turned into region masks
    assert out.terms["dice"].item() == pytest.approx(monai.item(), abs=1e-6)
    assert out.terms["bce"].item() == pytest.approx(bce.item(), abs=1e-6)
    given = criterion(logits, {"labels": region_targets(labels, BRATS, dim=1)})  # region masks as they are
    assert torch.equal(given.total, out.total)


def test_ignored_voxels_count_in_no_region_term():
    labels, logits = hand_built(ignore=True)
    criterion = SegmentationCriterion(3, region_loss(), regions=list(BRATS.values()))
    out = criterion(logits, {"labels": labels})
    valid = (labels != 255)[:, None].expand_as(logits)
    target = region_targets(labels, BRATS, dim=1).double()
    bce = F.binary_cross_entropy_with_logits(logits[valid], target[valid])
    assert out.terms["bce"].item() == pytest.approx(bce.item(), abs=1e-6)
    masked = torch.where(valid, logits, torch.full_like(logits, -1e4))  # what is ignored predicts nothing
    monai = MonaiDiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)(masked, target * valid)
    assert out.terms["dice"].item() == pytest.approx(monai.item(), abs=1e-6)


def test_deep_supervision_takes_region_masks_at_every_scale():
    labels, logits = hand_built()
    criterion = SegmentationCriterion(3, region_loss(), deep_supervision=[0.5, 0.5], regions=list(BRATS.values()))
    low = logits[:, :, ::2, ::2, ::2]
    out = criterion([logits, low], {"labels": labels})
    target = F.interpolate(region_targets(labels, BRATS, dim=1).double(), size=(4, 4, 4), mode="nearest-exact")
    assert out.terms["scale1/bce"].item() == pytest.approx(
        0.5 * F.binary_cross_entropy_with_logits(low, target).item(), abs=1e-6
    )


def test_softmax_terms_are_refused_with_regions():
    ce = CompositeLoss({"ce": {"loss": CrossEntropyLoss(), "view": "pixels"}})
    with pytest.raises(ValueError, match=r"term\(s\) 'ce' \(CrossEntropyLoss\): a softmax over exclusive classes"):
        SegmentationCriterion(3, ce, regions=list(BRATS.values()))
    dice = CompositeLoss({"dice": {"loss": DiceLoss(), "view": "pixels"}})
    with pytest.raises(ValueError, match=r"'dice' \(DiceLoss\): a softmax"):
        SegmentationCriterion(3, dice, regions=list(BRATS.values()), deep_supervision=2)
    boundary = CompositeLoss({"b": {"loss": BCEWithLogitsLoss(), "view": "distance"}})
    with pytest.raises(ValueError, match="asks for view 'distance'"):
        SegmentationCriterion(3, boundary, regions=list(BRATS.values()))
    with pytest.raises(ValueError, match="3 output channels but 2 regions"):
        SegmentationCriterion(3, region_loss(), regions=[[1], [2]])


def test_regions_choose_the_region_loss_unless_the_command_line_names_one(tmp_path):
    from conftest import compose_config

    from detloss.train import build

    root = make_msd(tmp_path / "msd", shape=(16, 16, 16), zooms=(1.0, 1.0, 1.0))
    common = ["task=volumetric", "data=msd", f"data.root={root}", "data.patch_size=[16,16,16]", "data.batch_size=2"]
    common += ["data.patches_per_epoch=2", "model.depth=2", "model.base_channels=4", f"paths.output_dir={tmp_path}"]
    regions = "data.regions={whole_tumor:[1,2,3],tumor_core:[2,3],enhancing_tumor:[3]}"
    cfg = compose_config(*common, regions, return_hydra_config=True)
    _, task = build(cfg)
    assert set(cfg.loss.terms) == {"dice", "bce"} and cfg.data.regions_class_order == [1, 2, 3]
    assert task.model(torch.zeros(1, 2, 16, 16, 16))[0].shape[1] == 3  # one output per region
    # a loss named on the command line stays, and its softmax terms are refused by name (Hydra wraps the error)
    with pytest.raises(InstantiationException, match=r"'ce' \(CrossEntropyLoss\): a softmax over exclusive classes"):
        build(compose_config(*common, regions, "loss=dice_ce", return_hydra_config=True))


def test_regions_found_in_dataset_json_are_recorded_in_the_config(tmp_path):
    from conftest import compose_config
    from hydra.utils import instantiate

    from detloss.train import choose_region_loss

    root = tmp_path / "nn"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(5):
        save(root / "labelsTr" / f"case_{i}.nii.gz", labels_of(i))
        save(root / "imagesTr" / f"case_{i}_0000.nii.gz", np.random.default_rng(i).normal(0, 1, SHAPE).astype("f4"))
    labels = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}
    spec = {"channel_names": {"0": "MR"}, "labels": labels, "regions_class_order": [1, 2, 3]}
    (root / "dataset.json").write_text(json.dumps(spec | {"numTraining": 5, "file_ending": ".nii.gz"}))
    cfg = compose_config("task=volumetric", "data=nnunet", f"data.root={root}", f"paths.output_dir={tmp_path}")
    data = instantiate(cfg.data).describe()
    choose_region_loss(cfg, data)
    assert cfg.data.regions == {"whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
    assert set(cfg.loss.terms) == {"dice", "bce"} and cfg.task.regions == cfg.data.regions  # the task reads the fact
    again = instantiate(cfg.data)  # the recorded regions agree with the dataset's, so the config builds it again
    assert again.regions_class_order == [1, 2, 3] and again.class_names == list(cfg.data.regions)
