"""Mirroring test-time augmentation (detloss.segmentation.inference.mirror_average): every flip of the spatial axes
(8 in 3D, 4 in 2D), logits averaged as nnU-Net's predictor averages them; a flip-equivariant model is unchanged by
it, a model that is not gives the hand-computed mean of its flipped predictions; the volumetric task's ``tta``."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config
from torch import nn

from detloss.segmentation import SegmentationCriterion, sliding_window
from detloss.segmentation.inference import mirror_average, mirror_axes_sets
from detloss.tasks import VolumetricTask
from detloss.train import build_task


def symmetric_conv(dims: int, channels_in: int = 2, channels_out: int = 3) -> nn.Module:
    """A convolution whose kernels are the mean of their flips along every axis (zero padding): flip-equivariant."""
    conv = (nn.Conv2d if dims == 2 else nn.Conv3d)(channels_in, channels_out, 3, padding=1).double()
    torch.manual_seed(0)
    with torch.no_grad():
        kernel = torch.randn_like(conv.weight)
        sets = mirror_axes_sets(range(2, 2 + dims))
        conv.weight.copy_(sum(kernel.flip(s) if s else kernel for s in sets) / len(sets))
    return conv


class TimesWeight(nn.Module):
    """``x * w``, ``w`` the voxel's position in its window numbered ``0 … n − 1``: not flip-equivariant."""

    def forward(self, x):
        return x * torch.arange(x[0, 0].numel(), dtype=x.dtype).reshape(x.shape[2:])


class PlusRamp(nn.Module):
    """``x + 1·d + 2·h + 3·w``, ``(d, h, w)`` the voxel's index in its window: not flip-equivariant."""

    def forward(self, x):
        d, h, w = (torch.arange(n, dtype=x.dtype) for n in x.shape[2:])
        return x + d[:, None, None] + 2 * h[None, :, None] + 3 * w[None, None, :]


def test_the_flips_are_every_subset_of_the_axes():
    assert mirror_axes_sets([2, 3, 4]) == [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    assert len(mirror_axes_sets([2, 3])) == 4
    with pytest.raises(ValueError, match="distinct"):
        mirror_axes_sets([2, 2])


@pytest.mark.parametrize("dims", [2, 3])
def test_a_flip_equivariant_model_is_unchanged(dims):
    model = symmetric_conv(dims)
    x = torch.randn(2, 2, *[5, 6, 7][:dims], dtype=torch.float64)
    flipped = model(x.flip(2))  # equivariant: flipping the input flips the output
    assert torch.allclose(flipped.flip(2), model(x), atol=1e-12)
    assert torch.allclose(mirror_average(model, x).double(), model(x), atol=1e-5)


@pytest.mark.parametrize("dims, mean", [(3, 3.5), (2, 1.5)])
def test_a_model_that_is_not_equivariant_gives_the_mean_of_its_flips(dims, mean):
    # over the 2**dims flips each voxel meets every weight 0 … 2**dims − 1 once: the mean weight everywhere
    x = torch.rand(1, 1, *[2] * dims, dtype=torch.float64) + 1
    out = mirror_average(TimesWeight(), x)
    assert not torch.allclose(TimesWeight()(x), mean * x)
    assert torch.allclose(out.double(), mean * x, atol=1e-6)
    # the mirrored axes only: flipping the first axis of a (2, 2, 2) window averages weights k and k + 4
    if dims == 3:
        one_axis = mirror_average(TimesWeight(), x, axes=[0])
        weights = torch.arange(8.0).reshape(2, 2, 2)
        assert torch.allclose(one_axis, x.float() * (weights + weights.flip(0)) / 2, atol=1e-6)


def test_logits_are_averaged_not_probabilities():
    # logits (3, 0) at the first of two pixels, (0, 0) at the second: flipped back, the pixels swap. The mean of the
    # logits is (1.5, 0) at both, probability sigmoid(1.5) = 0.818 for class 0; the mean of the softmaxes would
    # give (sigmoid(3) + 0.5) / 2 = 0.726.
    def model(t):
        logits = torch.zeros(t.shape[0], 2, 1, 2)
        logits[:, 0, 0, 0] = 3.0
        return logits

    logits = mirror_average(model, torch.zeros(1, 1, 1, 2), axes=[1])
    assert torch.allclose(logits, torch.tensor([[[[1.5, 1.5]], [[0.0, 0.0]]]]))
    assert torch.allclose(logits.softmax(1)[0, 0], torch.sigmoid(torch.tensor(1.5)))


def test_sliding_windows_mirror_each_window():
    # windows (4, 6, 8) over (6, 9, 12): per window the flip mean of 1·d + 2·h + 3·w is 1·1.5 + 2·2.5 + 3·3.5 = 17
    x = torch.randn(1, 1, 6, 9, 12)
    plain = sliding_window(PlusRamp(), x, (4, 6, 8), overlap=0.5)
    mirrored = sliding_window(PlusRamp(), x, (4, 6, 8), overlap=0.5, tta=True)
    assert not torch.allclose(plain, x + 17, atol=1e-3)
    assert torch.allclose(mirrored, x + 17, atol=1e-4)
    model = symmetric_conv(3, 1, 2).float()
    assert torch.allclose(sliding_window(model, x, (4, 6, 8), tta=True), sliding_window(model, x, (4, 6, 8)), atol=1e-5)


def test_half_precision_logits_are_averaged_in_float32():
    x = torch.rand(1, 1, 2, 2, 2)
    out = mirror_average(lambda t: TimesWeight()(t).to(torch.bfloat16), x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, 3.5 * x, atol=0.05)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="mirror axes must be in 0 … 2"):
        mirror_average(TimesWeight(), torch.rand(1, 1, 2, 2, 2), axes=[3])
    with pytest.raises(ValueError, match="images must be"):
        mirror_average(TimesWeight(), torch.rand(1, 1, 4))


