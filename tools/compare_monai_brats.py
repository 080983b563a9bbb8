"""detloss's BraTS region recipe against a MONAI DynUNet region recipe on one Decathlon folder, for the same training
time, on the same CPU.

    python tools/compare_monai_brats.py --minutes 10 --seeds 0 1 2          # the embedded BraTS-like default data
    python tools/compare_monai_brats.py DIR/Task01_BrainTumour --minutes 60 --seeds 0
    python tools/compare_monai_brats.py DIR --minutes 10 --only monai --loss dicece
    python tools/compare_monai_brats.py DIR --minutes 10 -- plan.budget_minutes=10   # detloss overrides after --

**Data**: a Decathlon task folder (``dataset.json`` v1, 4D images ``(x, y, z, C)``, labels 1 edema, 2 non-enhancing
tumour, 3 enhancing tumour), or without ``DIR`` the embedded BraTS-like data that ``task=brats`` trains by default
(``data=brats``, generated once). Both recipes train the same regions (``--regions``, a JSON object; default the
BraTS ``whole_tumor`` [1, 2, 3], ``tumor_core`` [2, 3], ``enhancing_tumor`` [3]) on fold 0 of the same split
(:func:`detloss.data.cross_validation_split`, 5 folds, seed 12345) and are scored on its validation cases.

**detloss**: ``python -m detloss.train task=brats`` (its planned default; on a folder ``data=msd data.root=DIR
data.regions=...``) and the overrides after ``--``, through ``tools/side_by_side.py``'s :func:`run_detloss`; its
validation Dice per epoch from the run's CSV log. No setting of detloss's is chosen here. A callback of this tool
(:class:`TrainingClock`, added as ``+callbacks.compare_clock``) records when each validation ends and how long the
validations took, and stops the training once its training time reaches the budget.

**MONAI** (in this process), as MONAI's BraTS and DynUNet tutorials write it: ``LoadImaged`` (a 4D image becomes
channel-first by ``EnsureChannelFirstd``), the label turned into one channel per region by :class:`RegionChannelsd`
(``ConvertToMultiChannelBasedOnBratsClassesd`` does this for the BraTS 2018 labels 1, 2, 4; the Decathlon's are
1, 2, 3), ``NormalizeIntensityd(nonzero=True, channel_wise=True)``, ``SpatialPadd`` to the patch,
``RandCropByPosNegLabeld`` (pos 1, neg 1; ``--crop random``: ``RandSpatialCropd``), ``RandFlipd`` along each axis,
``RandScaleIntensityd(0.1)`` and ``RandShiftIntensityd(0.1)`` (probability 1, as the BraTS tutorial), cached by
``CacheDataset``; ``DynUNet`` with deep supervision, kernels, strides, patch, optimizer and learning-rate schedule
as in ``tools/compare_monai.py`` (:func:`compare_monai.dynunet`, :func:`compare_monai.fit`), one sigmoid output per
region; ``DiceFocalLoss(sigmoid=True)`` (``--loss dicece``: ``DiceCELoss(sigmoid=True)``, whose cross-entropy term
in MONAI 1.6 is a softmax over the region channels, not a per-region BCE, for more than one channel); validation by
``sliding_window_inference`` (Gaussian, overlap 0.5), a region predicted where its logit is above 0.

**Time**, counted the same way for both: the budget (``--minutes``) is training time, validations left out, from the
first training step; a point's time is seconds from the start of the job (detloss: the launch of its process;
MONAI: the call, imports and caching included) less the validations before it. Both validate at intervals of their
own (detloss after each planned epoch, MONAI every ``--val-every`` seconds of training) and once at the end.

**Dice** as detloss's ``val/dice`` with regions: per validation case and region ``2|P ∩ T| / (|P| + |T|)``, left
out where the case's target lacks the region (MONAI's ``DiceMetric(ignore_empty=True)``); a region's Dice is its
mean over the cases, the score the mean over the regions.

Output: the JSON of ``tools/side_by_side.py``'s :func:`compare` (``--out``), a CSV of every validation point
(``--csv``: recipe, seed, seconds, mean Dice, one column per region), a plot of Dice over time (``--plot``), and the
Markdown table with the time each recipe needs to reach the other's final mean region Dice; the ratio of detloss's
time to MONAI's final Dice to MONAI's own time is printed last.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from monai.transforms import MapTransform

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
from compare_monai import choose_patch, dynunet, fit, kernels_strides  # noqa: E402
from side_by_side import Clock, compare, mean_dice, plot, run_detloss, time_to_reach  # noqa: E402

from detloss.data import cross_validation_split  # noqa: E402

__all__ = [
    "BRATS_REGIONS",
    "region_case_dice",
    "RegionChannelsd",
    "TrainingClock",
    "train_monai_regions",
    "run_detloss_clocked",
    "write_csv",
    "reach_ratio",
    "main",
]

BRATS_REGIONS = {"whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3]}
SPLIT = {"fold": 0, "num_folds": 5, "seed": 12345}


def region_case_dice(pred: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Dice of each region in one case: ``pred`` and ``target`` ``(R, *spatial)`` masks; ``nan`` where the target
    lacks the region (left out of its mean, as ``DiceMetric(ignore_empty=True)``)."""
    pred, target = torch.as_tensor(pred).bool(), torch.as_tensor(target).bool()
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    out = []
    for p, t in zip(pred, target):
        found, truth = int(p.sum()), int(t.sum())
        out.append(math.nan if truth == 0 else 2.0 * int((p & t).sum()) / (found + truth))
    return out


