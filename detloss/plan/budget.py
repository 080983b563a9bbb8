"""The plan of a volumetric run: nnU-Net's rules (:mod:`detloss.plan.rules`) under a compute budget.

On a GPU the budget is memory, as in nnU-Net: the network is nnU-Net's (32 channels at full resolution), the patch
shrinks (:func:`~detloss.plan.rules.shrink_patch`) until a measured training step of batch 2 fits ``memory_gib``,
and the batch then grows into the memory left, at most to the patches that cover 5 % of the dataset's voxels
(nnU-Net's cap against overfitting) and at least 2; an epoch is nnU-Net's 250 steps, the number of epochs stays
with the trainer's configuration. Where nnU-Net estimates the memory of a step, detloss measures it.

On a CPU the budget is time, where detloss departs from nnU-Net, which assumes a GPU and 1,000 epochs: a run has
``budget_minutes`` of wall time, and the planner measures the training step and the validation window of its
candidates on this machine (a few steps each, with the real model, criterion and optimizer) and picks the largest
recipe that still trains ``min_steps`` steps within the budget:

1. candidates are nnU-Net's patch and its shrunken versions (down to 32³ voxels' worth), at widths 32, 16 and 8
   channels, batch 2, nnU-Net's smallest: a step's time grows with the batch, so under a time budget a larger
   batch trains fewer steps of the same patch, and the planner spends what there is on the patch and the width;
2. the candidates are ranked by the voxels of a patch times ``width^1.5`` (what a step's time grows with), and a
   binary search over that ranking measures a handful of them to find the largest whose step fits;
3. validation (sliding windows over the validation cases at the target spacing) takes at most a sixth of the
   budget, which sets the number of epochs; the rest, less a fixed start-up allowance, sets the steps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .cache import kept, machine
from .fingerprint import VolumeFingerprint
from .rules import (
    MIN_FEATURE,
    initial_patch,
    normalisation,
    plan_stages,
    shrink_patch,
    target_spacing,
    topology,
)

__all__ = ["MIN_STEPS", "PlanTable", "VolumePlan", "Measure", "plan_volumes", "cached_plan", "largest_fitting"]

T = TypeVar("T")
log = logging.getLogger(__name__)

Measure = Callable[[Sequence[int], int, int], Mapping[str, float]]
"""``measure(patch, base_channels, batch_size)`` -> ``{"step_seconds", "window_seconds", "memory_gib"}``: one
training step of that recipe and one validation window (batch 1), measured on this machine."""

WIDTHS = (32, 16, 8)
BATCH = 2
STARTUP_SECONDS = 20.0
VALIDATION_SHARE = 1 / 6
MAX_EPOCHS = 20
WIDTH_EXPONENT = 1.5
MIN_PATCH_VOXELS = 32**3
MIN_STEPS = 1000
"""The fewest training steps a CPU plan must reach within its budget (``data.plan.min_steps``): on three generated
datasets unlike the embedded one, 1,000 smaller steps in 10 minutes ended level with or above 500 larger ones
(docs/benchmarks/volumetric.md)."""
NNUNET_STEPS = 250
"""nnU-Net's training steps an epoch, the epoch's length of a GPU plan."""
MAX_DATASET_COVERED = 0.05
"""The largest share of the dataset's voxels one batch of a GPU plan may cover (nnU-Net's ``max_dataset_covered``)."""


class PlanTable:
    """What every plan shares: ``to_dict()`` (JSON-ready, what ``plan.json`` and the checkpoints keep) and
    ``table()``, the aligned ``rows()`` a subclass gives, logged when training starts."""

    def rows(self) -> list[tuple[str, str]]:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        width = max(len(name) for name, _ in self.rows())
        return "\n".join(f"  {name:<{width}}  {value}" for name, value in self.rows())


@dataclass
class VolumePlan(PlanTable):
    """A volumetric recipe: what the data module, the model and the trainer take from the plan.

    ``given`` names the values the configuration fixed (the command line wins over the plan); ``candidates`` lists
    what was measured (patch, width, seconds per step, predicted steps).
    """

    spacing: list[float]
    normalization: list[dict]
    patch_size: list[int]
    depth: int
    kernels: list[list[int]]
    pools: list[list[int]]
    base_channels: int
    batch_size: int
    foreground_fraction: float
    patches_per_epoch: int | None
    epochs: int | None
    budget: str
    step_seconds: float | None = None
    window_seconds: float | None = None
    validation_seconds: float | None = None
    machine: str = ""
    given: list[str] = field(default_factory=list)
    candidates: list[dict] = field(default_factory=list)

    def rows(self) -> list[tuple[str, str]]:
        """``(name, value)`` rows of the table printed when training starts."""
        mark = lambda key: " (given)" if key in self.given else ""  # noqa: E731
        rows = [
            ("target spacing (mm, D H W)", " × ".join(f"{s:g}" for s in self.spacing)),
            ("normalisation", ", ".join(_describe_norm(n) for n in self.normalization)),
            ("patch (D H W)", " × ".join(map(str, self.patch_size)) + mark("patch_size")),
            ("poolings", " ".join("×".join(map(str, p)) for p in self.pools) or "none"),
            ("kernels", " ".join("×".join(map(str, k)) for k in self.kernels)),
            ("channels at full resolution", f"{self.base_channels}{mark('base_channels')}"),
            ("batch", f"{self.batch_size}{mark('batch_size')}"),
            ("foreground patches", f"{self.foreground_fraction:.2f}"),
            ("patches per epoch", f"{self.patches_per_epoch}{mark('patches_per_epoch')}"),
            ("epochs", f"{self.epochs}{mark('epochs')}"),
            ("budget", self.budget),
            ("machine", self.machine),
        ]
        if self.step_seconds is not None:
            rows.append(("measured step / window (s)", f"{self.step_seconds:.3f} / {self.window_seconds:.3f}"))
        if self.validation_seconds is not None:
            rows.append(("predicted validation (s)", f"{self.validation_seconds:.1f} per epoch"))
        return rows


def _describe_norm(norm: Mapping[str, Any]) -> str:
    if norm["scheme"] == "ct":
        low, high = norm["clip"]
        return f"CT clip [{low:.4g}, {high:.4g}] then (x − {norm['mean']:.4g}) / {norm['std']:.4g}"
    if norm["scheme"] == "zscore":
        return "z-score" + (" in the non-zero region" if norm.get("nonzero_mask") else "")
    return {"none": "none (as stored)", "rescale_to_0_1": "rescaled to [0, 1]", "rgb_to_0_1": "x / 255"}[norm["scheme"]]


def _voxels(patch: Sequence[int]) -> int:
    return int(np.prod([int(p) for p in patch]))


def _patches(spacing, median_shape, fixed: Sequence[int] | None, depth: int | None = None) -> list[list[int]]:
    """The candidate patches, largest first: nnU-Net's and its shrunken versions down to 32³ voxels' worth; with a
    given ``depth``, rounded for that many poolings and none too small for them."""
    if fixed is not None:
        return [list(fixed)]
    most = None if depth is None else int(depth)
    _, patch, _, _ = topology(spacing, initial_patch(spacing, median_shape), most)
    patches = [patch]
    while _voxels(patches[-1]) > MIN_PATCH_VOXELS:
        smaller = shrink_patch(patches[-1], median_shape, spacing)
        if smaller is None:
            break
        patches.append(topology(spacing, smaller, most)[1])
    if depth is not None:
        patches = [p for p in patches if topology(spacing, p, most)[0] == most] or patches[:1]
    return patches


def _windows(shape: Sequence[int], patch: Sequence[int], overlap: float = 0.5) -> int:
    """Sliding windows over a volume of ``shape`` with ``patch`` windows overlapping by ``overlap``."""
    count = 1
    for size, p in zip(shape, patch):
        step = max(int(p * (1 - overlap)), 1)
        count *= 1 if size <= p else math.ceil((size - p) / step) + 1
    return count


def plan_volumes(
    fingerprint: VolumeFingerprint,
    measure: Measure | None = None,
    *,
    budget_minutes: float | None = 10.0,
    memory_gib: float | None = None,
    min_steps: int = MIN_STEPS,
    num_val_cases: int = 1,
    num_cases: int = 0,
    given: Mapping[str, Any] | None = None,
) -> VolumePlan:
    """The plan of a volumetric run on the data of ``fingerprint``.

    Args:
        measure: times a recipe on this machine (see :data:`Measure`); ``None`` plans without measuring
            (nnU-Net's width and the initial patch; epochs and steps left to the configuration).
        budget_minutes: the wall time of the run on a CPU (the time budget); ``None`` with ``memory_gib`` plans
            for memory (a GPU).
        memory_gib: the memory a training step may take (the GPU budget).
        min_steps: the fewest training steps a CPU recipe must reach within the budget.
        num_val_cases: the validation cases (their sliding windows cost time every epoch).
        num_cases: the cases the first epoch reads and preprocesses (``load_seconds`` of a measurement each).
        given: values fixed by the configuration, which the plan keeps: ``spacing``, ``normalization``,
            ``patch_size``, ``base_channels``, ``batch_size``, ``patches_per_epoch``, ``epochs``,
            ``foreground_fraction``.

    Raises:
        ValueError: a budget that is not positive, or ``min_steps`` below 1.
    """
    given = {k: v for k, v in (given or {}).items() if v is not None}
    if budget_minutes is not None and not budget_minutes > 0:
        raise ValueError(f"data.plan.budget_minutes must be positive, got {budget_minutes}")
    if memory_gib is not None and not memory_gib > 0:
        raise ValueError(f"data.plan.memory_gib must be positive, got {memory_gib}")
    if int(min_steps) < 1:
        raise ValueError(f"data.plan.min_steps must be >= 1, got {min_steps}")
    spacing = [float(s) for s in given.get("spacing") or target_spacing(fingerprint)]
    norm = list(given.get("normalization") or normalisation(fingerprint))
    median_shape = fingerprint.median_shape_at(spacing)
    if max(topology(spacing, median_shape)[0], 0) == 0 and "patch_size" not in given:
        raise ValueError(
            f"data: the median case is {list(median_shape)} voxels at the target spacing {spacing}, too small for "
            "one pooling of a U-Net (8 voxels along an axis); give data.patch_size and model.depth"
        )
    patches = _patches(spacing, median_shape, given.get("patch_size"), given.get("depth"))
    widths = [int(given["base_channels"])] if "base_channels" in given else list(WIDTHS)
    batch = int(given.get("batch_size", BATCH))
    fraction = float(given.get("foreground_fraction", 1 / 3))
    common = dict(spacing=spacing, normalization=norm, foreground_fraction=fraction)
    common |= dict(machine=machine(), given=sorted(given))

    def make(
        patch, width, budget, epochs=None, per_epoch=None, step=None, window=None, candidates=(), val=None, size=batch
    ):
        if "patch_size" in given:  # the given patch stands as given (the model refuses one it cannot take)
            depth = int(given.get("depth") or topology(spacing, patch)[0])
            try:
                kernels, pools = plan_stages(spacing, depth, patch, MIN_FEATURE)
            except ValueError as error:
                raise ValueError(f"data.patch_size {list(patch)}: {error}") from None
        else:
            depth, patch, kernels, pools = topology(spacing, patch, given.get("depth"))
        return VolumePlan(
            patch_size=patch,
            depth=depth,
            kernels=[list(k) for k in kernels],
            pools=[list(p) for p in pools],
            base_channels=width,
            batch_size=size,
            patches_per_epoch=given.get("patches_per_epoch", per_epoch),
            epochs=given.get("epochs", epochs),
            budget=budget,
            step_seconds=step,
            window_seconds=window,
            validation_seconds=val,
            candidates=list(candidates),
            **common,
        )

    if measure is None:
        return make(patches[0], widths[0], "none (not measured)")
    if budget_minutes is None:
        dataset_voxels = float(np.prod(median_shape, dtype=np.float64)) * len(fingerprint.cases)
        batch = batch if "batch_size" in given else None  # None: grown into the memory left
        return _plan_memory(patches, widths, batch, dataset_voxels, measure, memory_gib or 8.0, make)
    budget_s = 60.0 * float(budget_minutes)
    measured: dict[tuple, dict] = {}

    def timed(patch, width):
        key = (tuple(patch), width)
        if key not in measured:
            measured[key] = dict(measure(patch, width, batch))
        return measured[key]

    def startup():  # start-up, and the first epoch's reading of every case
        return STARTUP_SECONDS + num_cases * max((m.get("load_seconds", 0.0) for m in measured.values()), default=0.0)

    def fits(step_seconds):
        return step_seconds * min_steps <= budget_s * (1 - VALIDATION_SHARE) - startup()

    # A step's time grows with a batch's voxels and the width: order the candidates by voxels · width^1.5 and search
    # for the largest whose measured step fits (a handful of measurements for dozens of candidates).
    ranked = sorted(((p, w) for w in widths for p in patches), key=lambda c: _voxels(c[0]) * c[1] ** WIDTH_EXPONENT)
    chosen = largest_fitting(ranked, lambda c: fits(timed(*c)["step_seconds"]))
    m = timed(*chosen)
    window = m["window_seconds"] * _windows(median_shape, topology(spacing, chosen[0])[1]) * num_val_cases
    if "epochs" in given:
        epochs = int(given["epochs"])
    elif "patches_per_epoch" in given:  # the epoch's length is fixed: as many epochs as the budget trains
        epoch_s = int(given["patches_per_epoch"]) / batch * m["step_seconds"] + window
        epochs = max(1, int((budget_s - startup()) / epoch_s))
    else:
        epochs = max(1, min(MAX_EPOCHS, int(budget_s * VALIDATION_SHARE / max(window, 1e-6))))
    steps = max(1, int((budget_s - startup() - epochs * window) / m["step_seconds"]))
    if steps < min_steps:
        log.warning(
            "detloss plan: even the smallest recipe trains only %d of data.plan.min_steps=%d steps within "
            "data.plan.budget_minutes=%g on this machine (validation %.0f s an epoch); give a larger budget or "
            "smaller values",
            steps,
            min_steps,
            budget_minutes,
            window,
        )
    per_epoch = max(batch, steps // epochs * batch)
    candidates = [
        {"patch_size": list(k[0]), "base_channels": k[1], "step_seconds": round(v["step_seconds"], 4)}
        for k, v in measured.items()
    ]
    budget = f"{budget_minutes:g} min of this CPU, at least {min_steps} steps"
    return make(
        chosen[0], chosen[1], budget, epochs, per_epoch, m["step_seconds"], m["window_seconds"], candidates, window
    )


def _plan_memory(patches, widths, batch, dataset_voxels, measure, memory_gib, make) -> VolumePlan:
    """nnU-Net's rule: the widest network and the largest patch whose measured training step of batch 2 (or the
    given ``batch``) fits ``memory_gib``, then (``batch`` None) the batch that fills the memory, capped at 5 % of the
    ``dataset_voxels`` and at least 2; nnU-Net's 250 steps an epoch."""
    width, measured, measured_batch = widths[0], [], batch or BATCH
    for patch in patches:
        m = measure(patch, width, measured_batch)
        measured.append({"patch_size": list(patch), "base_channels": width, "memory_gib": m["memory_gib"]})
        if m["memory_gib"] <= memory_gib:
            break
    else:
        budget = f"{memory_gib:g} GiB (smallest patch; none fits)"
        per_epoch = NNUNET_STEPS * measured_batch
        return make(patches[-1], width, budget, candidates=measured, per_epoch=per_epoch, size=measured_batch)
    if batch is None:  # a step's memory taken as proportional to its batch, as nnU-Net scales its estimate
        fills = math.floor(measured_batch * memory_gib / m["memory_gib"])
        covers = round(MAX_DATASET_COVERED * dataset_voxels / _voxels(patch))
        batch = max(min(fills, covers), BATCH)
    return make(
        patch,
        width,
        f"{memory_gib:g} GiB",
        step=m["step_seconds"],
        window=m["window_seconds"],
        candidates=measured,
        per_epoch=NNUNET_STEPS * batch,
        size=batch,
    )


