"""How a loss joins the library: its options, its function, its module and its name, each written once.

A family file writes::

    @dataclass(frozen=True, kw_only=True)
    class FocalOptions(LossOptions):
        alpha: float = 0.25
        gamma: float = 2.0

        def __post_init__(self):          # every option checked once, when the options are made
            check_number("gamma", self.gamma, ge=0)

    @loss_function(FocalOptions)
    def focal_loss(logits, target, options, *, weight=None, reduction="mean", validate=True):
        ...                               # the maths, reading options.alpha, options.gamma

    class FocalLoss(LossModule, function=focal_loss, name="focal"):
        \"\"\"Module form of :func:`focal_loss`.\"\"\"

* :func:`loss_function` turns the function into the public one, whose signature is the inputs, then the options'
  fields (as the options' constructor takes them), then ``weight``, ``reduction``, ``validate``:
  ``focal_loss(logits, target, *, alpha=0.25, gamma=2.0, weight=None, reduction="mean", validate=True)``.
* A :class:`LossModule` subclass is the ``nn.Module``: its constructor takes the same options plus the defaults of
  ``reduction`` and ``validate``, checks them once, and its ``forward(*inputs, weight=None, reduction=None,
  validate=None)`` calls the function with them; ``reduction`` and ``validate`` given per call win (the composite
  sets them per call, never by changing the module). Class keywords fix options (``kind="ciou"``); ``name``
  registers the module for :func:`build`.
* Both the function and the module add their names (and the options type's) to ``__all__`` of the module that
  defines them, so nothing keeps a list by hand.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ._utils import check_reduction

__all__ = ["LossOptions", "NoOptions", "loss_function", "LossModule", "register", "available", "build"]

_CALL_KEYWORDS = ("weight", "reduction", "validate")
_REGISTRY: dict[str, type[nn.Module]] = {}


def _export(module_name: str, *names: str) -> None:
    """Append ``names`` to ``__all__`` of the module ``module_name`` (created if absent)."""
    module = sys.modules[module_name]
    exported = module.__dict__.setdefault("__all__", [])
    exported.extend(n for n in names if n not in exported)


@dataclasses.dataclass(frozen=True)
class LossOptions:
    """Base of a family's options: a frozen dataclass whose ``__post_init__`` checks every field.

    Tensor-valued options (class weights, ``pos_weight``) are kept as CPU float32 tensors; :meth:`on` gives them on
    the inputs' device and dtype, copied once per device and dtype.
    """

    _device_copies: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def on(self, name: str, like: Tensor) -> Tensor | None:
        value = getattr(self, name)
        if value is None:
            return None
        key = (name, like.device, like.dtype)
        if key not in self._device_copies:
            with torch.inference_mode(False):  # a copy made during evaluation must serve training's backward too
                self._device_copies[key] = value.to(device=like.device, dtype=like.dtype)
        return self._device_copies[key]

    def changed(self) -> dict[str, Any]:
        """The options that differ from their defaults (for ``repr``)."""
        out = {}
        for f in dataclasses.fields(self):
            if not f.init:
                continue
            value = getattr(self, f.name)
            default = f.default if f.default is not dataclasses.MISSING else None
            if isinstance(value, Tensor) or value != default:
                out[f.name] = value.tolist() if isinstance(value, Tensor) else value
        return out


@dataclasses.dataclass(frozen=True)
class NoOptions(LossOptions):
    """The options of a loss that has none."""


def _make_options(options_type: type[LossOptions], owner: str, args: tuple, kwargs: dict) -> LossOptions:
    try:
        return options_type(*args, **kwargs)
    except TypeError as err:  # an unknown or repeated option: name it, and what there is
        known = [f.name for f in dataclasses.fields(options_type) if f.init]
        raise ValueError(f"{owner}: {err}; its options are: {', '.join(known) or 'none'}") from None


def loss_function(options_type: type[LossOptions] = NoOptions) -> Callable[[Callable], Callable]:
    """Decorate ``core(*inputs, options, *, weight=None, reduction="mean", validate=True)`` into the public loss.

    The public function takes the inputs, then the fields of ``options_type`` as its constructor takes them, then
    the keywords ``weight``, ``reduction``, ``validate``; it makes the options (checking them) and calls ``core``.
    ``public.core`` and ``public.options_type`` are what :class:`LossModule` uses.
    """

    def wrap(core: Callable) -> Callable:
        params = list(inspect.signature(core).parameters.values())
        positional = [p for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        if len(positional) < 2 or positional[-1].name != "options":
            raise TypeError(f"{core.__name__} must take (*inputs, options, *, weight, reduction, validate)")
        inputs = positional[:-1]
        tail = [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
        missing = set(_CALL_KEYWORDS) - {p.name for p in tail}
        if missing:
            raise TypeError(f"{core.__name__} must take the keywords {sorted(missing)}")
        option_params = [
            p.replace(annotation=inspect.Parameter.empty) for p in inspect.signature(options_type).parameters.values()
        ]
        signature = inspect.Signature([*inputs, *option_params, *tail], return_annotation=Tensor)
        input_names = [p.name for p in inputs]
        option_names = [p.name for p in option_params]

        @functools.wraps(core)
        def public(*args, **kwargs):
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as err:
                raise ValueError(
                    f"{core.__name__}: {err}; its options are: {', '.join(option_names) or 'none'}"
                ) from None
            given = bound.arguments
            options = _make_options(options_type, core.__name__, (), {n: given[n] for n in option_names if n in given})
            call = {n: given[n] for n in _CALL_KEYWORDS if n in given}
            check_reduction(call.get("reduction", "mean"))
            return core(*(given[n] for n in input_names), options, **call)

        public.__signature__ = signature
        public.core, public.options_type, public.num_inputs = core, options_type, len(inputs)
        names = [core.__name__] + ([options_type.__name__] if options_type.__module__ == core.__module__ else [])
        _export(core.__module__, *names)
        return public

    return wrap


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make the loss module buildable as ``build(name)`` and export it from its module."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"loss name {name!r} is taken by {_REGISTRY[name].__qualname__}")
        _REGISTRY[name] = cls
        _export(cls.__module__, cls.__name__)
        return cls

    return wrap


class LossModule(nn.Module):
    """The ``nn.Module`` form of a loss function made by :func:`loss_function` (see the module docstring).

    Subclass it with ``function=`` (the public function), optionally ``name=`` (the registry name) and options to
    fix (``kind="ciou"``); a class attribute ``defaults`` changes option defaults without fixing them.
    """

    function: ClassVar[Callable]
    fixed: ClassVar[dict[str, Any]] = {}
    defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, function: Callable | None = None, name: str | None = None, **fixed):
        super().__init_subclass__()
        if function is not None:
            cls.function = function
        if not hasattr(cls, "function"):
            raise TypeError(f"{cls.__name__} needs function=<a loss_function>")
        known = {f.name for f in dataclasses.fields(cls.function.options_type) if f.init}
        unknown = (set(fixed) | set(cls.defaults)) - known
        if unknown:
            raise TypeError(f"{cls.__name__}: {sorted(unknown)} are not options of {cls.function.__name__}")
        cls.fixed = {**cls.fixed, **fixed}
        for option in known:  # read-only views of the options: `loss.gamma`, never silently settable
            if not hasattr(nn.Module, option):
                setattr(cls, option, property(lambda self, _o=option: getattr(self.options, _o)))
        if cls.__doc__ is None:
            cls.__doc__ = f"Module form of :func:`{cls.function.__name__}`; the same options, checked once here."
        if name is not None:
            register(name)(cls)
        else:
            _export(cls.__module__, cls.__name__)

    def __init__(self, *args, reduction: str = "mean", validate: bool = True, **options):
        super().__init__()
        check_reduction(reduction)
        function, owner = type(self).function, type(self).__name__
        if args:  # positional options, as the options' constructor takes them (IoULoss("giou"))
            try:
                positional = inspect.signature(function.options_type).bind_partial(*args).arguments
            except TypeError as err:
                raise ValueError(f"{owner}: {err}") from None
            twice = set(positional) & set(options)
            if twice:
                raise ValueError(f"{owner}: {sorted(twice)} given both by position and by keyword")
            options = {**positional, **options}
        for key, value in self.fixed.items():
            if key in options and options[key] != value:
                raise ValueError(f"{key}={options[key]!r} contradicts {owner}, which computes {key}={value!r}")
        options = {**self.defaults, **options, **self.fixed}
        self.options = _make_options(function.options_type, owner, (), options)
        self.reduction, self.validate = reduction, bool(validate)

    def forward(
        self, *inputs, weight: Tensor | None = None, reduction: str | None = None, validate: bool | None = None
    ) -> Tensor:
        """``forward(*inputs, weight=None, reduction=None, validate=None)``; ``weight`` may follow the inputs."""
        n = type(self).function.num_inputs
        if len(inputs) == n + 1 and weight is None:
            inputs, weight = inputs[:n], inputs[n]
        elif len(inputs) != n:
            raise TypeError(f"{type(self).__name__} takes {n} inputs (and weight), got {len(inputs)}")
        if reduction is not None:
            check_reduction(reduction)
        return type(self).function.core(
            *inputs,
            self.options,
            weight=weight,
            reduction=self.reduction if reduction is None else reduction,
            validate=self.validate if validate is None else validate,
        )

    def extra_repr(self) -> str:
        changed = {k: v for k, v in self.options.changed().items() if k not in self.fixed}
        return ", ".join([*(f"{k}={v!r}" for k, v in changed.items()), f"reduction={self.reduction!r}"])


def available() -> list[str]:
    """The names :func:`build` accepts, sorted."""
    return sorted(_REGISTRY)


def build(name: str, **kwargs) -> nn.Module:
    """Build the loss registered as ``name`` with the keyword options of its class."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; available: {', '.join(available())}") from None
    return cls(**kwargs)