class RegionChannelsd(MapTransform):
    """A channel-first label map ``(1, *spatial)`` (as ``EnsureChannelFirstd`` gives it) -> one channel per region
    ``(R, *spatial)``, 1 where the label is one of the region's values: MONAI's
    ``ConvertToMultiChannelBasedOnBratsClassesd`` for any regions."""

    def __init__(self, keys, regions: Mapping[str, Sequence[int]]) -> None:
        super().__init__(keys)
        self.regions = [torch.as_tensor([int(v) for v in values]) for values in regions.values()]

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            label = torch.as_tensor(d[key])
            if label.ndim < 2 or label.shape[0] != 1:
                raise ValueError(f"{key}: a label map with one channel first, got shape {tuple(label.shape)}")
            d[key] = torch.stack([torch.isin(label[0], values).float() for values in self.regions])
        return d


class TrainingClock(L.Callback):
    """Added to detloss's run by this tool: appends ``{"unix", "validation_seconds"}`` to ``path`` (JSON lines) at
    the end of each validation (the wall time, and the seconds of every validation so far), and stops the training at
    the first batch after ``budget_seconds`` of training with the validations left out, counted from the first
    training step (``None``: no budget)."""

    def __init__(self, path: str, budget_seconds: float | None = None) -> None:
        self.path, self.budget = Path(path), None if budget_seconds is None else float(budget_seconds)
        self.validation_seconds, self.in_training = 0.0, 0.0  # all validations; those since the training began
        self.began = self.val_began = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.began, self.in_training = time.perf_counter(), 0.0

    def on_validation_start(self, trainer, pl_module) -> None:
        self.val_began = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        spent = time.perf_counter() - self.val_began
        self.validation_seconds += spent
        if self.began is not None:
            self.in_training += spent
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        with self.path.open("a") as file:
            file.write(json.dumps({"unix": time.time(), "validation_seconds": self.validation_seconds}) + "\n")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.budget is not None and time.perf_counter() - self.began - self.in_training >= self.budget:
            trainer.should_stop = True


