"""The 2D planner: fingerprints of hand-made mask and detection folders (values computed by hand), the rules on
hand-made fingerprints, the plan under a time budget with a known step cost, given values winning, and a run that
plans a generated mask folder and keeps the plan."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detloss.data import MaskDataModule, ShapesDataset
from detloss.data.coco import CocoDetection
from detloss.data.yolo import YoloDetection
from detloss.plan.image_plan import (
    cached_image_plan,
    class_weights,
    depth_for,
    image_size_for,
    plan_images,
    unet_depth,
    weights_for_terms,
)
from detloss.plan.images import ImageFingerprint, detection_fingerprint, mask_fingerprint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """Fingerprints and plans kept in the cache directory go to a fresh home, not the user's."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def save_png(path: Path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def make_masks(root: Path) -> Path:
    """Two training pairs, 4 × 6 and 2 × 8 px, classes 0..2 and 255; one validation pair."""
    a = np.zeros((4, 6))
    a[0:2, 2:4] = 1  # a component of 4
    a[3, 0] = 1  # a component of 1
    a[1, 5] = 2
    a[3, 5] = 255
    b = np.zeros((2, 8))
    b[0, 0] = b[1, 1] = 1  # diagonal neighbours: one component of 2 (8-connectivity)
    for split, masks in {"train": {"a": a, "b": b}, "val": {"c": a}}.items():
        for stem, mask in masks.items():
            save_png(root / f"images/{split}/{stem}.png", np.full((*mask.shape, 3), 90))
            save_png(root / f"masks/{split}/{stem}.png", mask)
    return root


# --- fingerprints -------------------------------------------------------------------------------------------------


def test_the_fingerprint_of_a_mask_folder(tmp_path, monkeypatch):
    root = make_masks(tmp_path / "ds")
    dm = MaskDataModule(root, num_classes=3, class_names=["bg", "one", "two"])
    fp = dm.fingerprint
    assert fp.kind == "masks" and fp.num_images == 2 and fp.class_names == ["bg", "one", "two"]
    assert fp.height == {"median": 3.0, "min": 2.0, "max": 4.0} and fp.width == {"median": 7.0, "min": 6.0, "max": 8.0}
    bg, one, two = fp.classes
    # 39 non-ignored pixels: 31 background, 7 of class 1, 1 of class 2
    assert (bg["pixel_share"], one["pixel_share"], two["pixel_share"]) == pytest.approx((31 / 39, 7 / 39, 1 / 39))
    assert (bg["images"], one["images"], two["images"]) == (2, 2, 1) and bg["components"] == 0
    assert (one["components"], one["component_pixels_median"], one["component_pixels_min"]) == (3, 2.0, 1)
    assert (two["components"], two["component_pixels_median"], two["component_pixels_min"]) == (1, 1.0, 1)
    assert ImageFingerprint.from_dict(json.loads(json.dumps(fp.to_dict()))) == fp
    # cached beside the data: read back without reading a mask, computed anew once a file changed
    assert (root / "detloss_fingerprint_2d.json").is_file()
    monkeypatch.setattr(dm.train_dataset, "read_mask", lambda i: pytest.fail("read a mask"))
    assert mask_fingerprint(dm.train_dataset, dm.class_names, root) == fp
    monkeypatch.undo()
    save_png(root / "masks/train/b.png", np.full((2, 8), 2))
    again = mask_fingerprint(dm.train_dataset, dm.class_names, root)
    assert again.signature != fp.signature and again.classes[2]["pixel_share"] == pytest.approx(17 / 39)


def test_a_cached_mask_fingerprint_is_not_reused_for_other_classes(tmp_path):
    """The counts depend on the number of classes and their names: the same files read with another class list are
    counted anew, not read back from the cache beside them."""
    root = make_masks(tmp_path / "ds")
    three = MaskDataModule(root, num_classes=3, class_names=["bg", "one", "two"]).fingerprint
    four = MaskDataModule(root, num_classes=4, class_names=["bg", "one", "two", "three"]).fingerprint
    assert four.signature != three.signature and len(four.classes) == 4 and four.classes[3]["pixel_share"] == 0.0
    renamed = MaskDataModule(root, num_classes=3, class_names=["bg", "a", "b"]).fingerprint
    assert renamed.class_names == ["bg", "a", "b"]


