"""What the Lightning tasks add around the criterion: the NaN guard and the memory format."""

import functools
import warnings

import pytest
import torch
from conftest import quiet_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from detloss.composite import CompositeLoss, Criterion, View
from detloss.data import detection_collate
from detloss.losses import MSELoss
from detloss.tasks import LossTask


class NaNWhenMarked(nn.Module):
    """L1, NaN on a batch whose first target is marked with −1."""

    def forward(self, pred, target, reduction="mean"):
        value = (pred - target).abs().mean()
        return value * float("nan") if bool((target[:, 0] == -1).any()) else value


class TwoTerms(Criterion):
    """``box`` = MSE, ``cls`` = L1 that turns NaN on a marked batch, over one view ``pair``."""

    views = frozenset({"pair"})

    def __init__(self):
        terms = {
            "box": {"loss": MSELoss(), "weight": 1.0, "view": "pair"},
            "cls": {"loss": NaNWhenMarked(), "weight": 1.0, "view": "pair"},
        }
        super().__init__(2, CompositeLoss(terms))

    def build_views(self, pred, target):
        return {"pair": View((pred, target))}


def fit(nan_guard: str, bad_batch: int = 2, batches: int = 4):
    torch.manual_seed(0)
    x, y = torch.randn(batches * 4, 3), torch.randn(batches * 4, 2)
    y[bad_batch * 4, 0] = -1
    optimizer = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=0.1)
    task = LossTask(nn.Linear(3, 2), TwoTerms(), optimizer, nan_guard=nan_guard)
    trainer = quiet_trainer(max_epochs=1, enable_checkpointing=False)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    trainer.fit(task, loader)
    return trainer, task


def test_nan_guard_stops_naming_the_term_step_and_batch():
    with pytest.raises(FloatingPointError, match=r"at step 2 \(epoch 0, batch 2\): total = nan, cls = nan"):
        fit("stop")


def test_nan_guard_skip_skips_the_step_and_trains_on():
    with pytest.warns(UserWarning, match="skipping this step"):
        trainer, task = fit("skip")
    # the same SGD by hand over the other batches
    torch.manual_seed(0)
    x, y = torch.randn(16, 3), torch.randn(16, 2)
    model = nn.Linear(3, 2)
    groups = [{"params": [model.weight]}, {"params": [model.bias], "weight_decay": 0.0}]  # as LossTask
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=0.1)
    for b in (0, 1, 3):
        optimizer.zero_grad()
        TwoTerms()(model(x[b * 4 : b * 4 + 4]), y[b * 4 : b * 4 + 4]).total.backward()
        optimizer.step()
    torch.testing.assert_close(task.model.weight, model.weight)
    torch.testing.assert_close(task.model.bias, model.bias)


def test_nan_guard_off_and_bad_option():
    trainer, task = fit("off")
    assert trainer.global_step == 4 and not torch.isfinite(task.model.weight).all()
    with pytest.raises(ValueError, match="nan_guard"):
        LossTask(nn.Linear(1, 1), TwoTerms(), torch.optim.SGD, nan_guard="ignore")


