"""Data package: synthetic datasets, COCO / YOLO / mask folders, transforms, collate and DataModules."""

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import SequentialSampler
from torchvision.transforms import v2

from detloss.data import (
    PAD_VALUE,
    CocoDataModule,
    CocoDetection,
    LesionsDataModule,
    LesionsDataset,
    Letterbox,
    MaskDataModule,
    ShapesDataModule,
    ShapesDataset,
    YoloDataModule,
    apply_detection,
    apply_segmentation,
    detection_collate,
    detection_transforms,
    letterbox,
    segmentation_collate,
    segmentation_transforms,
    unletterbox_boxes,
)
from detloss.data.base import EpochShuffle


def tight_box(region: torch.Tensor) -> torch.Tensor:
    """``[x_min, y_min, x_max + 1, y_max + 1]`` of the true pixels of ``region (H, W)``."""
    ys, xs = torch.nonzero(region, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def save_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


# ------------------------------------------------------------------------------------------------------ shapes


def test_shapes_deterministic_per_seed_split_and_index():
    a, b = ShapesDataset(10, seed=0), ShapesDataset(10, seed=0)
    for index in (0, 7, 3):  # any order
        (ia, ta), (ib, tb) = a[index], b[index]
        assert torch.equal(ia, ib) and torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["labels"], tb["labels"])
    assert not torch.equal(a[0][0], ShapesDataset(10, seed=1)[0][0])
    assert not torch.equal(a[0][0], ShapesDataset(10, seed=0, split="val")[0][0])
    with pytest.raises(IndexError):
        a[10]


def test_shapes_sample_format_and_tight_boxes():
    ds = ShapesDataset(60, image_size=128, seed=3)
    for index in range(len(ds)):
        image, target = ds[index]
        assert image.shape == (3, 128, 128) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1
        boxes, labels = target["boxes"], target["labels"]
        assert boxes.dtype == torch.float32 and labels.dtype == torch.int64 and len(boxes) == len(labels) <= 8
        assert (boxes >= 0).all() and (boxes <= 128).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        masks = torch.from_numpy(ds.generate(index)["masks"])
        for box, mask in zip(boxes, masks):  # each box is the tight box of the shape's drawn pixels
            assert torch.equal(tight_box(mask), box)


def test_shapes_lone_filled_shape_pixels_fall_in_its_box():
    ds = ShapesDataset(30, seed=5, max_objects=1, p_empty=0.0, p_outline=0.0, noise=0.0, clutter=False, gradient=0.0)
    for index in range(len(ds)):
        image, target = ds[index]
        changed = (image - image[:, :1, :1]).abs().amax(0) > 0  # pixels that differ from the flat background
        assert len(target["boxes"]) == 1
        assert torch.equal(tight_box(changed), target["boxes"][0])


def test_shapes_statistics():
    ds = ShapesDataset(200, seed=0)
    counts, classes, sides = [], set(), []
    for index in range(len(ds)):
        sample = ds.generate(index)
        counts.append(len(sample["labels"]))
        classes.update(sample["labels"].tolist())
        boxes = sample["boxes"]
        sides += np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).tolist()
    assert classes == set(range(5))
    assert 0 < counts.count(0) < 60 and max(counts) >= 6
    assert min(sides) <= 12 and max(sides) >= 50  # tiny (min_size 10) to large


def test_shapes_datamodule_and_two_workers():
    dm = ShapesDataModule(num_train=16, num_val=8, batch_size=4, num_workers=2, seed=1)
    assert (dm.num_classes, dm.in_channels, dm.task) == (5, 3, "detection")
    assert dm.class_names == ["circle", "square", "triangle", "star", "cross"]
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert isinstance(train.sampler, EpochShuffle) and isinstance(val.sampler, SequentialSampler)
    batches = list(val)
    assert len(batches) == 2
    images, targets = batches[0]
    assert images.shape == (4, 3, 128, 128) and len(targets) == 4
    expected = [dm.val_dataset[i] for i in range(4)]  # the workers draw the same items
    assert torch.equal(images, torch.stack([e[0] for e in expected]))
    assert all(torch.equal(t["boxes"], e[1]["boxes"]) for t, e in zip(targets, expected))
    images, targets = next(iter(train))
    assert images.shape == (4, 3, 128, 128) and all(t["boxes"].shape[-1] == 4 for t in targets)
    pickle.loads(pickle.dumps(dm.train_dataset))


