"""The planner: the fingerprint of a dataset, nnU-Net's rules on hand-made fingerprints, the plan under a time
budget with a known step cost, resampling, and the plan through a run, its checkpoint and prediction."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from detloss.data import NnUNetDataModule, NnUNetDataset, read_volume
from detloss.data.preprocess import normalise, preprocess
from detloss.data.resample import resample_image, resample_labels, resampled_shape
from detloss.plan import (
    MIN_STEPS,
    VolumeFingerprint,
    cached_plan,
    crop_to_nonzero_box,
    initial_patch,
    machine,
    normalisation,
    plan_volumes,
    shrink_patch,
    target_spacing,
    topology,
    volume_fingerprint,
)
from detloss.segmentation import resize_logits


def fingerprint(spacings, shapes, channels=("MR",), cropped=None, intensities=None) -> VolumeFingerprint:
    """A hand-made fingerprint: one case per spacing and shape ``(D, H, W)``."""
    cropped = cropped or shapes
    cases = [
        {"name": f"c{i}", "shape": list(s), "spacing": list(z), "cropped_shape": list(c)}
        for i, (z, s, c) in enumerate(zip(spacings, shapes, cropped))
    ]
    stats = intensities or [{"mean": 0.0, "std": 1.0, "p00_5": -2.0, "p99_5": 2.0, "min": -3.0, "max": 3.0}] * len(
        channels
    )
    return VolumeFingerprint(list(channels), ["background", "a"], cases, list(stats), [], "sig")


def write_case(root: Path, name: str, channels, labels, zooms_xyz) -> None:
    """``channels`` and ``labels`` ``(D, H, W)`` as NIfTI files of ``(x, y, z)`` voxels of ``zooms_xyz`` mm."""
    affine = np.diag([*zooms_xyz, 1.0])
    for c, array in enumerate(channels):
        image = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)).astype(np.float32), affine)
        nib.save(image, str(root / "imagesTr" / f"{name}_{c:04d}.nii.gz"))
    seg = nib.Nifti1Image(np.ascontiguousarray(labels.transpose(2, 1, 0)).astype(np.uint8), affine)
    nib.save(seg, str(root / "labelsTr" / f"{name}.nii.gz"))


def make_dataset(root: Path, cases=5, shape=(8, 16, 16), zooms_xyz=(1.0, 1.0, 3.0), channel_names=("T1",), seed=0):
    """Cases of a bright block (label 1) and a small cube (label 2) in a body of non-zero voxels; ``zooms_xyz`` one
    spacing, or a list of one a case."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    names = {str(i): n for i, n in enumerate(channel_names)}
    spec = {"channel_names": names, "labels": {"background": 0, "big": 1, "small": 2}, "numTraining": cases}
    (root / "dataset.json").write_text(json.dumps(spec | {"file_ending": ".nii.gz"}))
    rng = np.random.default_rng(seed)
    D, H, W = shape
    for i in range(cases):
        labels = np.zeros(shape, dtype=np.uint8)
        labels[D // 4 : D // 2 + 1, H // 4 : H // 2, W // 4 : W // 2] = 1
        labels[D // 2 + 1 : D // 2 + 3, H // 2 + 1 : H // 2 + 3, W // 2 + 1 : W // 2 + 3] = 2
        channels = []
        for c in range(len(channel_names)):
            image = np.zeros(shape, dtype=np.float32)
            image[:, 1:-1, 1:-1] = rng.normal(100.0 * (c + 1), 5.0, (D, H - 2, W - 2))
            image[labels == 1] += 50
            image[labels == 2] += 80
            channels.append(image)
        zooms = zooms_xyz[i] if isinstance(zooms_xyz, list) else zooms_xyz
        write_case(root, f"case_{i:03d}", channels, labels, zooms)
    return root


# --- rules on hand-made fingerprints ------------------------------------------------------------------------------


def test_target_spacing_is_the_median_for_isotropic_data():
    fp = fingerprint([(1.0, 1.0, 1.0), (1.2, 1.2, 1.2), (0.8, 0.8, 0.8)], [(100, 100, 100)] * 3)
    assert target_spacing(fp) == pytest.approx((1.0, 1.0, 1.0))


def test_a_stack_of_thick_slices_takes_the_10th_percentile_of_its_coarse_axis():
    """nnU-Net's anisotropy rule: spacing and voxel count both anisotropic -> the 10th percentile along the axis."""
    spacings = [(z, 0.8, 0.8) for z in (3.0, 4.0, 5.0, 5.0, 6.0)]
    fp = fingerprint(spacings, [(20, 256, 256)] * 5)
    expected = float(np.percentile([3.0, 4.0, 5.0, 5.0, 6.0], 10))
    assert target_spacing(fp) == pytest.approx((expected, 0.8, 0.8))
    # many slices along the coarse axis (not a thin stack): the median stays
    many = fingerprint(spacings, [(200, 256, 256)] * 5)
    assert target_spacing(many) == pytest.approx((5.0, 0.8, 0.8))
    # coarse but not 3x: the median stays
    mild = fingerprint([(2.0, 1.0, 1.0), (2.5, 1.0, 1.0)], [(20, 256, 256)] * 2)
    assert target_spacing(mild) == pytest.approx((2.25, 1.0, 1.0))


def test_ct_channels_are_clipped_to_the_foreground_percentiles_and_mr_channels_z_scored():
    stats = [
        {"mean": 40.0, "std": 20.0, "p00_5": -100.0, "p99_5": 300.0, "min": -1000.0, "max": 2000.0},
        {"mean": 0.0, "std": 1.0, "p00_5": 0.0, "p99_5": 0.0, "min": 0.0, "max": 0.0},
    ]
    fp = fingerprint([(1.0,) * 3], [(64,) * 3], channels=("CT", "T2"), intensities=stats)
    ct, mr = normalisation(fp)
    assert ct == {"scheme": "ct", "clip": [-100.0, 300.0], "mean": 40.0, "std": 20.0}
    assert mr == {"scheme": "zscore", "nonzero_mask": False}
    volume = np.array([[[-1000.0, 40.0, 2000.0]]])
    assert normalise(volume, ct).ravel().tolist() == pytest.approx([-7.0, 0.0, 13.0])
    # cropping to the non-zero region removes more than a quarter: z-score inside it, 0 outside
    cropped = fingerprint([(1.0,) * 3], [(64,) * 3], cropped=[(32, 64, 64)])
    assert normalisation(cropped) == [{"scheme": "zscore", "nonzero_mask": True}]
    body = np.array([[[0.0, 2.0, 4.0]]])
    out = normalise(body, {"scheme": "zscore", "nonzero_mask": True}, body != 0)
    assert out.ravel().tolist() == pytest.approx([0.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="normalization scheme"):
        normalise(body, {"scheme": "minmax"})


def test_nnunets_other_channel_names_get_its_schemes_and_rgb_out_of_range_is_refused_naming_the_case(tmp_path):
    names = ("noNorm", "RESCALE_TO_0_1", "rgb_to_0_1", "zscore", "FLAIR")
    fp = fingerprint([(1.0,) * 3], [(64,) * 3], channels=names)
    schemes = [n["scheme"] for n in normalisation(fp)]
    assert schemes == ["none", "rescale_to_0_1", "rgb_to_0_1", "zscore", "zscore"]
    volume = np.array([[[-2.0, 0.0, 6.0]]])
    assert normalise(volume, {"scheme": "none"}).ravel().tolist() == [-2.0, 0.0, 6.0]
    assert normalise(volume, {"scheme": "rescale_to_0_1"}).ravel().tolist() == pytest.approx([0.0, 0.25, 1.0])
    assert normalise(np.full((1, 1, 3), 7.0), {"scheme": "rescale_to_0_1"}).ravel().tolist() == [0.0] * 3
    assert normalise(np.array([[[0.0, 51.0, 255.0]]]), {"scheme": "rgb_to_0_1"}).ravel().tolist() == pytest.approx(
        [0.0, 0.2, 1.0]
    )
    root = make_dataset(tmp_path / "ds", cases=5, channel_names=("T1", "T2", "rgb_to_0_1"))  # the 3rd near 300
    dataset = NnUNetDataset(root)
    dataset.prepare(normalization=[{"scheme": "zscore"}, {"scheme": "zscore"}, {"scheme": "rgb_to_0_1"}])
    with pytest.raises(ValueError, match=r"case 'case_000', channel 2: an 'rgb_to_0_1' channel must hold values in"):
        dataset.image(0)


def test_the_initial_patch_is_shaped_by_the_spacing_and_clipped_to_the_median_shape():
    assert initial_patch((1.0, 1.0, 1.0), (500, 500, 500)) == [256, 256, 256]
    assert initial_patch((1.0, 1.0, 1.0), (40, 90, 500)) == [40, 90, 256]
    d, h, w = initial_patch((4.0, 1.0, 1.0), (500, 500, 500))
    assert h == w and d == pytest.approx(h / 4, abs=1)


def test_topology_does_not_pool_a_coarse_axis_first_and_rounds_the_patch_up():
    depth, patch, kernels, pools = topology((4.0, 1.0, 1.0), (20, 100, 100))
    assert pools[0] == (1, 2, 2) and kernels[0] == (1, 3, 3)
    multiple = [int(np.prod([p[a] for p in pools])) for a in range(3)]
    assert all(s % m == 0 for s, m in zip(patch, multiple)) and patch[1] >= 100
    assert depth == len(pools)
    tiny_depth, tiny_patch, _, _ = topology((1.0, 1.0, 1.0), (8, 8, 8))
    assert tiny_depth == 1 and tiny_patch == [8, 8, 8]
    # every pooled feature map keeps at least 4 voxels along each pooled axis
    for size, axis_pools in zip(patch, zip(*pools)):
        for f in axis_pools:
            if f == 2:
                assert size >= 8
            size //= f


def test_the_patch_shrinks_as_nnunet_shrinks_it():
    # five poolings of 256 make it a multiple of 32, but 224 is valid too: the step is recomputed, as nnU-Net's
    assert shrink_patch([256] * 3, [256] * 3, (1.0,) * 3) == [256, 256, 224]  # of equals, the last axis
    # the largest relative to the median shape shrinks; nnU-Net's ladder on a stack of thick slices
    assert shrink_patch([24, 160, 160], [24, 160, 160], (4.0, 0.8, 0.8)) == [24, 160, 128]
    assert shrink_patch([24, 160, 128], [24, 160, 160], (4.0, 0.8, 0.8)) == [24, 128, 128]
    assert shrink_patch([24, 128, 128], [24, 160, 160], (4.0, 0.8, 0.8)) == [20, 128, 128]
    assert shrink_patch([128, 128, 128], [90, 256, 256], (1.0,) * 3) == [112, 128, 128]
    # an axis that would keep fewer than 8 voxels does not shrink; none left: None
    assert shrink_patch([8, 64, 8], [8, 8, 8], (1.0,) * 3) == [8, 56, 8]
    assert shrink_patch([8, 8, 8], [8, 8, 8], (1.0,) * 3) is None


def test_topology_pools_as_often_as_the_patch_allows():
    # nnU-Net v2 sets no cap: 320 in-plane pools six times, the 4 mm axis from the third pooling on
    depth, patch, _, pools = topology((4.0, 0.8, 0.8), (24, 320, 320))
    assert depth == 6 and patch == [24, 320, 320]
    assert [p[1] for p in pools] == [2] * 6 and [p[0] for p in pools] == [1, 1, 2, 2, 1, 1]
    # a pooled side is rounded up, as nnU-Net counts it: 15 -> 8 can still be pooled once more
    assert topology((1.0,) * 3, (15, 15, 15))[0] == 2


def cost(patch, width, batch):
    """A step whose time is known: 1 s per million voxel-channels of a batch."""
    return {
        "step_seconds": float(np.prod(patch)) * batch * width / 1e6,
        "window_seconds": float(np.prod(patch)) * width / 3e6,
        "memory_gib": float(np.prod(patch)) * batch * width / 2**27,
    }


@pytest.mark.parametrize("channels", [("T1",), ("FLAIR", "T1", "T1ce", "T2")])
def test_the_time_budget_picks_the_largest_recipe_that_trains_enough_steps(channels):
    fp = fingerprint([(1.0, 1.0, 1.0)] * 4, [(64, 64, 64)] * 4, channels=channels)
    calls = []

    def measure(patch, width, batch):
        calls.append((tuple(patch), width))
        return cost(patch, width, batch)

    plan = plan_volumes(fp, measure, budget_minutes=10, min_steps=500, num_val_cases=2)
    allowed = 600 * (1 - 1 / 6) - 20
    assert plan.step_seconds * 500 <= allowed
    # the whole 64³ at width 8 costs 4.2 s a step: too slow; the plan is a smaller patch that fits (0.96 s a step)
    assert np.prod(plan.patch_size) < 64**3 and plan.batch_size == 2
    # nothing larger that fits was left out: every measured candidate larger than the plan did not fit
    chosen = np.prod(plan.patch_size) * plan.base_channels
    for patch, width in calls:
        if np.prod(patch) * width > chosen:
            assert cost(patch, width, 2)["step_seconds"] * 500 > allowed
    assert len(calls) <= 6  # predicted, not measured one by one
    assert [n["scheme"] for n in plan.normalization] == ["zscore"] * len(channels)
    steps = plan.epochs * plan.patches_per_epoch / plan.batch_size
    assert steps >= 500 and plan.epochs >= 1
    total = steps * plan.step_seconds + plan.epochs * plan.window_seconds * 2
    assert total <= 600


def test_by_default_a_cpu_plan_trains_1000_steps_and_more_steps_ask_for_a_smaller_step():
    from conftest import compose_config

    fp = fingerprint([(1.0, 1.0, 1.0)] * 4, [(64, 64, 64)] * 4)
    plan = plan_volumes(fp, cost, budget_minutes=20, num_val_cases=2)
    assert MIN_STEPS == 1000 and plan.epochs * plan.patches_per_epoch / plan.batch_size >= MIN_STEPS
    fewer = plan_volumes(fp, cost, budget_minutes=20, min_steps=500, num_val_cases=2)
    assert plan.step_seconds < fewer.step_seconds and plan.step_seconds * MIN_STEPS <= 1200 * (1 - 1 / 6) - 20
    for data in ("nnunet", "msd"):  # the user's data: the configs ask for the planner's default
        assert compose_config(f"data={data}", "data.root=x").data.plan.min_steps == MIN_STEPS


def test_a_tiny_volume_is_planned_whole_and_a_generous_budget_takes_the_widest_network():
    fp = fingerprint([(1.0, 1.0, 1.0)] * 3, [(16, 16, 16)] * 3)
    plan = plan_volumes(fp, cost, budget_minutes=60, min_steps=100)
    assert plan.patch_size == [16, 16, 16] and plan.base_channels == 32 and plan.depth == 2


def test_values_given_on_the_command_line_win():
    fp = fingerprint([(1.0, 1.0, 1.0)] * 3, [(64, 64, 64)] * 3)
    given = {"patch_size": [16, 32, 32], "base_channels": 8, "patches_per_epoch": 40, "epochs": None}
    plan = plan_volumes(fp, cost, budget_minutes=1, min_steps=10, given=given)
    assert plan.patch_size == [16, 32, 32] and plan.base_channels == 8 and plan.patches_per_epoch == 40
    assert sorted(plan.given) == ["base_channels", "patch_size", "patches_per_epoch"]
    epoch = 40 / 2 * plan.step_seconds + plan.validation_seconds
    assert plan.epochs == int((60 - 20) / epoch)
    with pytest.raises(ValueError, match="plan.budget_minutes must be positive"):
        plan_volumes(fp, cost, budget_minutes=0)
    with pytest.raises(ValueError, match="plan.min_steps"):
        plan_volumes(fp, cost, min_steps=0)


def test_on_a_gpu_the_budget_is_memory():
    """The largest patch of nnU-Net's ladder whose measured step of batch 2 fits, measured from the largest down."""
    fp = fingerprint([(1.0, 1.0, 1.0)] * 3, [(200, 200, 200)] * 3)
    plan = plan_volumes(fp, cost, budget_minutes=None, memory_gib=1.0)
    assert plan.base_channels == 32 and cost(plan.patch_size, 32, 2)["memory_gib"] <= 1.0
    *too_large, chosen = plan.candidates
    assert too_large and all(c["memory_gib"] > 1.0 for c in too_large) and chosen["patch_size"] == plan.patch_size
    assert plan.candidates[0]["patch_size"] == [224, 224, 224]  # the median shape, rounded up for 5 poolings
    ladder = [plan.candidates[0]["patch_size"]]
    while len(ladder) < len(plan.candidates):
        ladder.append(topology((1.0,) * 3, shrink_patch(ladder[-1], [200] * 3, (1.0,) * 3))[1])
    assert [c["patch_size"] for c in plan.candidates] == ladder  # every step of the ladder tried, in order


def test_on_a_gpu_the_batch_fills_the_memory_left_up_to_5_percent_of_the_dataset():
    # a 64³ median patch costs 0.125 GiB a step of batch 2: 8 GiB holds batch 128, 5 % of 400 cases' voxels 20
    fp = fingerprint([(1.0, 1.0, 1.0)] * 400, [(64, 64, 64)] * 400)
    plan = plan_volumes(fp, cost, budget_minutes=None, memory_gib=8.0)
    assert plan.patch_size == [64, 64, 64] and plan.batch_size == 20 and plan.patches_per_epoch == 250 * 20
    few = fingerprint([(1.0, 1.0, 1.0)] * 4000, [(64, 64, 64)] * 4000)
    assert plan_volumes(few, cost, budget_minutes=None, memory_gib=8.0).batch_size == 128  # the memory binds
    small = fingerprint([(1.0, 1.0, 1.0)] * 10, [(64, 64, 64)] * 10)
    assert plan_volumes(small, cost, budget_minutes=None, memory_gib=8.0).batch_size == 2  # never below 2
    given = plan_volumes(fp, cost, budget_minutes=None, memory_gib=8.0, given={"batch_size": 3})
    assert given.batch_size == 3 and "batch_size" in given.given


def test_a_plan_is_cached_per_fingerprint_and_machine(tmp_path, monkeypatch):
    fp = fingerprint([(1.0, 1.0, 1.0)] * 3, [(32, 32, 32)] * 3)
    calls = []

    def measure(patch, width, batch):
        calls.append(1)
        return cost(patch, width, batch)

    first = cached_plan(fp, measure, cache_dir=tmp_path, budget_minutes=5, min_steps=100)
    count = len(calls)
    again = cached_plan(fp, measure, cache_dir=tmp_path, budget_minutes=5, min_steps=100)
    assert again == first and len(calls) == count
    cached_plan(fp, measure, cache_dir=tmp_path, budget_minutes=6, min_steps=100)
    assert len(calls) > count
    # another torch (or another processor) measures anew: its steps take other times
    count = len(calls)
    monkeypatch.setattr(torch, "__version__", "0.0.other")
    cached_plan(fp, measure, cache_dir=tmp_path, budget_minutes=5, min_steps=100)
    assert len(calls) > count


def test_the_machine_of_a_plan_names_the_processor_its_cores_and_torch():
    words = machine()
    assert words.endswith(f"torch {torch.__version__}")
    if not torch.cuda.is_available():
        assert f"{os.cpu_count()} cores" in words
        info = Path("/proc/cpuinfo")
        lines = info.read_text().splitlines() if info.exists() else []
        models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        assert not models or models[0] in words


# --- fingerprint and resampling on files ---------------------------------------------------------------------------


def test_the_fingerprint_of_a_dataset(tmp_path):
    root = make_dataset(tmp_path / "ds", cases=3, shape=(8, 16, 16), zooms_xyz=(1.0, 1.0, 3.0))
    source = NnUNetDataset(root)
    fp = volume_fingerprint(source)
    assert fp.spacings.tolist() == [[3.0, 1.0, 1.0]] * 3 and fp.shapes.tolist() == [[8, 16, 16]] * 3
    assert fp.cases[0]["cropped_shape"] == [8, 14, 14]  # the body leaves a border of zeros in H and W
    big, small = fp.labels
    assert big["voxel_share"] == pytest.approx(3 * 4 * 4 / (8 * 16 * 16))  # slices 2-4, rows and columns 4-7
    assert small["components"] == 3 and small["component_voxels_median"] == 8
    assert small["component_mm3_median"] == pytest.approx(24.0)
    labels = source.raw_labels(0)
    image = read_volume(source.cases[0].images[0])[0]
    foreground = np.concatenate(
        [read_volume(c.images[0])[0][source.raw_labels(i) > 0] for i, c in enumerate(source.cases)]
    ).astype(np.float64)  # every foreground voxel: fewer than the 10,000 drawn per case
    assert fp.intensities[0]["mean"] == pytest.approx(foreground.mean(), rel=1e-9)
    assert fp.intensities[0]["std"] == pytest.approx(foreground.std(), rel=1e-9)
    assert fp.intensities[0]["p99_5"] == pytest.approx(np.percentile(foreground, 99.5), rel=1e-9)
    # cached beside the data, and computed anew when a file changes
    assert (root / "detloss_fingerprint.json").is_file()
    assert volume_fingerprint(source) == fp
    write_case(root, "case_000", [image * 2], labels, (1.0, 1.0, 3.0))
    assert volume_fingerprint(NnUNetDataset(root)).intensities[0]["mean"] != fp.intensities[0]["mean"]


def test_crop_to_the_nonzero_box():
    image = np.zeros((2, 5, 6, 7))
    image[1, 1:3, 2, 3:6] = 1
    assert crop_to_nonzero_box(image) == (slice(1, 3), slice(2, 3), slice(3, 6))
    assert crop_to_nonzero_box(np.zeros((1, 2, 3, 4))) == (slice(0, 2), slice(0, 3), slice(0, 4))


def test_resampling_keeps_thin_structures_and_comes_back():
    labels = np.zeros((6, 20, 20), dtype=np.uint8)
    labels[2:4, 5:15, 5:15] = 1
    labels[3, 9:11, 9:11] = 2  # one slice thick
    out = resample_labels(labels, (3.0, 1.0, 1.0), (1.5, 1.0, 1.0))
    assert out.shape == (12, 20, 20) and set(np.unique(out)) == {0, 1, 2}
    assert (out == 1).sum() == pytest.approx(2 * (labels == 1).sum(), rel=0.25)
    image = np.random.default_rng(0).normal(size=(2, 6, 20, 20)).astype(np.float32)
    assert resample_image(image, (3.0, 1.0, 1.0), (1.5, 2.0, 2.0)).shape == (2, 12, 10, 10)
    assert resampled_shape((6, 20, 20), (3.0, 1.0, 1.0), (1.5, 2.0, 2.0)) == (12, 10, 10)
    logits = torch.randn(1, 3, 12, 10, 10)
    assert resize_logits(logits, (6, 20, 20)).shape == (1, 3, 6, 20, 20)


def test_the_data_module_resamples_cases_to_the_planned_spacing(tmp_path):
    """Cases of two spacings: the target is their median, each case is resampled to it, and the labels follow."""
    root = make_dataset(tmp_path / "ds", cases=5, shape=(8, 16, 16), zooms_xyz=(1.0, 1.0, 2.0))
    # one case at half the slice thickness (twice the slices) and one at 4 mm (half the slices)
    labels = np.zeros((16, 16, 16), dtype=np.uint8)
    labels[4:10, 4:8, 4:8] = 1
    write_case(root, "case_003", [np.ones((16, 16, 16)) * labels * 50 + 1], labels, (1.0, 1.0, 1.0))
    dm = NnUNetDataModule(root, patch_size=(8, 16, 16), batch_size=2, patches_per_epoch=4, num_folds=5)
    assert dm.spacing == (2.0, 1.0, 1.0)
    index = [c.name for c in dm.source.cases].index("case_003")
    assert dm.source.labels[index].shape == (8, 16, 16) and dm.source.image(index).shape == (1, 8, 16, 16)
    assert (dm.source.labels[index] == 1).sum() == pytest.approx(6 * 16 / 2, rel=0.2)
    assert dm.source.spacing_of(index) == (2.0, 1.0, 1.0)
    assert dm.describe()["spacing"] == [2.0, 1.0, 1.0] and dm.describe()["normalization"][0]["scheme"] == "zscore"


def test_preprocessing_is_one_function_for_training_and_prediction():
    channels = [np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)]
    out = preprocess(channels, (2.0, 1.0, 1.0), (1.0, 1.0, 1.0), [{"scheme": "zscore"}])
    assert out.shape == (1, 4, 4, 4) and abs(float(out.mean())) < 0.1


# --- the plan through a run, its checkpoint and prediction ---------------------------------------------------------


def test_a_run_plans_what_the_command_line_leaves_open_and_keeps_the_plan(tmp_path):
    from conftest import compose_config

    from detloss.config import CHECKPOINT_CONFIG, CHECKPOINT_DATA, read_checkpoint
    from detloss.train import train

    run = tmp_path / "run"
    overrides = [
        f"paths.output_dir={run}",
        "task=volumetric",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.num_cases=6",
        "data.shape=[16,32,32]",
        "data.patch_size=null",
        "data.batch_size=null",
        "data.patches_per_epoch=null",
        "data.plan.budget_minutes=0.5",
        "data.plan.min_steps=4",
        "model.base_channels=4",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "logger=none",
        "task.num_previews=0",
    ]
    cfg = compose_config(*overrides)
    train(cfg)
    plan = json.loads((run / "plan.json").read_text())
    assert plan["base_channels"] == 4 and plan["epochs"] == 1 and plan["given"] == ["base_channels", "epochs"]
    assert plan["patch_size"] and plan["candidates"] and plan["step_seconds"] > 0
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    saved = ckpt[CHECKPOINT_CONFIG]
    assert saved["data"]["patch_size"] == plan["patch_size"] and saved["model"]["depth"] == plan["depth"]
    assert saved["criterion"]["deep_supervision"] == plan["depth"]
    assert (
        saved["data"]["target_spacing"] == [2.0, 1.0, 1.0] and saved["data"]["normalization"][0]["scheme"] == "zscore"
    )
    assert ckpt[CHECKPOINT_DATA]["plan"]["patch_size"] == plan["patch_size"]


def test_a_planned_checkpoint_predicts_and_evaluates_each_case_in_its_own_geometry(tmp_path):
    """Slices of 2, 3 and 4.5 mm: the plan resamples every case to the median 3 mm (1 x 1 in plane), the checkpoint
    keeps the plan, ``detloss-predict`` writes each mask in its input's shape and affine, ``detloss-eval`` rebuilds
    the run from the checkpoint alone."""
    import subprocess
    import sys

    from conftest import compose_config

    from detloss.train import train

    zooms = [(1.0, 1.0, z) for z in (2.0, 3.0, 4.5, 2.0, 3.0, 4.5)]
    root = make_dataset(tmp_path / "ds", cases=6, shape=(8, 24, 24), zooms_xyz=zooms)
    run = tmp_path / "run"
    overrides = [f"paths.output_dir={run}", "task=volumetric", "data=nnunet", f"data.root={root}"]
    overrides += ["data.plan.budget_minutes=0.3", "data.plan.min_steps=4", "data.plan.cache=false"]
    overrides += ["model.base_channels=4", "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "logger=none"]
    train(compose_config(*overrides, "task.num_previews=0"))
    plan = json.loads((run / "plan.json").read_text())
    assert plan["spacing"] == [3.0, 1.0, 1.0]
    ckpt = run / "checkpoints" / "last.ckpt"

    def call(module, *args):
        done = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]

    call("detloss.predict", f"ckpt_path={ckpt}", f"input={root / 'imagesTr'}", "output=out")
    for case in ("case_000", "case_002"):  # 2 mm and 4.5 mm slices, neither at the plan's spacing
        image = nib.load(str(root / "imagesTr" / f"{case}_0000.nii.gz"))
        mask = nib.load(str(tmp_path / "out" / "masks" / f"{case}.nii.gz"))
        assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}
    call("detloss.eval", f"ckpt_path={ckpt}", "hydra.run.dir=eval")
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"val/dice", "val/dice/big", "val/dice/small"} <= record["metrics"].keys()


