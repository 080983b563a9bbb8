"""Write a synthetic COCO-format detection dataset (for measurements: ``tools/measure_memory.py``).

    python tools/make_coco.py OUT --train 2000 --val 200 --size 640 --objects 8

``OUT/{train,val}/`` hold JPEG images of ``size × 3/4·size`` px (a plain background with filled rectangles and
ellipses of 5 categories), ``OUT/{train,val}.json`` the instances files, with a polygon ``segmentation`` of
``--polygon-points`` points per object and ``area``/``iscrowd`` as COCO writes them, so that the JSON weighs per
object about what COCO's does (``instances_train2017.json``: 448 MB for 118k images, 860k objects). Train with
``data=coco data.train_images=OUT/train data.train_annotations=OUT/train.json data.val_images=OUT/val
data.val_annotations=OUT/val.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = [{"id": i + 1, "name": n} for i, n in enumerate(("box", "disc", "bar", "block", "blob"))]


def make_split(out: Path, split: str, count: int, size: int, objects: int, points: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size, size * 3 // 4
    images, annotations = [], []
    for i in range(count):
        name = f"{i:06d}.jpg"
        image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(0, objects + 1))):
            w, h = (int(v) for v in rng.integers(12, size // 3, 2))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            cat = int(rng.integers(1, len(CATEGORIES) + 1))
            colour = tuple(int(v) for v in rng.integers(0, 255, 3))
            (draw.ellipse if cat % 2 == 0 else draw.rectangle)([x, y, x + w, y + h], fill=colour)
            angles = np.linspace(0, 2 * math.pi, points, endpoint=False)
            polygon = np.stack([x + w / 2 * (1 + np.cos(angles)), y + h / 2 * (1 + np.sin(angles))], 1)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cat,
                    "bbox": [x, y, w, h],
                    "area": float(w * h),
                    "iscrowd": 0,
                    "segmentation": [np.round(polygon, 2).reshape(-1).tolist()],
                }
            )
        image.save(folder / name, quality=90)
        images.append({"id": i + 1, "file_name": name, "width": width, "height": height})
    file = out / f"{split}.json"
    file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return file


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--objects", type=int, default=14, help="at most this many objects per image (uniform)")
    parser.add_argument("--polygon-points", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for split, count, seed in (("train", args.train, args.seed), ("val", args.val, args.seed + 1)):
        file = make_split(args.out, split, count, args.size, args.objects, args.polygon_points, seed)
        print(f"{file}: {count} images, {file.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