def no_decoding(monkeypatch):
    """Fail any image decode: the detection fingerprint reads headers and annotation files only."""
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded an image"))


def test_the_fingerprint_of_a_yolo_split_reads_headers_and_labels_only(tmp_path, monkeypatch):
    root = tmp_path / "yolo"
    save_png(root / "images/train/a.png", np.zeros((50, 100, 3)))  # H 50, W 100
    save_png(root / "images/train/b.png", np.zeros((200, 200, 3)))
    (root / "labels/train").mkdir(parents=True)
    (root / "labels/train/a.txt").write_text("0 0.5 0.5 0.2 0.4\n1 0.5 0.5 0.5 1.0\n")  # 20 × 20 px, 50 × 50 px
    (root / "labels/train/b.txt").write_text("1 0.5 0.5 0.6 0.6\n")  # 120 × 120 px
    dataset = YoloDetection(root / "images/train", root / "labels/train", ["a", "b"])
    no_decoding(monkeypatch)
    fp = detection_fingerprint(dataset)
    assert fp.kind == "detection" and fp.num_images == 2
    assert fp.height == {"median": 125.0, "min": 50.0, "max": 200.0} and fp.width["median"] == 150.0
    a, b = fp.classes
    assert (a["boxes"], a["images"]) == (1, 1) and (a["box_width_median"], a["box_height_median"]) == pytest.approx(
        (20.0, 20.0)
    )
    assert (a["small"], a["medium"], a["large"]) == (1, 0, 0)
    assert (b["boxes"], b["images"]) == (2, 2) and (b["box_width_median"], b["box_height_median"]) == pytest.approx(
        (85.0, 85.0)
    )
    assert (b["small"], b["medium"], b["large"]) == (0, 1, 1)
    assert fp.boxes == pytest.approx(
        {"count": 3, "box_width_median": 50.0, "box_height_median": 50.0, "small": 1, "medium": 1, "large": 1}
    )
    assert (root / "detloss_fingerprint_2d.json").is_file()