def _as_lists(value: Sequence) -> list:
    return [_as_lists(v) if isinstance(v, Sequence) and not isinstance(v, (str, bytes)) else v for v in value]


def as_options_tensor(name: str, value, *, ndim: int | None = None) -> Tensor | None:
    """A tensor-valued option (class weights, ``pos_weight``) as a CPU float32 tensor; checked by the caller."""
    if value is None:
        return None
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes, list, tuple)):
        value = _as_lists(value)  # a config's list (OmegaConf's ListConfig is a Sequence, not a list)
    if isinstance(value, bool) or not isinstance(value, (Tensor, int, float, list, tuple)):
        raise ValueError(f"{name} must be a number, a sequence of numbers or a tensor, got {type(value).__name__}")
    try:
        tensor = torch.as_tensor(value.detach() if isinstance(value, Tensor) else value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a number, a sequence of numbers or a tensor, got {value!r}") from None
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must hold real numbers, got dtype {tensor.dtype}")
    if ndim is not None and tensor.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(tensor.shape)}")
    tensor = tensor.to(device="cpu", dtype=torch.float32).clone()
    if not bool(torch.isfinite(tensor).all()) or not bool((tensor >= 0).all()):
        raise ValueError(f"{name} must be finite and >= 0, got {tensor.tolist()}")
    return tensor
