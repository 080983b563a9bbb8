"""CompositeLoss: named, weighted, swappable terms over the views a task-specific criterion builds.

A criterion (detection, segmentation) knows the geometry; it turns raw model output and targets into *views*,
the matched inputs one kind of term needs (``box``: predicted and target boxes; ``dist``: bin logits and target
distances; ``cls``: class logits and target scores; ``pixels``: segmentation logits and masks). The composite
knows nothing of boxes: it feeds each term the view it names, reduces and normalises once, and sums::

    total = Σ_term  weight_term · Σ (view.weight · loss_term(*view.args)) / view.norm

A view with ``norm`` set is summed and divided by ``norm`` (detection divides every term by the target-score
sum); its ``weight`` is per item of the leading dimension(s), so one ``(M,)`` weight serves a loss that returns
``(M,)`` (CIoU) and one that returns ``(M, 4)`` (L1 on coordinates). A view without ``norm`` uses each loss's own
``"mean"`` (cross-entropy's mean over valid pixels, Dice's mean over samples and classes). The composite asks each
term for the reduction it needs in the call, so no loss reduces twice and no term is ever changed.

The contract of a term (every loss of :mod:`detloss.losses`, and a user's own ``nn.Module``): it is called as
``loss(*view.args, reduction=r, **view.kwargs)`` with ``r`` one of ``"none"``, ``"mean"``, ``"sum"`` (and
``weight=`` for a weighted view without ``norm``), and returns the values so reduced. A view marked ``checked``
(its criterion has validated those inputs) also passes ``validate=False`` to the terms whose ``forward`` takes a
``validate`` keyword, so that they skip their own checks and host syncs.

In a Hydra config the terms read as the maths reads::

    _target_: detloss.composite.CompositeLoss
    terms:
      box: {loss: {_target_: detloss.losses.CIoULoss}, weight: 7.5, view: box}
      dfl: {loss: {_target_: detloss.losses.DFLoss}, weight: 1.5, view: dist}
      cls: {loss: {_target_: detloss.losses.BCEWithLogitsLoss}, weight: 0.5, view: cls}

A term set to ``null`` is dropped; a term of weight 0 is kept (its logged value is 0) but not computed.

Weights can move during training: a term may carry a ``schedule`` (:mod:`.weight_schedules`), a factor on its
weight set from the training position by :meth:`CompositeLoss.update`; and the composite may take a
``balancing`` (:mod:`.balancing`) that learns the terms' factors. :meth:`CompositeLoss.current_weights`
gives each term's effective weight.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..losses import autocast_off, check_number
from .balancing import Balancer
from .checks import check_loss, report
from .weight_schedules import HandOver, Position, WeightSchedule

__all__ = ["CompositeLoss", "LossOutput", "View"]


class LossOutput(NamedTuple):
    """``total``: the differentiable weighted sum; ``terms``: each term's detached weighted value by name;
    ``values``: the same values still attached to the graph (for per-term gradient diagnostics), computed terms
    only. With uncertainty weighting ``total`` also holds the balancer's regulariser, so it exceeds the sum of
    ``terms``."""

    total: Tensor
    terms: dict[str, Tensor]
    values: dict[str, Tensor] | None = None


@dataclass
class View:
    """The inputs that the terms of one view receive.

    Args:
        args: positional inputs of the loss, e.g. ``(pred_boxes, target_boxes)``.
        weight: optional weight of each item along the leading dimension(s) of the unreduced values.
        norm: divide the summed values by this (a tensor stays on the device, no host sync); ``None`` means
            each loss's own ``"mean"``.
        kwargs: further keywords of every term's call (e.g. a segmentation view's ``spacing``).
        checked: the criterion has validated these inputs; terms that take ``validate`` get ``validate=False``.
    """

    args: tuple
    weight: Tensor | None = None
    norm: Tensor | float | None = None
    kwargs: dict = field(default_factory=dict)
    checked: bool = False


def _align(name: str, weight: Tensor, value: Tensor) -> Tensor:
    """A view's weight is per item of the leading dimension(s): ``(M,)`` rescales row ``m`` of a ``(M, 4)`` loss."""
    if weight.ndim > value.ndim or value.shape[: weight.ndim] != weight.shape:
        raise ValueError(
            f"term {name!r}: the view's weight of shape {tuple(weight.shape)} does not match the leading dimensions "
            f"of the unreduced loss {tuple(value.shape)}"
        )
    return weight.reshape(weight.shape + (1,) * (value.ndim - weight.ndim)).to(value.dtype)


class _Term(NamedTuple):
    loss: nn.Module
    view: str
    schedule: WeightSchedule | None