# ----------------------------------------------------------------------------------------------------- lesions


def test_lesions_deterministic():
    a, b = LesionsDataset(6, seed=2), LesionsDataset(6, seed=2)
    for index in (5, 0):
        assert torch.equal(a[index][0], b[index][0]) and torch.equal(a[index][1], b[index][1])
    assert not torch.equal(a[0][0], LesionsDataset(6, seed=3)[0][0])


def test_lesions_masks_valid_and_varied():
    ds = LesionsDataset(200, seed=0)
    empty, classes, fraction = 0, set(), []
    for index in range(len(ds)):
        image, mask = ds[index]
        assert image.shape == (1, 128, 128) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
        assert mask.shape == (128, 128) and mask.dtype == torch.int64
        values = set(mask.unique().tolist())
        assert values <= {0, 1, 2, 3}
        empty += values == {0}
        classes |= values - {0}
        fraction.append((mask > 0).float().mean().item())
    assert classes == {1, 2, 3} and 20 <= empty <= 90
    assert np.mean(fraction) < 0.06  # lesions are small against the background


def test_lesions_look_different_from_tissue():
    ds = LesionsDataset(40, seed=1, noise=0.0)
    contrast = {1: [], 2: [], 3: []}  # bright: mean, dark: mean, ring: brightest (the rim), against the tissue
    for index in range(len(ds)):
        sample = ds.generate(index)
        image, mask = sample["image"], sample["mask"]
        tissue = np.median(image[(mask == 0) & (image > 0.15)])
        for label, values in contrast.items():
            if (mask == label).any():
                region = image[mask == label]
                values.append((region.max() if label == 3 else region.mean()) - tissue)
    assert min(contrast[1]) > 0.15 and max(contrast[2]) < -0.15 and min(contrast[3]) > 0.15


def test_lesions_datamodule():
    dm = LesionsDataModule(num_train=8, num_val=4, batch_size=4, num_lesion_classes=2)
    assert (dm.num_classes, dm.in_channels, dm.task, dm.ignore_index) == (3, 1, "segmentation", 255)
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 1, 128, 128) and masks.shape == (4, 128, 128) and masks.dtype == torch.int64
    assert set(masks.unique().tolist()) <= {0, 1, 2}


# -------------------------------------------------------------------------------------------------------- COCO


def make_coco(tmp_path, split="train", **edits):
    """A tiny COCO split: 3 images (one without annotations), category ids 42, 3, 7 (unsorted), a crowd box."""
    images = tmp_path / f"{split}_images"
    for name, (w, h) in {"a.png": (64, 48), "b.png": (40, 80), "c.png": (32, 32)}.items():
        save_png(images / name, np.full((h, w, 3), 90))
    data = {
        "images": [
            {"id": 10, "file_name": "a.png", "width": 64, "height": 48},
            {"id": 11, "file_name": "b.png", "width": 40, "height": 80},
            {"id": 12, "file_name": "c.png", "width": 32, "height": 32},
        ],
        "categories": [{"id": 42, "name": "bird"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [4, 5, 20, 10], "iscrowd": 0, "area": 200},
            {"id": 2, "image_id": 10, "category_id": 42, "bbox": [30, 20, 10, 20], "iscrowd": 0, "area": 200},
            {"id": 3, "image_id": 10, "category_id": 3, "bbox": [0, 0, 64, 48], "iscrowd": 1, "area": 3072},
            {"id": 4, "image_id": 11, "category_id": 3, "bbox": [10, 10, 0, 5], "iscrowd": 0, "area": 0},
            {"id": 5, "image_id": 11, "category_id": 3, "bbox": [1, 2, 30, 70], "iscrowd": 0, "area": 2100},
        ],
    }
    data.update(edits)
    annotations = tmp_path / f"{split}.json"
    annotations.write_text(json.dumps(data))
    return images, annotations


