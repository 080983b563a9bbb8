"""tools/nnunet_plan.py: nnU-Net v2's own fingerprint and 3d_fullres plan of generated datasets, offline, checked
against nnU-Net's published planning rules as restated below (not copied from nnU-Net), and the plan's axis order
checked to be detloss's ``(D, H, W)``.

    python -m pytest tests/plan/test_nnunet_plan.py

Skipped where nnunetv2 is not installed (``pip install nnunetv2``, or the ``tools`` extra). The datasets are small
(2 to 4 cases) and the intensity statistics sample 2e5 voxels instead of nnU-Net's 1e8, so that the module runs in
well under a minute on two CPU cores.
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nnunetv2")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from nnunet_plan import format_plan, main, nnunet_plan  # noqa: E402
from nnunet_raw import write_nnunet_dataset  # noqa: E402

from detloss.data import read_volume  # noqa: E402

SAMPLES = 200_000
KEYS = {
    "configuration", "axes", "spacing", "patch_size", "pool_op_kernel_sizes", "num_pool_per_axis", "conv_kernel_sizes",
    "n_stages", "features_per_stage", "batch_size", "batch_dice", "median_image_size_in_voxels",
    "normalization_schemes", "use_mask_for_norm", "resampling_data_kwargs", "resampling_seg_kwargs", "median_spacing",
    "case_spacings", "shapes_after_crop", "median_relative_size_after_cropping",
    "foreground_intensity_properties_per_channel", "planner", "nnunetv2_version", "image_reader_writer",
    "transpose_forward", "configurations", "num_cases", "seconds", "nnunet_configuration",
}  # fmt: skip

# name: (shape_xyz, spacing_xyz (one or one a case), cases, channels, labels)
DATASETS = {
    # strongly anisotropic along z, spacings that differ between cases: the 10th-percentile rule applies
    "aniso": ((48, 40, 10), [(1, 1, 3.6), (1, 1, 4.0), (1, 1, 4.4), (1, 1, 5.0)], 4, ["T2"], ["a", "b"]),
    # 1 x 1 x 3 mm, CT: the ratio is exactly 3, not above it, so the median spacing stays
    "ct": ((56, 48, 16), (1, 1, 3), 3, ["CT"], ["organ", "lesion"]),
    # isotropic, four channels, spacings that differ between cases: the median spacing
    "iso4": ((32, 32, 32), [(1.2,) * 3, (1.5,) * 3, (1.5,) * 3, (2.0,) * 3], 4, ["T1", "T1ce", "T2", "FLAIR"], ["t"]),
    # x is the coarse axis: nnU-Net permutes it to the front, nnunet_plan permutes it back
    "xcoarse": ((12, 40, 36), (4, 1, 1), 3, ["MR"], ["a"]),
    # larger, isotropic: at 8 GB the patch is the median shape, at 4 GB the patch shrinks
    "large": ((160, 160, 96), (1, 1, 1), 2, ["T1"], ["a", "b", "c"]),
}


# -- nnU-Net's rules, restated ----------------------------------------------------------------------------------------


def expected_target_spacing(spacings, shapes, threshold=3.0):
    """The median spacing; but where one axis is more than ``threshold`` times coarser than the others and has fewer
    than a ``threshold``-th of their voxels, that axis gets the 10th percentile of its spacings (never finer than the
    other axes)."""
    spacings, shapes = np.asarray(spacings, float), np.asarray(shapes, float)
    target, size = np.median(spacings, 0), np.median(shapes, 0)
    coarse = int(np.argmax(target))
    others = [a for a in range(3) if a != coarse]
    if target[coarse] > threshold * max(target[others]) and size[coarse] * threshold < min(size[others]):
        low = np.percentile(spacings[:, coarse], 10)
        target[coarse] = low if low >= max(target[others]) else max(target[others]) + 1e-5
    return target


def expected_initial_patch(spacing, median_shape):
    """A box shaped as ``1 / spacing`` of the volume of 256³ voxels, no larger than the median shape."""
    inverse = 1 / np.asarray(spacing, float)
    box = inverse * (256 ** len(inverse) / np.prod(inverse)) ** (1 / len(inverse))
    return [min(round(b), m) for b, m in zip(box, median_shape)]


def expected_topology(spacing, patch, min_edge=4):
    """Poolings while an axis has at least ``2 min_edge`` voxels left; each stage pools the axes whose current spacing
    is within 2x of the finest of them (a lone axis only with ``3 min_edge`` voxels left); an axis's kernel becomes 3
    once its spacing is within 2x of the finest and stays so, the bottleneck's is 3. The patch is then rounded up to
    a multiple of 2^poolings. Returns (strides, kernels, patch, poolings per axis)."""
    spacing, size, n = [float(s) for s in spacing], [float(p) for p in patch], len(spacing)
    kernel, strides, kernels, pools = [1] * n, [[1] * n], [], [0] * n
    while True:
        axes = [a for a in range(n) if size[a] >= 2 * min_edge]
        if not axes:
            break
        finest = min(spacing[a] for a in axes)
        axes = [a for a in axes if spacing[a] / finest < 2]
        if len(axes) == 1 and size[axes[0]] < 3 * min_edge:
            break
        kernel = [3 if kernel[a] == 3 or spacing[a] / min(spacing) < 2 else 1 for a in range(n)]
        strides.append([2 if a in axes else 1 for a in range(n)])
        kernels.append(kernel)
        for a in axes:
            pools[a] += 1
            spacing[a] *= 2
            size[a] = math.ceil(size[a] / 2)
    kernels.append([3] * n)
    patch = [math.ceil(p / 2**k) * 2**k for p, k in zip(patch, pools)]
    return strides, kernels, patch, pools


def median_shape_at(spacing, case_spacings, shapes):
    return np.median([np.round(np.asarray(s) * np.asarray(cs) / spacing) for s, cs in zip(shapes, case_spacings)], 0)


# -- fixtures ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet_raw")
    return {
        name: write_nnunet_dataset(root / name, shape, spacing, cases, channels, labels, seed=i)
        for i, (name, (shape, spacing, cases, channels, labels)) in enumerate(DATASETS.items())
    }


@pytest.fixture(scope="module")
def plans(datasets):
    return {name: nnunet_plan(path, intensity_samples=SAMPLES) for name, path in datasets.items()}


def dhw(triples):
    """``(x, y, z)`` triples as ``(D, H, W)`` = ``(z, y, x)``."""
    return [list(t)[::-1] for t in triples]


def written(name):
    shape, spacing, cases, _, _ = DATASETS[name]
    spacings = np.broadcast_to(np.asarray(spacing, float), (cases, 3))
    return dhw(spacings), dhw([shape] * cases)


# -- the tests ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DATASETS)
def test_plan_has_the_documented_keys_and_detloss_axis_order(plans, datasets, name):
    plan = plans[name]
    assert set(plan) == KEYS
    assert plan["configuration"] == "3d_fullres" and plan["axes"] == ["D", "H", "W"]
    assert plan["planner"] == "ExperimentPlanner" and plan["image_reader_writer"] == "SimpleITKIO"
    assert plan["nnunetv2_version"].startswith("2.")
    case_spacings, shapes = written(name)
    assert plan["num_cases"] == len(shapes)
    np.testing.assert_allclose(plan["case_spacings"], case_spacings, rtol=1e-5)
    np.testing.assert_allclose(plan["median_spacing"], np.median(case_spacings, 0), rtol=1e-5)
    # nothing is zero in the written images, so nnU-Net's crop to the non-zero region keeps every voxel
    assert plan["shapes_after_crop"]["per_case"] == shapes
    assert plan["shapes_after_crop"]["median"] == list(np.median(shapes, 0))
    assert plan["median_relative_size_after_cropping"] == 1.0
    assert plan["use_mask_for_norm"] == [False] * len(DATASETS[name][3])
    # detloss reads the same files in the same (D, H, W) order
    volume, spacing = read_volume(next((datasets[name] / "imagesTr").glob("*_0000.nii.gz")))
    assert list(volume.shape) in shapes and list(spacing) in [list(s) for s in case_spacings]
    lengths = {len(plan[k]) for k in ("spacing", "patch_size", "median_image_size_in_voxels", "num_pool_per_axis")}
    assert lengths == {3}
    assert plan["n_stages"] == len(plan["pool_op_kernel_sizes"]) == len(plan["conv_kernel_sizes"])
    assert json.loads(json.dumps(plan)) == plan  # JSON-plain


@pytest.mark.parametrize("name", DATASETS)
def test_target_spacing_follows_the_median_and_anisotropy_rules(plans, name):
    case_spacings, shapes = written(name)
    np.testing.assert_allclose(plans[name]["spacing"], expected_target_spacing(case_spacings, shapes), rtol=1e-6)


def test_the_named_cases_of_the_spacing_rule(plans):
    # anisotropic: z (D) gets the 10th percentile of 3.6, 4.0, 4.4, 5.0 = 3.72, not the median 4.2
    np.testing.assert_allclose(plans["aniso"]["spacing"], [3.72, 1, 1], rtol=1e-6)
    assert plans["aniso"]["median_spacing"][0] == pytest.approx(4.2)
    # a ratio of exactly 3 is not anisotropic: the median stays
    np.testing.assert_allclose(plans["ct"]["spacing"], [3, 1, 1])
    # isotropic: the median of 1.2, 1.5, 1.5, 2.0 on every axis
    np.testing.assert_allclose(plans["iso4"]["spacing"], [1.5, 1.5, 1.5])
    # x coarse: 4 mm lands on W, and nnU-Net had moved that axis to the front
    np.testing.assert_allclose(plans["xcoarse"]["spacing"], [1, 1, 4])
    assert plans["xcoarse"]["transpose_forward"] == [2, 0, 1]
    assert all(plans[n]["transpose_forward"] == [0, 1, 2] for n in ("aniso", "ct", "iso4", "large"))


@pytest.mark.parametrize("name", ["aniso", "ct", "iso4", "xcoarse", "large"])
def test_patch_and_topology_follow_the_rules_where_the_patch_fits(plans, name):
    plan = plans[name]
    case_spacings, shapes = written(name)
    median = median_shape_at(plan["spacing"], case_spacings, shapes)
    np.testing.assert_allclose(plan["median_image_size_in_voxels"], median)
    strides, kernels, patch, pools = expected_topology(plan["spacing"], expected_initial_patch(plan["spacing"], median))
    assert plan["pool_op_kernel_sizes"] == strides
    assert plan["conv_kernel_sizes"] == kernels
    assert plan["patch_size"] == patch
    assert plan["num_pool_per_axis"] == pools
    assert plan["features_per_stage"] == [min(32 * 2**s, 320) for s in range(plan["n_stages"])]


def test_no_pooling_and_no_3_kernel_along_a_coarse_axis_at_first(plans):
    for name, coarse in [("aniso", 0), ("ct", 0), ("xcoarse", 2)]:
        plan = plans[name]
        first = plan["pool_op_kernel_sizes"][1]  # the first downsampling
        assert first[coarse] == 1 and all(first[a] == 2 for a in range(3) if a != coarse), (name, first)
        assert plan["conv_kernel_sizes"][0][coarse] == 1, name
        assert plan["num_pool_per_axis"][coarse] < min(
            p for a, p in enumerate(plan["num_pool_per_axis"]) if a != coarse
        )
    # isotropic: every stage pools every axis, all kernels 3
    assert plan_pools_all(plans["iso4"]) and plans["iso4"]["patch_size"] == [32, 32, 32]
    assert plans["iso4"]["num_pool_per_axis"] == [3, 3, 3]  # 32 -> 16 -> 8 -> 4: the bottleneck keeps 4 voxels
    assert all(k == [3, 3, 3] for k in plans["iso4"]["conv_kernel_sizes"])


def plan_pools_all(plan):
    return all(s == [2, 2, 2] for s in plan["pool_op_kernel_sizes"][1:])


def test_the_patch_shrinks_to_fit_a_smaller_memory_target(datasets, plans):
    full = plans["large"]
    assert full["patch_size"] == [96, 160, 160]  # the median shape fits 8 GB
    small = nnunet_plan(datasets["large"], gpu_memory_target_in_gb=4, intensity_samples=SAMPLES)
    assert np.prod(small["patch_size"]) < np.prod(full["patch_size"])
    assert all(p <= m for p, m in zip(small["patch_size"], small["median_image_size_in_voxels"]))
    for size, pools in zip(small["patch_size"], small["num_pool_per_axis"]):
        assert size % 2**pools == 0 and size / 2**pools >= 4
    strides, kernels, _, pools = expected_topology(small["spacing"], small["patch_size"])
    assert (small["pool_op_kernel_sizes"], small["conv_kernel_sizes"], small["num_pool_per_axis"]) == (
        strides,
        kernels,
        pools,
    )


@pytest.mark.parametrize("name", DATASETS)
def test_batch_size_is_capped_by_5_percent_of_the_dataset_and_at_least_2(plans, name):
    plan = plans[name]
    voxels = np.prod(plan["median_image_size_in_voxels"]) * plan["num_cases"]
    cap = round(0.05 * voxels / np.prod(plan["patch_size"]))
    assert cap < 2 and plan["batch_size"] == 2  # these datasets are small: the cap would go below the minimum of 2


def test_normalisation_by_channel_name_and_ct_statistics(datasets, plans):
    assert plans["ct"]["normalization_schemes"] == ["CTNormalization"]
    assert plans["iso4"]["normalization_schemes"] == ["ZScoreNormalization"] * 4
    for name in ("aniso", "xcoarse", "large"):
        assert plans[name]["normalization_schemes"] == ["ZScoreNormalization"]
    # the CT statistics are those of the foreground voxels, each case weighted alike (nnU-Net samples as many voxels
    # from every case)
    cases = [
        read_volume(image)[0][read_volume(datasets["ct"] / "labelsTr" / image.name.replace("_0000", ""))[0] > 0]
        for image in sorted((datasets["ct"] / "imagesTr").glob("*.nii.gz"))
    ]
    values = np.concatenate(cases).astype(np.float64)
    weights = np.concatenate([np.full(len(c), 1 / len(c)) for c in cases])
    mean = np.average(values, weights=weights)
    std = np.sqrt(np.average((values - mean) ** 2, weights=weights))
    low, high = (np.percentile(values, q, weights=weights, method="inverted_cdf") for q in (0.5, 99.5))
    props = plans["ct"]["foreground_intensity_properties_per_channel"]["0"]
    assert props["channel"] == "CT"
    assert props["mean"] == pytest.approx(mean, abs=0.05 * std)
    assert props["std"] == pytest.approx(std, rel=0.05)
    assert props["percentile_00_5"] == pytest.approx(low, abs=0.15 * std)
    assert props["percentile_99_5"] == pytest.approx(high, abs=0.15 * std)
    four = plans["iso4"]["foreground_intensity_properties_per_channel"]
    assert [four[str(c)]["channel"] for c in range(4)] == ["T1", "T1ce", "T2", "FLAIR"]
    assert all(
        four[str(c)]["percentile_00_5"] < four[str(c)]["mean"] < four[str(c)]["percentile_99_5"] for c in range(4)
    )


def test_resampling_settings(plans):
    plan = plans["aniso"]
    assert plan["resampling_data_kwargs"] == {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    assert plan["resampling_seg_kwargs"] == {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None}


def test_2d_configuration_and_its_axes(datasets):
    plan = nnunet_plan(datasets["xcoarse"], "2d", intensity_samples=SAMPLES)
    assert plan["configuration"] == "2d" and plan["axes"] == ["D", "H"]  # the slices span the axes other than W
    np.testing.assert_allclose(plan["spacing"], [1, 1])
    assert plan["median_image_size_in_voxels"] == [36, 40]  # (x, y, z) = (12, 40, 36): D = 36, H = 40
    assert plan["patch_size"] == [40, 40]  # 36 rounded up to a multiple of 2^3
    assert len(plan["pool_op_kernel_sizes"][0]) == 2


def test_cli_prints_json_and_a_table(datasets, capsys):
    assert main([str(datasets["ct"]), "--json", "--intensity-samples", str(SAMPLES)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["normalization_schemes"] == ["CTNormalization"]
    assert "target spacing" in format_plan(plan) and "CTNormalization" in format_plan(plan)


def test_errors_name_the_argument_or_file(tmp_path, datasets):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        nnunet_plan(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        nnunet_plan(tmp_path)
    with pytest.raises(ValueError, match="configuration must be one of"):
        nnunet_plan(datasets["ct"], "3d")
    with pytest.raises(ValueError, match="nnU-Net planned only"):
        nnunet_plan(datasets["ct"], "3d_lowres", intensity_samples=SAMPLES)
    with pytest.raises(ValueError, match="spacing_xyz"):
        write_nnunet_dataset(tmp_path / "bad", (8, 8, 8), [(1, 1, 1)] * 2, 3, ["MR"], ["a"])
