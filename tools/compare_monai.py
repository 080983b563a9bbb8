"""detloss's 3D recipe against a MONAI DynUNet recipe on one nnU-Net-layout dataset, for the same wall time.

    python tools/make_volume_datasets.py outputs/data/volumes --datasets mr2_aniso
    python tools/compare_monai.py outputs/data/volumes/mr2_aniso --minutes 12 --seeds 0 1 2
    python tools/compare_monai.py DIR --minutes 3 --only monai --out outputs/compare/mr2.json
    python tools/compare_monai.py DIR --minutes 12 -- plan.budget_minutes=12      # detloss overrides after --

**MONAI** (in this process), written as MONAI's DynUNet tutorials write it: ``monai.networks.nets.DynUNet``
(residual blocks, instance norm, deep supervision over ``deep_supr_num`` = 2 extra heads, loss weights ``0.5 ** i``
normalised to sum 1), kernels and strides from the median spacing by the tutorials' rule (an axis whose spacing is
at most twice the finest is pooled, with 3-wide kernels, while its patch side is at least 8; a coarser axis gets
kernel 1 and no pooling until the pooling of the others catches up), ``DiceCELoss(to_onehot_y=True,
softmax=True)``; dictionary transforms ``LoadImaged`` (the channel files of a case stacked), ``EnsureChannelFirstd``,
``NormalizeIntensityd(nonzero=True, channel_wise=True)``, ``SpatialPadd`` to the patch, ``RandCropByPosNegLabeld``
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

Output: a JSON file (``--out``) with each recipe's curve ``[seconds, dice, {label: dice}]`` per seed, and a Markdown
table: the final Dice of each (mean ± sample std over the seeds), per label, and the time each needs to reach the
other's final Dice (the mean of the seeds that reach it, or "not reached"); ``--plot FILE.png`` draws Dice over time
(matplotlib).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # measure_training.py, when imported from elsewhere
from measure_training import run  # noqa: E402

from detloss.data import NnUNetDataset, cross_validation_split  # noqa: E402

__all__ = [
    "kernels_strides",
    "choose_patch",
    "case_dice",
    "mean_dice",
    "dynunet",
    "fit",
    "train_monai",
    "run_detloss",
    "read_curve",
    "Clock",
    "compare",
    "summarise",
    "plot",
    "main",
]

SPLIT = {"fold": 0, "num_folds": 5, "seed": 12345}


# ------------------------------------------------------------------------------------------------------- metrics


def case_dice(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, num_classes: int) -> list[float]:
    """Dice of labels ``1 … num_classes − 1`` in one case (label maps of the same shape); ``nan`` where a label is
    in neither the prediction nor the target."""
    pred, target = torch.as_tensor(pred), torch.as_tensor(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    out = []
    for k in range(1, num_classes):
        p, t = pred == k, target == k
        total = int(p.sum()) + int(t.sum())
        out.append(math.nan if total == 0 else 2.0 * int((p & t).sum()) / total)
    return out


def mean_dice(per_case: Sequence[Sequence[float]], names: Sequence[str]) -> tuple[float, dict[str, float]]:
    """``(mean, {label: dice})`` from per-case Dice rows: each label's mean over its non-``nan`` cases (labels with
    none left out), then the mean over those labels (``nan`` if none)."""
    table = np.asarray(per_case, dtype=np.float64).reshape(-1, len(names))
    per_label = {}
    for j, name in enumerate(names):
        column = table[:, j][~np.isnan(table[:, j])]
        if column.size:
            per_label[name] = float(column.mean())
    return (float(np.mean(list(per_label.values()))) if per_label else math.nan), per_label


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
    load = [
        LoadImaged(keys=keys, image_only=True),
        EnsureChannelFirstd(keys=keys),
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
    ]
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
        f"{widths}, deep supervision {deep}, {len(train_names)} train / {len(val_names)} val cases, "
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
        "kernels": kernels,
        "strides": strides,
        "filters": widths,
        "spacing": spacing,
        "train_cases": len(train_names),
        "val_cases": len(val_names),
    }


# ------------------------------------------------------------------------------------------------------ detloss


def max_time(seconds: float) -> str:
    """Lightning's ``max_time`` string ``DD:HH:MM:SS`` for ``seconds`` (rounded up to a whole second)."""
    total = int(math.ceil(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{secs:02d}"


class Clock:
    """A baseline's training clock: wall time since :meth:`begin` less the validations that do not count
    (``free_validation``), and the curve ``[seconds since start, dice, {label: dice}]`` of its validations (whose
    times count from ``start``, the job's own start, as detloss's curve does)."""

    def __init__(self, start: float, validate, free_validation: bool = False) -> None:
        self.start, self.validate, self.free_validation = start, validate, bool(free_validation)
        self.curve: list[list] = []
        self.val_seconds = self.free = 0.0
        self.began = time.perf_counter()

    def begin(self) -> None:
        self.began = time.perf_counter()

    def elapsed(self) -> float:
        """Training seconds since :meth:`begin`, validations that do not count left out."""
        return time.perf_counter() - self.began - self.free

    def checkpoint(self) -> None:
        """Validate once and add the point to :attr:`curve`."""
        begun = time.perf_counter()
        dice, scores = self.validate()
        spent = time.perf_counter() - begun
        self.val_seconds += spent
        self.free += spent if self.free_validation else 0.0
        self.curve.append([time.perf_counter() - self.start - self.free, dice, scores])


def read_curve(log: str | Path) -> list[dict]:
    """The validation rows of a run's ``csv/metrics.csv``: ``{"epoch", "step", "dice", "per_label"}`` in file order
    (rows without ``val/dice`` skipped; ``per_label`` from the ``val/dice/<label>`` columns)."""
    rows = []
    with open(log, newline="") as file:
        for row in csv.DictReader(file):
            if not row.get("val/dice"):
                continue
            per_label = {k.split("/", 2)[2]: float(v) for k, v in row.items() if k.startswith("val/dice/") and v}
            epoch = int(float(row["epoch"])) if row.get("epoch") else None
            step = int(float(row["step"])) if row.get("step") else None
            rows.append({"epoch": epoch, "step": step, "dice": float(row["val/dice"]), "per_label": per_label})
    return rows


def run_detloss(
    task: str,
    overrides: Sequence[str],
    seconds: float,
    seed: int,
    out_root: str | Path,
    poll: float = 1.0,
    time_limit: bool = True,
) -> dict:
    """``python -m detloss.train task=<task> <overrides> seed=<seed> ++trainer.max_time=<seconds>`` through
    :func:`measure_training.run` (its run directory under ``out_root/seed<seed>/<task>/``), with the validation
    points of its CSV log timed as they appear (polled every ``poll`` seconds; rows that appear only after the process
    ends get its end time). ``time_limit=False`` leaves ``max_time`` out (``overrides`` then bound the run).

    Returns: ``{"curve": [[seconds, dice, {label: dice}], ...], "seconds", "command", "dir", "metrics",
    "epochs", "steps"}``.
    """
    out_root = Path(out_root) / f"seed{seed}"
    parent = out_root / task
    before = set(parent.iterdir()) if parent.is_dir() else set()
    stop = threading.Event()
    seen: list[tuple[float, dict]] = []
    lock = threading.Lock()
    start = time.perf_counter()

    def watch() -> None:
        while True:
            finished = stop.wait(poll)
            new = [p for p in parent.iterdir() if p not in before] if parent.is_dir() else []
            logs = [p / "csv" / "metrics.csv" for p in new if (p / "csv" / "metrics.csv").is_file()]
            if logs:
                try:
                    rows = read_curve(logs[0])
                except (OSError, ValueError, KeyError):  # a row being written; read it next time
                    rows = []
                with lock:
                    now = time.perf_counter() - start
                    seen.extend((now, row) for row in rows[len(seen) :])
            if finished:
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    command = [f"task={task}", *overrides, f"seed={seed}"]
    command += [f"++trainer.max_time={max_time(seconds)}"] if time_limit else []
    try:
        result = run(task, command[1:], out_root)
    finally:
        stop.set()
        watcher.join()
    end = time.perf_counter() - start
    rows = read_curve(result["dir"] / "csv" / "metrics.csv")
    with lock:
        seen.extend((end, row) for row in rows[len(seen) :])
        curve = [[t, row["dice"], row["per_label"]] for t, row in seen]
    record = result["record"]
    return {
        "curve": curve,
        "seconds": result["seconds"],
        "command": result["command"],
        "dir": str(result["dir"]),
        "metrics": record.get("metrics", {}),
        "epochs": record.get("epochs"),
        "steps": record.get("steps"),
    }


# ------------------------------------------------------------------------------------------------------ summary


def _spread(values: Sequence[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def time_to_reach(curve: Sequence[Sequence], target: float) -> float | None:
    """Seconds of the first point of ``curve`` whose Dice is at least ``target`` (``None``: never)."""
    return next((float(t) for t, dice, *_ in curve if not math.isnan(dice) and dice >= target), None)


def summarise(results: dict[str, dict], title: str = "") -> str:
    """The Markdown table of ``results`` (``{recipe: {seed: run}}``, each run holding a ``curve``): final Dice
    (mean ± sample std over seeds), per label, wall time, and the time to reach the other recipe's mean final Dice
    (mean over the seeds that reach it; "not reached" or "k of n seeds")."""
    recipes = [r for r in results if results[r]]
    finals = {r: [run["curve"][-1][1] for run in results[r].values() if run["curve"]] for r in recipes}
    labels = sorted({k for r in recipes for run in results[r].values() if run["curve"] for k in run["curve"][-1][2]})
    lines = [title] if title else []
    other = {r: next((o for o in recipes if o != r), None) for r in recipes}
    header = ["recipe", "seeds", "final Dice", *labels, "wall time (s)", "points", "time to the other's final Dice"]
    lines += ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    for r in recipes:
        runs = list(results[r].values())
        per_label = [_spread([run["curve"][-1][2].get(k, math.nan) for run in runs if run["curve"]]) for k in labels]
        walls = [run["seconds"] for run in runs]
        wall = f"{statistics.mean(walls):.0f}" + (f" ± {statistics.stdev(walls):.0f}" if len(walls) > 1 else "")
        reach = "–"
        o = other[r]
        if o is not None and finals[o]:
            target = statistics.mean(finals[o])
            times = [time_to_reach(run["curve"], target) for run in runs]
            hit = [t for t in times if t is not None]
            if not hit:
                reach = f"not reached ({target:.3f})"
            else:
                reach = f"{statistics.mean(hit):.0f} s to {target:.3f}"
                if len(hit) < len(times):
                    reach += f" ({len(hit)} of {len(times)} seeds)"
        points = statistics.mean(len(run["curve"]) for run in runs)
        cells = [r, str(len(runs)), _spread(finals[r]), *per_label, wall, f"{points:.0f}", reach]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(
    results: dict[str, dict],
    path: str | Path,
    title: str = "",
    xlabel: str = "minutes from the start of the job",
    ylabel: str = "validation Dice (mean over labels)",
) -> None:
    """Dice over minutes, one line per recipe and seed, saved to ``path`` (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    lowest = 1.0
    for colour, (recipe, runs) in zip(["C0", "C1", "C2"], results.items()):
        for i, one in enumerate(runs.values()):
            t = [p[0] / 60 for p in one["curve"]]
            dice = [p[1] for p in one["curve"]]
            lowest = min([lowest, *dice])
            ax.plot(t, dice, "-o", ms=3, lw=1, color=colour, label=recipe if i == 0 else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(left=0)
    ax.set_ylim(max(0.0, math.floor((lowest - 0.02) * 20) / 20), 1)  # down to the lowest point, in steps of 0.05
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="an nnU-Net raw dataset folder (dataset.json, imagesTr, labelsTr)")
    parser.add_argument("--minutes", type=float, default=12.0, help="training time of each recipe (default 12)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", choices=["monai", "detloss"], default=None)
    parser.add_argument("--out", type=Path, default=None, help="the JSON file (default outputs/compare/<data>.json)")
    parser.add_argument("--runs", type=Path, default=Path("outputs/compare/runs"), help="detloss's run directories")
    parser.add_argument("--plot", type=Path, default=None, help="a PNG of Dice over time")
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


def compare(args, task: str, base: list[str], name: str, baseline, detloss=None) -> int:
    """The side-by-side run of both tools: for each of ``args.seeds``, detloss's ``task`` with the overrides
    ``base`` and the baseline ``name`` (``baseline(seed, seconds)``, a run's record with its ``curve``), each for
    ``args.minutes`` (``args.only``: one side); writes ``args.out`` (JSON) after every run, prints the table and
    draws ``args.plot``. ``detloss(seed, seconds)`` runs detloss's side (default :func:`run_detloss` of ``task``
    and ``base``)."""
    seconds = args.minutes * 60
    out = args.out or Path("outputs/compare") / f"{args.data.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    machine = f"{os.cpu_count()} CPUs, load {load:.1f}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    print(f"machine: {machine}; data: {args.data}; {args.minutes:g} min per run; seeds {args.seeds}", flush=True)
    results: dict[str, dict] = {}
    record = {"data": str(args.data), "minutes": args.minutes, "seeds": args.seeds, "machine": machine}
    record |= {"detloss_overrides": args.overrides, "results": results}
    for seed in args.seeds:
        if args.only in (None, "detloss"):
            if detloss is None:
                r = run_detloss(task, base, seconds, seed, args.runs / args.data.name)
            else:
                r = detloss(seed, seconds)
            results.setdefault("detloss", {})[str(seed)] = r
            print(f"detloss seed {seed}: {r['seconds']:.0f} s, final Dice {r['curve'][-1][1]:.3f}", flush=True)
            out.write_text(json.dumps(record, indent=2))
        if args.only in (None, name):
            results.setdefault(name, {})[str(seed)] = baseline(seed, seconds)
            out.write_text(json.dumps(record, indent=2))
    table = summarise(results, f"{args.data.name}, {args.minutes:g} min of training per run ({machine})")
    record["table"] = table
    out.write_text(json.dumps(record, indent=2))
    print()
    print(table)
    print(f"\nwritten: {out}")
    if args.plot:
        plot(results, args.plot, args.data.name)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