class Threshold(torch.nn.Module):
    """A volumetric task's ``infer``: label 1 where the first channel is above 0 (after preprocessing)."""

    device = torch.device("cpu")

    def infer(self, images):
        self.seen = tuple(images.shape)
        high = (images[:, :1] > 0).float()
        return torch.cat([1 - high, high], 1)


def test_prediction_preprocesses_as_training_and_resamples_back_to_the_input_geometry(tmp_path):
    """An anisotropic case (3 mm slices) predicted by a plan of 1.5 mm: the network sees twice the slices, and the
    written mask has the input's shape, affine and labels."""
    from detloss.prediction import Item, VolumeWriter

    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    affine[:3, 3] = [4.0, -2.0, 9.0]
    zyx = np.zeros((6, 8, 10), dtype=np.float32)
    zyx[2:5, 2:6, 3:8] = 100.0  # a bright block; z-scored, it is the voxels above 0
    nib.save(nib.Nifti1Image(np.ascontiguousarray(zyx.transpose(2, 1, 0)), affine), str(tmp_path / "c_0000.nii.gz"))
    data = {"class_names": ["background", "block"], "category_ids": [0, 1], "in_channels": 1}
    data |= {"spacing": [1.5, 1.0, 1.0], "normalization": [{"scheme": "zscore", "nonzero_mask": False}]}
    task = Threshold()
    VolumeWriter(task, data, tmp_path / "out", {})(Item(tmp_path / "c_0000.nii.gz", "c_0000.nii.gz", "c"))
    assert task.seen == (1, 1, 12, 8, 10)
    out = nib.load(str(tmp_path / "out" / "masks" / "c.nii.gz"))
    assert out.shape == (10, 8, 6) and np.allclose(out.affine, affine)
    mask = np.asarray(out.dataobj).transpose(2, 1, 0)
    assert np.array_equal(mask, (zyx > 0).astype(mask.dtype))


