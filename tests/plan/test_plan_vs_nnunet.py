"""detloss's planner against nnU-Net's own ``3d_fullres`` plan (``tools/nnunet_plan.py``) on generated datasets:
anisotropic and isotropic, small and large, one and four channels, CT and MR.

    python -m pytest tests/plan/test_plan_vs_nnunet.py

Skipped where nnunetv2 is not installed (the ``tools`` extra). What must agree: the target spacing, the median shape
at it, the normalisation of each channel (scheme, mask, CT statistics), and the topology (poolings per axis and
kernels) of nnU-Net's patch, and the patch: where nnU-Net did not shrink it for GPU memory, detloss's unshrunk patch
equals it, and where nnU-Net did (under small memory targets here), it is one of detloss's shrinking steps; detloss
then chooses among them by measured time on a CPU or measured memory on a GPU (``detloss.plan.budget``).
"""

import sys
from pathlib import Path

import pytest

pytest.importorskip("nnunetv2")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from nnunet_plan import nnunet_plan  # noqa: E402
from nnunet_raw import write_nnunet_dataset  # noqa: E402

from detloss.data import NnUNetDataset  # noqa: E402
from detloss.data.preprocess import normalise  # noqa: E402
from detloss.plan import (  # noqa: E402
    initial_patch,
    normalisation,
    shrink_patch,
    target_spacing,
    topology,
    volume_fingerprint,
)

# name: (shape_xyz, spacing_xyz (one, or one a case), cases, channels, labels)
DATASETS = {
    "aniso_thick": ((48, 40, 10), [(1, 1, 3.6), (1, 1, 4.0), (1, 1, 4.4), (1, 1, 5.0)], 4, ["T2"], ["a", "b"]),
    "ct_1x1x3": ((56, 48, 16), (1, 1, 3), 3, ["CT"], ["organ", "lesion"]),
    "iso_4ch": (
        (32, 32, 32),
        [(1.2,) * 3, (1.5,) * 3, (1.5,) * 3, (2.0,) * 3],
        4,
        ["T1", "T1ce", "T2", "FLAIR"],
        ["t"],
    ),
    "x_coarse": ((12, 40, 36), (4, 1, 1), 3, ["MR"], ["a"]),
    "mr_1x1x2": ((96, 96, 64), (1, 1, 2), 3, ["T1", "T2"], ["a", "b", "c"]),
    "large_iso": ((160, 160, 96), (1, 1, 1), 2, ["T1"], ["a", "b", "c"]),
    "named_schemes": ((32, 32, 24), (1, 1, 1.5), 3, ["noNorm", "RESCALE_TO_0_1", "rgb_to_0_1", "zscore"], ["a"]),
}

NNUNET_SCHEME = {
    "ct": "CTNormalization",
    "zscore": "ZScoreNormalization",
    "none": "NoNormalization",
    "rescale_to_0_1": "RescaleTo01Normalization",
    "rgb_to_0_1": "RGBTo01Normalization",
}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """``name -> (detloss fingerprint, nnU-Net plan)``."""
    out = {}
    for name, (shape, spacing, cases, channels, labels) in DATASETS.items():
        root = tmp_path_factory.mktemp(name)
        write_nnunet_dataset(root, shape, spacing, cases, channels, labels, seed=1)
        fingerprint = volume_fingerprint(NnUNetDataset(root), cache=False)
        out[name] = (fingerprint, nnunet_plan(root, intensity_samples=200_000))
    return out


@pytest.mark.parametrize("name", DATASETS)
def test_target_spacing_and_median_shape_agree(pairs, name):
    fingerprint, plan = pairs[name]
    spacing = target_spacing(fingerprint)
    assert spacing == pytest.approx(plan["spacing"], rel=1e-6)
    assert fingerprint.median_shape_at(spacing) == pytest.approx(plan["median_image_size_in_voxels"], abs=1)


