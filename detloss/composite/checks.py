"""The loss-config check: what in a composite makes training impossible (errors) or suspicious (warnings).

A composite runs :func:`check_loss` on itself when it is built, with the facts it has (its terms, weights and
balancer); ``detloss-check`` runs it again with the facts of the run (the head's classes, the data's regions, the
run's length) and :func:`check_views` on the views of one batch. Each finding names its term.

Errors (training cannot work as configured):

* every term has weight 0 (configured, or kept at 0 by its schedule for the whole run), or no term's view gives the
  model a gradient;
* a term that takes logits given values that come out of a sigmoid or softmax (probabilities), or a term that takes
  probabilities given values outside [0, 1];
* ``include_background=False`` on a region problem (every channel is a region: the first would be left out), a term
  that applies a softmax over the channels of overlapping regions;
* ``class_weights`` of a length other than the classes the term scores;
* a balancer that needs positive terms (``needs_positive_terms``) with a term that can be negative.

Warnings (training runs, but a term does nothing or less than it seems):

* a term of weight 0, or whose schedule keeps it at 0 within the run's epochs;
* a term whose view gives the model no gradient;
* ``include_background=True`` on a binary problem (background and one class);
* a term that takes probabilities given values in [0, 1] that no sigmoid or softmax made.

Declared properties that the check reads (class attributes; a term or balancer of one's own declares them):

* a term's ``expects``: what its first input is, ``"logits"`` (it applies its own sigmoid or softmax),
  ``"probabilities"`` or ``"values"`` (boxes, distances). Undeclared, the name of the first input of the loss
  function says it (``logits``, ``pred_logits``: logits; ``pred``: values; ``probabilities``, ``probs``:
  probabilities), as every loss of :mod:`detloss.losses` names it;
* a term's ``activation``: ``"softmax"`` (exclusive classes) or ``"sigmoid"`` (a channel each); undeclared, its
  ``mode`` option says it (``"multiclass"``: softmax; ``"multilabel"``, ``"binary"``: sigmoid);
* a term's ``can_be_negative`` (default ``False``), e.g. the boundary loss, whose signed distances are negative
  inside the target;
* a balancer's ``needs_positive_terms`` (default ``False``): uncertainty weighting (its optimum ``exp(−s) = 1/v``
  needs ``v > 0``), DWA (ratios of mean losses) and FAMO (logarithms of the terms) need positive terms.

What a view gives a term is read from the autograd graph of its first input: values whose last operation before
any reshaping, indexing or copying is a sigmoid or softmax are probabilities.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .weight_schedules import Position

if TYPE_CHECKING:
    from .loss import CompositeLoss, View

__all__ = [
    "Finding",
    "LossConfigError",
    "LossConfigWarning",
    "check_loss",
    "check_views",
    "report",
    "expects",
    "activation",
    "made_by",
]

ERROR, WARNING = "error", "warning"
KINDS = ("logits", "probabilities", "values")
ACTIVATIONS = ("softmax", "sigmoid")
#: the first input's name of a loss function, and what it declares the input to be
FIRST_INPUTS = {
    "logits": "logits",
    "pred_logits": "logits",
    "pred": "values",
    "probabilities": "probabilities",
    "probs": "probabilities",
}
#: autograd nodes that make probabilities; nodes that only move, copy or select values
_MAKES_PROBABILITIES = {"SigmoidBackward", "SoftmaxBackward"}
_MAKES_LOG_PROBABILITIES = {"LogSoftmaxBackward", "LogSigmoidBackward"}
_MOVES_VALUES = {
    "ViewBackward",
    "UnsafeViewBackward",
    "ReshapeAliasBackward",
    "PermuteBackward",
    "TransposeBackward",
    "ExpandBackward",
    "SliceBackward",
    "SelectBackward",
    "IndexBackward",
    "IndexSelectBackward",
    "GatherBackward",
    "MaskedSelectBackward",
    "SqueezeBackward",
    "UnsqueezeBackward",
    "CloneBackward",
    "ToCopyBackward",
    "CatBackward",
    "StackBackward",
    "SplitBackward",
    "SplitWithSizesBackward",
    "UnbindBackward",
    "NarrowBackward",
    "AsStridedBackward",
    "AliasBackward",
}
#: at most this many positions of a run are read for its schedules (evenly spaced, with every epoch's start)
MAX_POSITIONS = 20_000


class LossConfigWarning(UserWarning):
    """A warning of the loss-config check."""


class LossConfigError(ValueError):
    """The errors of the loss-config check (:attr:`findings`: all its findings, warnings included)."""

    def __init__(self, findings: Sequence[Finding]):
        self.findings = list(findings)
        lines = "\n  ".join(str(f) for f in self.findings)
        super().__init__(f"the loss config cannot train:\n  {lines}")


@dataclass(frozen=True)
class Finding:
    """One result of the check: ``level`` ``"error"`` or ``"warning"``, the ``term`` it is about (``None``: the
    composite as a whole) and what is wrong."""

    level: str
    term: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.level}: " + (f"term {self.term!r}: " if self.term is not None else "") + self.message


def expects(loss: nn.Module) -> str | None:
    """What a term's first input must be (``"logits"``, ``"probabilities"``, ``"values"``); ``None``: undeclared."""
    declared = getattr(loss, "expects", None)
    if declared is not None:
        if declared not in KINDS:
            raise ValueError(f"{type(loss).__name__}.expects must be one of {KINDS}, got {declared!r}")
        return declared
    function = getattr(type(loss), "function", None)  # a detloss loss module: its function's signature declares it
    try:
        params = inspect.signature(function if function is not None else loss.forward).parameters
    except (TypeError, ValueError):
        return None
    first = next(iter(params), None)
    return FIRST_INPUTS.get(first)