def test_validation_scores_on_each_cases_own_grid(tmp_path):
    """A case of 1 mm slices in a dataset planned at 2 mm: the network sees the resampled image, the metrics the
    case's own labels and spacing."""
    root = make_dataset(tmp_path / "ds", cases=5, shape=(8, 16, 16), zooms_xyz=(1.0, 1.0, 2.0))
    labels = np.zeros((16, 16, 16), dtype=np.uint8)
    labels[4:10, 4:8, 4:8] = 1
    write_case(root, "case_003", [np.ones((16, 16, 16)) * labels * 50 + 1], labels, (1.0, 1.0, 1.0))
    dm = NnUNetDataModule(root, patch_size=(8, 16, 16), num_folds=5, fold=0)
    index = [c.name for c in dm.source.cases].index("case_003")
    if index not in dm.val_cases:
        dm = next(
            d
            for f in range(5)
            if index in (d := NnUNetDataModule(root, patch_size=(8, 16, 16), num_folds=5, fold=f)).val_cases
        )
    image, target = dm.val_dataset[dm.val_cases.index(index)]
    assert tuple(image.shape) == (1, 8, 16, 16)
    assert tuple(target["labels"].shape) == (16, 16, 16) and target["spacing"].tolist() == [1.0, 1.0, 1.0]
    assert np.array_equal(target["labels"].numpy(), labels)


