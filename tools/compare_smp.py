"""detloss's 2D recipe against a segmentation_models_pytorch U-Net on one ``masks`` folder, for the same wall time.

    python tools/make_masks_dataset.py outputs/data/shapes10
    python tools/compare_smp.py outputs/data/shapes10 --minutes 7 --seeds 0 1 2
    python tools/compare_smp.py DIR --minutes 7 --only smp --encoder resnet18
    python tools/compare_smp.py DIR --minutes 7 -- data.image_size=160        # detloss overrides after --

The folder is the ``masks`` format (``detloss.data.masks``): ``images/{train,val}/<stem>.<ext>``,
``masks/{train,val}/<stem>.png`` of class indices (255 ignored), and ``classes.txt`` (one name a line, background
first) or ``--num-classes``.

**smp** (in this process), as a short script with the library would do it: ``segmentation_models_pytorch.Unet``
(``--encoder``, default ``resnet34``, smp's default; ``encoder_weights=None``: nothing is downloaded), RGB images
scaled to [0, 1] and normalised with ImageNet's mean and std, random horizontal flips, each side padded to a
multiple of 32 (image 0, mask 255); loss ``smp.losses.DiceLoss("multiclass")`` + cross-entropy, both ignoring 255;
Adam (``--lr``, default 1e-3) with a cosine decay over the time budget, batch 8 (detloss's ``data=masks`` default).

**detloss**: ``python -m detloss.train task=segmentation data=masks data.root=DIR data.num_classes=N seed=S`` and the
overrides after ``--``, through ``tools/side_by_side.py``'s :func:`run_detloss` (``++trainer.max_time``, its
validation Dice per epoch timed from its CSV log as it appears).

Both budgets count training and validation from the first training step; times are seconds from the start of the
job (see ``tools/compare_monai.py``). smp validates every ``--val-every`` seconds of training (default a sixth of
the budget) and once at the end; ``--free-validation`` as there.

Dice, exactly detloss's 2D ``val/dice_pooled`` (``detloss.tasks.SegmentationTask``), which detloss's curve reads:
torchmetrics' ``DiceScore`` with ``aggregation_level="global"``, ``include_background=False``, ``average="none"``:
per foreground class, ``2 TP / (2 TP + FP + FN)`` over all the pixels of the validation set (a dataset-level Dice,
not a mean over images), ignored pixels set to background in prediction and target; a class in neither the targets
nor the predictions of the whole validation set is left out; the score is the mean over the remaining classes. smp
is scored on the images at their own size; detloss on its own letterboxed ``data.image_size``.

Output as ``tools/compare_monai.py``'s: a JSON file with both curves per seed and the Markdown table.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from side_by_side import Clock, compare, run_detloss  # noqa: E402

__all__ = ["read_split", "num_classes_of", "class_names", "DiceAccumulator", "train_smp", "main"]

IGNORE = 255
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_split(root: str | Path, split: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The RGB images ``(H, W, 3)`` uint8 and masks ``(H, W)`` uint8 of ``root/{images,masks}/<split>``.

    Raises:
        FileNotFoundError: the image folder, or an image's mask, is missing.
        ValueError: an image and its mask differ in size.
    """
    image_dir, mask_dir = Path(root) / "images" / split, Path(root) / "masks" / split
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{image_dir}: no such folder (the masks format: images/{split}, masks/{split})")
    images, masks = [], []
    for path in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS):
        mask_path = mask_dir / f"{path.stem}.png"
        if not mask_path.is_file():
            raise FileNotFoundError(f"{mask_path}: the mask of {path} is missing")
        with Image.open(path) as img, Image.open(mask_path) as msk:
            image, mask = np.asarray(img.convert("RGB")), np.asarray(msk)
        if image.shape[:2] != mask.shape[:2] or mask.ndim != 2:
            raise ValueError(f"{mask_path}: shape {mask.shape} does not match its image {path} {image.shape[:2]}")
        images.append(image)
        masks.append(mask.astype(np.uint8))
    if not images:
        raise FileNotFoundError(f"{image_dir}: no images")
    return images, masks


def num_classes_of(root: str | Path) -> int:
    """Classes (background included) from ``root/classes.txt``.

    Raises:
        FileNotFoundError: ``classes.txt`` is missing (give ``--num-classes``).
    """
    path = Path(root) / "classes.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; give --num-classes")
    return len([line for line in path.read_text().splitlines() if line.strip()])


def class_names(root: str | Path, num_classes: int) -> list[str] | None:
    """The first ``num_classes`` names of ``root/classes.txt`` (background first), or ``None`` if it is missing or
    names fewer (detloss then calls them ``class_<k>``, and so does the smp side)."""
    path = Path(root) / "classes.txt"
    names = [n.strip() for n in path.read_text().splitlines() if n.strip()] if path.is_file() else []
    return names[:num_classes] if len(names) >= num_classes else None