def test_the_fingerprint_of_a_coco_file(tmp_path, monkeypatch):
    images = tmp_path / "coco/images"
    save_png(images / "x.png", np.zeros((40, 60, 3)))
    save_png(images / "y.png", np.zeros((40, 40, 3)))
    spec = {
        "images": [{"id": 1, "file_name": "x.png"}, {"id": 2, "file_name": "y.png"}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
        "annotations": [
            {"image_id": 1, "category_id": 7, "bbox": [0, 0, 10, 20]},
            {"image_id": 2, "category_id": 7, "bbox": [5, 5, 35, 35]},
            {"image_id": 2, "category_id": 7, "bbox": [1, 1, 6, 4], "iscrowd": 1},  # crowds are left out
        ],
    }
    annotations = tmp_path / "coco/train.json"
    annotations.write_text(json.dumps(spec))
    dataset = CocoDetection(images, annotations)
    no_decoding(monkeypatch)
    fp = detection_fingerprint(dataset)
    cat, dog = fp.classes
    assert (cat["boxes"], cat["images"], dog["boxes"], dog["images"]) == (0, 0, 2, 2)
    assert (dog["box_width_median"], dog["box_height_median"], dog["small"], dog["medium"]) == (22.5, 27.5, 1, 1)
    assert fp.height["median"] == 40.0 and fp.width == {"median": 50.0, "min": 40.0, "max": 60.0}
    assert (tmp_path / "coco/detloss_fingerprint_2d.json").is_file()


def test_the_fingerprint_of_generated_shapes_is_their_drawn_boxes():
    dataset = ShapesDataset(4, image_size=64, seed=3)
    fp = detection_fingerprint(dataset)
    boxes = [dataset.generate(i)["boxes"] for i in range(4)]
    assert fp.boxes["count"] == sum(len(b) for b in boxes) and fp.height["median"] == 64.0
    assert fp.boxes["box_width_median"] == pytest.approx(
        float(np.median(np.concatenate(boxes)[:, 2] - np.concatenate(boxes)[:, 0]))
    )
    assert detection_fingerprint(dataset) == fp  # from the cache directory, keyed by the generator's parameters
    with pytest.raises(ValueError, match="dataset of type list is not read"):
        detection_fingerprint([1, 2])


# --- rules on hand-made fingerprints -------------------------------------------------------------------------------


def fingerprint(side=160, shares=(0.9, 0.05, 0.05), component=200.0, images=100) -> ImageFingerprint:
    """A hand-made masks fingerprint: square images of ``side``, classes of ``shares`` (background first)."""
    classes = [
        {
            "name": f"c{k}",
            "pixel_share": s,
            "images": images if s else 0,
            "components": 0 if k == 0 or not s else images,
            "component_pixels_median": 0.0 if k == 0 or not s else component,
            "component_pixels_min": 0 if k == 0 or not s else 1,
        }
        for k, s in enumerate(shares)
    ]
    size = {"median": float(side), "min": float(side), "max": float(side)}
    return ImageFingerprint("masks", [c["name"] for c in classes], images, size, dict(size), classes, None, "sig")


def test_the_image_size_is_the_median_side_rounded_to_the_poolings_and_capped():
    assert unet_depth(16) == 1 and unet_depth(160) == 4 and unet_depth(4096) == 5
    assert image_size_for(20) == (20, 1)  # small images: one pooling
    assert image_size_for(100) == (96, 3)  # 100 / 8 = 12.5 px at the bottom of 3 poolings
    assert image_size_for(160) == (160, 4)
    assert image_size_for(2000) == (512, 5)  # large images are capped
    assert image_size_for(100, depth=4) == (96, 4) and image_size_for(8, depth=4) == (16, 4)
    plan = plan_images(fingerprint(side=700), given={"epochs": 3})
    assert (plan.image_size, plan.depth, plan.epochs, plan.steps) == (512, 5, 3, 3 * 13)
    # a given image size keeps its side: the depth is lowered until 2**depth divides it
    assert depth_for(160) == 4 and depth_for(100) == 2 and depth_for(72) == 3 and depth_for(33) == 1
    plan = plan_images(fingerprint(side=700), given={"image_size": 100, "epochs": 3})
    assert (plan.image_size, plan.depth) == (100, 2)


def test_rare_classes_get_inverse_square_root_weights_and_balanced_or_single_classes_none():
    weights = class_weights(fingerprint(shares=(0.9, 0.09, 0.01)))
    assert weights[0] == 1.0 and np.mean(weights[1:]) == pytest.approx(1.0, abs=1e-3)
    assert weights[2] / weights[1] == pytest.approx(3.0, rel=1e-3)  # sqrt(0.09 / 0.01)
    assert class_weights(fingerprint(shares=(0.9, 0.06, 0.04))) is None  # no class below a quarter of the mean
    assert class_weights(fingerprint(shares=(0.99, 0.01))) is None  # one class: nothing to balance
    assert class_weights(fingerprint(shares=(0.9, 0.099, 0.001, 0.0)))[3] == 1.0  # an absent class stays at 1


def test_weights_go_to_the_terms_that_take_them():
    from omegaconf import OmegaConf

    terms = OmegaConf.to_container(OmegaConf.load(REPO / "configs/loss/dice_ce.yaml").terms)
    terms["boundary"] = {"loss": {"_target_": "detloss.losses.BoundaryLoss"}, "weight": 0.1, "view": "pixels"}
    taken = weights_for_terms(terms, [1.0, 0.5, 1.5])
    assert taken == {"dice": [0.5, 1.5], "ce": [1.0, 0.5, 1.5]}  # dice leaves the background out


# --- the budget ----------------------------------------------------------------------------------------------------


def cost(size, width, batch):
    """A step whose time is known: 1 s per 10 million pixel-channels of a batch; evaluation a third of it."""
    return {"step_seconds": size**2 * batch * width / 1e7, "eval_seconds": size**2 * batch * width / 3e7}


@pytest.mark.parametrize("minutes, size", [(9, 256), (6, 192)])
def test_the_time_budget_keeps_the_resolution_first_and_picks_the_largest_recipe_that_fits(minutes, size):
    fp = fingerprint(side=256, images=800)
    calls = []

    def measure(*candidate):
        calls.append(candidate)
        return cost(*candidate)

    plan = plan_images(fp, measure, budget_minutes=minutes, min_steps=500, num_val_images=100)
    allowed = 60 * minutes * (1 - 1 / 6) - 20

    def fits(size, width, batch):
        return cost(size, width, batch)["step_seconds"] * 500 <= allowed

    # 9 min: the median side 256 at width 16, batch 8 fits; 6 min: nothing at 256 does, so 192
    assert plan.image_size == size and plan.depth == unet_depth(size) and fits(size, plan.base_channels, 8)
    assert {width for _, width, _ in calls} <= {16, 32}  # in 2D the width stays at 16 or more
    assert plan.batch_size == 8  # a step of 16 costs twice one of 8 here: batch 16 trains no image faster
    for s, width, batch in calls:  # a larger image did not fit, nor a wider network at the chosen size
        assert s <= size or not fits(s, width, batch)
        assert s != size or width <= plan.base_channels or not fits(s, width, batch)
    assert len(calls) <= 7 and len(plan.candidates) == len(calls)
    batches = -(-800 // plan.batch_size), -(-100 // plan.batch_size)  # training steps and validation batches
    epoch = batches[0] * plan.step_seconds + batches[1] * plan.eval_seconds + 1.0
    assert plan.epochs == int((60 * minutes - 20) / epoch) and plan.steps == plan.epochs * batches[0]


def test_the_budget_buys_min_epochs_passes_before_it_keeps_the_resolution():
    fp = fingerprint(side=160, images=1500)  # 188 steps an epoch at batch 8
    assert plan_images(fp, cost, budget_minutes=7, min_steps=500).image_size == 160  # 500 steps fit at 160 px
    plan = plan_images(fp, cost, budget_minutes=7, min_steps=500, min_epochs=6)  # 6 · 188 steps do not: 3/4 of it
    assert (plan.image_size, plan.depth, plan.base_channels, plan.batch_size) == (120, 3, 16, 8)
    assert plan.epochs == int(400 / (188 * cost(120, 16, 8)["step_seconds"] + 1.0)) >= 6
    assert plan.budget == "7 min of this machine, at least 500 steps and 6 epochs"
    with pytest.raises(ValueError, match="plan.min_epochs must be >= 1"):
        plan_images(fp, cost, min_epochs=0)


def test_batch_16_only_where_it_trains_an_image_faster_than_batch_8():
    fp = fingerprint(side=128, images=800)

    def scaled(per_batch):  # a step of 16 costs ``per_batch`` times one of 8
        return lambda size, width, batch: (
            cost(size, width, 8) if batch == 8 else {k: v * per_batch for k, v in cost(size, width, 8).items()}
        )

    assert plan_images(fp, scaled(1.5), budget_minutes=5, min_steps=300).batch_size == 16  # a GPU: 0.75 a image
    assert plan_images(fp, scaled(1.7), budget_minutes=5, min_steps=300).batch_size == 8  # 0.85: more updates win
    assert plan_images(fp, scaled(2.3), budget_minutes=5, min_steps=300).batch_size == 8  # a CPU


def test_with_the_epochs_given_the_whole_run_fits_the_budget():
    fp = fingerprint(side=128, images=400)
    plan = plan_images(fp, cost, budget_minutes=2, min_steps=200, num_val_images=40, given={"epochs": 4})
    assert plan.epochs == 4 and plan.batch_size == 8  # batch 16 would train 4 · 25 = 100 < 200 steps
    epoch = 50 * plan.step_seconds + plan.validation_seconds + 1.0
    assert 20 + 4 * epoch <= 120 and "epochs" in plan.given and plan.run_seconds == pytest.approx(20 + 4 * epoch)
    # a budget the epochs cannot fit: the resolution stays, the cheapest recipe is taken and the overrun is shown
    tight = plan_images(fingerprint(side=256, images=400), cost, budget_minutes=0.5, given={"epochs": 4})
    assert (tight.image_size, tight.base_channels, tight.batch_size) == (256, 16, 8) and tight.run_seconds > 30
    assert "predicted run (min)" in tight.table()


def test_values_given_on_the_command_line_win():
    fp = fingerprint(side=256, shares=(0.9, 0.099, 0.001))
    given = {"image_size": 64, "base_channels": 8, "batch_size": 4, "depth": 2, "epochs": None}
    plan = plan_images(fp, cost, budget_minutes=1, min_steps=10, given=given)
    assert (plan.image_size, plan.base_channels, plan.batch_size, plan.depth) == (64, 8, 4, 2)
    assert plan.given == ["base_channels", "batch_size", "depth", "image_size"] and plan.class_weights is not None
    assert "(given)" in plan.table() and "proposed, not applied" in plan.table()
    with pytest.raises(ValueError, match="plan.budget_minutes must be positive"):
        plan_images(fp, cost, budget_minutes=0)
    with pytest.raises(ValueError, match="plan.min_steps"):
        plan_images(fp, cost, min_steps=0)
    detection = ImageFingerprint("detection", ["a"], 1, fp.height, fp.width, [], {}, "sig")
    with pytest.raises(ValueError, match="fingerprint of a masks folder"):
        plan_images(detection, cost)


def test_a_2d_plan_is_cached_per_fingerprint_and_options(tmp_path):
    fp, calls = fingerprint(), []

    def measure(*candidate):
        calls.append(candidate)
        return cost(*candidate)

    first = cached_image_plan(fp, measure, cache_dir=tmp_path, budget_minutes=3, min_steps=100)
    count = len(calls)
    assert cached_image_plan(fp, measure, cache_dir=tmp_path, budget_minutes=3, min_steps=100) == first
    assert len(calls) == count
    cached_image_plan(fp, measure, cache_dir=tmp_path, budget_minutes=4, min_steps=100)
    assert len(calls) > count


# --- through a run -------------------------------------------------------------------------------------------------


def test_a_rare_class_weights_the_loss_terms_unless_they_are_given(tmp_path):
    from conftest import compose_config
    from hydra.utils import instantiate

    from detloss.planning import plan_run

    root = make_masks(tmp_path / "ds")
    save_png(root / "masks/train/b.png", np.ones((2, 8)))  # class 2 holds 1 pixel in 39, class 1 holds 21
    common = ["task=segmentation", "data=masks", f"data.root={root}", "data.num_classes=3", "data.image_size=16"]
    common += ["model.base_channels=8", "model.depth=2", "trainer.max_epochs=1"]  # only the weights left to plan
    cfg = compose_config(*common, "data.batch_size=2")
    plan = plan_run(cfg, instantiate(cfg.data))
    assert plan.class_weights[2] / plan.class_weights[1] == pytest.approx(21**0.5, rel=1e-3)
    assert plan.weighted_terms == ["ce", "dice"] and plan.candidates == []  # nothing left to measure
    assert list(cfg.loss.terms.ce.loss.class_weights) == plan.class_weights
    assert list(cfg.loss.terms.dice.loss.class_weights) == plan.class_weights[1:]
    cfg = compose_config(*common, "data.batch_size=2", "+loss.terms.ce.loss.class_weights=[1,2,3]")
    plan = plan_run(cfg, instantiate(cfg.data))
    assert list(cfg.loss.terms.ce.loss.class_weights) == [1, 2, 3] and "class_weights" not in cfg.loss.terms.dice.loss
    assert "class_weights" in plan.given and plan.weighted_terms == []
    cfg = compose_config(*common, "data.batch_size=2", "data.plan.class_weights=false")
    assert plan_run(cfg, instantiate(cfg.data)).weighted_terms == [] and "class_weights" not in cfg.loss.terms.ce.loss
    with pytest.raises(ValueError, match=r"data.plan: unknown options \['budget'\]"):
        cfg = compose_config(*common, "+data.plan.budget=3")
        plan_run(cfg, instantiate(cfg.data))


def test_a_run_plans_a_mask_folder_and_keeps_the_plan(tmp_path):
    from conftest import compose_config

    from detloss.config import CHECKPOINT_CONFIG, CHECKPOINT_DATA, read_checkpoint
    from detloss.train import train

    root = tmp_path / "masks"
    make = [sys.executable, str(REPO / "tools/make_masks_dataset.py"), str(root), "--train", "6", "--val", "2"]
    subprocess.run([*make, "--size", "32", "--min-size", "8", "--max-size", "12"], check=True, capture_output=True)
    run = tmp_path / "run"
    cfg = compose_config(
        f"paths.output_dir={run}",
        "task=segmentation",
        "data=masks",
        f"data.root={root}",
        "data.num_classes=11",
        "data.plan.budget_minutes=0.5",
        "data.plan.min_steps=2",
        "model.base_channels=null",
        "model.depth=null",
        "trainer.max_epochs=1",
        "logger=none",
        "task.num_previews=0",
    )
    train(cfg)
    plan = json.loads((run / "plan.json").read_text())
    assert plan["image_size"] == 32 and plan["depth"] == 2 and plan["epochs"] == 1  # 32 px: 2 poolings keep 8 px
    assert plan["given"] == ["epochs"] and plan["candidates"] and plan["step_seconds"] > 0
    assert cfg.data.image_size == 32 and cfg.data.batch_size == plan["batch_size"]
    assert cfg.model.base_channels == plan["base_channels"] and cfg.model.depth == 2
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt[CHECKPOINT_CONFIG]["data"]["image_size"] == 32 and ckpt[CHECKPOINT_CONFIG]["model"]["depth"] == 2
    assert ckpt[CHECKPOINT_DATA]["plan"] == plan


def test_the_fingerprint_of_generated_lesions_counts_what_was_drawn():
    from detloss.data import LesionsDataset

    dataset = LesionsDataset(6, image_size=64, seed=3, num_lesion_classes=2)
    fp = mask_fingerprint(dataset, ["background", "bright", "dark"])
    masks = [dataset.generate(i)["mask"] for i in range(6)]
    counts = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=3)
    assert fp.kind == "masks" and fp.num_images == 6 and fp.height == fp.width == {"median": 64, "min": 64, "max": 64}
    assert [c["pixel_share"] for c in fp.classes] == pytest.approx(list(counts / counts.sum()))
    assert [c["images"] for c in fp.classes] == [6, *[sum(bool((m == k).any()) for m in masks) for k in (1, 2)]]
    # kept under the generator's parameters: the same parameters read it back, others draw anew
    assert mask_fingerprint(LesionsDataset(6, image_size=64, seed=3, num_lesion_classes=2), fp.class_names) == fp
    other = mask_fingerprint(LesionsDataset(6, image_size=64, seed=4, num_lesion_classes=2), fp.class_names)
    assert other.signature != fp.signature


def test_the_embedded_lesions_default_is_planned_not_hand_set(tmp_path):
    from conftest import compose_config
    from hydra.utils import instantiate

    from detloss.planning import plan_run

    small = ["data.num_train=16", "data.num_val=8", "data.image_size=64", "data.plan.budget_minutes=0.5"]
    small += ["data.plan.min_steps=2"]
    cfg = compose_config(f"paths.output_dir={tmp_path}", "task=segmentation", *small)
    assert cfg.model.base_channels is None and cfg.trainer.max_epochs is None and cfg.data.batch_size is None
    datamodule = instantiate(cfg.data)
    plan = plan_run(cfg, datamodule)
    assert plan.given == ["image_size"] and plan.image_size == 64 and plan.depth == unet_depth(64) == 3
    assert plan.candidates and plan.epochs >= 1 and plan.steps == plan.epochs * -(-16 // plan.batch_size)
    assert (cfg.model.base_channels, cfg.model.depth) == (plan.base_channels, 3)
    assert (cfg.data.batch_size, cfg.trainer.max_epochs) == (plan.batch_size, plan.epochs)
    assert datamodule.batch_size == plan.batch_size and datamodule.describe()["plan"] == plan.to_dict()