def test_reading_every_case_in_the_first_epoch_comes_out_of_the_budget():
    fp = fingerprint([(1.0, 1.0, 1.0)] * 3, [(32, 32, 32)] * 3)
    given = {"patch_size": [32, 32, 32], "base_channels": 8, "epochs": 2}
    fast = plan_volumes(fp, cost, budget_minutes=2, min_steps=10, given=given, num_cases=30)
    slow = plan_volumes(
        fp, lambda *a: cost(*a) | {"load_seconds": 1.0}, budget_minutes=2, min_steps=10, given=given, num_cases=30
    )
    step = cost([32, 32, 32], 8, 2)["step_seconds"]
    steps = lambda plan: plan.epochs * plan.patches_per_epoch // plan.batch_size  # noqa: E731
    assert steps(fast) - steps(slow) == pytest.approx(30 / step, abs=3)


def test_the_other_ranks_of_a_distributed_run_train_rank_0s_plan(tmp_path):
    """Rank 1 measures nothing: it waits for rank 0's plan and takes it, even when its own measurement would differ."""
    import threading

    fp = fingerprint([(1.0, 1.0, 1.0)] * 3, [(64, 64, 64)] * 3)
    slower = lambda p, w, b: {k: 3 * v for k, v in cost(p, w, b).items()}  # noqa: E731
    found = {}

    def rank1():
        found["plan"] = cached_plan(fp, slower, cache_dir=tmp_path, rank=1, budget_minutes=5, min_steps=100)

    waiting = threading.Thread(target=rank1)
    waiting.start()
    first = cached_plan(fp, cost, cache_dir=tmp_path, rank=0, use_cache=False, budget_minutes=5, min_steps=100)
    waiting.join(timeout=30)
    assert found["plan"] == first
    alone = plan_volumes(fp, slower, budget_minutes=5, min_steps=100)
    assert alone.patch_size != first.patch_size or alone.base_channels != first.base_channels
    with pytest.raises(TimeoutError, match="rank 2 waited"):
        from detloss.plan.cache import kept

        kept(["nothing"], lambda: None, dict, tmp_path, rank=2, wait_seconds=0.1)