def _pad32(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``image (B, 3, H, W)`` padded with 0 and ``mask (B, H, W)`` with 255 to sides that are multiples of 32."""
    h, w = image.shape[-2:]
    ph, pw = (-h) % 32, (-w) % 32
    if ph or pw:
        image = F.pad(image, (0, pw, 0, ph), value=0.0)
        mask = F.pad(mask, (0, pw, 0, ph), value=IGNORE)
    return image, mask


def _tensors(images: list[np.ndarray], masks: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255)
    return (image - MEAN) / STD, torch.from_numpy(np.stack(masks)).long()


class DiceAccumulator:
    """detloss's 2D ``val/dice_pooled`` (module docstring): torchmetrics' global ``DiceScore`` per foreground class,
    ignored pixels set to background in both, classes that are ``nan`` (absent everywhere) left out of the mean."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE) -> None:
        from torchmetrics.segmentation import DiceScore

        kw = dict(num_classes=num_classes, include_background=False, input_format="index")
        self.metric = DiceScore(average="none", aggregation_level="global", **kw)
        self.ignore_index = ignore_index

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        ignored = target == self.ignore_index
        self.metric.update(pred.masked_fill(ignored, 0), target.masked_fill(ignored, 0))

    def compute(self, names: list[str]) -> tuple[float, dict[str, float]]:
        per_class = self.metric.compute().view(-1)
        self.metric.reset()
        present = ~torch.isnan(per_class)
        mean = float(per_class[present].mean()) if present.any() else math.nan
        return mean, {n: float(v) for n, v, ok in zip(names, per_class, present.tolist()) if ok}


def train_smp(
    root: str | Path,
    seconds: float,
    seed: int = 0,
    num_classes: int | None = None,
    val_every: float | None = None,
    encoder: str = "resnet34",
    batch_size: int = 8,
    lr: float = 1e-3,
    max_steps: int | None = None,
    free_validation: bool = False,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Train and validate the smp recipe (module docstring) on the ``masks`` folder ``root`` for ``seconds`` of
    training (or ``max_steps`` steps); ``val_every`` and ``free_validation`` as :func:`compare_monai.train_monai`'s.

    Returns: ``{"curve": [[seconds, dice, {class: dice}], ...], "steps", "seconds", "validation_seconds", "encoder",
    "params",
    "train_images", "val_images"}``.
    """
    start = time.perf_counter()
    say = log or (lambda message: None)
    if not seconds > 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    import segmentation_models_pytorch as smp

    num_classes = int(num_classes) if num_classes is not None else num_classes_of(root)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background included), got {num_classes}")
    names = (class_names(root, num_classes) or [f"class_{k}" for k in range(num_classes)])[1:]
    torch.manual_seed(int(seed))
    rng = np.random.default_rng(int(seed))
    train_images, train_masks = read_split(root, "train")
    val_images, val_masks = read_split(root, "val")
    for masks, split in ((train_masks, "train"), (val_masks, "val")):
        values = np.unique(np.concatenate([np.unique(m) for m in masks]))
        bad = [int(v) for v in values if v >= num_classes and v != IGNORE]
        if bad:
            raise ValueError(f"{root}/masks/{split}: values {bad} outside 0..{num_classes - 1} and {IGNORE}")
    batch_size = min(int(batch_size), len(train_images))
    model = smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=3, classes=num_classes)
    dice_loss = smp.losses.DiceLoss("multiclass", ignore_index=IGNORE)
    ce_loss = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)
    opt = torch.optim.Adam(model.parameters(), lr=float(lr))
    val_every = float(val_every) if val_every else seconds / 6
    params = sum(p.numel() for p in model.parameters())
    say(
        f"smp: Unet({encoder}), {params / 1e6:.1f} M parameters, {len(train_images)} train / {len(val_images)} val "
        f"images, {num_classes} classes, {time.perf_counter() - start:.0f} s to load"
    )

    def validate() -> tuple[float, dict[str, float]]:
        model.eval()
        dice = DiceAccumulator(num_classes)
        with torch.no_grad():
            for i in range(0, len(val_images), batch_size):
                chunk = range(i, min(i + batch_size, len(val_images)))
                sizes = {val_images[j].shape for j in chunk}
                groups = [[j for j in chunk if val_images[j].shape == s] for s in sizes]
                for group in groups:
                    image, mask = _tensors([val_images[j] for j in group], [val_masks[j] for j in group])
                    h, w = mask.shape[-2:]
                    padded, _ = _pad32(image, mask)
                    pred = model(padded)[..., :h, :w].argmax(1)
                    dice.update(pred, mask)
        model.train()
        return dice.compute(names)

    clock, step, next_val = Clock(start, validate, free_validation), 0, val_every

    clock.begin()
    model.train()
    done = False
    while not done:
        order = rng.permutation(len(train_images))
        for i in range(0, len(order) - batch_size + 1, batch_size):
            elapsed = clock.elapsed()
            for group in opt.param_groups:
                group["lr"] = float(lr) * 0.5 * (1 + math.cos(math.pi * min(elapsed / seconds, 1.0)))
            picks = order[i : i + batch_size]
            size = {train_images[j].shape for j in picks}
            if len(size) > 1:  # images of different sizes: a batch of the first one's size only
                picks = [j for j in picks if train_images[j].shape == train_images[picks[0]].shape]
            image, mask = _tensors([train_images[j] for j in picks], [train_masks[j] for j in picks])
            flip = torch.from_numpy(rng.random(len(picks)) < 0.5)
            image = torch.where(flip[:, None, None, None], image.flip(-1), image)
            mask = torch.where(flip[:, None, None], mask.flip(-1), mask)
            image, mask = _pad32(image, mask)
            opt.zero_grad(set_to_none=True)
            logits = model(image)
            loss = dice_loss(logits, mask) + ce_loss(logits, mask)
            loss.backward()
            opt.step()
            loss = loss.detach()
            step += 1
            elapsed = clock.elapsed()
            if elapsed >= seconds or (max_steps is not None and step >= max_steps):
                done = True
                break
            if elapsed >= next_val:
                clock.checkpoint()
                seconds_now, dice_now = clock.curve[-1][:2]
                say(f"smp: {seconds_now:.0f} s, step {step}, loss {float(loss):.3f}, val dice {dice_now:.3f}")
                next_val = clock.elapsed() + val_every
    clock.checkpoint()
    say(f"smp: {clock.curve[-1][0]:.0f} s, step {step} (end), val dice {clock.curve[-1][1]:.3f}")
    return {
        "curve": clock.curve,
        "steps": step,
        "seconds": time.perf_counter() - start,
        "validation_seconds": clock.val_seconds,
        "encoder": encoder,
        "params": params,
        "train_images": len(train_images),
        "val_images": len(val_images),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="a masks folder (images/{train,val}, masks/{train,val})")
    parser.add_argument("--minutes", type=float, default=7.0, help="training time of each recipe (default 7)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", choices=["smp", "detloss"], default=None)
    parser.add_argument("--num-classes", type=int, default=None, help="background included (default: classes.txt)")
    parser.add_argument("--out", type=Path, default=None, help="the JSON file (default outputs/compare/<data>.json)")
    parser.add_argument("--runs", type=Path, default=Path("outputs/compare/runs"), help="detloss's run directories")
    parser.add_argument("--plot", type=Path, default=None, help="a PNG of Dice over time")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in --out")
    parser.add_argument("--val-every", type=float, default=None, help="smp: seconds between validations")
    parser.add_argument("--free-validation", action="store_true", help="smp: its validations do not count")
    parser.add_argument("--encoder", default="resnet34", help="smp's encoder (default resnet34)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)  # detloss's Hydra overrides follow "--"
    args = parser.parse_args(argv[:cut])
    args.overrides = argv[cut + 1 :]
    if not (args.data / "images").is_dir():
        parser.error(f"data: {args.data / 'images'} not found (the masks format)")
    if not args.minutes > 0:
        parser.error(f"--minutes must be positive, got {args.minutes}")
    try:
        num_classes = args.num_classes or num_classes_of(args.data)
    except FileNotFoundError as err:
        parser.error(str(err))
    base = ["data=masks", f"data.root={args.data.resolve()}", f"data.num_classes={num_classes}"]
    names = class_names(args.data, num_classes)
    if names and not any(o.lstrip("+").startswith("data.class_names=") for o in args.overrides):
        base.append("++data.class_names=[" + ",".join(f"'{n}'" for n in names) + "]")  # the table's names agree
    base += args.overrides

    def baseline(seed: int, seconds: float) -> dict:
        return train_smp(
            args.data, seconds, seed, num_classes, args.val_every, args.encoder, args.batch_size, args.lr,
            free_validation=args.free_validation,
        )  # fmt: skip

    def detloss(seed: int, seconds: float) -> dict:  # the pooled Dice, as smp is scored
        return run_detloss("segmentation", base, seconds, seed, args.runs / args.data.name, metric="val/dice_pooled")

    return compare(args, "segmentation", base, "smp", baseline, detloss)


if __name__ == "__main__":
    sys.exit(main())
