"""The ``yolo`` training augmentation: mosaic, zoom and shift, HSV, flip, boxes that follow the pixels, and the
mosaic closed for the last epochs, in worker processes too."""

from types import SimpleNamespace

import pytest
import torch
from conftest import compose_config
from hydra.utils import instantiate
from test_data import make_coco, white_rectangle
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from detloss.data import DetectionDataset, detection_collate
from detloss.data.augment import CloseMosaic, KeepVisibleBoxes, YoloAugment, detection_train_transforms
from detloss.train import make_trainer


class Rectangles(DetectionDataset):
    """White rectangles on black, one per image, of different sizes and aspect ratios; label = index."""

    def __init__(self, count=6, transforms=None):
        super().__init__(transforms)
        self.count = count

    def __len__(self):
        return self.count

    def load(self, index):
        height, width = 40 + 10 * index, 90 - 8 * index
        box = (5 + index, 8, width - 10, height - 6 - index)
        return white_rectangle(height, width, box), torch.tensor([box], dtype=torch.float32), torch.tensor([index])


@pytest.mark.parametrize("mosaic", [1.0, 0.0])
def test_boxes_follow_the_pixels_through_the_recipe(mosaic):
    # min_visible=0 keeps boxes of which a crop left little, so that all white is boxed (dropping is tested below)
    dataset = Rectangles(transforms=YoloAugment(64, mosaic=mosaic, hsv=(0.0, 0.0, 0.0), min_visible=0.0))
    torch.manual_seed(0)
    for index in range(12):
        image, target = dataset[index % len(dataset)]
        assert image.shape == (3, 64, 64) and len(target["boxes"]) == len(target["labels"])
        white = image.amin(0) > 0.75
        covered = torch.zeros_like(white)
        for box in target["boxes"].round().long().tolist():
            x0, y0, x1, y1 = box
            assert white[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1].float().mean() > 0.9  # a box lies on its rectangle
            covered[max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1] = True
        assert (white & ~covered).sum() <= 2 * 64  # white left outside the boxes: slivers under 2 px only
        if mosaic == 0.0:
            assert len(target["labels"]) <= 1


def test_a_mosaic_holds_four_images_around_a_centre():
    augment = YoloAugment(32)
    samples = [(torch.full((3, 16, 32), float(i + 1) / 8), torch.tensor([[0.0, 0.0, 32.0, 16.0]]), torch.tensor([i]))
               for i in range(4)]  # fmt: skip
    torch.manual_seed(0)
    image, target = augment.combine(samples)
    assert image.shape == (3, 64, 64) and target["boxes"].canvas_size == (64, 64)
    assert target["labels"].tolist() == [0, 1, 2, 3]
    values = {round(v * 8) for v in image[0].unique().tolist()}
    assert {1, 2, 3, 4} <= values  # every image is on the canvas (grey fills the rest)
    boxes = target["boxes"].as_subclass(torch.Tensor)
    xc, yc = boxes[0, 2].item(), boxes[0, 3].item()  # the top-left image ends at the centre
    assert 16 <= xc <= 48 and 16 <= yc <= 48
    assert boxes[1, 0] == xc and boxes[2, 1] == yc and boxes[3, :2].tolist() == [xc, yc]


def test_boxes_mostly_cut_off_are_dropped_with_their_labels():
    boxes = tv_tensors.BoundingBoxes(
        torch.tensor([[-30.0, 0.0, 2.0, 10.0], [-5.0, 0.0, 10.0, 10.0], [5.0, 5.0, 6.0, 20.0]]),
        format="XYXY", canvas_size=(32, 32), clamping_mode=None,
    )  # fmt: skip
    _, target = KeepVisibleBoxes(min_size=2, min_visible=0.1)(None, {"boxes": boxes, "labels": torch.tensor([7, 8, 9])})
    # the first keeps 2 / 32 of its area, the third is 1 px wide
    assert target["labels"].tolist() == [8] and target["boxes"].tolist() == [[0.0, 0.0, 10.0, 10.0]]


def test_close_mosaic_turns_it_off_for_the_last_epochs():
    augment = YoloAugment(32)
    switch = CloseMosaic(augment, epochs=2)
    states = []
    for epoch in range(5):
        switch.on_train_epoch_start(SimpleNamespace(max_epochs=5, current_epoch=epoch), None)
        states.append(augment.mosaic_on)
    assert states == [True, True, True, False, False]
    switch.on_train_epoch_start(SimpleNamespace(max_epochs=-1, current_epoch=100), None)  # a run of max_steps
    assert augment.mosaic_on


def distinct_values(images):
    """How many grey levels of the rectangles each image holds (a mosaic holds several)."""
    return [len({round(v, 3) for v in image[0].unique().tolist()} - {0.0, round(114 / 255, 3)}) for image in images]


class Greys(Rectangles):
    def load(self, index):  # image i is a flat grey (i + 1) / 10: the source of a pixel can be read from it
        image = torch.full((3, 32, 32), (index + 1) / 10)
        return image, torch.tensor([[4.0, 4.0, 28.0, 28.0]]), torch.tensor([0])


def test_the_switch_reaches_persistent_worker_processes():
    augment = YoloAugment(32, scale=(1.0, 1.0), translate=0.0, hsv=(0.0, 0.0, 0.0), hflip=0.0)
    loader = DataLoader(Greys(8, augment), batch_size=4, num_workers=2, persistent_workers=True,
                        collate_fn=detection_collate)  # fmt: skip
    torch.manual_seed(0)
    with_mosaic = [n for images, _ in loader for n in distinct_values(images)]
    augment.set_mosaic(False)
    without = [n for images, _ in loader for n in distinct_values(images)]
    assert max(with_mosaic) > 1 and without == [1] * 8


def test_the_coco_and_yolo_configs_train_with_the_recipe_and_close_its_mosaic(tmp_path):
    (train_images, train_json), (val_images, val_json) = make_coco(tmp_path, "train"), make_coco(tmp_path, "val")
    paths = [f"data.train_images={train_images}", f"data.train_annotations={train_json}",
             f"data.val_images={val_images}", f"data.val_annotations={val_json}"]  # fmt: skip
    cfg = compose_config(f"paths.output_dir={tmp_path}", "data=coco", "data.image_size=64", *paths)
    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule.train_dataset.transforms, YoloAugment)
    assert [type(c) for c in datamodule.callbacks] == [CloseMosaic] and datamodule.callbacks[0].epochs == 10
    image, target = datamodule.train_dataset[0]
    assert image.shape == (3, 64, 64) and target["boxes"].shape[1] == 4
    assert any(isinstance(c, CloseMosaic) for c in make_trainer(cfg, datamodule.callbacks).callbacks)
    assert compose_config("data=yolo", "data.root=r").data.augment == "yolo"
    assert compose_config().data.augment == "light"  # the embedded shapes keep their light augmentation


def test_an_unknown_augmentation_is_refused_naming_the_option():
    with pytest.raises(ValueError, match=r"data\.augment must be one of \('none', 'light', 'yolo'\), got 'mixup'"):
        detection_train_transforms("mixup", 64)
    assert detection_train_transforms(False, 64).transforms[-1].__class__.__name__ == "SanitizeBoundingBoxes"