def test_a_given_patch_and_depth_stand_as_given():
    fp = fingerprint([(1.0, 1.0, 1.0)] * 3, [(64, 64, 64)] * 3)
    plan = plan_volumes(fp, None, given={"patch_size": [30, 60, 60], "depth": 1})
    assert plan.patch_size == [30, 60, 60] and plan.depth == 1 and len(plan.pools) == 1
    with pytest.raises(ValueError, match=r"data.patch_size \[8, 8, 8\]: .*too small for depth 4"):
        plan_volumes(fp, None, given={"patch_size": [8, 8, 8], "depth": 4})
    # a given depth with a planned patch: every candidate is pooled that many times, no more
    for patch_depth in (2, 3):
        planned = plan_volumes(fp, cost, budget_minutes=10, min_steps=100, given={"depth": patch_depth})
        assert planned.depth == patch_depth == len(planned.pools)


def test_a_gpu_plan_has_nnunets_epoch_length():
    fp = fingerprint([(1.0, 1.0, 1.0)] * 3, [(64, 64, 64)] * 3)
    plan = plan_volumes(fp, cost, budget_minutes=None, memory_gib=1.0)
    assert plan.patches_per_epoch == 250 * plan.batch_size and plan.epochs is None


def test_bad_planning_input_is_refused_naming_the_argument(tmp_path):
    stats = [{"mean": 0.0, "std": 1.0, "p00_5": 0.0, "p99_5": 0.0, "min": 0.0, "max": 0.0}]
    with pytest.raises(ValueError, match="channel 'CT' is CT, but the dataset has no foreground"):
        normalisation(fingerprint([(1.0,) * 3], [(16,) * 3], channels=("CT",), intensities=stats))
    with pytest.raises(ValueError, match="too small for one pooling"):
        plan_volumes(fingerprint([(1.0,) * 3], [(4, 4, 4)]), cost)
    root = make_dataset(tmp_path / "ds", cases=5)
    with pytest.raises(ValueError, match=r"data.target_spacing must be 3 positive numbers"):
        NnUNetDataModule(root, target_spacing=[1.0, 2.0])
    bad = [
        ([{"scheme": "minmax"}], "scheme must be one of"),
        ([{"scheme": "none", "mean": 0}], "a 'none' scheme has the keys"),
        ([{"scheme": "ct", "mean": 0, "std": 1}], "a 'ct' scheme has the keys"),
        ([{"scheme": "zscore"}, {"scheme": "zscore"}], "one scheme per channel"),
        ([{"scheme": "ct", "clip": [5, 1], "mean": 0, "std": 1}], "low <= high"),
    ]
    for normalization, message in bad:
        with pytest.raises(ValueError, match=rf"data.normalization.*{message}"):
            NnUNetDataModule(root, normalization=normalization)