def activation(loss: nn.Module) -> str | None:
    """``"softmax"`` or ``"sigmoid"``: the activation a term applies to logits; ``None``: undeclared."""
    declared = getattr(loss, "activation", None)
    if declared is not None:
        if declared not in ACTIVATIONS:
            raise ValueError(f"{type(loss).__name__}.activation must be one of {ACTIVATIONS}, got {declared!r}")
        return declared
    mode = getattr(loss, "mode", None)
    return {"multiclass": "softmax", "multilabel": "sigmoid", "binary": "sigmoid"}.get(mode)


def check_loss(
    loss: CompositeLoss,
    *,
    num_classes: int | None = None,
    regions: bool = False,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
) -> list[Finding]:
    """The findings on ``loss`` from the facts given: always its weights and balancer; with ``num_classes`` (the
    head's channels) the class weights and ``include_background``; with ``regions`` (the channels are overlapping
    regions) the activations; with ``epochs`` and ``steps_per_epoch`` its schedules over the whole run."""
    findings: list[Finding] = []
    zero = [name for name, weight in loss.base_weights.items() if weight == 0]
    for name in zero:
        findings.append(Finding(WARNING, name, "weight 0: it is kept (logged as 0) but never computed"))
    never = []
    if epochs is not None and steps_per_epoch is not None and loss.schedules:
        never = [n for n in _never_on(loss, epochs, steps_per_epoch) if n not in zero]
        for name in never:
            findings.append(
                Finding(
                    WARNING,
                    name,
                    f"its schedule keeps its weight 0 through the whole run ({epochs} epochs of {steps_per_epoch} "
                    "steps): it is never computed",
                )
            )
    if len(zero) + len(never) == len(loss.names):
        findings.append(Finding(ERROR, None, "every term has weight 0 for the whole run: nothing trains the model"))
    balancer = loss.balancing
    if balancer is not None and getattr(balancer, "needs_positive_terms", False):
        for name, term in loss.losses.items():
            if getattr(term, "can_be_negative", False):
                findings.append(
                    Finding(
                        ERROR,
                        name,
                        f"{type(term).__name__} can be negative, and the balancing {type(balancer).__name__} needs "
                        "positive terms",
                    )
                )
    for name, term in loss.losses.items():
        findings += _check_classes(name, term, num_classes, regions)
    return findings


def _check_classes(name: str, term: nn.Module, num_classes: int | None, regions: bool) -> list[Finding]:
    """``include_background``, the activation and ``class_weights`` of one term against the head's classes."""
    if num_classes is None:
        return []
    findings = []
    background = getattr(term, "include_background", None)
    act = activation(term)
    if regions and act == "softmax":
        findings.append(
            Finding(
                ERROR,
                name,
                "applies a softmax over the channels (exclusive classes), but the channels are overlapping regions: "
                "each needs its own sigmoid (mode='multilabel')",
            )
        )
    if regions and background is False:
        findings.append(
            Finding(
                ERROR,
                name,
                "include_background=False with regions: every channel is a region, so the first region would be "
                "left out of this term; set include_background=true",
            )
        )
    elif not regions and num_classes == 2 and background is True and act == "softmax":
        findings.append(
            Finding(
                WARNING,
                name,
                "include_background=True on a binary problem: the background's overlap, close to 1 wherever the "
                "foreground is small, is averaged with the foreground's and dilutes it; nnU-Net leaves it out "
                "(include_background=false)",
            )
        )
    weights = getattr(term, "class_weights", None)
    if isinstance(weights, Tensor):
        expected = num_classes - (1 if background is False else 0)
        if weights.numel() != expected:
            kept = " (the background left out)" if background is False else ""
            findings.append(
                Finding(
                    ERROR,
                    name,
                    f"class_weights has {weights.numel()} values, but the term scores {expected} classes{kept} of a "
                    f"head of {num_classes}",
                )
            )
    return findings


def _never_on(loss: CompositeLoss, epochs: int, steps_per_epoch: int) -> list[str]:
    """The terms whose scheduled weight is 0 at every position of a run of ``epochs`` × ``steps_per_epoch`` steps."""
    epochs, steps_per_epoch = max(1, int(epochs)), max(1, int(steps_per_epoch))
    total = epochs * steps_per_epoch
    steps = set(range(0, total, max(1, math.ceil(total / MAX_POSITIONS))))
    steps |= {e * steps_per_epoch for e in range(epochs)} | {total - 1}
    off = set(loss.names)
    for step in sorted(steps):
        position = Position(step=step, epoch=step / steps_per_epoch, total_steps=total, epochs=epochs)
        off -= {n for n, w in loss.scheduled_weights(position).items() if w > 0}
        if not off:
            break
    return [n for n in loss.names if n in off]


