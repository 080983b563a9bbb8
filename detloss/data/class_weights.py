"""Per-class weights for the class terms of a loss, from the training data's class counts.

**Counts** (:func:`count_classes`, which every DataModule's ``class_counts()`` returns), over the training split:

* detection: the objects (boxes) of each class, read from the detection fingerprint
  (:func:`detloss.plan.images.detection_fingerprint`, cached beside the annotations), which the planner owns;
* 2D segmentation: the pixels of each class in the training masks, ``ignore_index`` left out (the masks as
  stored, before any resizing);
* volumes: the voxels of each class in the training cases at the target spacing (the label volumes the patches
  are cut from); with ``regions`` (name → label values), the voxels of each region.

The counts depend on the files (or, for generated data, on its parameters) alone, so every rank of a distributed
run computes the same ones; nothing is exchanged between ranks.

**Weights** (:func:`weights_from_counts`), for ``n_c`` objects or pixels of class ``c``:

* ``inverse_frequency``: ``w_c ∝ 1 / n_c``;
* ``effective_number`` (Cui, Jia, Lin, Song, Belongie, "Class-Balanced Loss Based on Effective Number of Samples",
  CVPR 2019): ``w_c ∝ (1 − β) / (1 − β^n_c)``, the inverse of the effective number of samples
  ``(1 − β^n) / (1 − β)``; ``β = 0`` gives equal weights, ``β → 1`` inverse frequency; the paper tries β in
  {0.9, 0.99, 0.999, 0.9999}.

Both are then normalised so that **the weights average to 1 over the classes the term sees** (the foreground
classes only, for a region loss with ``include_background=False``), which keeps a term's scale and the meaning of
its composite weight. A class with no object or pixel in the training split gets the largest weight of the classes
that have some (it is at least as rare as the rarest of them); a training split with none at all is an error.

Ultralytics (8.4, ``DetectionTrainer.compute_class_weights``, ``cls_pw``) weights its detection BCE by
``(1 / n_c)^cls_pw`` normalised to mean 1 over all classes too; ``inverse_frequency`` is its ``cls_pw=1``.
Where detloss differs: a class without training labels gets the *largest* weight there, the *mean* of the present
classes' weights in Ultralytics; and the weights here apply to every class term (BCE, focal, varifocal, quality
focal, cross-entropy, Dice and its relatives), not to the detection BCE alone.

**In a config**, a loss term takes ``class_weights`` as a list (one value per class it sees), as a method name
(``class_weights: inverse_frequency``), or as ``{method: effective_number, beta: 0.999}``.
:func:`resolve_class_weights` (called by :func:`detloss.train.build` before anything is built from the config)
replaces each name with the list it computes, so the losses only ever see numbers and the resolved config that
run directories and checkpoints keep holds the weights; it logs them once, per class name.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np
from lightning.pytorch.utilities import rank_zero_only

__all__ = [
    "METHODS",
    "DEFAULT_BETA",
    "weights_from_counts",
    "count_classes",
    "resolve_class_weights",
    "terms_with_class_weights",
]

log = logging.getLogger(__name__)

METHODS = ("inverse_frequency", "effective_number")
DEFAULT_BETA = 0.9999
"""β of ``effective_number`` when the config names none (the largest value Cui et al. report, CVPR 2019)."""


# --------------------------------------------------------------------------------------------------------------
# counts → weights


def weights_from_counts(
    counts: Sequence[float], method: str = "inverse_frequency", beta: float = DEFAULT_BETA
) -> list[float]:
    """One weight per class from its count (see the module docstring), averaging 1 over the classes.

    Raises:
        ValueError: an unknown ``method`` (naming the options), ``beta`` outside [0, 1), counts that are empty,
            negative or not finite, or all zero.
    """
    if method not in METHODS:
        raise ValueError(f"class_weights: unknown method {method!r}; the options are {', '.join(METHODS)} or a list")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 1:
        raise ValueError(f"class_weights: beta of effective_number must be a number in [0, 1), got {beta!r}")
    n = np.asarray(counts, dtype=np.float64)
    if n.ndim != 1 or n.size == 0 or not np.isfinite(n).all() or (n < 0).any():
        raise ValueError(f"class_weights: class counts must be finite and >= 0, one per class, got {list(counts)}")
    present = n > 0
    if not present.any():
        raise ValueError(
            "class_weights: the training split holds no object or pixel of any class, so there is nothing to weigh "
            "by; give class_weights as a list"
        )
    counted = np.where(present, n, 1.0)
    if method == "inverse_frequency":
        raw = 1.0 / counted
    elif beta == 0:  # one effective sample per class, whatever its count
        raw = np.ones_like(n)
    else:  # (1 − β) / (1 − β^n), with 1 − β^n = −expm1(n · log β), log β = log1p(β − 1): precise for β near 1
        raw = (1.0 - beta) / -np.expm1(counted * math.log1p(beta - 1.0))
    raw = np.where(present, raw, raw[present].max())
    return [float(w) for w in raw / raw.mean()]


# --------------------------------------------------------------------------------------------------------------
# the counts of a DataModule


def count_classes(datamodule) -> list[int]:
    """The objects, pixels or voxels of each class (or region) in ``datamodule``'s training split, in the order of
    its ``class_names`` (see the module docstring). What ``DataModule.class_counts()`` returns (which keeps them).

    Raises:
        ValueError: data of a kind that cannot be counted, naming it.
    """
    if getattr(datamodule, "task", None) == "detection":
        from ..plan.images import detection_fingerprint

        return [int(c["boxes"]) for c in detection_fingerprint(datamodule).classes]
    source, cases = getattr(datamodule, "source", None), getattr(datamodule, "train_cases", None)
    num_classes = len(  # the labels the masks hold: with regions, not the region channels
        getattr(source, "class_names", ()) or getattr(datamodule, "label_names", None) or datamodule.class_names
    )
    if source is not None and cases is not None:  # volumes: the label volumes the training patches come from
        masks = (source.labels[i] for i in cases)
    else:
        dataset = getattr(datamodule, "train_dataset", None)
        if dataset is None:
            raise ValueError(f"{type(datamodule).__name__}: no training split to count the classes of")
        read = getattr(dataset, "read_mask", None) or (lambda i: dataset.load(i)[1])
        masks = (read(i) for i in range(len(dataset)))
    counts = np.zeros(num_classes, dtype=np.int64)
    ignore = getattr(datamodule, "ignore_index", None)
    for mask in masks:
        values = np.asarray(mask).ravel()
        values = values[(values >= 0) & (values < num_classes) & (values != ignore)]
        counts += np.bincount(values.astype(np.int64), minlength=num_classes)
    regions = getattr(datamodule, "regions", None)
    if regions:  # one count per region channel: the voxels whose label is in the region
        return [int(sum(counts[v] for v in np.atleast_1d(labels))) for labels in regions.values()]
    return [int(c) for c in counts]


# --------------------------------------------------------------------------------------------------------------
# loss configs


def _sees_background(loss: Mapping[str, Any]) -> bool:
    """Whether a loss term keeps class 0: ``include_background`` from its config, else its options' default."""
    if "include_background" in loss:
        return bool(loss["include_background"])
    module, _, name = str(loss.get("_target_", "")).rpartition(".")
    try:
        options = importlib.import_module(module).__dict__[name].function.options_type
    except (ImportError, KeyError, AttributeError, ValueError):
        return True
    option = getattr(options, "__dataclass_fields__", {}).get("include_background")
    return True if option is None else bool(option.default)