def test_validation_mirrors_when_the_task_asks():
    assert compose_config("task=volumetric").task.tta is False
    sizes = ["data.patch_size=[16,16,16]", "model.base_channels=4", "model.depth=2"]
    cfg = compose_config("task=volumetric", "task.tta=true", *sizes)
    data = {"kind": "volumetric", "class_names": ["bg", "a"], "in_channels": 1, "image_size": None,
            "spacing": [1.0, 1.0, 1.0], "patch_size": [16, 16, 16]}  # fmt: skip
    task = build_task(cfg, data, pretrained=False).eval()
    assert task.tta is True
    x = torch.randn(1, 1, 16, 20, 16)
    expected = sliding_window(task.model, x, task.roi_size, task.sw_overlap, task.sw_batch_size, tta=True)
    assert torch.allclose(task.infer(x), expected)
    plain = VolumetricTask(PlusRamp(), SegmentationCriterion(2), torch.optim.SGD, roi_size=(4, 6, 8), tta=False)
    mirrored = VolumetricTask(PlusRamp(), SegmentationCriterion(2), torch.optim.SGD, roi_size=(4, 6, 8), tta=True)
    x = torch.randn(1, 1, 6, 9, 12)
    assert torch.allclose(mirrored.infer(x), x + 17, atol=1e-4) and not torch.allclose(plain.infer(x), x + 17)


def test_predicted_2d_masks_mirror_when_asked(tmp_path):
    import numpy as np
    from PIL import Image

    from detloss.prediction import Item, MaskWriter

    class WidthRamp2D(nn.Module):  # logits (0, w − 2.5): class 1 from column 3 on, class 1 everywhere once mirrored
        def forward(self, x):
            ramp = (torch.arange(x.shape[-1], dtype=x.dtype) - 2.5).expand(x.shape[0], 1, *x.shape[2:])
            return torch.cat([torch.zeros_like(ramp), ramp], 1)

    class Task:
        device, model = torch.device("cpu"), WidthRamp2D()

    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(tmp_path / "grey.png")
    data = {"class_names": ["bg", "a"], "category_ids": [0, 7], "image_size": 8, "in_channels": 1, "resize": "resize"}
    for tta in (False, True):
        MaskWriter(Task(), data, tmp_path / str(tta), {"draw": False, "tta": tta})(
            Item(tmp_path / "grey.png", "grey.png", 0)
        )
    plain = np.asarray(Image.open(tmp_path / "False" / "masks" / "grey.png"))
    mirrored = np.asarray(Image.open(tmp_path / "True" / "masks" / "grey.png"))
    assert (plain[:, :3] == 0).all() and (plain[:, 3:] == 7).all()
    assert (mirrored == 7).all()