def test_coco_labels_crowds_and_empty_images(tmp_path):
    images, annotations = make_coco(tmp_path)
    ds = CocoDetection(images, annotations)
    assert ds.class_names == ["cat", "dog", "bird"] and ds.cat_to_label == {3: 0, 7: 1, 42: 2}
    image, target = ds[0]
    assert image.shape == (3, 48, 64)
    assert target["boxes"].tolist() == [[4, 5, 24, 15], [30, 20, 40, 40]] and target["labels"].tolist() == [1, 2]
    assert ds[1][1]["labels"].tolist() == [0]  # degenerate box dropped
    assert ds[2][1]["boxes"].shape == (0, 4) and ds[2][1]["labels"].shape == (0,)


def test_coco_dataset_keeps_flat_arrays_not_the_index(tmp_path):
    # what a forked loader worker shares with the main process: a few numpy arrays, no per-image Python objects
    # (which reference counting and the garbage collector would copy into every worker) and no pycocotools index
    images, annotations = make_coco(tmp_path)
    ds = CocoDetection(images, annotations)
    assert not hasattr(ds, "coco")
    arrays = (ds.files, ds.boxes, ds.labels, ds.offsets)
    assert all(isinstance(a, np.ndarray) and a.dtype != object for a in arrays)
    assert ds.offsets.tolist() == [0, 2, 3, 3] and ds.boxes.shape == (3, 4)
    ds[0][1]["boxes"][0, 0] = -1.0  # a sample is a copy: the stored boxes stay as they were
    assert ds.boxes[0, 0] == 4.0


def test_coco_datamodule_batch(tmp_path):
    train = make_coco(tmp_path, "train")
    val = make_coco(tmp_path, "val")
    dm = CocoDataModule(*train, *val, image_size=64, batch_size=3)
    assert (dm.num_classes, dm.class_names, dm.in_channels, dm.task) == (3, ["cat", "dog", "bird"], 3, "detection")
    images, targets = next(iter(dm.val_dataloader()))
    assert images.shape == (3, 3, 64, 64) and [len(t["labels"]) for t in targets] == [2, 1, 0]
    # a.png (64x48) is letterboxed with 8 px on top: boxes shift down
    assert targets[0]["boxes"].tolist() == [[4, 13, 24, 23], [30, 28, 40, 48]]
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (3, 3, 64, 64) and len(targets) == 3


def test_coco_errors(tmp_path):
    images, annotations = make_coco(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        CocoDetection(images, tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="no_images"):
        CocoDetection(tmp_path / "no_images", annotations)
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(ValueError, match=r"broken\.json.*malformed JSON"):
        CocoDetection(images, broken)
    bad_ann = [{"id": 99, "image_id": 10, "category_id": 5, "bbox": [1, 1, 2, 2]}]
    _, undeclared = make_coco(tmp_path / "u", annotations=bad_ann)
    with pytest.raises(ValueError, match=r"train\.json: annotation 99 has category_id 5"):
        CocoDetection(images, undeclared)
    extra = [{"id": 13, "file_name": "gone.png"}]
    _, missing_image = make_coco(tmp_path / "m")
    data = json.loads(missing_image.read_text())
    data["images"] += extra
    missing_image.write_text(json.dumps(data))
    with pytest.raises(FileNotFoundError, match="gone.png"):
        CocoDetection(images, missing_image)


def test_coco_file_without_annotations_fails_naming_it(tmp_path):
    images, annotations = make_coco(tmp_path)
    data = json.loads(annotations.read_text())
    del data["annotations"]
    info = tmp_path / "image_info.json"
    info.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"image_info\.json: no 'annotations' list"):
        CocoDetection(images, info)
    train, val = make_coco(tmp_path / "t", "train"), make_coco(tmp_path / "v", "val")
    with pytest.raises(ValueError, match=r"image_info\.json: no 'annotations'"):
        CocoDataModule(*train, val[0], info)  # a validation file too: mAP needs its annotations
    with pytest.raises(ValueError, match=r"image_info\.json: no 'annotations'"):
        CocoDataModule(train[0], info, *val)
    # present but empty: a real dataset of images without objects
    _, empty = make_coco(tmp_path / "e", annotations=[])
    ds = CocoDetection(images, empty)
    assert len(ds) == 3 and all(ds[i][1]["boxes"].shape == (0, 4) for i in range(3))