def _keywords(name: str, loss: nn.Module) -> frozenset[str]:
    """Which of the call keywords ``reduction``, ``validate`` the term's ``forward`` takes (``reduction`` it must)."""
    try:
        params = inspect.signature(loss.forward).parameters
    except (TypeError, ValueError):  # a builtin without a signature: assume the contract
        return frozenset({"reduction"})
    variadic = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "reduction" not in params and not variadic:
        raise ValueError(
            f"term {name!r}: {type(loss).__name__}.forward must take a `reduction` keyword ('none', 'mean' or "
            "'sum'), which the composite sets per call (see docs/guide/extending.md, 'Your own loss')"
        )
    return frozenset({"reduction"} | ({"validate"} if "validate" in params else set()))


def _parse_term(name: str, spec) -> tuple[_Term, float]:
    if not isinstance(spec, Mapping):
        raise ValueError(f"term {name!r} must be a mapping with keys loss, weight, view; got {type(spec).__name__}")
    unknown = set(spec) - {"loss", "weight", "view", "schedule"}
    if unknown:
        raise ValueError(f"term {name!r} has unknown keys {sorted(unknown)}; expected loss, weight, view, schedule")
    missing = {"loss", "view"} - set(spec)
    if missing:
        raise ValueError(f"term {name!r} is missing {sorted(missing)}")
    loss, view, weight = spec["loss"], spec["view"], spec.get("weight", 1.0)
    if not isinstance(loss, nn.Module):
        raise ValueError(
            f"term {name!r}: loss must be an nn.Module (e.g. {{_target_: detloss.losses.CIoULoss}}), "
            f"got {type(loss).__name__}"
        )
    if not isinstance(view, str):
        raise ValueError(f"term {name!r}: view must be a string, got {view!r}")
    schedule = spec.get("schedule")
    if schedule is not None:
        _check_schedule(f"term {name}", schedule)
    return _Term(loss, view, schedule), _check_weight(name, weight)


def _check_weight(name: str, weight) -> float:
    return check_number(f"term {name!r}: weight", float(weight) if isinstance(weight, Tensor) else weight, ge=0)


def _flatten(terms: Mapping, prefix: str = "", factor: float = 1.0, schedules: dict | None = None):
    """``{full name: (term, weight)}`` of a mapping of terms and groups, and the schedules by owner.

    A group is a mapping without ``loss``: its keys ``weight`` (a factor on its terms' weights) and ``schedule`` are
    its own, the others its terms (or groups); its terms are named ``<group>/<term>``.
    """
    flat: dict[str, tuple[_Term, float]] = {}
    schedules = {} if schedules is None else schedules
    for key, spec in terms.items():
        if spec is None:
            continue
        name = f"{prefix}{key}"
        if "/" in str(key):
            raise ValueError(f"term or group name {key!r} must not contain '/' (it separates a group from its terms)")
        if isinstance(spec, Mapping) and "loss" not in spec:  # a group
            unknown = [k for k, v in spec.items() if k not in ("weight", "schedule") and not isinstance(v, Mapping)]
            if unknown:
                raise ValueError(
                    f"group {name!r}: {sorted(unknown)} are neither terms ({{loss, weight, view}}) nor its own "
                    "weight or schedule"
                )
            weight = _check_weight(name, spec.get("weight", 1.0))
            schedule = spec.get("schedule")
            if schedule is not None:
                schedules[name] = _check_schedule(name, schedule)
            members = {k: v for k, v in spec.items() if k not in ("weight", "schedule")}
            if not any(v is not None for v in members.values()):
                raise ValueError(f"group {name!r} holds no terms")
            flat.update(_flatten(members, f"{name}/", factor * weight, schedules)[0])
            continue
        term, weight = _parse_term(name, spec)
        if term.schedule is not None:
            schedules[name] = term.schedule
        flat[name] = (term, weight * factor)
    return flat, schedules


def _check_schedule(name: str, schedule) -> WeightSchedule:
    if not isinstance(schedule, WeightSchedule):
        raise ValueError(
            f"{name!r}: schedule must be a WeightSchedule (e.g. {{_target_: detloss.composite.LinearWarmup, "
            f"duration: 3}}), got {type(schedule).__name__}"
        )
    return schedule


