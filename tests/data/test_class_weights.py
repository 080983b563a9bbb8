"""Per-class weights: the class terms apply them (fused path = reference form = torch, values and gradients), the
weights come from the training data's counts (inverse frequency, effective number) as documented, and a config
names them as a list or a method that the run resolves once, from the DataModule, into the config it keeps."""

from __future__ import annotations

import logging
import math
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import compose_config
from omegaconf import OmegaConf
from PIL import Image

import detloss.losses as L
from detloss.data import LESION_CLASSES, SHAPE_CLASSES, LesionsDataModule, MaskDataModule, ShapesDataModule
from detloss.data.class_weights import count_classes, resolve_class_weights, weights_from_counts
from detloss.losses import _modulated_bce as M
from detloss.losses import reference as R
from detloss.plan.images import detection_fingerprint, mask_fingerprint

D = torch.float64
SIGMOID = ["bce_with_logits", "focal_loss", "varifocal_loss", "quality_focal_loss"]
MODULES = {
    "bce_with_logits": L.BCEWithLogitsLoss,
    "focal_loss": L.FocalLoss,
    "varifocal_loss": L.VarifocalLoss,
    "quality_focal_loss": L.QualityFocalLoss,
}


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """Fingerprints kept in the cache directory go to a fresh home, not the user's."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _inputs(shape, sparse: bool, seed: int = 0):
    """Logits and soft targets ``(B, C, A)``; ``sparse``: mostly zero targets, as a detection score map."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=D) * 4).requires_grad_(True)
    t = torch.rand(shape, generator=g, dtype=D)
    keep = torch.rand(shape, generator=g, dtype=D) < (0.01 if sparse else 0.5)
    return x, torch.where(keep, t, 0.0)


def _class_weights(num_classes: int, seed: int = 3) -> torch.Tensor:
    """Weights in [0, 3), float32 values (what a loss keeps of its tensor options) in float64."""
    return (torch.rand(num_classes, generator=torch.Generator().manual_seed(seed)) * 3).to(D)