@pytest.mark.parametrize("name", DATASETS)
def test_normalisation_agrees(pairs, name):
    fingerprint, plan = pairs[name]
    ours = normalisation(fingerprint)
    stats_per_channel = plan["foreground_intensity_properties_per_channel"]
    stats_per_channel = [stats_per_channel[str(c)] for c in range(len(stats_per_channel))]
    for norm, scheme, mask, stats in zip(
        ours, plan["normalization_schemes"], plan["use_mask_for_norm"], stats_per_channel
    ):
        assert scheme == NNUNET_SCHEME[norm["scheme"]]
        if norm["scheme"] == "ct":
            # both sample the foreground (nnU-Net 2e5 voxels here, detloss up to 10,000 a case): close, not equal
            assert norm["mean"] == pytest.approx(stats["mean"], rel=0.05, abs=2.0)
            assert norm["clip"] == pytest.approx([stats["percentile_00_5"], stats["percentile_99_5"]], rel=0.05, abs=5)
        elif norm["scheme"] == "zscore":
            assert norm["nonzero_mask"] == mask
        else:
            assert not mask  # nnU-Net masks only z-scored channels


@pytest.mark.parametrize("scheme", ["none", "rescale_to_0_1", "rgb_to_0_1", "zscore"])
def test_each_scheme_normalises_as_nnunets_own_class(scheme):
    """detloss's :func:`normalise` against nnU-Net's normalisation class of the same name, on one volume."""
    import numpy as np
    from nnunetv2.preprocessing.normalization import default_normalization_schemes as nnunet

    volume = np.random.default_rng(0).uniform(3.0, 250.0, (6, 7, 8)).astype(np.float32)
    theirs = getattr(nnunet, NNUNET_SCHEME[scheme])(use_mask_for_norm=False, intensityproperties={}).run(volume.copy())
    assert normalise(volume, {"scheme": scheme}) == pytest.approx(theirs, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("name", DATASETS)
def test_topology_of_nnunets_patch_agrees(pairs, name):
    fingerprint, plan = pairs[name]
    depth, patch, kernels, pools = topology(plan["spacing"], plan["patch_size"])
    assert patch == list(plan["patch_size"])
    assert [list(p) for p in pools] == [list(p) for p in plan["pool_op_kernel_sizes"][1:]]
    assert [list(k) for k in kernels] == [list(k) for k in plan["conv_kernel_sizes"]]


def ladder(spacing, median_shape) -> list[list[int]]:
    """detloss's patches from the unshrunk one down, each :func:`shrink_patch`'s step from the one before."""
    patches = [topology(spacing, initial_patch(spacing, median_shape))[1]]
    while (smaller := shrink_patch(patches[-1], median_shape, spacing)) is not None:
        patches.append(topology(spacing, smaller)[1])
    return patches


@pytest.mark.parametrize("name", DATASETS)
def test_nnunets_patch_is_on_detlosss_ladder(pairs, name):
    """Unshrunk, nnU-Net's patch is detloss's first; shrunk for memory, it is one of detloss's shrinking steps."""
    fingerprint, plan = pairs[name]
    spacing = target_spacing(fingerprint)
    patches = ladder(spacing, fingerprint.median_shape_at(spacing))
    assert list(plan["patch_size"]) in patches
    shrunk = any(p < min(m, 256) - 16 for p, m in zip(plan["patch_size"], plan["median_image_size_in_voxels"]))
    if not shrunk:
        assert patches[0] == list(plan["patch_size"])


# name, GPU memory target (GB) under which nnU-Net shrinks the patch of these datasets several steps
SHRUNK = [("large_iso", 2), ("large_iso", 4), ("mr_1x1x2", 1), ("aniso_thick", 0.05)]


@pytest.mark.parametrize(("name", "gigabytes"), SHRUNK)
def test_the_shrinking_steps_are_nnunets(name, gigabytes, tmp_path):
    """nnU-Net under a small memory target: its patch is on detloss's ladder, at least two steps down (the rule
    that picks the axis, of equals the last, and the step recomputed for the smaller patch)."""
    shape, spacing, cases, channels, labels = DATASETS[name]
    write_nnunet_dataset(tmp_path, shape, spacing, cases, channels, labels, seed=1)
    plan = nnunet_plan(tmp_path, gpu_memory_target_in_gb=gigabytes, intensity_samples=20_000)
    patches = ladder(plan["spacing"], plan["median_image_size_in_voxels"])
    assert list(plan["patch_size"]) in patches[2:], (plan["patch_size"], patches)
