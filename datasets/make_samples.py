"""Write the sample PNGs of the dataset cards: ``python datasets/make_samples.py`` (from the repository root).

* ``datasets/shapes/sample_{0..3}.png``: shapes images (seed 0, val split, indices 0-3) at 2x with their boxes
  and class names drawn on top.
* ``datasets/lesions/sample_{0..3}.png``: lesion scans (seed 0, val split, indices 0-3) at 2x, the scan and its
  colourised mask side by side (red bright_round, blue dark_irregular, green ring_enhancing).
* ``datasets/lesions3d/sample_{0..3}.png``: 3D cases 0-3 of seed 0 (the default ``data=lesions3d``) at 2x: rows
  FLAIR, T1ce and labels (red necrosis, blue edema, green enhancing) of three axial slices through the tumour.
* ``datasets/augment_yolo.png``: 8 training samples of ``data.augment=yolo`` (mosaic, zoom 0.5-1.5 and shift 0.1,
  HSV jitter, flip; detloss/data/augment.py) drawn from shapes images at 160 px (seed 0), their boxes on top:
  the first row with the mosaic on, the second with it closed (the last ``close_mosaic`` epochs).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from detloss.data import LESION3D_LABELS, LESION_CLASSES, SHAPE_CLASSES, LesionsDataset, ShapesDataset
from detloss.data.augment import YoloAugment
from detloss.data.lesions3d import generate_case

HERE = Path(__file__).resolve().parent
PALETTE = np.array([[0, 0, 0], [230, 60, 60], [60, 140, 240], [70, 210, 90]], dtype=np.uint8)
ZOOM = 2


def shapes_sample(dataset: ShapesDataset, index: int) -> Image.Image:
    sample = dataset.generate(index)
    image = Image.fromarray((sample["image"] * 255).round().astype(np.uint8))
    image = image.resize((image.width * ZOOM, image.height * ZOOM), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    for box, label in zip(sample["boxes"] * ZOOM, sample["labels"]):
        draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=(255, 255, 0))
        draw.text((box[0] + 1, max(0, box[1] - 11)), SHAPE_CLASSES[label], fill=(255, 255, 0))
    return image.quantize(colors=128)  # a palette keeps the noisy images small


def lesions_sample(dataset: LesionsDataset, index: int) -> Image.Image:
    sample = dataset.generate(index)
    scan = np.repeat((sample["image"] * 255).round().astype(np.uint8)[..., None], 3, axis=-1)
    both = Image.fromarray(np.concatenate([scan, PALETTE[sample["mask"]]], axis=1))
    return both.resize((both.width * ZOOM, both.height * ZOOM), Image.NEAREST).quantize(colors=64)


def lesions3d_sample(index: int) -> Image.Image:
    image, labels = generate_case(np.random.default_rng([0, index]))  # the defaults of data=lesions3d
    depth = np.flatnonzero(labels.reshape(len(labels), -1).any(1))
    slices = np.linspace(depth[0], depth[-1], 5)[1:4].round().astype(int) if len(depth) else [len(labels) // 2] * 3
    rows = []
    for channel in image:
        grey = (np.clip(channel / max(float(np.percentile(channel, 99.5)), 1e-6), 0, 1) * 255).astype(np.uint8)
        rows.append(np.concatenate([np.repeat(grey[z][..., None], 3, -1) for z in slices], 1))
    rows.append(np.concatenate([PALETTE[labels[z]] for z in slices], 1))
    both = Image.fromarray(np.concatenate(rows, 0))
    return both.resize((both.width * ZOOM, both.height * ZOOM), Image.NEAREST).quantize(colors=64)


def augment_preview(count: int = 4, size: int = 160) -> Image.Image:
    """``count`` samples with the mosaic on (top row) and ``count`` with it off, boxes and class names drawn."""
    augment = YoloAugment(size, scale=(0.5, 1.5))
    dataset = ShapesDataset(64, size, split="train", transforms=augment)
    torch.manual_seed(0)
    tiles = []
    for on in (True, False):
        augment.set_mosaic(on)
        for index in range(count):
            image, target = dataset[index]
            tile = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
            tile = tile.resize((size * ZOOM, size * ZOOM), Image.NEAREST)
            draw = ImageDraw.Draw(tile)
            for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
                box = [v * ZOOM for v in box]
                draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=(255, 255, 0))
                draw.text((box[0] + 1, max(0, box[1] - 11)), SHAPE_CLASSES[label], fill=(255, 255, 0))
            tiles.append(tile)
    side, gap = size * ZOOM, 4
    sheet = Image.new("RGB", (count * side + (count - 1) * gap, 2 * side + gap), (255, 255, 255))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % count) * (side + gap), (i // count) * (side + gap)))
    return sheet.quantize(colors=128)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder holding shapes/ and lesions/")
    parser.add_argument("--count", type=int, default=4)
    args = parser.parse_args()
    shapes, lesions = ShapesDataset(args.count, split="val"), LesionsDataset(args.count, split="val")
    assert len(LESION_CLASSES) == len(PALETTE) == len(LESION3D_LABELS)
    samples = [("shapes", shapes, shapes_sample), ("lesions", lesions, lesions_sample)]
    samples.append(("lesions3d", None, lambda _, index: lesions3d_sample(index)))
    for name, dataset, draw in samples:
        (args.out / name).mkdir(parents=True, exist_ok=True)
        for index in range(args.count):
            path = args.out / name / f"sample_{index}.png"
            draw(dataset, index).save(path, optimize=True)
            print(f"{path} ({path.stat().st_size // 1024} kB)")
    path = args.out / "augment_yolo.png"
    augment_preview().save(path, optimize=True)
    print(f"{path} ({path.stat().st_size // 1024} kB)")


if __name__ == "__main__":
    main()
