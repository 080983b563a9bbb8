"""The plan of a 2D segmentation run: the rules of :mod:`detloss.plan.images` under a CPU time budget.

The fingerprints it reads are :mod:`detloss.plan.images`'s, whose docstring states the rules and their sources.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .budget import STARTUP_SECONDS, VALIDATION_SHARE, WIDTHS, PlanTable, largest_fitting
from .cache import kept, machine

if TYPE_CHECKING:
    from .images import ImageFingerprint

__all__ = [
    "ImagePlan",
    "Measure2D",
    "unet_depth",
    "depth_for",
    "image_size_for",
    "class_weights",
    "weights_for_terms",
    "plan_images",
    "cached_image_plan",
    "MAX_IMAGE_SIZE",
    "MAX_DEPTH",
    "MIN_FEATURE",
    "MIN_COMPONENT_PIXELS",
    "RARE_SHARE",
]

MAX_IMAGE_SIZE = 512
MAX_DEPTH = 5
MIN_FEATURE = 8
MIN_SIDE = 64
MIN_COMPONENT_PIXELS = 16
SHRINK = (0.75, 0.5)
BATCHES = (16, 8)
WIDTHS_2D = tuple(w for w in WIDTHS if w >= 16)
"""The 2D U-Net's widths: 32 (nnU-Net's) or 16 channels at full resolution; below that the resolution shrinks."""
BATCH_GAIN = 0.8
"""A larger batch is planned only where its step trains an image in at most this share of the smaller batch's time."""
RARE_SHARE = 0.25
EPOCH_SECONDS = 1.0
"""The fixed cost of an epoch (loaders, metrics, checkpoint) that the budget counts besides its steps."""

Measure2D = Callable[[int, int, int], Mapping[str, float]]
"""``measure(image_size, base_channels, batch_size)`` -> ``{"step_seconds", "eval_seconds"}``: one training step of
that recipe and one evaluation forward of a batch, measured on this machine."""


@dataclass
class ImagePlan(PlanTable):
    """A 2D segmentation recipe: what the data module, the U-Net, the loss and the trainer take from the plan.

    ``class_weights`` (all classes, background first; ``None``: no class is rare) is what the plan proposes;
    ``weighted_terms`` names the loss terms that got them (empty: proposed only). ``given`` names the values the
    configuration fixed; ``candidates`` lists what was measured.
    """

    image_size: int
    depth: int
    base_channels: int
    batch_size: int
    epochs: int | None
    steps: int | None
    budget: str
    class_weights: list[float] | None = None
    weighted_terms: list[str] = field(default_factory=list)
    step_seconds: float | None = None
    eval_seconds: float | None = None
    validation_seconds: float | None = None
    run_seconds: float | None = None
    machine: str = ""
    given: list[str] = field(default_factory=list)
    candidates: list[dict] = field(default_factory=list)

    def rows(self) -> list[tuple[str, str]]:
        """``(name, value)`` rows of the table printed when training starts."""
        mark = lambda key: " (given)" if key in self.given else ""  # noqa: E731
        if self.class_weights is None:
            weights = "none (no rare class)"
        else:
            where = f"on {', '.join(self.weighted_terms)}" if self.weighted_terms else "proposed, not applied"
            weights = " ".join(f"{w:.2f}" for w in self.class_weights) + f" ({where}){mark('class_weights')}"
        rows = [
            ("image size", f"{self.image_size}{mark('image_size')}"),
            ("U-Net depth (poolings)", f"{self.depth}{mark('depth')}"),
            ("channels at full resolution", f"{self.base_channels}{mark('base_channels')}"),
            ("batch", f"{self.batch_size}{mark('batch_size')}"),
            ("epochs", f"{self.epochs}{mark('epochs')}"),
            ("training steps (predicted)", str(self.steps)),
            ("class weights", weights),
            ("budget", self.budget),
            ("machine", self.machine),
        ]
        if self.step_seconds is not None:
            rows.append(("measured step / eval batch (s)", f"{self.step_seconds:.3f} / {self.eval_seconds:.3f}"))
        if self.validation_seconds is not None:
            rows.append(("predicted validation (s)", f"{self.validation_seconds:.1f} per epoch"))
        if self.run_seconds is not None:
            rows.append(("predicted run (min)", f"{self.run_seconds / 60:.1f}"))
        return rows


def unet_depth(size: float) -> int:
    """Poolings of a U-Net on images of side ``size`` while the feature map keeps :data:`MIN_FEATURE` pixels: at
    least 1, at most :data:`MAX_DEPTH`."""
    return int(min(MAX_DEPTH, max(1, math.floor(math.log2(max(size, 1.0) / MIN_FEATURE)))))


def depth_for(size: int) -> int:
    """The poolings of a U-Net that trains on ``size``-pixel squares: :func:`unet_depth`, lowered until
    ``2**depth`` divides ``size`` (a given image size stays as given), at least 1."""
    depth = unet_depth(size)
    while depth > 1 and int(size) % 2**depth:
        depth -= 1
    return depth