def test_coco_negative_box_fails_zero_box_is_dropped(tmp_path):
    images, _ = make_coco(tmp_path)
    for bbox in ([10, 10, -4, 5], [10, 10, 4, -0.5]):
        bad = [{"id": 77, "image_id": 11, "category_id": 3, "bbox": bbox}]
        _, annotations = make_coco(tmp_path / "n", annotations=bad)
        with pytest.raises(ValueError, match=r"train\.json: annotation 77 has bbox .* negative width or height"):
            CocoDetection(images, annotations)
    zero = [{"id": 78, "image_id": 11, "category_id": 3, "bbox": [10, 10, 0, 5]}]
    _, annotations = make_coco(tmp_path / "z", annotations=zero)
    assert CocoDetection(images, annotations)[1][1]["labels"].numel() == 0


# -------------------------------------------------------------------------------------------------------- YOLO


def make_yolo(root, label_lines=None):
    """A tiny YOLO folder: dict names, a train image without label file, one val image."""
    (root / "data.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text("names:\n  0: person\n  1: car\n")
    save_png(root / "images/train/p.png", np.zeros((50, 100, 3)))
    save_png(root / "images/train/q.png", np.zeros((30, 30, 3)))  # no label file: no objects
    save_png(root / "images/val/v.jpg", np.zeros((40, 40, 3)))
    (root / "labels/train").mkdir(parents=True)
    (root / "labels/val").mkdir(parents=True)
    lines = label_lines if label_lines is not None else ["1 0.5 0.5 0.2 0.4", "", "0 0.1 0.2 0.2 0.2"]
    (root / "labels/train/p.txt").write_text("\n".join(lines) + "\n")
    (root / "labels/val/v.txt").write_text("0 0.5 0.5 1.0 1.0\n")
    return root


def test_yolo_datamodule(tmp_path):
    dm = YoloDataModule(make_yolo(tmp_path / "ds"), image_size=100, batch_size=2, augment=False)
    assert (dm.num_classes, dm.class_names, dm.in_channels, dm.task) == (2, ["person", "car"], 3, "detection")
    raw = dm.train_dataset
    raw_transforms, raw.transforms = raw.transforms, None
    image, target = raw[0]
    assert image.shape == (3, 50, 100)
    torch.testing.assert_close(target["boxes"], torch.tensor([[40.0, 15.0, 60.0, 35.0], [0.0, 5.0, 20.0, 15.0]]))
    assert target["labels"].tolist() == [1, 0] and raw[1][1]["labels"].numel() == 0
    raw.transforms = raw_transforms
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 100, 100) and sorted(len(t["labels"]) for t in targets) == [0, 2]
    images, targets = next(iter(dm.val_dataloader()))
    assert images.shape == (1, 3, 100, 100) and targets[0]["boxes"].tolist() == [[0, 0, 100, 100]]


@pytest.mark.parametrize(
    "line, message",
    [
        ("5 0.5 0.5 0.1 0.1", r"p\.txt, line 2: class id 5 outside the 2 names"),
        ("1 0.5 0.5 0.1", r"p\.txt, line 2: expected 5 values"),
        ("1 0.5 1.5 0.1 0.1", r"p\.txt, line 2: coordinates .* outside \[0, 1\]"),
        ("x 0.5 0.5 0.1 0.1", r"p\.txt, line 2: not a number"),
    ],
)
def test_yolo_label_errors(tmp_path, line, message):
    root = make_yolo(tmp_path / "ds", ["0 0.5 0.5 0.2 0.2", line])
    with pytest.raises(ValueError, match=message):
        YoloDataModule(root)


