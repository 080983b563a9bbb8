"""The search space: Hydra's sweep syntax (the syntax of Hydra's own Optuna sweeper) read as Optuna distributions,
and a sampled value written back as a job override.

=====================================  =====================================================================
``params`` value                        Optuna distribution
=====================================  =====================================================================
``choice(a, b, ...)``, ``a,b,...``,     ``CategoricalDistribution([a, b, ...])``
a YAML list ``[a, b, ...]``
``interval(lo, hi)``                    ``FloatDistribution(lo, hi)``
``int(interval(lo, hi))``               ``IntDistribution(lo, hi)``
``tag(log, interval(...))``             the same with ``log=True``
``range(start, stop, step)``            ``IntDistribution`` (``FloatDistribution`` for floats) from ``start`` to the
                                        last value below ``stop`` (Python's ``range``: ``stop`` is excluded),
                                        ``step=step``; ``tag(log, ...)`` with ``step`` 1 only
anything else (``5``, ``adamw``)        no distribution: the value is passed to every job as it is
=====================================  =====================================================================

Errors are ``ValueError`` naming the key as ``hydra.sweeper.params.<key>``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

__all__ = ["SearchSpace", "search_space", "format_override", "grid_of"]

#: a string that an override may carry unquoted and still read back as the same string
_PLAIN = re.compile(r"^[A-Za-z_][\w./\-]*$")
_KEYWORDS = {"true", "false", "null", "inf", "nan"}


class SearchSpace:
    """The distributions to sample (``distributions``, by override key) and the overrides given to every job
    (``fixed``), in the order they were given."""

    def __init__(self, distributions: dict[str, BaseDistribution], fixed: list[str]) -> None:
        self.distributions, self.fixed = distributions, fixed

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """The job overrides for one trial's sampled ``params``: the fixed ones, then ``key=value`` per parameter."""
        return [*self.fixed, *(format_override(key, value) for key, value in params.items())]


def search_space(params: Mapping[str, Any] | None, arguments: Sequence[str] = ()) -> SearchSpace:
    """The search space of the sweeper's ``params`` and of the command line's ``arguments`` (the overrides after
    ``-m``): a sweep on the command line (``loss.terms.box.weight=interval(1,20)``, ``seed=0,1``) joins the
    space and wins over a param of the same key; a plain override is passed to every job."""
    parser = OverridesParser.create()
    distributions: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for key, value in (params or {}).items():
        where = f"hydra.sweeper.params.{key}"
        if isinstance(value, Sequence) and not isinstance(value, str):
            distributions[key] = _categorical(list(value), where)
            continue
        override = parser.parse_override(f"{key}={_plain(value)}")
        _add(override, where, distributions, fixed)
    for argument in arguments:
        override = parser.parse_override(argument)
        key = override.get_key_element()
        distributions.pop(key, None)
        fixed.pop(key, None)
        _add(override, f"the command-line override {argument!r}", distributions, fixed)
    return SearchSpace(distributions, list(fixed.values()))


def _plain(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _add(override: Override, where: str, distributions: dict, fixed: dict) -> None:
    key = override.get_key_element()
    if not override.is_sweep_override():  # as it was written (``~logger`` stays a deletion without a value)
        fixed[key] = override.input_line or f"{key}={override.get_value_element_as_str()}"
        return
    distributions[key] = distribution(override.value(), where)


def distribution(sweep: Any, where: str = "the sweep") -> BaseDistribution:
    """The Optuna distribution of one parsed Hydra sweep (see the module's table)."""
    from optuna.distributions import FloatDistribution, IntDistribution

    log = "log" in getattr(sweep, "tags", set())
    if isinstance(sweep, ChoiceSweep):
        if log:
            raise ValueError(f"{where}: tag(log, ...) applies to interval and range, not to choice")
        return _categorical(list(sweep.list), where)
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        if low is None or high is None or not low < high:
            raise ValueError(f"{where}: interval(a, b) needs a < b, got interval({low}, {high})")
        if log and low <= 0:
            raise ValueError(f"{where}: tag(log, interval(a, b)) needs a > 0, got a = {low}")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log)
        return FloatDistribution(float(low), float(high), log=log)
    if isinstance(sweep, RangeSweep):
        start, stop, step = sweep.start, sweep.stop, sweep.step
        if step is None or step <= 0:
            raise ValueError(f"{where}: range(start, stop, step) needs a step > 0, got {step}")
        count = math.ceil((stop - start) / step - 1e-9)
        if count < 1:
            raise ValueError(f"{where}: range({start}, {stop}, {step}) holds no value")
        last = start + (count - 1) * step
        if log and step != 1:
            raise ValueError(f"{where}: tag(log, range(...)) needs step 1 (Optuna samples a log scale without a step)")
        if log and start <= 0:
            raise ValueError(f"{where}: tag(log, range(start, ...)) needs start > 0, got {start}")
        if all(isinstance(v, int) for v in (start, stop, step)):
            return IntDistribution(start, last, log=log, step=1 if log else step)
        if log:
            return FloatDistribution(float(start), float(last), log=True)
        return FloatDistribution(float(start), float(last), step=float(step))
    raise ValueError(f"{where}: {type(sweep).__name__} is not a sweep the Optuna sweeper knows")


def _categorical(choices: list, where: str) -> BaseDistribution:
    from optuna.distributions import CategoricalDistribution

    if not choices:
        raise ValueError(f"{where}: a choice needs at least one value")
    for choice in choices:
        if choice is not None and not isinstance(choice, (bool, int, float, str)):
            raise ValueError(
                f"{where}: the values of a choice must be null, bool, int, float or str (what Optuna stores), got "
                f"{choice!r}"
            )
    return CategoricalDistribution(choices)


def grid_of(distributions: Mapping[str, BaseDistribution]) -> dict[str, list]:
    """The grid of a discrete search space, for ``optuna.samplers.GridSampler``: a choice's values, a range's
    values; an interval has no grid."""
    from optuna.distributions import CategoricalDistribution

    grid = {}
    for key, dist in distributions.items():
        if isinstance(dist, CategoricalDistribution):
            grid[key] = list(dist.choices)
        elif getattr(dist, "step", None) is not None:
            count = round((dist.high - dist.low) / dist.step) + 1
            grid[key] = [dist.low + i * dist.step for i in range(count)]
        else:
            raise ValueError(
                f"hydra.sweeper.params.{key}: the grid sampler needs a choice, a range or a list, got a continuous "
                f"{type(dist).__name__} (an interval); or give hydra.sweeper.sampler.search_space"
            )
    return grid


def format_override(key: str, value: Any) -> str:
    """``key=value`` that Hydra reads back as ``value`` (strings are quoted where Hydra would read them otherwise)."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        text = repr(value)
    else:
        text = str(value)
        if not _PLAIN.match(text) or text.lower() in _KEYWORDS:
            text = quote(text)
    return f"{key}={text}"


def quote(text: str) -> str:
    """``text`` as a quoted Hydra override value."""
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    raise ValueError(f"a value holding both kinds of quote cannot be passed as a Hydra override: {text!r}")
