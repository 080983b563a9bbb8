"""detloss's 3D recipe against a MONAI DynUNet recipe on one nnU-Net-layout dataset, for the same wall time.

    python tools/make_volume_datasets.py outputs/data/volumes --datasets mr2_aniso
    python tools/compare_monai.py outputs/data/volumes/mr2_aniso --minutes 12 --seeds 0 1 2
    python tools/compare_monai.py DIR --minutes 3 --only monai --out outputs/compare/mr2.json
    python tools/compare_monai.py DIR --minutes 12 -- plan.budget_minutes=12      # detloss overrides after --
    python tools/compare_monai.py DIR --seeds 0 1 2 --resume --out docs/benchmarks/data/ct_iso.json   # adds seeds

**MONAI** (in this process), written as MONAI's DynUNet tutorials write it: ``monai.networks.nets.DynUNet``
(residual blocks, instance norm, deep supervision over ``deep_supr_num`` = 2 extra heads, loss weights ``0.5 ** i``
normalised to sum 1), kernels and strides from the median spacing by the tutorials' rule (an axis whose spacing is
at most twice the finest is pooled, with 3-wide kernels, while its patch side is at least 8; a coarser axis gets
kernel 1 and no pooling until the pooling of the others catches up), ``DiceCELoss(to_onehot_y=True,
softmax=True)``; dictionary transforms ``LoadImaged`` (the channel files of a case stacked), ``EnsureChannelFirstd``,
``NormalizeIntensityd(nonzero=True, channel_wise=True)`` or, for a CT dataset (every channel named ``CT``), as
MONAI's DynUNet pipeline normalises its CT tasks from nnU-Net's statistics: clipped to the 0.5 and 99.5 percentiles
of the training cases' foreground voxels and z-scored with their mean and standard deviation
(:func:`ct_statistics`, applied by ``ScaleIntensityRanged``), ``SpatialPadd`` to the patch, ``RandCropByPosNegLabeld``
(pos 1, neg 1) and ``RandFlipd`` along each axis, cached by ``CacheDataset``; validation by
``sliding_window_inference`` (Gaussian weights, overlap 0.5, 2 windows a batch) over whole validation cases; SGD
(momentum 0.99, Nesterov, weight decay 3e-5, learning rate 0.01 decayed polynomially, power 0.9, over the time
budget instead of epochs) as the DynUNet pipeline, or ``--optimizer adam`` (1e-3, cosine over the budget). The
patch is the median case shape, its side of the largest extent in mm halved while the patch holds more than
``--patch-voxels`` voxels, each side then rounded up to a multiple of its axis's total stride; ``--filters`` is the
first level's width (doubled per level, at most 320; MONAI's default is 32, the default here 16 for a CPU). It
validates every ``--val-every`` seconds of training (default a sixth of the budget) and once at the end; its
validations count toward its budget (``--free-validation``: they do not, the strongest baseline).

**detloss**: ``python -m detloss.train task=volumetric data=nnunet data.root=DIR seed=S`` and the overrides after
``--``, with ``++trainer.max_time`` the budget (Lightning's ``Timer``: from the start of fitting, validation
included), through ``tools/measure_training.py``'s :func:`run`; its validation Dice per epoch comes from the run's
CSV log (``csv/metrics.csv``), read while it runs: the time of a point is when its row appeared in the log. No
setting of detloss's is chosen here.

Both budgets count training and validation from the first training step (data loading and planning before it are
not counted, as Lightning's ``max_time``), and both runs stop at the first step past the budget, then validate once.
A point's time is seconds from the start of the job (detloss: the launch of its process, interpreter start and
data loading included; MONAI: the call, imports and caching included).

Dice, as detloss's ``val/dice``: per validation case and foreground label ``2|P ∩ T| / (|P| + |T|)`` of the argmax
prediction, left out where the label is in neither; a label's Dice is its mean over the cases that have one; the
score is the mean over the labels that have one. The validation cases are fold 0 of the same split
(:func:`detloss.data.cross_validation_split`, 5 folds, seed 12345).

Output: a JSON file (``--out``; ``--resume`` keeps the runs it already holds and runs the missing seeds) with each
recipe's curve ``[seconds, dice, {label: dice}]``, machine and date per seed, and a Markdown table: the final Dice
of each (mean ± sample std over the seeds), per label, and the time each needs to reach the other's final Dice (the
mean of the seeds that reach it, or "not reached"); ``--plot FILE.png`` draws Dice over time (matplotlib). The
harness (detloss's side, the clock, the table and the plot) is ``tools/side_by_side.py``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # side_by_side.py, when imported from elsewhere
from side_by_side import Clock, case_dice, compare, mean_dice  # noqa: E402

from detloss.data import NnUNetDataset, cross_validation_split  # noqa: E402

__all__ = ["kernels_strides", "choose_patch", "ct_statistics", "dynunet", "fit", "train_monai", "main"]

SPLIT = {"fold": 0, "num_folds": 5, "seed": 12345}


# ------------------------------------------------------------------------------------------------------- MONAI


def kernels_strides(patch: Sequence[int], spacing: Sequence[float]) -> tuple[list[list[int]], list[list[int]]]:
    """Kernel sizes and strides of each DynUNet level for ``patch`` voxels of ``spacing`` mm (same axis order), by
    the MONAI tutorials' rule (see the module docstring): the first stride is 1, the last kernel 3 on every axis.

    Raises:
        ValueError: a patch side that one of its strides does not divide.
    """
    sizes, spacing = [float(s) for s in patch], [float(s) for s in spacing]
    if len(sizes) != len(spacing) or min(spacing) <= 0 or min(sizes) < 1:
        raise ValueError(f"patch and spacing must be positive and of the same length, got {patch} and {spacing}")
    kernels, strides = [], [[1] * len(sizes)]
    while True:
        finest = min(spacing)
        stride = [2 if s / finest <= 2 and n >= 8 else 1 for s, n in zip(spacing, sizes)]
        if all(s == 1 for s in stride):
            break
        if any(n % s for n, s in zip(sizes, stride)):
            raise ValueError(f"patch {list(patch)}: a side is not divisible by its strides {stride}")
        kernels.append([3 if s / finest <= 2 else 1 for s in spacing])
        strides.append(stride)
        sizes = [n / s for n, s in zip(sizes, stride)]
        spacing = [p * s for p, s in zip(spacing, stride)]
    kernels.append([3] * len(sizes))
    return kernels, strides


def choose_patch(shape: Sequence[int], spacing: Sequence[float], max_voxels: int) -> list[int]:
    """The patch for a median case ``shape`` of ``spacing`` mm: halve the side of the largest extent (mm) while the
    patch holds more than ``max_voxels`` voxels (no side below 8), then round each side up to a multiple of its axis's
    total stride (:func:`kernels_strides`)."""
    patch = [int(s) for s in shape]
    while math.prod(patch) > max_voxels:
        order = sorted(range(len(patch)), key=lambda i: -patch[i] * spacing[i])
        axis = next((i for i in order if patch[i] >= 16), None)
        if axis is None:
            break
        patch[axis] //= 2
    for _ in range(4):  # rounding up may allow one more pooling; settle
        total = [1] * len(patch)
        sizes = list(patch)
        spacing_ = list(spacing)
        while True:  # the strides the rule would take, without the divisibility check
            finest = min(spacing_)
            stride = [2 if s / finest <= 2 and n >= 8 else 1 for s, n in zip(spacing_, sizes)]
            if all(s == 1 for s in stride):
                break
            total = [t * s for t, s in zip(total, stride)]
            sizes = [n / s for n, s in zip(sizes, stride)]
            spacing_ = [p * s for p, s in zip(spacing_, stride)]
        rounded = [int(math.ceil(p / t) * t) for p, t in zip(patch, total)]
        if rounded == patch:
            break
        patch = rounded
    return patch


def ct_statistics(cases: Sequence[dict]) -> tuple[float, float, float, float]:
    """``(low, high, mean, std)`` of the foreground voxels (label > 0) of ``cases`` (``{"image": [one file],
    "label": file}``): the 0.5 and 99.5 percentiles, the mean and the standard deviation, as nnU-Net's CT
    normalisation takes them from its fingerprint.

    Raises:
        ValueError: no case with a foreground voxel.
    """
    import nibabel as nib

    values = []
    for case in cases:
        label = np.asarray(nib.load(case["label"]).dataobj) > 0
        values.append(np.asarray(nib.load(case["image"][0]).dataobj, dtype=np.float64)[label])
    values = np.concatenate(values) if values else np.empty(0)
    if values.size == 0:
        raise ValueError("CT statistics: no training case holds a foreground voxel")
    low, high = np.percentile(values, [0.5, 99.5])
    return float(low), float(high), float(values.mean()), float(max(values.std(), 1e-8))


def _filters(levels: int, base: int) -> list[int]:
    return [min(base * 2**i, 320) for i in range(levels)]


def dynunet(in_channels: int, out_channels: int, kernels, strides, filters: int = 16):
    """``(model, deep, widths)``: the tutorials' ``DynUNet`` (residual blocks, instance norm) for ``kernels`` and
    ``strides`` of :func:`kernels_strides`, ``filters`` wide at the first level (doubled per level, at most 320), with
    ``deep`` = min(2, levels − 2) extra deep-supervision heads."""
    from monai.networks.nets import DynUNet

    widths = _filters(len(strides), int(filters))
    deep = min(2, len(strides) - 2)
    model = DynUNet(
        3, in_channels, out_channels, kernels, strides, strides[1:], filters=widths,
        norm_name="instance", deep_supervision=deep > 0, deep_supr_num=max(deep, 1), res_block=True,
    )  # fmt: skip
    return model, deep, widths


def fit(
    model: torch.nn.Module,
    deep: int,
    loader,
    loss_fn: Callable,
    clock: Clock,
    seconds: float,
    val_every: float,
    optimizer: str = "sgd",
    lr: float | None = None,
    max_steps: int | None = None,
    say: Callable[[str], None] = print,
    name: str = "monai",
) -> int:
    """Train ``model`` on ``loader``'s ``{"image", "label"}`` batches for ``seconds`` of ``clock`` (or ``max_steps``
    steps), the loss ``loss_fn(logits, label)`` summed over the output and its ``deep`` deep-supervision heads with
    weights ``0.5 ** i`` normalised to sum 1; SGD (momentum 0.99, Nesterov, weight decay 3e-5, ``lr`` default 0.01,
    polynomial decay of power 0.9 over the budget) or ``"adam"`` (1e-3, cosine over the budget); a validation
    (:meth:`Clock.checkpoint`) every ``val_every`` seconds of training and one at the end. Returns the steps taken."""
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    weights = [0.5**i for i in range(deep + 1)]
    weights = [w / sum(weights) for w in weights]
    if optimizer == "sgd":
        base_lr = 0.01 if lr is None else float(lr)
        opt = torch.optim.SGD(model.parameters(), lr=base_lr, momentum=0.99, weight_decay=3e-5, nesterov=True)
    else:
        base_lr = 1e-3 if lr is None else float(lr)
        opt = torch.optim.Adam(model.parameters(), lr=base_lr, weight_decay=1e-5)
    step, next_val = 0, val_every
    clock.begin()
    model.train()
    done = False
    while not done:
        for batch in loader:
            elapsed = clock.elapsed()
            fraction = min(elapsed / seconds, 1.0)
            factor = (1 - fraction) ** 0.9 if optimizer == "sgd" else 0.5 * (1 + math.cos(math.pi * fraction))
            for group in opt.param_groups:
                group["lr"] = base_lr * factor
            image, label = batch["image"], batch["label"]
            opt.zero_grad(set_to_none=True)
            out = model(image)
            heads = torch.unbind(out, dim=1) if deep > 0 else (out,)
            loss = sum(w * loss_fn(h, label) for w, h in zip(weights, heads))
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
                say(f"{name}: {seconds_now:.0f} s, step {step}, loss {float(loss):.3f}, val dice {dice_now:.3f}")
                next_val = clock.elapsed() + val_every
    clock.checkpoint()
    end, dice, scores = clock.curve[-1]
    say(f"{name}: {end:.0f} s, step {step} (end), val dice {dice:.3f} {scores}")
    return step


def train_monai(
    root: str | Path,
    seconds: float,
    seed: int = 0,
    val_every: float | None = None,
    patch: Sequence[int] | None = None,
    patch_voxels: int = 64 * 64 * 32,
    filters: int = 16,
    batch_size: int = 2,
    optimizer: str = "sgd",
    lr: float | None = None,
    max_steps: int | None = None,
    free_validation: bool = False,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Train and validate the MONAI recipe (module docstring) on the nnU-Net dataset ``root`` for ``seconds`` of
    training (or ``max_steps`` steps, whichever comes first).

    Args:
        patch: ``(x, y, z)`` voxels (default :func:`choose_patch` of the median shape and ``patch_voxels``).
        val_every: seconds of training between validations (default ``seconds / 6``).
        free_validation: the validations before the last one do not count toward ``seconds`` and are left out of the
            curve's times (which then read as training time plus loading); by default they count, as Lightning's
            ``max_time`` counts detloss's.
        optimizer: ``"sgd"`` or ``"adam"``; ``lr`` its learning rate (default 0.01 and 0.001).

    Returns: ``{"curve": [[seconds, dice, {label: dice}], ...], "steps", "seconds", "validation_seconds",
    "patch", "kernels", "strides", "filters", "spacing", "train_cases", "val_cases"}`` (sizes and spacing
    ``(x, y, z)``).
    """
    start = time.perf_counter()
    say = log or (lambda message: None)
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    if not seconds > 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    from monai.data import CacheDataset, DataLoader
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        EnsureTyped,
        LoadImaged,
        NormalizeIntensityd,
        RandCropByPosNegLabeld,
        RandFlipd,
        ScaleIntensityRanged,
        SpatialPadd,
    )
    from monai.utils import set_determinism

    set_determinism(seed=int(seed))
    data = NnUNetDataset(root, cache=False)
    names = data.class_names[1:]
    num_classes = data.num_classes
    train_names, val_names = cross_validation_split([c.name for c in data.cases], **SPLIT)
    files = {c.name: {"image": [str(p) for p in c.images], "label": str(c.label)} for c in data.cases}
    spacing = [float(s) for s in np.median([c.spacing for c in data.cases], axis=0)[::-1]]  # (x, y, z)
    shape = [int(s) for s in np.median([c.shape for c in data.cases], axis=0)[::-1]]
    patch = [int(p) for p in patch] if patch is not None else choose_patch(shape, spacing, int(patch_voxels))
    kernels, strides = kernels_strides(patch, spacing)
    keys = ["image", "label"]
    ct = [name.upper() == "CT" for name in data.channel_names]
    if ct == [True]:  # a CT dataset: one channel, in Hounsfield units
        low, high, mean, std = ct_statistics([files[n] for n in train_names])
        normalize = ScaleIntensityRanged(
            keys="image", a_min=low, a_max=high, b_min=(low - mean) / std, b_max=(high - mean) / std, clip=True
        )
        norm = f"CT clip [{low:.0f}, {high:.0f}] then (x − {mean:.1f}) / {std:.2f}"
    elif not any(ct):
        normalize, norm = NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True), "z-score (nonzero)"
    else:
        raise ValueError(f"{root}: channels {data.channel_names}: the MONAI recipe normalises one CT channel or MR")
    load = [LoadImaged(keys=keys, image_only=True), EnsureChannelFirstd(keys=keys), normalize]
    train_tf = Compose(
        [
            *load,
            SpatialPadd(keys=keys, spatial_size=patch),
            RandCropByPosNegLabeld(
                keys=keys, label_key="label", spatial_size=patch, pos=1, neg=1, num_samples=1, image_key="image"
            ),
            *[RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in range(3)],
            EnsureTyped(keys=keys, dtype=(torch.float32, torch.long), track_meta=False),
        ]
    )
    val_tf = Compose([*load, EnsureTyped(keys=keys, dtype=(torch.float32, torch.long), track_meta=False)])
    train_ds = CacheDataset([files[n] for n in train_names], train_tf, cache_rate=1.0, num_workers=0, progress=False)
    val_ds = CacheDataset([files[n] for n in val_names], val_tf, cache_rate=1.0, num_workers=0, progress=False)
    generator = torch.Generator().manual_seed(int(seed))
    loader = DataLoader(train_ds, batch_size=int(batch_size), shuffle=True, num_workers=0, generator=generator)
    model, deep, widths = dynunet(data.in_channels, num_classes, kernels, strides, int(filters))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    val_every = float(val_every) if val_every else seconds / 6
    say(
        f"monai: patch {patch} (x y z), spacing {[round(s, 3) for s in spacing]}, strides {strides[1:]}, filters "
        f"{widths}, deep supervision {deep}, {norm}, {len(train_names)} train / {len(val_names)} val cases, "
        f"{time.perf_counter() - start:.0f} s to load"
    )

    def validate() -> tuple[float, dict[str, float]]:
        model.eval()
        rows = []
        with torch.no_grad():
            for item in val_ds:
                image = item["image"][None]
                logits = sliding_window_inference(image, patch, 2, model, overlap=0.5, mode="gaussian")
                rows.append(case_dice(logits.argmax(1)[0], item["label"][0], num_classes))
        model.train()
        return mean_dice(rows, names)

    clock = Clock(start, validate, free_validation)
    step = fit(model, deep, loader, loss_fn, clock, seconds, val_every, optimizer, lr, max_steps, say)
    return {
        "curve": clock.curve,
        "steps": step,
        "seconds": time.perf_counter() - start,
        "validation_seconds": clock.val_seconds,
        "patch": patch,
        "normalisation": norm,
        "kernels": kernels,
        "strides": strides,
        "filters": widths,
        "spacing": spacing,
        "train_cases": len(train_names),
        "val_cases": len(val_names),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="an nnU-Net raw dataset folder (dataset.json, imagesTr, labelsTr)")
    parser.add_argument("--minutes", type=float, default=12.0, help="training time of each recipe (default 12)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", choices=["monai", "detloss"], default=None)
    parser.add_argument("--out", type=Path, default=None, help="the JSON file (default outputs/compare/<data>.json)")
    parser.add_argument("--runs", type=Path, default=Path("outputs/compare/runs"), help="detloss's run directories")
    parser.add_argument("--plot", type=Path, default=None, help="a PNG of Dice over time")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in --out")
    parser.add_argument("--val-every", type=float, default=None, help="MONAI: seconds between validations")
    parser.add_argument("--free-validation", action="store_true", help="MONAI: its validations do not count")
    parser.add_argument("--patch", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"), help="MONAI's patch")
    parser.add_argument("--patch-voxels", type=int, default=64 * 64 * 32, help="MONAI: largest automatic patch")
    parser.add_argument("--filters", type=int, default=16, help="MONAI: width of the first level")
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd", help="MONAI's optimizer")
    parser.add_argument("--lr", type=float, default=None)
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)  # detloss's Hydra overrides follow "--"
    args = parser.parse_args(argv[:cut])
    args.overrides = argv[cut + 1 :]
    if not (args.data / "dataset.json").is_file():
        parser.error(f"data: {args.data / 'dataset.json'} not found")
    if not args.minutes > 0:
        parser.error(f"--minutes must be positive, got {args.minutes}")
    base = ["data=nnunet", f"data.root={args.data.resolve()}", *args.overrides]

    def baseline(seed: int, seconds: float) -> dict:
        return train_monai(
            args.data, seconds, seed, args.val_every, args.patch, args.patch_voxels, args.filters,
            optimizer=args.optimizer, lr=args.lr, free_validation=args.free_validation,
        )  # fmt: skip

    return compare(args, "volumetric", base, "monai", baseline)


if __name__ == "__main__":
    sys.exit(main())