# ---------------------------------------------------------------------------------------------- the losses


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("name", SIGMOID)
def test_fused_class_weights_equal_the_reference_form(name, sparse, reduction):
    shape = (2, 4, 11000) if sparse else (3, 5, 40)
    x, t = _inputs(shape, sparse)
    assert M._is_sparse(t) == sparse  # the route under test is the one taken
    cw = _class_weights(shape[1])
    fused = getattr(L, name)(x, t, class_weights=cw, reduction=reduction)
    ref = getattr(R, name)(x, t, class_weights=cw, reduction=reduction)
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-12)
    g = torch.rand(fused.shape, generator=torch.Generator().manual_seed(9), dtype=D)
    (gf,), (gr,) = torch.autograd.grad(fused, [x], g), torch.autograd.grad(ref, [x], g)
    torch.testing.assert_close(gf, gr, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", SIGMOID)
def test_class_weights_scale_each_class_and_compose_with_the_elementwise_weight(name):
    x, t = _inputs((2, 3, 7), sparse=False, seed=1)
    cw = torch.tensor([2.0, 0.0, 0.5], dtype=D)
    weight = torch.rand((2, 1, 7), generator=torch.Generator().manual_seed(4), dtype=D)
    fn = getattr(L, name)
    plain = fn(x, t, reduction="none")
    weighted = fn(x, t, class_weights=cw, weight=weight, reduction="none")
    torch.testing.assert_close(weighted, plain * cw.view(1, 3, 1) * weight, rtol=1e-12, atol=0)
    assert weighted[:, 1].abs().max() == 0  # a class of weight 0 contributes nothing
    torch.testing.assert_close(
        fn(x, t, class_weights=cw, reduction="mean"), (plain * cw.view(1, 3, 1)).mean(), rtol=1e-12, atol=0
    )


def test_bce_class_weights_equal_torchs_weight_along_the_class_dim():
    x, t = _inputs((3, 4, 5, 6), sparse=False, seed=2)  # a segmentation head (B, C, H, W)
    cw = _class_weights(4)
    for pos_weight in (None, 2.5):
        ours = L.bce_with_logits(x, t, class_weights=cw, pos_weight=pos_weight, reduction="sum")
        theirs = F.binary_cross_entropy_with_logits(
            x,
            t,
            weight=cw.view(1, 4, 1, 1),
            pos_weight=None if pos_weight is None else torch.tensor(pos_weight, dtype=D),
            reduction="sum",
        )
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
        (go,), (gt,) = torch.autograd.grad(ours, [x]), torch.autograd.grad(theirs, [x])
        torch.testing.assert_close(go, gt, rtol=1e-10, atol=1e-14)


def test_class_weights_by_hand():
    # BCE(0, 1) = ln 2 and BCE(ln 3, 0) = −ln(1 − 3/4) = ln 4; weights 2 and 0.5: 2 ln 2 + 0.5 ln 4 = 3 ln 2
    x = torch.tensor([[[0.0], [math.log(3)]]], dtype=D)
    t = torch.tensor([[[1.0], [0.0]]], dtype=D)
    cw = [2.0, 0.5]
    assert L.bce_with_logits(x, t, class_weights=cw, reduction="sum").item() == pytest.approx(3 * math.log(2))
    # focal without α, γ = 1: (1 − p_t) · BCE = 0.5 · ln 2 and 0.75 · ln 4, weighted: ln 2 + 0.75 ln 2
    value = L.focal_loss(x, t, alpha=-1.0, gamma=1.0, class_weights=cw, reduction="sum").item()
    assert value == pytest.approx(1.75 * math.log(2))
    # varifocal: a positive weighs by its score (1), the negative by α p^γ = 0.75 · (3/4)²
    value = L.varifocal_loss(x, t, class_weights=cw, reduction="sum").item()
    assert value == pytest.approx(2 * math.log(2) + 0.5 * 0.75 * 0.75**2 * math.log(4))
    # quality focal: |q − p|^2 · BCE = 0.25 ln 2 and (3/4)² ln 4
    value = L.quality_focal_loss(x, t, class_weights=cw, reduction="sum").item()
    assert value == pytest.approx(2 * 0.25 * math.log(2) + 0.5 * 0.75**2 * math.log(4))


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("name", SIGMOID)
def test_gradcheck_and_double_backward_with_class_weights(name, sparse):
    shape = (1, 3, 25000) if sparse else (2, 3, 4)
    x, t = _inputs(shape, sparse, seed=5)
    cw = _class_weights(3)
    fn = getattr(L, name)
    if not sparse:  # gradcheck's finite differences on the dense route, both reductions the composite uses
        for reduction in ("sum", "none"):
            assert torch.autograd.gradcheck(lambda v: fn(v, t, class_weights=cw, reduction=reduction), (x,))
    (g_fused,) = torch.autograd.grad(fn(x, t, class_weights=cw, reduction="sum"), [x], create_graph=True)
    (g_ref,) = torch.autograd.grad(getattr(R, name)(x, t, class_weights=cw, reduction="sum"), [x], create_graph=True)
    torch.testing.assert_close(g_fused, g_ref, rtol=1e-9, atol=1e-12)
    v = torch.rand(shape, generator=torch.Generator().manual_seed(6), dtype=D)
    (h_fused,), (h_ref,) = torch.autograd.grad(g_fused, [x], v), torch.autograd.grad(g_ref, [x], v)
    torch.testing.assert_close(h_fused, h_ref, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", SIGMOID)
def test_modules_take_class_weights_and_refuse_bad_ones(name):
    x, t = _inputs((2, 3, 5), sparse=False)
    module = MODULES[name](class_weights=[1.0, 2.0, 0.5], reduction="sum")
    torch.testing.assert_close(module(x, t), getattr(L, name)(x, t, class_weights=[1.0, 2.0, 0.5], reduction="sum"))
    with pytest.raises(ValueError, match=r"class_weights has 2 values for logits of shape \(2, 3, 5\)"):
        MODULES[name](class_weights=[1.0, 2.0])(x, t)
    with pytest.raises(ValueError, match="class_weights has 3 values for logits of shape"):
        getattr(L, name)(x[0, 0], t[0, 0], class_weights=[1.0, 2.0, 0.5])  # 1-D: no class dimension
    with pytest.raises(ValueError, match="class_weights must be finite and >= 0"):
        MODULES[name](class_weights=[1.0, -1.0, 0.5])
    with pytest.raises(ValueError, match="class_weights must be 1-D"):
        MODULES[name](class_weights=[[1.0, 2.0, 0.5]])


@pytest.mark.parametrize("name", SIGMOID)
def test_class_weights_keep_float32_under_autocast_and_half_inputs(name):
    x, t = _inputs((2, 3, 5), sparse=False)
    half = x.detach().to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = getattr(L, name)(half, t.to(torch.bfloat16), class_weights=[1.0, 2.0, 0.5])
    assert out.dtype == torch.float32 and torch.isfinite(out)
    out.backward()
    assert torch.isfinite(half.grad).all()


def test_confident_logits_keep_finite_weighted_gradients():
    x = torch.tensor([[[-200.0, 0.0, 200.0], [50.0, -50.0, 1e4]]], requires_grad=True)
    t = torch.tensor([[[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]])
    for name in SIGMOID:
        loss = getattr(L, name)(x, t, class_weights=[0.0, 3.0], reduction="sum")
        (g,) = torch.autograd.grad(loss, [x])
        assert torch.isfinite(loss) and torch.isfinite(g).all() and (g[:, 0] == 0).all()


# ---------------------------------------------------------------------------------------------- the weights


def test_inverse_frequency_by_hand():
    # 1/10, 1/30, 1/60 = (6, 2, 1)/60, mean 3/60: (2, 2/3, 1/3)
    assert weights_from_counts([10, 30, 60]) == pytest.approx([2.0, 2 / 3, 1 / 3], rel=1e-15)
    assert np.mean(weights_from_counts([3, 1, 4, 1, 5, 9, 2, 6])) == pytest.approx(1.0, rel=1e-15)


def test_effective_number_by_hand_and_its_limits():
    # β = 1/2: (1 − β)/(1 − β^n) is 1 for n = 1 and 2/3 for n = 2; mean 5/6: (6/5, 4/5)
    assert weights_from_counts([1, 2], "effective_number", 0.5) == pytest.approx([1.2, 0.8], rel=1e-15)
    # β = 0.9: 0.1 / (1 − 0.9) = 1 and 0.1 / (1 − 0.81) = 10/19; mean 29/38: (38/29, 20/29)
    assert weights_from_counts([1, 2], "effective_number", 0.9) == pytest.approx([38 / 29, 20 / 29], rel=1e-14)
    assert weights_from_counts([5, 500], "effective_number", 0.0) == [1.0, 1.0]  # one effective sample each
    counts = [7, 70, 700]
    near_one = weights_from_counts(counts, "effective_number", 1 - 1e-12)
    assert near_one == pytest.approx(weights_from_counts(counts), rel=1e-8)  # β → 1: inverse frequency
    # β^n at a large n is exactly what the formula wants: 1 − β^n computed without cancellation
    n = np.array([1e6, 2e6])
    expected = (1 - 0.9999) / (1 - np.power(0.9999, n))
    assert weights_from_counts(n, "effective_number") == pytest.approx(list(expected / expected.mean()), rel=1e-12)


def test_a_class_without_examples_gets_the_largest_weight_and_none_at_all_is_an_error():
    # the absent class takes 1/10, the largest: (4, 4, 1)/40, mean 3/40
    assert weights_from_counts([0, 10, 40]) == pytest.approx([4 / 3, 4 / 3, 1 / 3], rel=1e-15)
    assert weights_from_counts([0, 1, 1], "effective_number", 0.9) == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="holds no object or pixel of any class"):
        weights_from_counts([0, 0])
    with pytest.raises(
        ValueError, match="unknown method 'median'; the options are inverse_frequency, effective_number"
    ):
        weights_from_counts([1, 2], "median")
    with pytest.raises(ValueError, match=r"beta of effective_number must be a number in \[0, 1\)"):
        weights_from_counts([1, 2], "effective_number", 1.0)
    with pytest.raises(ValueError, match="finite and >= 0"):
        weights_from_counts([1, -2])


def test_inverse_frequency_is_ultralytics_cls_pw_1_except_for_absent_classes():
    from ultralytics.models.yolo.detect.train import DetectionTrainer

    def ultralytics(counts):  # their compute_class_weights, then their normalisation to mean 1 (set_class_weights)
        trainer = SimpleNamespace(args=SimpleNamespace(cls_pw=1.0))
        weights = DetectionTrainer.compute_class_weights(trainer, np.asarray(counts, dtype=np.float32))
        return list(weights / weights.mean())

    counts = [120, 15, 4, 900, 33]
    assert weights_from_counts(counts) == pytest.approx(ultralytics(counts), rel=1e-6)  # float32 there
    # an absent class: the largest weight here, the mean of the present ones there
    ours, theirs = weights_from_counts([0, 10, 40]), ultralytics([0, 10, 40])
    assert ours[0] == pytest.approx(ours[1]) and theirs[0] == pytest.approx((theirs[1] + theirs[2]) / 2)


# ---------------------------------------------------------------------------------------------- loss configs


def _loss(**cls_loss) -> dict:
    return OmegaConf.create(
        {
            "terms": {
                "box": {"loss": {"_target_": "detloss.losses.CIoULoss"}, "weight": 7.5, "view": "box"},
                "cls": {"loss": {"_target_": "detloss.losses.FocalLoss", **cls_loss}, "weight": 1.0, "view": "cls"},
            }
        }
    )


def test_a_method_becomes_the_list_of_weights_in_the_config_and_is_logged_once(caplog):
    loss = _loss(class_weights="inverse_frequency")
    with caplog.at_level(logging.INFO, logger="detloss.data.class_weights"):
        resolved = resolve_class_weights(loss, ["cat", "dog", "eel"], lambda: [10, 30, 60])
    assert resolved == {"cls": pytest.approx([2.0, 2 / 3, 1 / 3])}
    assert list(loss.terms.cls.loss.class_weights) == pytest.approx([2.0, 2 / 3, 1 / 3])
    lines = [r.getMessage() for r in caplog.records if "class weights" in r.getMessage()]
    assert len(lines) == 1 and "term cls" in lines[0] and "cat 2 (10)" in lines[0] and "eel 0.3333 (60)" in lines[0]
    loss = _loss(class_weights={"method": "effective_number", "beta": 0.5})
    resolve_class_weights(loss, ["a", "b"], [1, 2])
    assert list(loss.terms.cls.loss.class_weights) == pytest.approx([1.2, 0.8])


def test_lists_are_checked_against_the_classes_each_term_sees_without_counting():
    def no_counts():
        raise AssertionError("lists need no counts")

    resolve_class_weights(_loss(class_weights=[1.0, 2.0, 3.0]), ["a", "b", "c"], no_counts)
    with pytest.raises(ValueError, match=r"loss.terms.cls.loss.class_weights: 2 values, but term 'cls' sees 3 classes"):
        resolve_class_weights(_loss(class_weights=[1.0, 2.0]), ["a", "b", "c"], no_counts)
    dice = OmegaConf.create(
        {"terms": {"dice": {"loss": {"_target_": "detloss.losses.DiceLoss", "include_background": False}}}}
    )
    dice.terms.dice.loss.class_weights = [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="sees 2 classes .include_background is false.*: b, c"):
        resolve_class_weights(dice, ["a", "b", "c"], no_counts)
    dice.terms.dice.loss.class_weights = "inverse_frequency"  # the background's count is left out too
    resolve_class_weights(dice, ["background", "b", "c"], [1000, 10, 40])
    assert list(dice.terms.dice.loss.class_weights) == pytest.approx([1.6, 0.4])


def test_unknown_methods_and_options_name_the_term_and_the_options():
    with pytest.raises(ValueError, match="loss.terms.cls.loss.class_weights: unknown method 'balanced'; the options"):
        resolve_class_weights(_loss(class_weights="balanced"), ["a", "b"], [1, 2])
    with pytest.raises(ValueError, match="beta belongs to effective_number"):
        resolve_class_weights(_loss(class_weights={"method": "inverse_frequency", "beta": 0.9}), ["a", "b"], [1, 2])
    with pytest.raises(ValueError, match="takes `method` and optionally `beta`"):
        resolve_class_weights(_loss(class_weights={"method": "effective_number", "gamma": 2}), ["a", "b"], [1, 2])
    with pytest.raises(ValueError, match="loss.terms.cls.loss.class_weights: .*holds no object"):
        resolve_class_weights(_loss(class_weights="inverse_frequency"), ["a", "b"], [0, 0])


def test_groups_of_terms_are_resolved_by_their_path():
    bce = {"_target_": "detloss.losses.BCEWithLogitsLoss"}
    loss = OmegaConf.create(
        {
            "terms": {
                "one2many": {
                    "schedule": {"_target_": "detloss.composite.ProgLoss", "to": "one2one"},
                    "cls": {"loss": bce | {"class_weights": "inverse_frequency"}},
                },
                "one2one": {"cls": {"loss": bce}, "box": None},
            }
        }
    )
    assert resolve_class_weights(loss, ["a", "b"], [1, 3]) == {"one2many.cls": pytest.approx([1.5, 0.5])}
    assert loss.terms.one2one.cls.loss.get("class_weights") is None


# ---------------------------------------------------------------------------------------------- data modules


def test_detection_counts_are_the_fingerprints_boxes_and_two_datamodules_agree():
    options = dict(num_train=24, num_val=4, image_size=64, min_size=10, batch_size=4, seed=3)
    first, second = ShapesDataModule(**options), ShapesDataModule(**options)
    counts = first.class_counts()
    by_hand = np.zeros(len(first.class_names), dtype=int)
    for i in range(len(first.train_dataset)):
        by_hand += np.bincount(first.train_dataset.generate(i)["labels"], minlength=len(by_hand))
    assert counts == by_hand.tolist() == [c["boxes"] for c in detection_fingerprint(first).classes]
    assert second.class_counts() == counts  # deterministic from the data: every rank computes the same
    assert ShapesDataModule(**(options | {"seed": 4})).class_counts() != counts


def _masks_folder(root):
    """Two training masks with classes 0..2 and the ignored 255; one validation pair."""
    masks = {
        "train/a": np.array([[0, 0, 1, 1], [0, 2, 255, 255]]),
        "train/b": np.array([[0, 0, 0], [1, 0, 255]]),
        "val/c": np.array([[0, 2], [2, 2]]),
    }
    for name, mask in masks.items():
        for kind, array in (("images", np.full(mask.shape, 128)), ("masks", mask)):
            path = root / kind / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array.astype(np.uint8)).save(path)
    return root


def test_mask_counts_leave_the_ignored_pixels_out_and_agree_with_the_fingerprints_shares(tmp_path):
    data = MaskDataModule(_masks_folder(tmp_path / "masks"), num_classes=3, image_size=32, batch_size=2)
    counts = data.class_counts()
    assert counts == [7, 3, 1]  # the validation mask is not counted
    assert MaskDataModule(tmp_path / "masks", num_classes=3, image_size=32, batch_size=2).class_counts() == counts
    shares = [c["pixel_share"] for c in mask_fingerprint(data.train_dataset, data.class_names, data.root).classes]
    assert np.asarray(counts) / sum(counts) == pytest.approx(shares, rel=1e-12)


def test_generated_segmentation_counts_the_training_masks():
    options = dict(num_train=6, num_val=2, image_size=64, batch_size=2)
    data = LesionsDataModule(**options)
    by_hand = sum(np.bincount(data.train_dataset.load(i)[1].numpy().ravel(), minlength=4) for i in range(6))
    assert data.class_counts() == by_hand.tolist() == LesionsDataModule(**options).class_counts()
    assert min(by_hand) > 0


def test_volumes_count_the_training_cases_and_regions_sum_their_labels():
    labels = [np.array([[[0, 1], [2, 2]]]), np.array([[[1, 1], [0, 255]]]), np.array([[[2, 2], [2, 2]]])]
    data = SimpleNamespace(
        task="volumetric",
        class_names=["background", "edema", "core"],
        ignore_index=255,
        source=SimpleNamespace(class_names=["background", "edema", "core"], labels=labels),
        train_cases=[0, 1],
    )
    assert count_classes(data) == [2, 3, 2]  # case 2 is validation's; 255 is ignored
    data.regions = {"whole": (1, 2), "core": (2,)}
    assert count_classes(data) == [5, 2]


def test_data_without_a_training_split_says_so():
    with pytest.raises(ValueError, match="Unsplit: no training split to count the classes of"):
        count_classes(type("Unsplit", (), {"task": "segmentation", "class_names": ["a", "b"]})())


def test_a_list_in_a_config_reaches_every_class_term():
    from hydra.utils import instantiate

    for name in ("BCEWithLogitsLoss", "FocalLoss", "VarifocalLoss", "QualityFocalLoss", "CrossEntropyLoss", "DiceLoss"):
        config = OmegaConf.create({"_target_": f"detloss.losses.{name}", "class_weights": [1.0, 2.0, 0.5]})
        assert instantiate(config).options.class_weights.tolist() == [1.0, 2.0, 0.5]  # a ListConfig, not a list
    nested = OmegaConf.create({"_target_": "detloss.losses.BCEWithLogitsLoss", "pos_weight": [[1.0], [2.0]]})
    assert instantiate(nested).options.pos_weight.shape == (2, 1)


# ---------------------------------------------------------------------------------------------- runs

SMALL = ["data.num_train=16", "data.num_val=8", "data.batch_size=8", "data.num_workers=0", "trainer.max_epochs=1"]


def _composite_term(task, name: str):
    return task.criterion.loss.losses[name]


@pytest.mark.parametrize(
    ("task", "term", "method"),
    [
        ("detection", "cls", "inverse_frequency"),
        ("segmentation", "ce", "{method: effective_number, beta: 0.999}"),
        ("segmentation", "dice", "inverse_frequency"),
    ],
)
def test_a_run_resolves_the_method_once_into_the_config_its_checkpoints_keep(
    compose, tmp_path, task, term, method, caplog
):
    from detloss.runs import resolved_config
    from detloss.train import build, train

    runs = ["logger=none", "callbacks=none", "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1"]
    cfg = compose(f"task={task}", *SMALL, *runs, f"+loss.terms.{term}.loss.class_weights={method}")
    with caplog.at_level(logging.INFO, logger="detloss.data.class_weights"):
        datamodule, built = build(cfg)
    counts = datamodule.class_counts()
    background = term != "dice"  # the Dice term of the segmentation recipes leaves the background out
    seen = counts if background else counts[1:]
    beta = 0.999 if "beta" in method else 0.9999
    expected = weights_from_counts(seen, "effective_number" if "effective" in method else "inverse_frequency", beta)
    kept = resolved_config(cfg)["loss"]["terms"][term]["loss"]["class_weights"]  # what checkpoints and config.yaml keep
    assert kept == pytest.approx(expected, rel=1e-12)
    weights = _composite_term(built, term).options.class_weights
    torch.testing.assert_close(weights, torch.tensor(expected, dtype=torch.float32))
    assert sum("class weights of term" in r.getMessage() for r in caplog.records) == 1
    if term == "dice":  # built is enough: training with a region term's weights is the cross-entropy case's run
        return
    # a run trains with them, and the config it keeps builds the same loss without the data's counts
    assert train(cfg) is not None
    checkpoints = list(tmp_path.rglob("*.ckpt"))
    assert checkpoints
    for path in checkpoints:
        stored = torch.load(path, map_location="cpu", weights_only=False)["detloss_config"]
        assert stored["loss"]["terms"][term]["loss"]["class_weights"] == pytest.approx(expected, rel=1e-12)
    rebuilt = resolve_class_weights(OmegaConf.create(resolved_config(cfg)["loss"]), datamodule.class_names, None)
    assert rebuilt == {}  # lists only: nothing left to count


def test_every_command_of_the_guide_composes_and_resolves():
    guide = (Path(__file__).resolve().parents[2] / "docs" / "guide" / "class_weights.md").read_text()
    commands = [c for c in re.sub(r"\\\n\s*", "", guide).splitlines() if c.startswith("python -m detloss.train")]
    assert len(commands) >= 4
    for command in commands:
        cfg = compose_config(*shlex.split(command)[3:])
        names = LESION_CLASSES if cfg.task_name == "segmentation" else SHAPE_CLASSES
        resolved = resolve_class_weights(cfg.loss, names, list(range(1, len(names) + 1)))
        assert resolved or "[1,1,2,1,1]" in command, command
