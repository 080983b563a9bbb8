import math

import pytest
import torch
from conftest import preset
from torch import nn

from detloss.models import ModelEMA, UNet, YOLODetector

R = 16  # reg_max


@pytest.fixture(scope="module")
def nano3():
    torch.manual_seed(0)
    return preset("model", "yolo_nano", num_classes=3)


# ----------------------------------------------------------------------------------------------- YOLO detector


@pytest.mark.parametrize("size", ["nano", "small"])
@pytest.mark.parametrize("px", [64, 128])
def test_yolo_output_shapes(size, px):
    model = preset("model", f"yolo_{size}", num_classes=5).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, px, px))
    assert model.strides == (8, 16, 32) and model.reg_max == R
    assert [tuple(f.shape) for f in feats] == [(1, 4 * R + 5, px // s, px // s) for s in (8, 16, 32)]


def test_yolo_non_square_and_channels():
    model = YOLODetector(2, width=0.125, reg_max=8, in_channels=1).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 1, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 34, 8, 12), (1, 34, 4, 6), (1, 34, 2, 3)]


def test_yolo_channel_order_and_bias_init(nano3):
    """With the final 1×1 weights zeroed the outputs are the biases: 4·reg_max box channels (2.0), then C classes."""
    model = preset("model", "yolo_nano", num_classes=3).eval()
    with torch.no_grad():
        for head in (*model.box_heads, *model.cls_heads):
            head[-1].weight.zero_()
        feats = model(torch.randn(1, 3, 64, 64))
    for f, s in zip(feats, model.strides):
        assert torch.equal(f[:, : 4 * R], torch.full_like(f[:, : 4 * R], 2.0))
        expected = math.log(5 / 3 / (640 / s) ** 2)
        torch.testing.assert_close(f[:, 4 * R :], torch.full_like(f[:, 4 * R :], expected))


def test_yolo_class_prior_at_init(nano3):
    with torch.no_grad():
        feats = nano3.eval()(torch.randn(2, 3, 128, 128))
    for f, s in zip(feats, nano3.strides):
        prior = 5 / 3 / (640 / s) ** 2
        assert f[:, 4 * R :].sigmoid().mean().item() == pytest.approx(prior, rel=0.05)
    box_bias = torch.stack([h[-1].bias for h in nano3.box_heads])
    assert torch.equal(box_bias, torch.full_like(box_bias, 2.0))


def test_yolo_parameter_counts():
    counts = {
        size: sum(p.numel() for p in preset("model", f"yolo_{size}", num_classes=80).parameters())
        for size in ("nano", "small")
    }
    print(f"\nparameters at 80 classes: {counts}")
    assert 3.0e6 < counts["nano"] < 3.3e6  # YOLOv8n: 3.16 M
    assert 10.5e6 < counts["small"] < 11.8e6  # YOLOv8s: 11.2 M


def test_yolo_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = preset("model", "yolo_nano", num_classes=3).train()
    sum(f.sum() for f in model(torch.randn(2, 3, 64, 64))).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


def test_yolo_rejects_bad_input_and_options(nano3):
    with pytest.raises(ValueError, match="images"):
        nano3(torch.randn(1, 3, 48, 64))
    with pytest.raises(ValueError, match="images"):
        nano3(torch.randn(3, 64, 64))
    for kwargs in ({"num_classes": 0}, {"num_classes": 2, "reg_max": 0}, {"num_classes": 2, "width": 0}):
        with pytest.raises(ValueError):
            YOLODetector(**kwargs)
    with pytest.raises(ValueError, match="strides"):
        YOLODetector(2, strides=(4, 8, 16))


def test_model_presets_take_overrides():
    model = preset("model", "yolo_nano", num_classes=4, reg_max=8)
    assert model.reg_max == 8 and model.width == 0.25 and model.num_classes == 4


# ----------------------------------------------------------------------------------------------- postprocess

C = 3