def run_detloss_clocked(
    task: str, overrides: Sequence[str], seconds: float, seed: int, out_root: str | Path, poll: float = 1.0
) -> dict:
    """detloss's run (:func:`side_by_side.run_detloss` without ``max_time``) bounded by :class:`TrainingClock`'s
    budget of ``seconds``; its curve's times are then the seconds from the launch to the end of each validation,
    less the validations until then."""
    clock = Path(out_root).resolve() / f"seed{seed}" / f"clock-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    clock.parent.mkdir(parents=True, exist_ok=True)
    clock.unlink(missing_ok=True)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(TOOLS), *filter(None, [os.environ.get("PYTHONPATH")])])
    callback = ["+callbacks.compare_clock._target_=compare_monai_brats.TrainingClock"]
    callback += [f"+callbacks.compare_clock.path={clock}", f"+callbacks.compare_clock.budget_seconds={seconds}"]
    launched = time.time()
    result = run_detloss(task, [*overrides, *callback], seconds, seed, out_root, poll, time_limit=False)
    ticks = [json.loads(line) for line in clock.read_text().splitlines() if line.strip()] if clock.is_file() else []
    if len(ticks) != len(result["curve"]):
        print(f"detloss: {len(ticks)} validations clocked, {len(result['curve'])} in the log; paired in order")
    for point, tick in zip(result["curve"], ticks):
        point[0] = tick["unix"] - launched - tick["validation_seconds"]
    result["validation_seconds"] = ticks[-1]["validation_seconds"] if ticks else math.nan
    result["clock"] = str(clock)
    return result