def check_views(loss: CompositeLoss, views: Mapping[str, View], outputs: Sequence[Tensor]) -> list[Finding]:
    """The findings on one batch: each term (of any weight) on its view in ``views``, against the model's
    ``outputs`` (the tensors of its output that need grad): the kind of values its first input holds, whether its
    gradient reaches the outputs, and whether it is finite (and positive, for a balancer that needs it)."""
    findings: list[Finding] = []
    reached = []
    needs_positive = loss.balancing is not None and getattr(loss.balancing, "needs_positive_terms", False)
    for name, term in loss.losses.items():
        view_name = loss.views[name]
        if view_name not in views:
            findings.append(Finding(WARNING, name, f"its view {view_name!r} was not built for this batch"))
            continue
        view = views[view_name]
        wrong = _check_input(name, term, view_name, view)
        findings += wrong
        if any(f.level == ERROR for f in wrong):  # not evaluated: does its view reach the model?
            if any(_reaches(a.sum(), outputs) for a in view.args if isinstance(a, Tensor) and a.is_floating_point()):
                reached.append(name)
            continue
        try:
            value = loss.term_value(name, view)
        except Exception as error:
            findings.append(Finding(ERROR, name, f"fails on this batch: {type(error).__name__}: {error}"))
            continue
        number = float(value.detach())
        if not math.isfinite(number):
            findings.append(Finding(ERROR, name, f"its value on this batch is not finite ({number})"))
        elif needs_positive and number <= 0:
            findings.append(
                Finding(
                    ERROR,
                    name,
                    f"its value on this batch is {number:.4g}, and the balancing "
                    f"{type(loss.balancing).__name__} needs positive terms",
                )
            )
        if _reaches(value, outputs):
            reached.append(name)
        else:
            findings.append(
                Finding(WARNING, name, f"no gradient reaches the model's output through its view {view_name!r}")
            )
    if not reached:
        findings.append(Finding(ERROR, None, "no term gives the model a gradient"))
    return findings


def _reaches(value: Tensor, outputs: Sequence[Tensor]) -> bool:
    """Whether ``value``'s gradient reaches any of ``outputs`` (the graph is kept)."""
    if not value.requires_grad or not outputs:
        return False
    grads = torch.autograd.grad(value, list(outputs), retain_graph=True, allow_unused=True)
    return any(g is not None for g in grads)


def _check_input(name: str, term: nn.Module, view_name: str, view: View) -> list[Finding]:
    """What the term expects as its first input against what the view's first input is."""
    first = view.args[0] if view.args else None
    wanted = expects(term)
    if not isinstance(first, Tensor) or wanted not in ("logits", "probabilities"):
        return []
    made = made_by(first)
    if wanted == "logits" and made is not None:
        return [
            Finding(
                ERROR,
                name,
                f"takes logits, but view {view_name!r} gives it {made} (its values come out of a "
                f"{'sigmoid or softmax' if made == 'probabilities' else 'log-softmax'}): the term would apply its "
                "activation a second time",
            )
        ]
    if wanted == "probabilities" and made != "probabilities" and first.is_floating_point() and first.numel():
        low, high = float(first.detach().min()), float(first.detach().max())
        if low < 0 or high > 1:
            return [
                Finding(
                    ERROR,
                    name,
                    f"takes probabilities, but view {view_name!r} gives it values in [{low:.3g}, {high:.3g}] (logits?)",
                )
            ]
        return [
            Finding(
                WARNING,
                name,
                f"takes probabilities, but no sigmoid or softmax made the values of view {view_name!r}",
            )
        ]
    return []


def made_by(tensor: Tensor) -> str | None:
    """``"probabilities"`` if the last operation that made ``tensor``, reshaping, indexing and copying aside, is a
    sigmoid or softmax; ``"log-probabilities"`` for a log-softmax or log-sigmoid; ``None`` otherwise or unknown."""
    return _made_by(tensor.grad_fn, 0) if tensor.grad_fn is not None else None


def _made_by(node, depth: int) -> str | None:
    if node is None or depth > 64:
        return None
    kind = type(node).__name__.rstrip("0123456789")
    if kind in _MAKES_PROBABILITIES:
        return "probabilities"
    if kind in _MAKES_LOG_PROBABILITIES:
        return "log-probabilities"
    if kind not in _MOVES_VALUES:
        return None
    sources = [_made_by(n, depth + 1) for n, _ in node.next_functions if n is not None]
    return sources[0] if sources and all(s == sources[0] for s in sources) else None


def report(findings: Sequence[Finding]) -> None:
    """Raise :class:`LossConfigError` (a ``ValueError``) listing ``findings`` if any is an error; otherwise warn
    each (:class:`LossConfigWarning`)."""
    if any(f.level == ERROR for f in findings):
        raise LossConfigError(findings)
    for finding in findings:
        warnings.warn(str(finding), LossConfigWarning, stacklevel=3)