def empty_feats(batch=1, px=64):
    """Box logits 0, class logits −20 (score 2e-9): nothing passes the default threshold."""
    feats = [torch.zeros(batch, 4 * R + C, px // s, px // s) for s in (8, 16, 32)]
    for f in feats:
        f[:, 4 * R :] = -20.0
    return feats


def place(feat, row, col, sides, logits, image=0):
    """Make the anchor at (row, col) put all mass on bins ``sides`` = (l, t, r, b) and set its class logits."""
    dist = torch.full((4, R), -100.0)
    dist[torch.arange(4), torch.tensor(sides)] = 100.0
    feat[image, : 4 * R, row, col] = dist.flatten()
    feat[image, 4 * R :, row, col] = torch.tensor(logits)


def test_postprocess_decodes_one_anchor_exactly(nano3):
    feats = empty_feats()
    place(feats[1], row=1, col=2, sides=(2, 1, 1, 2), logits=(-20.0, -20.0, 3.0))  # anchor (2.5, 1.5) × 16
    (det,) = nano3.postprocess(feats)
    assert torch.equal(det["boxes"], torch.tensor([[8.0, 8.0, 56.0, 56.0]]))
    torch.testing.assert_close(det["scores"], torch.sigmoid(torch.tensor([3.0])))
    assert det["labels"].tolist() == [2] and det["labels"].dtype == torch.int64


def test_postprocess_nms_multilabel_threshold_max_det(nano3):
    feats = empty_feats()
    place(feats[1], 1, 2, (2, 1, 1, 2), (1.0, -20.0, 3.0))  # box (8, 8, 56, 56): class 2 and class 0
    place(feats[1], 1, 1, (1, 1, 2, 2), (-20.0, -20.0, 2.0))  # the same box from the next anchor, lower score
    place(feats[0], 0, 0, (0, 0, 1, 1), (-20.0, 0.0, -20.0))  # a small box (4, 4, 12, 12), class 1

    (det,) = nano3.postprocess(feats)
    assert det["labels"].tolist() == [2, 0, 1]  # the duplicate of class 2 is suppressed; sorted by score
    torch.testing.assert_close(det["scores"], torch.sigmoid(torch.tensor([3.0, 1.0, 0.0])))
    torch.testing.assert_close(det["boxes"][2], torch.tensor([4.0, 4.0, 12.0, 12.0]))

    (det,) = nano3.postprocess(feats, conf_threshold=0.6)
    assert det["labels"].tolist() == [2, 0]
    (det,) = nano3.postprocess(feats, max_det=1)
    assert det["labels"].tolist() == [2]
    (det,) = nano3.postprocess(feats, iou_threshold=1.0)  # nothing suppressed
    assert det["labels"].tolist() == [2, 2, 0, 1]


def test_postprocess_clips_to_image(nano3):
    feats = empty_feats()
    place(feats[2], 1, 1, (3, 0, 15, 15), (5.0, -20.0, -20.0))  # anchor (48, 48): box (−48, 48, 528, 528)
    (det,) = nano3.postprocess(feats)
    assert torch.equal(det["boxes"], torch.tensor([[0.0, 48.0, 64.0, 64.0]]))
    (det,) = nano3.postprocess(feats, image_size=(60, 50))
    assert torch.equal(det["boxes"], torch.tensor([[0.0, 48.0, 50.0, 60.0]]))


def test_postprocess_empty_and_batched(nano3):
    feats = empty_feats(batch=2)
    place(feats[0], 3, 3, (1, 1, 1, 1), (4.0, -20.0, -20.0), image=1)
    empty, one = nano3.postprocess(feats)
    assert empty["boxes"].shape == (0, 4) and empty["scores"].shape == (0,) and empty["labels"].shape == (0,)
    assert empty["boxes"].dtype == empty["scores"].dtype == torch.float32 and empty["labels"].dtype == torch.int64
    assert torch.equal(one["boxes"], torch.tensor([[20.0, 20.0, 36.0, 36.0]]))


def test_postprocess_of_model_output(nano3):
    with torch.no_grad():
        feats = nano3.eval()(torch.randn(2, 3, 64, 64))
    dets = nano3.postprocess(feats, conf_threshold=0.0, iou_threshold=1.0, max_det=50)  # (8² + 4² + 2²) · 3 pairs
    for det in dets:
        assert det["boxes"].shape == (50, 4) and (det["scores"][:-1] >= det["scores"][1:]).all()
        assert (det["boxes"] >= 0).all() and (det["boxes"] <= 64).all()
    with pytest.raises(ValueError, match="feats"):
        nano3.postprocess(empty_feats()[:2])


# ----------------------------------------------------------------------------------------------- U-Net


@pytest.mark.parametrize("depth", [2, 3, 4])
@pytest.mark.parametrize("up", ["transpose", "bilinear"])
def test_unet_shapes(depth, up):
    model = UNet(in_channels=2, num_classes=3, base_channels=8, depth=depth, up=up)
    assert model(torch.randn(2, 2, 32, 48)).shape == (2, 3, 32, 48)


@pytest.mark.parametrize("base_channels", [4, 12, 16])
@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none", None])
def test_unet_width_and_norm(base_channels, norm):
    model = UNet(1, 2, base_channels=base_channels, depth=2, norm=norm)
    assert model.head.in_channels == base_channels
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 2, 16, 16)


def test_unet_gradients_reach_every_parameter():
    model = UNet(1, 2, base_channels=4, depth=3)
    model(torch.randn(2, 1, 16, 16)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_unet_rejects_bad_options_and_sizes():
    for kwargs in (
        {},
        {"num_classes": 0},
        {"num_classes": 2, "depth": 0},
        {"num_classes": 2, "base_channels": 0},
        {"num_classes": 2, "norm": "layer"},
        {"num_classes": 2, "up": "nearest"},
        {"num_classes": 2, "background_prior": 1.0},
        {"num_classes": 1, "background_prior": 0.9},
    ):
        with pytest.raises(ValueError):
            UNet(**kwargs)
    model = UNet(1, 2, depth=3)
    for shape in ((1, 1, 33, 32), (1, 1, 32, 20), (1, 32, 32)):
        with pytest.raises(ValueError, match="images"):
            model(torch.randn(shape))


# ----------------------------------------------------------------------------------------------- EMA


def tiny_model():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        model.train()(torch.randn(8, 3))  # moves the BN statistics


def test_ema_copy_is_frozen_and_independent():
    model = tiny_model()
    ema = ModelEMA(model)
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    assert all(p.requires_grad for p in model.parameters()) and ema.updates == 0
    perturb(model)
    assert not torch.equal(ema.module[0].weight, model[0].weight)


def test_ema_with_zero_decay_copies_the_model():
    torch.manual_seed(0)
    model = tiny_model()
    ema = ModelEMA(model, decay=0.0)
    perturb(model)
    ema.update(model)
    for (name, v), ev in zip(model.state_dict().items(), ema.module.state_dict().values()):
        assert torch.equal(v, ev), name


def test_ema_matches_the_formula():
    torch.manual_seed(0)
    model = tiny_model()
    ema = ModelEMA(model, decay=0.9, tau=2.0)
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n in range(1, 4):
        perturb(model)
        ema.update(model)
        d = 0.9 * (1 - math.exp(-n / 2.0))
        assert ema.current_decay() == pytest.approx(d)
        for name, p in model.named_parameters():
            expected[name] = d * expected[name] + (1 - d) * p.detach()
    for name, p in ema.module.named_parameters():
        torch.testing.assert_close(p, expected[name])
    assert torch.equal(ema.module[1].running_var, model[1].running_var)
    assert ema.module[1].num_batches_tracked.item() == model[1].num_batches_tracked.item() == 3


def test_ema_follows_the_model_after_its_tensors_are_replaced():
    # the module pairing is kept between updates; the tensors are not: a dtype or memory-format change replaces
    # parameters' data and buffers, on the model and on the average, and both must still be followed
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    ema = ModelEMA(model, decay=0.0)
    ema.update(model)
    model.double().to(memory_format=torch.channels_last)
    ema.module.double()
    model.train()(torch.randn(2, 3, 5, 5, dtype=torch.float64))
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    for (name, v), ev in zip(model.state_dict().items(), ema.module.state_dict().values()):
        assert torch.equal(v, ev), name


def test_ema_averages_a_tied_weight_once():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    model[1].weight = model[0].weight
    ema = ModelEMA(model, decay=0.5, tau=1e-9)  # the decay is 0.5 from the first update
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(2.0)
    ema.update(model)
    torch.testing.assert_close(ema.module[0].weight, start + 1.0)
    assert ema.module[1].weight is ema.module[0].weight


def test_ema_state_dict_round_trip_and_unwrap():
    torch.manual_seed(0)
    model = tiny_model()
    ema = ModelEMA(nn.DataParallel(model), decay=0.5, tau=1.0)
    assert set(ema.module.state_dict()) == set(model.state_dict())
    for _ in range(3):
        perturb(model)
        ema.update(nn.DataParallel(model))
    state = ema.state_dict()
    restored = ModelEMA(tiny_model())
    restored.load_state_dict(state)
    assert restored.updates == 3 and restored.current_decay() == pytest.approx(0.9999 * (1 - math.exp(-3 / 2000)))
    for a, b in zip(restored.module.state_dict().values(), ema.module.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError):
        ModelEMA(model, decay=1.5)


# ----------------------------------------------------------------------------------------------- mixed precision


def test_bf16_autocast_forward_on_cpu():
    model = preset("model", "yolo_nano", num_classes=3)
    unet = UNet(1, 2, base_channels=4, depth=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = model(torch.randn(2, 3, 64, 64))
        logits = unet(torch.randn(2, 1, 16, 16))
    assert all(f.dtype == torch.bfloat16 and torch.isfinite(f).all() for f in feats)
    assert logits.dtype == torch.bfloat16 and logits.shape == (2, 2, 16, 16) and torch.isfinite(logits).all()
    dets = model.postprocess(feats, max_det=10)
    assert dets[0]["boxes"].dtype == torch.float32 and dets[0]["boxes"].shape[0] <= 10


def test_models_say_what_their_image_sides_must_be_multiples_of():
    assert YOLODetector(num_classes=2).size_multiple == 32  # the largest stride
    assert [UNet(num_classes=2, depth=d).size_multiple for d in (1, 4, 5)] == [2, 16, 32]
    with pytest.raises(ValueError, match="divisible by 16"):
        UNet(num_classes=2, depth=4)(torch.zeros(1, 1, 24, 24))


def test_unet_background_prior_sets_the_softmax_of_the_heads_bias():
    model = UNet(1, 11, base_channels=4, depth=2, background_prior=0.9)
    probs = model.head.bias.softmax(0)
    assert probs[0].item() == pytest.approx(0.9) and torch.allclose(probs[1:], torch.full((10,), 0.01))
    assert UNet(1, 11, base_channels=4, depth=2).head.bias.abs().max() < 1  # PyTorch's default without it