def test_yolo_missing_files(tmp_path):
    root = make_yolo(tmp_path / "ds")
    (root / "data.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="data.yaml"):
        YoloDataModule(root)
    root = make_yolo(tmp_path / "ds2")
    with pytest.raises(FileNotFoundError, match="images/test"):
        YoloDataModule(root, val_split="test")


def test_yolo_missing_or_misnamed_label_folder_fails_naming_it(tmp_path):
    root = make_yolo(tmp_path / "gone")
    for path in (root / "labels/val").iterdir():
        path.unlink()
    (root / "labels/val").rmdir()
    with pytest.raises(FileNotFoundError, match=r"YOLO label folder not found: .*labels/val"):
        YoloDataModule(root)
    root = make_yolo(tmp_path / "renamed")
    (root / "labels/train").rename(root / "labels/training")
    with pytest.raises(FileNotFoundError, match=r"labels/train"):
        YoloDataModule(root)
    root = make_yolo(tmp_path / "elsewhere")
    (root / "labels/val/v.txt").rename(root / "labels/val/w.txt")  # labels of other images
    with pytest.raises(ValueError, match=r"labels/val: none of its 1 label files is named after an image"):
        YoloDataModule(root)
    # a present folder where some images have no label file: those are images without objects
    root = make_yolo(tmp_path / "some")
    (root / "labels/val/v.txt").unlink()
    assert YoloDataModule(root).val_dataset[0][1]["labels"].numel() == 0


# ------------------------------------------------------------------------------------------------------- masks


def make_masks(root, grey=False):
    """A tiny mask folder, 3 classes + ignore 255: two train pairs, one val pair."""
    rng = np.random.default_rng(0)
    for split, stems in {"train": ["a", "b"], "val": ["c"]}.items():
        for stem in stems:
            shape = (24, 32) if grey else (24, 32, 3)
            save_png(root / f"images/{split}/{stem}.png", rng.integers(0, 255, shape))
            mask = np.zeros((24, 32))
            mask[4:10, 5:20], mask[12:20, 2:8], mask[0, :] = 1, 2, 255
            save_png(root / f"masks/{split}/{stem}.png", mask)
    return root


def test_mask_datamodule(tmp_path):
    dm = MaskDataModule(make_masks(tmp_path / "ds"), num_classes=3, image_size=32, batch_size=2)
    assert (dm.num_classes, dm.in_channels, dm.task, dm.ignore_index) == (3, 3, "segmentation", 255)
    images, masks = next(iter(dm.val_dataloader()))
    assert images.shape == (1, 3, 32, 32) and masks.shape == (1, 32, 32) and masks.dtype == torch.int64
    assert set(masks.unique().tolist()) == {0, 1, 2, 255}
    assert (masks[0, :4] == 255).all() and (masks[0, -4:] == 255).all()  # letterbox pads the mask with ignore
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 32, 32) and masks.shape == (2, 32, 32)
    grey = MaskDataModule(make_masks(tmp_path / "grey", grey=True), num_classes=3, image_size=32)
    assert grey.in_channels == 1 and grey.val_dataset[0][0].shape == (1, 32, 32)