# --- detloss-plan and the task of the data --------------------------------------------------------------------------


def test_detloss_plan_plans_volumes_without_being_told_the_task(tmp_path):
    """The command of a user who brings volumes: ``detloss-plan data=nnunet data.root=DIR``, no ``task=``."""
    import subprocess
    import sys

    root = make_dataset(tmp_path / "ds", cases=6, shape=(8, 24, 24))
    overrides = ["data=nnunet", f"data.root={root}", "data.plan.budget_minutes=0.5", "data.plan.min_steps=5"]
    overrides += ["data.plan.cache=false", f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(
        [sys.executable, "-m", "detloss.plan", *overrides], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout + done.stderr
    assert "NnUNetDataModule is volumetric data, planned as task=volumetric" in out
    assert "cases: 6" in out and "spacing (mm, D H W): median 3 × 1 × 1" in out
    assert re.search(r"target spacing \(mm, D H W\) +3 × 1 × 1", out) and "measured step / window" in out


def test_a_task_that_does_not_train_the_data_is_refused_by_name(tmp_path):
    from conftest import compose_config

    from detloss.data import MaskDataModule
    from detloss.train import check_task_fits_data, task_for_data

    assert task_for_data(NnUNetDataModule) == "volumetric" and task_for_data(MaskDataModule) == "segmentation"
    with pytest.raises(ValueError, match=r"NnUNetDataModule\) is volumetric data, but the task is 'detection'.*task="):
        check_task_fits_data(compose_config("data=nnunet", "data.root=x"), NnUNetDataModule)
    with pytest.raises(ValueError, match=r"MaskDataModule\) is segmentation data.*give task=segmentation"):
        check_task_fits_data(compose_config("task=volumetric"), MaskDataModule)
    check_task_fits_data(compose_config("task=brats"), NnUNetDataModule)  # BraTS trains volumes
    check_task_fits_data(compose_config("task=segmentation"), MaskDataModule)
