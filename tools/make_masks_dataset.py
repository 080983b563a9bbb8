"""Write a many-class 2D segmentation dataset in the ``masks`` format, as a user's own data would come.

    python tools/make_masks_dataset.py outputs/data/shapes10            # 1,500 train / 300 val, 160 px, 10 classes
    python -m detloss.train task=segmentation data=masks data.root=outputs/data/shapes10 data.num_classes=11 \
        data.image_size=160

The folder gets ``images/{train,val}/<n>.png`` (RGB), ``masks/{train,val}/<n>.png`` (mode ``L``: 0 background,
1..10 the classes below) and ``classes.txt`` (one name a line, background first). It is what
docs/benchmarks/segmentation_2d.md measures on.

The pictures are those of the embedded ``shapes`` detection data (``detloss.data.shapes``: a random background
with a gradient, clutter of blurred blobs and thin lines, a colour that stands out from what it covers, Gaussian
noise); the objects are ten filled shapes of 16 to 48 px (the side of the unrotated shape, log-uniform), 1 to 6
per image (none with probability 0.1), each hiding at most 30 % of the earlier ones. The mask of a pixel is the
class of the shape drawn last on it. Every image is drawn from ``numpy.random.default_rng([seed, split, index])``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from detloss.data import ShapesDataset
from detloss.data.base import SPLITS, to_uint8
from detloss.data.shapes import _random_colour, _shape_mask

CLASSES = [
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "pentagon",
    "hexagon",
    "star4",  # a four-pointed star
    "ellipse",  # axes 1 : 0.5
    "ring",  # an annulus, the inner radius half the outer
]
_OWN = {"circle", "square", "triangle", "star", "cross"}  # drawn by detloss.data.shapes itself
_MAX_COVERED = 0.3
_MIN_CONTRAST = 0.3


def _star(cx, cy, radius, inner, points, angle):
    return [
        (cx + r * math.cos(t), cy + r * math.sin(t))
        for k in range(2 * points)
        for r, t in [((radius if k % 2 == 0 else radius * inner), angle + k * math.pi / points)]
    ]


def shape_mask(kind: str, cx: float, cy: float, size: float, angle: float, canvas: int) -> np.ndarray:
    """Filled pixels ``(canvas, canvas)`` bool of one shape of ``size`` centred on ``(cx, cy)``."""
    if kind in _OWN:
        return _shape_mask(kind, cx, cy, size, angle, 0, canvas)
    img = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(img)
    r = size / 2
    if kind in ("pentagon", "hexagon"):
        n = 5 if kind == "pentagon" else 6
        draw.polygon([(cx + r * math.cos(angle + 2 * math.pi * k / n), cy + r * math.sin(angle + 2 * math.pi * k / n))
                      for k in range(n)], fill=255)  # fmt: skip
    elif kind == "star4":
        draw.polygon(_star(cx, cy, r, 0.4, 4, angle), fill=255)
    elif kind == "ellipse":
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        x, y = r * np.cos(t), 0.5 * r * np.sin(t)
        c, s = math.cos(angle), math.sin(angle)
        draw.polygon(list(zip(cx + c * x - s * y, cy + s * x + c * y)), fill=255)
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        draw.ellipse([cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2], fill=0)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return np.asarray(img) > 0


def generate(painter: ShapesDataset, split: str, index: int, seed: int, sizes: tuple[float, float], most: int):
    """``image (S, S, 3)`` float32 in [0, 1] and ``mask (S, S)`` uint8 of one sample."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    s = painter.image_size
    canvas = painter._background(rng)
    painter._draw_clutter(rng, canvas)
    mask = np.zeros((s, s), np.uint8)
    owner = np.full((s, s), -1, np.int32)
    areas: list[int] = []
    count = 0 if rng.random() < 0.1 else int(rng.integers(1, most + 1))
    for _ in range(count):
        label = int(rng.integers(len(CLASSES)))
        for _ in range(20):
            size = math.exp(rng.uniform(math.log(sizes[0]), math.log(sizes[1])))
            reach = size / 2 * 1.05 + 1
            cx, cy = rng.uniform(reach, s - reach, 2)
            pixels = shape_mask(CLASSES[label], cx, cy, size, rng.uniform(0, 2 * math.pi), s)
            if not pixels.any():
                continue
            covered = np.bincount(owner[pixels] + 1, minlength=len(areas) + 1)[1:]
            visible = np.bincount(owner.ravel() + 1, minlength=len(areas) + 1)[1:]
            if any(v - c < (1 - _MAX_COVERED) * a for c, v, a in zip(covered, visible, areas)):
                continue
            colour = _random_colour(rng)
            for _ in range(10):
                if np.percentile(np.linalg.norm(canvas[pixels] - colour, axis=1), 10) >= _MIN_CONTRAST:
                    break
                colour = _random_colour(rng)
            canvas[pixels] = colour
            owner[pixels] = len(areas)
            areas.append(int(pixels.sum()))
            mask[pixels] = label + 1
            break
    canvas += rng.normal(0.0, rng.uniform(0.0, 0.04), canvas.shape).astype(np.float32)
    return np.clip(canvas, 0, 1), mask


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--train", type=int, default=1500)
    parser.add_argument("--val", type=int, default=300)
    parser.add_argument("--size", type=int, default=160, help="image side, px")
    parser.add_argument("--min-size", type=float, default=16.0)
    parser.add_argument("--max-size", type=float, default=48.0)
    parser.add_argument("--max-objects", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    painter = ShapesDataset(1, args.size, args.seed, min_size=args.min_size, max_size=args.max_size)
    for split, count in (("train", args.train), ("val", args.val)):
        for sub in ("images", "masks"):
            (args.root / sub / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image, mask = generate(painter, split, index, args.seed, (args.min_size, args.max_size), args.max_objects)
            Image.fromarray(to_uint8(image)).save(args.root / "images" / split / f"{index:05d}.png")
            Image.fromarray(mask, mode="L").save(args.root / "masks" / split / f"{index:05d}.png")
    (args.root / "classes.txt").write_text("\n".join(["background", *CLASSES]) + "\n")
    print(f"{args.root}: {args.train} train / {args.val} val images, {len(CLASSES)} classes + background")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