def train_monai_regions(
    root: str | Path,
    seconds: float,
    seed: int = 0,
    regions: Mapping[str, Sequence[int]] | None = None,
    val_every: float | None = None,
    patch: Sequence[int] | None = None,
    patch_voxels: int = 64 * 64 * 32,
    filters: int = 16,
    batch_size: int = 2,
    optimizer: str = "sgd",
    lr: float | None = None,
    loss: str = "dicefocal",
    crop: str = "posneg",
    max_steps: int | None = None,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Train and validate the MONAI region recipe (module docstring) on the Decathlon folder ``root`` for ``seconds``
    of training, validations left out (or ``max_steps`` steps).

    Returns: the record of :func:`compare_monai.train_monai` (``curve`` ``[[seconds, dice, {region: dice}], ...]``,
    ``steps``, ``seconds``, ``validation_seconds``, ``patch``, ``kernels``, ``strides``, ``filters``, ``spacing``,
    ``train_cases``, ``val_cases``) and ``loss``, ``crop``, ``regions``.
    """
    start = time.perf_counter()
    say = log or (lambda message: None)
    if loss not in ("dicefocal", "dicece") or crop not in ("posneg", "random"):
        raise ValueError(f"loss must be 'dicefocal' or 'dicece' and crop 'posneg' or 'random', got {loss!r}, {crop!r}")
    if not seconds > 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    from monai.data import CacheDataset, DataLoader
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss, DiceFocalLoss
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        EnsureTyped,
        LoadImaged,
        NormalizeIntensityd,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        RandSpatialCropd,
        SpatialPadd,
    )
    from monai.utils import set_determinism

    from detloss.data.msd import MSDDataset
    from detloss.data.regions import parse_regions, region_names

    regions = parse_regions(dict(BRATS_REGIONS if regions is None else regions), "--regions")
    set_determinism(seed=int(seed))
    data = MSDDataset(root, cache=False)
    unknown = sorted({v for values in regions.values() for v in values} - set(range(1, data.num_classes)))
    if unknown:
        raise ValueError(f"--regions: label values {unknown} are not labels of {Path(root) / 'dataset.json'}")
    names = region_names(list(regions))
    train_names, val_names = cross_validation_split([c.name for c in data.cases], **SPLIT)
    files = {c.name: {"image": str(c.images[0]), "label": str(c.label)} for c in data.cases}
    spacing = [float(s) for s in np.median([c.spacing for c in data.cases], axis=0)[::-1]]  # (x, y, z)
    shape = [int(s) for s in np.median([c.shape for c in data.cases], axis=0)[::-1]]
    patch = [int(p) for p in patch] if patch is not None else choose_patch(shape, spacing, int(patch_voxels))
    kernels, strides = kernels_strides(patch, spacing)
    keys = ["image", "label"]
    load = [
        LoadImaged(keys=keys, image_only=True),
        EnsureChannelFirstd(keys=keys),
        RegionChannelsd(keys="label", regions=regions),
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
    ]
    cut = (
        RandCropByPosNegLabeld(keys, "label", patch, pos=1, neg=1, num_samples=1, image_key="image")
        if crop == "posneg"
        else RandSpatialCropd(keys, patch, random_size=False)
    )
    typed = EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False)
    train_tf = Compose(
        [
            *load,
            SpatialPadd(keys=keys, spatial_size=patch),
            cut,
            *[RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in range(3)],
            RandScaleIntensityd(keys="image", factors=0.1, prob=1.0),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=1.0),
            typed,
        ]
    )
    train_ds = CacheDataset([files[n] for n in train_names], train_tf, cache_rate=1.0, num_workers=0, progress=False)
    val_ds = CacheDataset([files[n] for n in val_names], Compose([*load, typed]), 1.0, num_workers=0, progress=False)
    generator = torch.Generator().manual_seed(int(seed))
    loader = DataLoader(train_ds, batch_size=int(batch_size), shuffle=True, num_workers=0, generator=generator)
    model, deep, widths = dynunet(data.in_channels, len(regions), kernels, strides, int(filters))
    loss_fn = DiceFocalLoss(sigmoid=True) if loss == "dicefocal" else DiceCELoss(sigmoid=True)
    val_every = float(val_every) if val_every else seconds / 6
    say(
        f"monai: regions {dict(regions)}, patch {patch} (x y z), spacing {[round(s, 3) for s in spacing]}, strides "
        f"{strides[1:]}, filters {widths}, deep supervision {deep}, {loss}, {crop} crops, {len(train_names)} train / "
        f"{len(val_names)} val cases, {time.perf_counter() - start:.0f} s to load"
    )

    def validate() -> tuple[float, dict[str, float]]:
        model.eval()
        rows = []
        with torch.no_grad():
            for item in val_ds:
                logits = sliding_window_inference(item["image"][None], patch, 2, model, overlap=0.5, mode="gaussian")
                rows.append(region_case_dice(logits[0] > 0, item["label"] > 0.5))
        model.train()
        return mean_dice(rows, names)

    clock = Clock(start, validate, free_validation=True)
    step = fit(model, deep, loader, loss_fn, clock, seconds, val_every, optimizer, lr, max_steps, say)
    return {
        "curve": clock.curve,
        "steps": step,
        "seconds": time.perf_counter() - start,
        "validation_seconds": clock.val_seconds,
        "patch": patch,
        "kernels": kernels,
        "strides": strides,
        "filters": widths,
        "spacing": spacing,
        "train_cases": len(train_names),
        "val_cases": len(val_names),
        "loss": loss,
        "crop": crop,
        "regions": {k: list(v) for k, v in regions.items()},
    }


def write_csv(results: Mapping[str, Mapping[str, dict]], path: str | Path) -> None:
    """Every validation point of ``results`` (``{recipe: {seed: run}}``): ``recipe, seed, seconds, dice`` and one
    column per region."""
    regions = sorted(
        {k for runs in results.values() for run in runs.values() for _, _, per in run["curve"] for k in per}
    )
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["recipe", "seed", "seconds", "dice", *regions])
        for recipe, runs in results.items():
            for seed, run in runs.items():
                for seconds, dice, per in run["curve"]:
                    cells = [per.get(k, "") for k in regions]
                    writer.writerow([recipe, seed, f"{seconds:.1f}", f"{dice:.4f}", *cells])


def reach_ratio(results: Mapping[str, Mapping[str, dict]], ours: str = "detloss", theirs: str = "monai") -> str:
    """A line: the mean over seeds of ``ours``'s time to ``theirs``'s final Dice, as a multiple of the time of
    ``theirs``'s final point (the issue's goal: at most 0.7)."""
    a, b = results.get(ours, {}), results.get(theirs, {})
    ratios = []
    for seed in sorted(set(a) & set(b)):
        final_time, final = b[seed]["curve"][-1][:2]
        reached = time_to_reach(a[seed]["curve"], final)
        ratios.append(math.nan if reached is None else reached / final_time)
    if not ratios:
        return f"{ours} / {theirs}: no seed with both runs"
    shown = ", ".join("not reached" if math.isnan(r) else f"{r:.2f}" for r in ratios)
    return f"time for {ours} to reach {theirs}'s final Dice, as a multiple of {theirs}'s time, per seed: {shown}"


def _hydra_regions(regions: Mapping[str, Sequence[int]]) -> str:
    inner = ",".join(f"{name}:[{','.join(str(int(v)) for v in values)}]" for name, values in regions.items())
    return f"data.regions={{{inner}}}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, nargs="?", default=None, help="a Decathlon folder (default: data=brats's)")
    parser.add_argument("--minutes", type=float, default=10.0, help="training time of each recipe (default 10)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", choices=["monai", "detloss"], default=None)
    parser.add_argument("--regions", type=json.loads, default=BRATS_REGIONS, help="JSON {name: [label values]}")
    parser.add_argument("--out", type=Path, default=None, help="the JSON file (default outputs/compare/<data>.json)")
    parser.add_argument("--csv", type=Path, default=None, help="the points (default: --out with .csv)")
    parser.add_argument("--plot", type=Path, default=None, help="Dice over time (default: --out with .png)")
    parser.add_argument("--runs", type=Path, default=Path("outputs/compare/runs"), help="detloss's run directories")
    parser.add_argument("--val-every", type=float, default=None, help="MONAI: seconds between validations")
    parser.add_argument("--patch", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"), help="MONAI's patch")
    parser.add_argument("--patch-voxels", type=int, default=64 * 64 * 32, help="MONAI: largest automatic patch")
    parser.add_argument("--filters", type=int, default=16, help="MONAI: width of the first level")
    parser.add_argument("--batch-size", type=int, default=2, help="MONAI's batch")
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd", help="MONAI's optimizer")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--loss", choices=["dicefocal", "dicece"], default="dicefocal", help="MONAI's loss")
    parser.add_argument("--crop", choices=["posneg", "random"], default="posneg", help="MONAI's patch sampling")
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    args.overrides = argv[cut + 1 :]
    if not args.minutes > 0:
        parser.error(f"--minutes must be positive, got {args.minutes}")
    if not isinstance(args.regions, dict) or not all(re.fullmatch(r"[A-Za-z0-9_]+", str(k)) for k in args.regions):
        parser.error(f"--regions must be a JSON object whose names are letters, digits and _, got {args.regions!r}")
    if args.data is None:  # the folder task=brats trains by default, generated once
        from hydra import compose, initialize_config_dir
        from hydra.utils import instantiate

        from detloss.config import CONFIG_DIR

        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", ["task=brats", *[o for o in args.overrides if o.startswith("data.")]])
        args.data = Path(instantiate(cfg.data).source.root)
        title = f"task=brats default data ({args.data.name})"
        base = [] if args.regions == BRATS_REGIONS else [_hydra_regions(args.regions)]  # both train the same regions
    else:
        if not (args.data / "dataset.json").is_file():
            parser.error(f"data: {args.data / 'dataset.json'} not found")
        base = ["data=msd", f"data.root={args.data.resolve()}", _hydra_regions(args.regions)]
        title = args.data.name
    base += args.overrides
    args.out = args.out or Path("outputs/compare") / f"{args.data.name}.json"
    drawing, args.plot = args.plot or args.out.with_suffix(".png"), None  # drawn below, with the regions' axis names

    def baseline(seed: int, seconds: float) -> dict:
        return train_monai_regions(
            args.data, seconds, seed, args.regions, args.val_every, args.patch, args.patch_voxels, args.filters,
            args.batch_size, args.optimizer, args.lr, args.loss, args.crop,
        )  # fmt: skip

    def detloss(seed: int, seconds: float) -> dict:
        return run_detloss_clocked("brats", base, seconds, seed, args.runs / args.data.name)

    status = compare(args, "brats", base, "monai", baseline, detloss)
    results = json.loads(args.out.read_text())["results"]
    write_csv(results, args.csv or args.out.with_suffix(".csv"))
    print(f"points: {args.csv or args.out.with_suffix('.csv')}")
    xlabel, ylabel = "minutes of the job, validations left out", "validation Dice (mean over regions)"
    plot(results, drawing, title, xlabel, ylabel)
    print(f"plot: {drawing}")
    print(reach_ratio(results))
    return status


if __name__ == "__main__":
    sys.exit(main())