def test_mask_errors(tmp_path):
    root = make_masks(tmp_path / "value")
    save_png(root / "masks/train/b.png", np.full((24, 32), 7))
    with pytest.raises(ValueError, match=r"b\.png: mask value 7"):
        MaskDataModule(root, num_classes=3)
    dm = MaskDataModule(root, num_classes=3, validate=False)  # then it is found when loaded
    with pytest.raises(ValueError, match=r"b\.png: mask value 7"):
        dm.train_dataset[1]
    root = make_masks(tmp_path / "size")
    save_png(root / "masks/val/c.png", np.zeros((20, 32)))
    with pytest.raises(ValueError, match=r"images/val/c\.png is 32x24 .*masks/val/c\.png is 32x20"):
        MaskDataModule(root, num_classes=3)
    root = make_masks(tmp_path / "missing")
    (root / "masks/train/a.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"images/train/a\.png has no mask"):
        MaskDataModule(root, num_classes=3)


# -------------------------------------------------------------------------------------------------- transforms


def white_rectangle(height, width, box):
    image = torch.zeros(3, height, width)
    x0, y0, x1, y1 = box
    image[:, y0:y1, x0:x1] = 1.0
    return image


def test_letterbox_function_round_trip():
    image = torch.rand(3, 50, 100)
    out, scale, pad = letterbox(image, 128)
    assert out.shape == (3, 128, 128) and scale == pytest.approx(1.28) and pad == (0, 32)
    assert torch.allclose(out[:, :32], torch.tensor(PAD_VALUE)) and torch.allclose(
        out[:, -32:], torch.tensor(PAD_VALUE)
    )
    boxes = torch.tensor([[10.0, 5.0, 30.0, 45.0]])
    moved = boxes * scale + torch.tensor([0, 32, 0, 32])
    torch.testing.assert_close(unletterbox_boxes(moved, scale, pad), boxes)


@pytest.mark.parametrize("seed", range(6))
def test_detection_transforms_keep_boxes_on_the_pixels(seed):
    torch.manual_seed(seed)
    box = (7 + 5 * seed, 10, 60 + 4 * seed, 40)
    image = white_rectangle(60, 110, box)
    pipeline = detection_transforms(96, train=True, hflip=0.5, jitter=0.0, scale=(0.6, 1.4), translate=0.1)
    for _ in range(5):
        out, target = apply_detection(pipeline, image, torch.tensor([box], dtype=torch.float32), torch.tensor([2]))
        assert out.shape == (3, 96, 96)
        white = out.amin(0) > 0.75
        if len(target["boxes"]) == 1:
            assert target["labels"].tolist() == [2]
            assert (tight_box(white) - target["boxes"][0]).abs().max() <= 2
        else:
            assert white.sum() <= 2 * 96  # only a sliver can be left when the box is dropped


def test_crop_drops_box_outside_with_its_label():
    image = white_rectangle(100, 100, (40, 40, 60, 60))
    boxes = torch.tensor([[40.0, 40.0, 60.0, 60.0], [0.0, 0.0, 10.0, 10.0], [90.0, 2.0, 99.0, 20.0]])
    pipeline = v2.Compose([Letterbox(100), v2.CenterCrop(50), v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes()])
    out, target = apply_detection(pipeline, image, boxes, torch.tensor([4, 1, 0]))
    assert out.shape == (3, 50, 50) and target["labels"].tolist() == [4]
    torch.testing.assert_close(target["boxes"], torch.tensor([[15.0, 15.0, 35.0, 35.0]]))
    assert torch.equal(tight_box(out[0] > 0.5), target["boxes"][0])


@pytest.mark.parametrize("seed", range(4))
def test_segmentation_transforms_keep_mask_on_the_pixels(seed):
    torch.manual_seed(seed)
    image = white_rectangle(50, 90, (20 + seed, 12, 50, 30))[:1]
    mask = (image[0] > 0.5).long() * 2
    pipeline = segmentation_transforms(64, train=True, hflip=0.5, vflip=0.5, rotate=10)
    out, out_mask = apply_segmentation(pipeline, image, mask)
    assert out.shape == (1, 64, 64) and out_mask.shape == (64, 64) and out_mask.dtype == torch.int64
    assert set(out_mask.unique().tolist()) <= {0, 2, 255}
    assert (tight_box(out_mask == 2) - tight_box(out[0] > 0.5)).abs().max() <= 2
    assert (out_mask == 255).any()  # letterbox padding (and rotation corners) are ignored
    _, plain = apply_segmentation(segmentation_transforms(64, mode="resize"), image, mask)
    assert plain.shape == (64, 64) and set(plain.unique().tolist()) == {0, 2}


# ----------------------------------------------------------------------------------------------------- collate


def test_collate_types_and_shapes():
    samples = [
        (torch.rand(3, 8, 8), {"boxes": torch.rand(n, 4), "labels": torch.zeros(n, dtype=torch.int64)}) for n in (0, 3)
    ]
    images, targets = detection_collate(samples)
    assert images.shape == (2, 3, 8, 8) and isinstance(targets, list) and [len(t["boxes"]) for t in targets] == [0, 3]
    images, masks = segmentation_collate([(torch.rand(1, 8, 8), torch.zeros(8, 8, dtype=torch.int64))] * 3)
    assert images.shape == (3, 1, 8, 8) and masks.shape == (3, 8, 8) and masks.dtype == torch.int64
    with pytest.raises(ValueError, match="different shapes"):
        detection_collate([samples[0], (torch.rand(3, 9, 8), samples[1][1])])


def test_the_training_order_depends_on_seed_and_epoch_only(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    sampler = EpochShuffle(50)
    first = list(sampler)
    torch.manual_seed(123)  # the global generator plays no part
    assert list(sampler) == first and sorted(first) == list(range(50))
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(second) == list(range(50))
    sampler.set_epoch(0)
    assert list(sampler) == first
    monkeypatch.setenv("PL_GLOBAL_SEED", "8")
    assert list(sampler) != first