def terms_with_class_weights(terms: Mapping[str, Any], prefix: str = "") -> list[tuple[str, MutableMapping]]:
    """``(name, loss config)`` of each term of a composite config (``loss.terms``, groups of terms included, as
    ``one2many.cls``) whose loss config has a ``class_weights`` key that is set."""
    found = []
    for name, term in (terms or {}).items():
        if not isinstance(term, Mapping):
            continue
        loss = term.get("loss")
        if isinstance(loss, Mapping):
            if loss.get("class_weights") is not None:
                found.append((f"{prefix}{name}", loss))
        else:
            found += terms_with_class_weights(term, f"{prefix}{name}.")
    return found


def resolve_class_weights(loss: MutableMapping, class_names: Sequence[str], counts=None) -> dict[str, list[float]]:
    """Check and resolve the ``class_weights`` of every term of the loss config ``loss`` (``cfg.loss``), in place.

    A list must hold one value per class the term sees (``len(class_names)``, one less for a term with
    ``include_background: false``); a method name or ``{method, beta}`` is replaced by the weights of
    :func:`weights_from_counts` on those classes' counts. ``counts``: the counts of ``class_names`` or a function
    that returns them (a DataModule's ``class_counts``), called only when a term names a method. Logs the weights
    computed, once, per class name. Returns ``{term: weights}`` of the terms resolved.

    Raises:
        ValueError: naming the term: a list of the wrong length, an unknown method or option, a bad ``beta``.
    """
    resolved: dict[str, list[float]] = {}
    for name, term in terms_with_class_weights(loss.get("terms") or {}):
        where = f"loss.terms.{name}.loss.class_weights"
        background = _sees_background(term)
        names = list(class_names) if background else list(class_names)[1:]
        value = term["class_weights"]
        if isinstance(value, str):
            method, beta = value, DEFAULT_BETA
        elif isinstance(value, Mapping):
            unknown = sorted(set(value) - {"method", "beta"})
            if unknown or "method" not in value:
                raise ValueError(f"{where}: a mapping takes `method` and optionally `beta`, got {dict(value)}")
            method, beta = value["method"], value.get("beta", DEFAULT_BETA)
        else:
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise ValueError(f"{where}: a list of numbers, one of {', '.join(METHODS)}, got {value!r}")
            if len(value) != len(names):
                kept = "" if background else " (include_background is false: the background is left out)"
                raise ValueError(
                    f"{where}: {len(value)} values, but term {name!r} sees {len(names)} classes{kept}: "
                    f"{', '.join(map(str, names))}"
                )
            continue
        if method not in METHODS:
            raise ValueError(f"{where}: unknown method {method!r}; the options are {', '.join(METHODS)} or a list")
        if method == "inverse_frequency" and isinstance(value, Mapping) and "beta" in value:
            raise ValueError(f"{where}: beta belongs to effective_number, not to inverse_frequency")
        if callable(counts):
            counts = counts()
        if counts is None:
            raise ValueError(f"{where}: {method} needs the training data's class counts, and none were given")
        if len(counts) != len(class_names):
            raise ValueError(f"{where}: {len(counts)} class counts for {len(class_names)} classes")
        seen = list(counts) if background else list(counts)[1:]
        try:
            weights = weights_from_counts(seen, method, beta)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        term["class_weights"] = weights
        resolved[name] = weights
        table = ", ".join(f"{n} {w:.4g} ({c})" for n, w, c in zip(names, weights, seen))
        if rank_zero_only.rank == 0:  # every rank computes the same weights; one says so
            log.info("detloss: class weights of term %s (%s; weight (count) per class): %s", name, method, table)
    return resolved