def image_size_for(side: float, depth: int | None = None) -> tuple[int, int]:
    """``(image_size, depth)``: ``side`` capped at :data:`MAX_IMAGE_SIZE` and rounded to the nearest multiple of
    ``2**depth`` (``depth``: given, or :func:`unet_depth` of the capped side)."""
    side = min(float(side), MAX_IMAGE_SIZE)
    depth = unet_depth(side) if depth is None else int(depth)
    multiple = 2**depth
    size = max(multiple, int(round(side / multiple)) * multiple)
    if size > MAX_IMAGE_SIZE:
        size = max(multiple, MAX_IMAGE_SIZE // multiple * multiple)
    return size, depth


def _sizes(fingerprint: ImageFingerprint, depth: int | None) -> list[int]:
    """Candidate image sizes, largest first: the rule's size, then 3/4 and 1/2 of it while the smallest class's
    median component keeps :data:`MIN_COMPONENT_PIXELS` pixels and the side :data:`MIN_SIDE`."""
    side = min(fingerprint.median_side, MAX_IMAGE_SIZE)
    sizes = [image_size_for(side, depth)[0]]
    components = [c["component_pixels_median"] for c in fingerprint.classes[1:] if c.get("component_pixels_median")]
    smallest = min(components) if components else math.inf
    for factor in SHRINK:
        size = image_size_for(side * factor, depth)[0]
        if size >= MIN_SIDE and smallest * (size / max(fingerprint.median_side, 1.0)) ** 2 >= MIN_COMPONENT_PIXELS:
            if size not in sizes:
                sizes.append(size)
    return sizes


def class_weights(fingerprint: ImageFingerprint, rare: float = RARE_SHARE) -> list[float] | None:
    """Per-class weights (background first, 1) when the rarest foreground class present holds less than ``rare``
    times the mean foreground pixel share: ``1 / sqrt(share)`` normalised to mean 1 over the foreground classes
    present (an absent class gets 1); ``None`` otherwise, and with fewer than two foreground classes present."""
    shares = [float(c["pixel_share"]) for c in fingerprint.classes[1:]]
    present = [s for s in shares if s > 0]
    if len(present) < 2 or min(present) >= rare * (sum(present) / len(present)):
        return None
    raw = [s**-0.5 for s in present]
    scale = len(raw) / sum(raw)
    weights = iter(w * scale for w in raw)
    return [1.0] + [round(next(weights), 4) if s > 0 else 1.0 for s in shares]


def weights_for_terms(terms: Mapping[str, Any], weights: list[float]) -> dict[str, list[float]]:
    """The class weights each loss term of a composite config (``loss.terms``) takes: terms whose loss has a
    ``class_weights`` option get ``weights`` (or without the background, where ``include_background`` is false);
    the others nothing."""
    import dataclasses

    from hydra.utils import get_class

    taken = {}
    for name, term in terms.items():
        loss = (term or {}).get("loss") or {}
        try:
            options = get_class(loss["_target_"]).function.options_type
        except (KeyError, AttributeError, ImportError, ValueError):
            continue
        fields = {f.name: f for f in dataclasses.fields(options)}
        if "class_weights" not in fields:
            continue
        background = loss.get("include_background", getattr(fields.get("include_background"), "default", True))
        taken[name] = list(weights) if background else list(weights[1:])
    return taken


def plan_images(
    fingerprint: ImageFingerprint,
    measure: Measure2D | None = None,
    *,
    budget_minutes: float = 7.0,
    min_steps: int = 500,
    min_epochs: int = 1,
    num_val_images: int = 0,
    given: Mapping[str, Any] | None = None,
) -> ImagePlan:
    """The plan of a 2D segmentation run on the masks of ``fingerprint`` (its ``num_images`` training images).

    Args:
        measure: times a recipe on this machine (:data:`Measure2D`); ``None`` plans without measuring (the rule's
            size, the widest network, batch 8; epochs left to the configuration).
        budget_minutes: the wall time of the run (on a GPU too: the 2D planner's budget is time).
        min_steps: the fewest training steps a recipe must reach within the budget.
        min_epochs: the fewest passes over the training images a recipe must reach within the budget (with the
            epochs planned).
        num_val_images: the validation images (their forward passes cost time every epoch).
        given: values fixed by the configuration, which the plan keeps: ``image_size``, ``depth``,
            ``base_channels``, ``batch_size``, ``epochs``, ``class_weights``.

    Raises:
        ValueError: a budget that is not positive, ``min_steps`` below 1, or a fingerprint not of masks.
    """
    given = {k: v for k, v in (given or {}).items() if v is not None}
    if fingerprint.kind != "masks":
        raise ValueError(f"plan_images: needs the fingerprint of a masks folder, got one of {fingerprint.kind!r}")
    if not budget_minutes > 0:
        raise ValueError(f"plan.budget_minutes must be positive, got {budget_minutes}")
    if int(min_steps) < 1:
        raise ValueError(f"plan.min_steps must be >= 1, got {min_steps}")
    if int(min_epochs) < 1:
        raise ValueError(f"plan.min_epochs must be >= 1, got {min_epochs}")
    depth = given.get("depth")
    sizes = [int(given["image_size"])] if "image_size" in given else _sizes(fingerprint, depth)
    if "epochs" in given:  # the budget cannot buy steps then: it sets width and batch, never the resolution
        sizes = sizes[:1]
    widths = [int(given["base_channels"])] if "base_channels" in given else list(WIDTHS_2D)
    batches = [int(given["batch_size"])] if "batch_size" in given else list(BATCHES)
    n_train, epochs = max(int(fingerprint.num_images), 1), given.get("epochs")
    if epochs is not None and len(batches) > 1:  # the epochs fix the steps: keep the batches that give min_steps
        batches = [b for b in batches if int(epochs) * math.ceil(n_train / b) >= min_steps] or [min(batches)]
    weights = given.get("class_weights") or class_weights(fingerprint)
    common = dict(class_weights=weights, machine=machine(), given=sorted(given))

    def make(size, width, batch, budget, epochs=None, m=None, val=None, candidates=(), run=None):
        steps = None if epochs is None else int(epochs) * math.ceil(n_train / batch)
        return ImagePlan(
            image_size=size,
            depth=int(depth) if depth is not None else depth_for(size),
            base_channels=width,
            batch_size=batch,
            epochs=epochs,
            steps=steps,
            budget=budget,
            step_seconds=None if m is None else m["step_seconds"],
            eval_seconds=None if m is None else m["eval_seconds"],
            validation_seconds=val,
            run_seconds=run,
            candidates=list(candidates),
            **common,
        )

    if measure is None:
        return make(sizes[0], widths[0], batches[-1], "none (not measured)", epochs)
    budget_s = 60.0 * float(budget_minutes)
    measured: dict[tuple, dict] = {}

    def timed(candidate):
        if candidate not in measured:
            measured[candidate] = dict(measure(*candidate))
        return measured[candidate]

    def epoch_seconds(candidate, m):
        size, width, batch = candidate
        validation = math.ceil(num_val_images / batch) * m["eval_seconds"]
        return math.ceil(n_train / batch) * m["step_seconds"] + validation + EPOCH_SECONDS, validation

    def fits(candidate):
        m = timed(candidate)
        if epochs is not None:
            return STARTUP_SECONDS + int(epochs) * epoch_seconds(candidate, m)[0] <= budget_s
        steps = max(int(min_steps), int(min_epochs) * math.ceil(n_train / candidate[2]))
        return m["step_seconds"] * steps <= budget_s * (1 - VALIDATION_SHARE) - STARTUP_SECONDS

    # the resolution goes last (as nnU-Net shrinks its patch only when nothing else fits): the largest size whose
    # narrowest recipe fits at the smallest batch, and at that size the widest that fits
    small = min(batches)
    for size in sizes:
        ranked = [(size, w, small) for w in sorted(widths)]
        if size == sizes[-1] or fits(ranked[0]):
            chosen = largest_fitting(ranked, fits)
            break
    # a larger batch only where it fits and trains an image in at most BATCH_GAIN of the smaller batch's time (a GPU):
    # where a step's time grows with its batch (a CPU), the smaller batch makes more updates in the same time
    for batch in sorted(b for b in batches if b > small):
        larger = (chosen[0], chosen[1], batch)
        per_image = timed(chosen)["step_seconds"] / chosen[2]
        if fits(larger) and timed(larger)["step_seconds"] / batch <= BATCH_GAIN * per_image:
            chosen = larger
    m = timed(chosen)
    epoch_s, validation = epoch_seconds(chosen, m)
    planned_epochs = int(epochs) if epochs is not None else max(1, int((budget_s - STARTUP_SECONDS) / epoch_s))
    candidates = [
        {"image_size": k[0], "base_channels": k[1], "batch_size": k[2], "step_seconds": round(v["step_seconds"], 4)}
        for k, v in measured.items()
    ]
    least = f"at least {min_steps} steps" + (f" and {min_epochs} epochs" if epochs is None and min_epochs > 1 else "")
    budget = f"{budget_minutes:g} min of this machine, {least}"
    run = STARTUP_SECONDS + planned_epochs * epoch_s
    return make(*chosen, budget, planned_epochs, m, validation, candidates, run)


def cached_image_plan(
    fingerprint: ImageFingerprint,
    measure: Measure2D | None,
    *,
    key: Any = None,
    use_cache: bool = True,
    cache_dir=None,
    rank: int = 0,
    **options,
) -> ImagePlan:
    """:func:`plan_images`, kept as :func:`detloss.plan.budget.cached_plan` keeps a volumetric plan: under the
    fingerprint, this machine, the options and ``key`` (the model, loss and criterion configs); the ranks other than
    0 of a distributed run train rank 0's plan."""
    if measure is None:
        return plan_images(fingerprint, measure, **options)
    ident = ["2d", fingerprint.signature, machine(), options, key]
    return kept(ident, lambda: plan_images(fingerprint, measure, **options), ImagePlan, cache_dir, use_cache, rank)