def cached_plan(
    fingerprint: VolumeFingerprint,
    measure: Measure | None,
    *,
    key: Any = None,
    use_cache: bool = True,
    cache_dir: str | Path | None = None,
    rank: int = 0,
    **options,
) -> VolumePlan:
    """:func:`plan_volumes`, kept in ``cache_dir`` (default ``~/.cache/detloss/plans``) under the fingerprint, this
    machine, the options and ``key`` (what else shapes a measured step: the model, loss and criterion configs), so
    that the same run on the same machine measures once, and every process of a distributed run trains rank 0's
    plan (see :func:`kept`). ``use_cache=False`` measures anew."""
    if measure is None:  # nothing measured: the rules alone, the same in every process
        return plan_volumes(fingerprint, measure, **options)
    ident = [fingerprint.signature, machine(), options, key]
    return kept(ident, lambda: plan_volumes(fingerprint, measure, **options), VolumePlan, cache_dir, use_cache, rank)


def largest_fitting(ranked: Sequence[T], fits: Callable[[T], bool]) -> T:
    """The last candidate of ``ranked`` (cheapest first) for which ``fits`` holds, found by binary search; the
    cheapest when none does.

    ``fits`` is taken to hold up to some point of the ranking and to fail after it (a step's time grows with what the
    ranking orders by), so about ``log2(len(ranked))`` candidates are tried; ``fits`` may measure (it is called once
    per tried candidate). Shared by the volumetric and the 2D planner.
    """
    if not ranked:
        raise ValueError("largest_fitting: no candidates to choose from")
    chosen, low, high = ranked[0], 0, len(ranked) - 1
    while low <= high:
        middle = (low + high) // 2
        if fits(ranked[middle]):
            chosen, low = ranked[middle], middle + 1
        else:
            high = middle - 1
    return chosen