class CompositeLoss(nn.Module):
    """A weighted sum of named loss terms, each fed the view it names.

    Args:
        terms: ``{name: {"loss": nn.Module, "weight": float, "view": str, "schedule": WeightSchedule}}``
            (``weight`` 1 and ``schedule`` none by default); ``None`` drops a term. A value without ``loss`` is a
            *group* of terms: ``{"weight": float, "schedule": WeightSchedule, <term>: {...}, ...}``, whose weight
            and schedule apply to each of its terms, named ``<group>/<term>`` (the two heads of an end-to-end
            detector, the scales of deep supervision).
        balancing: an optional :class:`~detloss.composite.Balancer` that learns the terms' factors.
        check: run the loss-config check (:func:`~detloss.composite.check_loss`) on the composite built: its
            errors raise ``ValueError``, its warnings are :class:`~detloss.composite.LossConfigWarning`.
    """

    def __init__(self, terms: Mapping[str, Mapping | None], balancing: Balancer | None = None, check: bool = True):
        super().__init__()
        if not isinstance(terms, Mapping):
            raise ValueError(f"terms must be a mapping of name to {{loss, weight, view}}, got {type(terms).__name__}")
        parsed, self.schedules = _flatten(terms)
        if not parsed:
            raise ValueError("terms is empty: a composite needs at least one term")
        self.losses = nn.ModuleDict({name: term.loss for name, (term, _) in parsed.items()})
        self._keywords = {name: _keywords(name, term.loss) for name, (term, _) in parsed.items()}
        self.views: dict[str, str] = {name: term.view for name, (term, _) in parsed.items()}
        self.base_weights: dict[str, float] = {name: weight for name, (_, weight) in parsed.items()}
        self.weights: dict[str, float] = dict(self.base_weights)
        for owner, schedule in self.schedules.items():
            if isinstance(schedule, HandOver):
                for receiver in schedule.receivers:
                    taker = self.members(receiver)
                    if not taker or set(taker) & set(self.members(owner)):
                        raise ValueError(
                            f"{owner!r}: hands its weight over to {receiver!r}, which is not another term or group"
                        )
        if balancing is not None and not isinstance(balancing, Balancer):
            raise ValueError(f"balancing must be a detloss.composite.Balancer, got {type(balancing).__name__}")
        if balancing is not None:
            balancing.bind(self.names)
        self.balancing = balancing
        if self.schedules:  # the weights of the start of training, until the task updates them
            self.update(Position(step=0, epoch=0.0, total_steps=1, epochs=1))
        if check:
            report(check_loss(self))

    def members(self, owner: str) -> list[str]:
        """The terms that ``owner`` names: the term itself, or every term of the group."""
        return [n for n in self.views if n == owner or n.startswith(owner + "/")]

    @property
    def names(self) -> list[str]:
        return list(self.views)

    @property
    def is_dynamic(self) -> bool:
        """Whether any weight changes during training (a schedule or a balancer)."""
        return bool(self.schedules) or self.balancing is not None

    def set_weight(self, name: str, weight: float) -> None:
        """Change a term's configured weight between steps (schedules then apply on top of it)."""
        if name not in self.weights:
            raise ValueError(f"unknown term {name!r}; terms: {', '.join(self.weights)}")
        self.base_weights[name] = self.weights[name] = _check_weight(name, weight)

    def update(self, position: Position) -> None:
        """Set the scheduled weights, and tell the balancer, for the training position ``position``."""
        self.weights = self.scheduled_weights(position)
        if self.balancing is not None:
            self.balancing.update(position)

    def scheduled_weights(self, position: Position) -> dict[str, float]:
        """Each term's configured weight times its schedules' factors at ``position`` (nothing is changed)."""
        weights = dict(self.base_weights)
        for owner, schedule in self.schedules.items():
            factor = schedule.factor(position)
            for name in self.members(owner):
                weights[name] *= factor
            if isinstance(schedule, HandOver):
                share = schedule.share(position)
                for name in {n for receiver in schedule.receivers for n in self.members(receiver)}:
                    weights[name] *= share
        return weights

    def current_weights(self) -> dict[str, float]:
        """Each term's effective weight: configured × scheduled × learned."""
        factors = self.balancing.factors() if self.balancing is not None else {}
        return {n: w * factors.get(n, 1.0) for n, w in self.weights.items()}

    def replicate(self, groups: Mapping[str, float]) -> CompositeLoss:
        """A new composite whose groups hold a copy of every term of this one, each group weighted.

        ``groups`` maps a group name to its weight, e.g. ``{"scale0": 0.53, "scale1": 0.27, ...}`` (deep
        supervision: one group per decoder scale). In group ``g`` every term keeps its name (``g/<term>``), its
        configured weight (times the group's) and its schedule, and takes the view ``g/<view>``; a hand-over's
        ``to`` is renamed into the group, so a schedule acts within each group as it did here. The terms' losses are
        copies; a balancer is copied and bound to the new names.
        """
        if not isinstance(groups, Mapping) or not groups:
            raise ValueError(f"groups must be a non-empty mapping of group name to weight, got {groups!r}")
        return CompositeLoss(
            {group: {"weight": weight, **self._as_group(group)} for group, weight in groups.items()},
            balancing=copy.deepcopy(self.balancing),
            check=False,  # this composite was checked; its copies hold the same terms
        )

    def _as_group(self, group: str) -> dict:
        """The terms of this composite as a nested spec whose views (and hand-over receivers) are in ``group``."""
        spec: dict = {}

        def node(name: str) -> dict:  # the mapping that holds term or group ``name``, made on the way
            parent = spec
            for part in name.split("/")[:-1]:
                parent = parent.setdefault(part, {})
            return parent

        for name, loss in self.losses.items():
            view = f"{group}/{self.views[name]}"
            node(name)[name.split("/")[-1]] = {
                "loss": copy.deepcopy(loss),
                "weight": self.base_weights[name],
                "view": view,
            }
        for owner, schedule in self.schedules.items():
            if isinstance(schedule, HandOver):
                schedule = copy.copy(schedule)
                to = tuple(f"{group}/{r}" for r in schedule.receivers)
                schedule.to = to[0] if isinstance(schedule.to, str) else to
            parent, key = node(owner), owner.split("/")[-1]
            parent.setdefault(key, {})["schedule"] = schedule
        return spec

    def check_views(self, available: set[str] | frozenset[str], owner: str) -> None:
        """Raise if a term names a view that ``owner`` (a criterion) does not build."""
        for name, view in self.views.items():
            if view not in available:
                raise ValueError(
                    f"term {name!r} asks for view {view!r}, which {owner} does not build; views: {sorted(available)}"
                )

    def forward(self, views: Mapping[str, View], *, only_given: bool = False) -> LossOutput:
        """Each term on its view, weighted, summed; computed in float32 (autocast is turned off here).

        A term whose view is missing raises, unless its weight is 0 (then it is logged as 0) or ``only_given`` is
        set: then the terms whose view is missing are left out of the total and of the terms (the validation of a
        deeply supervised model, whose lower scales exist only in training).
        """
        values: dict[str, Tensor] = {}
        terms: dict[str, Tensor] = {}
        first = next((a for v in views.values() for a in v.args if isinstance(a, Tensor)), None)
        device = first.device if first is not None else torch.device("cpu")
        with autocast_off(device):
            for name, loss in self.losses.items():
                view_name = self.views[name]
                weight = self.weights[name]
                if view_name not in views:
                    if only_given:
                        continue
                    if weight != 0:
                        raise ValueError(f"term {name!r} asks for view {view_name!r}; views given: {sorted(views)}")
                if weight == 0:
                    terms[name] = torch.zeros((), device=device)
                    continue
                values[name] = self._evaluate(name, loss, views[view_name]) * weight
        if not values:  # every weight is 0: a zero that stays attached to the graph
            total = first.sum() * 0.0 if first is not None and first.requires_grad else torch.zeros((), device=device)
            return LossOutput(total, terms)
        if self.balancing is not None:
            total, values = self.balancing(values)
        else:
            total = None
            for value in values.values():
                total = value if total is None else total + value
        terms.update({name: value.detach() for name, value in values.items()})
        return LossOutput(total, {name: terms[name] for name in self.losses if name in terms}, values)

    def term_value(self, name: str, view: View) -> Tensor:
        """Term ``name`` on ``view``, reduced as :meth:`forward` reduces it, unweighted; float32, autocast off."""
        first = next((a for a in view.args if isinstance(a, Tensor)), None)
        with autocast_off(first.device if first is not None else torch.device("cpu")):
            return self._evaluate(name, self.losses[name], view)

    def _evaluate(self, name: str, loss: nn.Module, view: View) -> Tensor:
        kwargs = dict(view.kwargs)
        if view.checked and "validate" in self._keywords[name]:
            kwargs["validate"] = False
        if view.norm is None:  # the loss's own mean (e.g. over valid pixels, or over samples and classes)
            if view.weight is not None:
                kwargs["weight"] = view.weight
            return loss(*view.args, reduction="mean", **kwargs).float()
        if view.weight is None:
            return loss(*view.args, reduction="sum", **kwargs).float() / view.norm
        value = loss(*view.args, reduction="none", **kwargs)
        return (value * _align(name, view.weight, value)).sum().float() / view.norm

    def extra_repr(self) -> str:
        return ", ".join(f"{name}: weight={self.weights[name]}, view={self.views[name]!r}" for name in self.views)