def test_channels_last_keeps_values_and_converts_the_model():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1))
    task = LossTask(conv, TwoTerms(), torch.optim.SGD, channels_last=True)
    x = torch.randn(2, 3, 9, 9)
    before = conv(x)
    task.setup("fit")
    assert conv[0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(conv(x), before)


class MaskEcho(nn.Module):
    """A perfect segmenter: the image's first channel holds the class map, echoed as confident logits."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.scale = nn.Parameter(torch.tensor(20.0))

    def forward(self, images):
        one_hot = nn.functional.one_hot(images[:, 0].long(), self.num_classes).permute(0, 3, 1, 2)
        return one_hot.float() * self.scale


def test_segmentation_metrics_score_empty_images_as_correct():
    from detloss.segmentation import SegmentationCriterion
    from detloss.tasks import SegmentationTask

    masks = torch.zeros(4, 8, 8, dtype=torch.long)
    masks[0, 1:4, 1:4], masks[1, 4:7, 2:5] = 1, 2  # images 2 and 3 hold no lesion
    task = SegmentationTask(MaskEcho(3), SegmentationCriterion(3), torch.optim.SGD, num_previews=0)
    trainer = quiet_trainer()
    (result,) = trainer.validate(
        task, DataLoader(TensorDataset(masks[:, None].float(), masks), batch_size=2), verbose=False
    )
    assert result["val/dice"] == pytest.approx(1.0)
    assert result["val/generalized_dice"] == pytest.approx(1.0)  # the images without a lesion are not scored


def test_segmentation_previews_draw_any_number_of_classes(tmp_path):
    from detloss.segmentation import SegmentationCriterion
    from detloss.tasks import SegmentationTask

    masks = torch.arange(12).repeat_interleave(4).view(1, 6, 8).repeat(2, 1, 1)  # all 12 classes in each image
    task = SegmentationTask(MaskEcho(12), SegmentationCriterion(12), torch.optim.SGD, num_previews=2)
    trainer = quiet_trainer(default_root_dir=tmp_path)
    trainer.validate(task, DataLoader(TensorDataset(masks[:, None].float(), masks), batch_size=2), verbose=False)
    assert (tmp_path / "previews" / "epoch_000.png").is_file()


@pytest.mark.parametrize("n", [2, 3, 8, 12, 80, 256])
def test_preview_palette_is_distinct_and_deterministic(n):
    from detloss.tasks.segmentation import palette

    colours = palette(n)
    assert len(colours) == n and len(set(colours)) == n and colours == palette(n)
    assert all(len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in colours)


class BrokenPreviews(LossTask):
    """A LossTask that keeps previews and draws them with a function that raises."""

    def validation_step(self, batch, batch_idx):
        self.keep_preview(batch_idx, *batch)

    def on_validation_epoch_end(self):
        self.save_previews(self.draw)

    def draw(self, x, y):
        raise RuntimeError("no pixels today")


def test_a_preview_that_cannot_be_drawn_warns_once_and_training_goes_on(tmp_path):
    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(8, 3), torch.randn(8, 2)), batch_size=4)
    task = BrokenPreviews(nn.Linear(3, 2), TwoTerms(), functools.partial(torch.optim.SGD, lr=0.1))
    trainer = quiet_trainer(max_epochs=2, enable_checkpointing=False, default_root_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(task, loader, loader)
    assert trainer.current_epoch == 2 and trainer.global_step == 4
    about_previews = [str(w.message) for w in caught if "preview" in str(w.message)]
    assert len(about_previews) == 1 and "RuntimeError: no pixels today" in about_previews[0], about_previews
    assert not (tmp_path / "previews").exists()


def test_metrics_that_do_not_exist_are_left_out_not_logged_as_minus_one():
    from detloss.segmentation import SegmentationCriterion
    from detloss.tasks import SegmentationTask

    masks = torch.zeros(2, 8, 8, dtype=torch.long)
    masks[0, 1:4, 1:4] = 1  # class 2 appears nowhere, in targets or (echoed) predictions
    task = SegmentationTask(MaskEcho(3), SegmentationCriterion(3), torch.optim.SGD, class_names=["bg", "a", "b"])
    task.num_previews = 0
    (result,) = quiet_trainer().validate(
        task, DataLoader(TensorDataset(masks[:, None].float(), masks), batch_size=2), verbose=False
    )
    assert result["val/dice/a"] == pytest.approx(1.0) and "val/dice/b" not in result
    assert result["val/dice"] == pytest.approx(1.0)  # the mean of the classes that exist


class FixedDetector(torch.nn.Module):
    """One exact detection of a small box per image."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, images):
        return images

    def postprocess(self, feats, **kw):
        return [{"boxes": torch.tensor([[2.0, 2, 12, 12]]), "scores": torch.tensor([0.9]),
                 "labels": torch.tensor([0])} for _ in feats]  # fmt: skip


class ZeroCriterion(Criterion):
    views = frozenset({"x"})

    def __init__(self):
        super().__init__(1, CompositeLoss({"x": {"loss": MSELoss(), "weight": 1.0, "view": "x"}}))

    def build_views(self, outputs, targets):
        return {"x": View((outputs.mean(), outputs.mean().detach()))}


def validate_fixed_detector(**options) -> dict:
    """A validation of :class:`FixedDetector` on two images whose one box it finds exactly."""
    from detloss.tasks.detection import DetectionTask

    task = DetectionTask(FixedDetector(), ZeroCriterion(), torch.optim.SGD, ema=False, num_previews=0, **options)
    target = {"boxes": torch.tensor([[2.0, 2, 12, 12]]), "labels": torch.tensor([0])}
    loader = DataLoader([(torch.zeros(3, 32, 32), target)] * 2, batch_size=2, collate_fn=detection_collate)
    return quiet_trainer().validate(task, loader, verbose=False)[0]


def test_detection_map_of_an_absent_size_is_left_out():
    result = validate_fixed_detector()
    assert result["val/map_small"] == pytest.approx(1.0)
    assert "val/map_large" not in result and "val/map_medium" not in result  # torchmetrics says -1


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_a_validation_prints_nothing_of_the_coco_evaluator(backend, capsys, caplog):
    # the console of a run (Hydra's logging passes INFO to it): no COCO summary table, no evaluator progress
    import logging

    from detloss.tasks.detection import COCO_EVAL_LOGGERS

    caplog.set_level(logging.INFO)
    result = validate_fixed_detector(map_backend=backend, map_per_class=True)
    assert result["val/map"] == pytest.approx(1.0) and result["val/map_small"] == pytest.approx(1.0)
    out, err = capsys.readouterr()
    coco = [r for r in caplog.records if r.name.split(".")[0] in (*COCO_EVAL_LOGGERS, "pycocotools")]
    assert not coco and "Average Precision" not in out + err and "DONE" not in out + err, (coco, out, err)
    assert all(logging.getLogger(name).level == logging.NOTSET for name in COCO_EVAL_LOGGERS)  # restored


def test_quiet_coco_eval_silences_only_inside(caplog):
    from torchmetrics.detection import MeanAveragePrecision

    from detloss.tasks.detection import quiet_coco_eval

    def computed() -> dict:
        box = {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([0])}
        metric = MeanAveragePrecision(backend="faster_coco_eval")
        metric.update([{**box, "scores": torch.tensor([0.9])}], [box])
        return metric.compute()

    caplog.set_level("INFO")
    with quiet_coco_eval():
        quiet = computed()
    assert not caplog.records
    loud = computed()  # outside, faster_coco_eval logs as it would anywhere else
    assert any("Average Precision" in r.getMessage() for r in caplog.records)
    assert all(torch.equal(quiet[k], loud[k]) for k in quiet)


def test_the_map_backends_give_the_same_values():
    # faster_coco_eval, the default, against pycocotools: every size bin, empty images (no boxes, no predictions,
    # or only one of them), tied scores, and more than 100 detections of a class in an image (COCO keeps the top 100)
    from torchmetrics.detection import MeanAveragePrecision

    from detloss.tasks.detection import MAP_BACKENDS

    g = torch.Generator().manual_seed(0)
    preds, targets = [], []
    for i in range(40):
        n = 0 if i % 7 == 0 else int(torch.randint(1, 6, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 200
        wh = torch.rand(n, 2, generator=g) ** 2 * 150 + 2  # small, medium and large
        boxes, labels = torch.cat([xy, xy + wh], 1), torch.randint(0, 3, (n,), generator=g)
        m = 0 if i % 11 == 0 else 150 if i % 5 == 0 else 20
        pick = torch.randint(0, max(n, 1), (m,), generator=g)
        near = boxes[pick] if n else torch.rand(m, 4, generator=g) * 100
        shaken = near + torch.randn(m, 4, generator=g) * wh.mean().nan_to_num(20.0) * 0.1
        shaken[:, 2:] = torch.maximum(shaken[:, 2:], shaken[:, :2] + 1)
        scores = (torch.rand(m, generator=g) * 10).round() / 10  # ties
        classes = labels[pick] if n and i % 3 else torch.randint(0, 3, (m,), generator=g)
        preds.append({"boxes": shaken, "scores": scores, "labels": classes})
        targets.append({"boxes": boxes, "labels": labels})
    results = []
    for backend in MAP_BACKENDS:
        metric = MeanAveragePrecision(backend=backend, class_metrics=True)
        metric.warn_on_many_detections = False
        metric.update(preds, targets)
        results.append(metric.compute())
    first, second = results
    assert first["map_50"] > 0.05 and first["map_small"] >= 0 and first["map_large"] >= 0
    for key in first:
        torch.testing.assert_close(first[key], second[key], msg=key)


def test_detection_task_refuses_an_unknown_map_backend():
    from detloss.detection import DetectionCriterion
    from detloss.models import YOLODetector
    from detloss.tasks import DetectionTask

    with pytest.raises(ValueError, match="map_backend must be one of"):
        DetectionTask(YOLODetector(num_classes=2), DetectionCriterion(2), torch.optim.AdamW, map_backend="coco")


class LossyEcho(MaskEcho):
    """:class:`MaskEcho` of the image's second channel: the prediction, while the target is the mask."""

    def forward(self, images):
        return super().forward(images[:, 1:])


def test_2d_dice_is_the_per_image_mean_and_the_pooled_dice_has_its_own_name():
    from detloss.segmentation import SegmentationCriterion
    from detloss.tasks import SegmentationTask

    masks = torch.zeros(3, 8, 8, dtype=torch.long)
    masks[0, 0:2, 0:2] = 1  # 4 pixels, found exactly
    masks[1, 0:8, 0:4] = 1  # 32 pixels, half found: Dice 2·16 / (16 + 32) = 2/3
    pred = masks.clone()
    pred[1, :, 2:4] = 0
    pred[2, 5:7, 5:7] = 1  # image 2 holds no lesion: a false positive there
    images = torch.stack([masks, pred], 1).float()
    task = SegmentationTask(LossyEcho(2), SegmentationCriterion(2), torch.optim.SGD, class_names=["bg", "a"])
    task.num_previews = 0
    (result,) = quiet_trainer().validate(task, DataLoader(TensorDataset(images, masks), batch_size=2), verbose=False)
    assert result["val/dice/a"] == pytest.approx((1 + 2 / 3) / 2) == result["val/dice"]  # image 2 holds no "a"
    assert result["val/fp_cases/a"] == 1
    assert result["val/dice_pooled/a"] == pytest.approx(2 * 20 / (24 + 36)) == result["val/dice_pooled"]


def generalized_dice_of(images, masks, batch_size: int) -> dict:
    from detloss.segmentation import SegmentationCriterion
    from detloss.tasks import SegmentationTask

    task = SegmentationTask(LossyEcho(3), SegmentationCriterion(3), torch.optim.SGD, class_names=["bg", "a", "b"])
    task.num_previews = 0
    loader = DataLoader(TensorDataset(images, masks), batch_size=batch_size)
    (result,) = quiet_trainer().validate(task, loader, verbose=False)
    return result


def test_generalized_dice_is_scored_per_image_whatever_the_batch():
    """Hand-computed, weights 1/|T|², an absent class weighted as the image's largest weight (MONAI's rule; the
    same for batches of 1, 2 and 4, where torchmetrics would take it from the batch's other images)."""
    masks = torch.zeros(4, 8, 8, dtype=torch.long)
    masks[0, 0:2, 0:2], masks[0, 4:8, 4:8], masks[1, 0:2, 0:2] = 1, 2, 1
    pred = masks.clone()
    pred[0, 4:8, 6:8] = 0  # image 0: "a" (4 px) exact, half of "b" (16 px) found
    pred[1, 6:8, 6:8] = 2  # image 1: "a" exact, a false "b" of 4 px; image 2 empty and predicted empty
    pred[3, 0:2, 0:2] = 1  # image 3: nothing to find, "a" predicted
    w_a, w_b = 1 / 4**2, 1 / 16**2
    image0 = 2 * (w_a * 4 + w_b * 8) / (w_a * 8 + w_b * 24)
    image1 = 2 * (w_a * 4) / (w_a * 8 + w_a * 4)  # the absent "b" takes "a"'s weight
    expected = (image0 + image1 + 0.0) / 3  # image 2 has nothing to score; image 3 scores 0
    images = torch.stack([masks, pred], 1).float()
    for batch_size in (1, 2, 4):
        result = generalized_dice_of(images, masks, batch_size)
        assert result["val/generalized_dice"] == pytest.approx(expected, rel=1e-6), batch_size


def test_generalized_dice_matches_monai_and_is_not_logged_without_foreground():
    from monai.metrics import compute_generalized_dice

    generator = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 3, (6, 8, 8), generator=generator)
    pred = torch.randint(0, 3, (6, 8, 8), generator=generator)
    masks[1] = masks[1].clamp(max=1)  # no "b" in the target of image 1
    one_hot = lambda x: nn.functional.one_hot(x, 3).permute(0, 3, 1, 2)[:, 1:].float()  # noqa: E731
    expected = compute_generalized_dice(one_hot(pred), one_hot(masks), sum_over_classes=True).mean().item()
    result = generalized_dice_of(torch.stack([masks, pred], 1).float(), masks, batch_size=4)
    assert result["val/generalized_dice"] == pytest.approx(expected, rel=1e-6)

    empty = torch.zeros(2, 8, 8, dtype=torch.long)
    result = generalized_dice_of(torch.stack([empty, empty], 1).float(), empty, batch_size=2)
    assert "val/generalized_dice" not in result and "val/dice_pooled" not in result  # nothing to score, no NaN
