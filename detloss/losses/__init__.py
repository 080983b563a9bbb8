"""detloss.losses: every loss as a plain function and an ``nn.Module`` of the same options.

One family per file. Each file defines its options (a frozen dataclass), its functions and its modules; the
modules register their names where they are defined (:mod:`._api`), so ``available()`` lists what exists and
``build(name, **options)`` makes one. This package imports nothing else of detloss but its runtime plumbing
(:mod:`detloss.runtime`, the buffer pool of the fused kernels).

The extension API: what a loss of your own needs to keep the library's contract is public here, the option checks
(:func:`check_number`, :func:`check_choice`, :func:`check_reduction`), the input conversions and value checks
(:func:`as_float`, :func:`as_target`, :func:`check_same_shape`, :class:`Checks`: one host sync for all), the
weight (:func:`apply_weight`) and the one reduction (:func:`reduce`). :mod:`.reference` holds the plain form of
every loss that runs a fused kernel, the formula as its paper writes it.
"""

import sys

from . import reference
from ._api import LossModule, LossOptions, available, build, loss_function, register
from ._utils import (
    REDUCTIONS,
    Checks,
    apply_weight,
    as_float,
    as_target,
    autocast_off,
    check_choice,
    check_number,
    check_reduction,
    check_same_shape,
    reduce,
)
from .bce import *  # noqa: F403
from .boundary import *  # noqa: F403
from .cldice import *  # noqa: F403
from .cross_entropy import *  # noqa: F403
from .dfl import *  # noqa: F403
from .dice import *  # noqa: F403
from .focal import *  # noqa: F403
from .hinge import *  # noqa: F403
from .iou import *  # noqa: F403
from .penalty import *  # noqa: F403
from .quality_focal import *  # noqa: F403
from .regression import *  # noqa: F403
from .varifocal import *  # noqa: F403

# the families in the order of the guide's table of primitive losses (docs/guide/losses.md); the star imports above
# bind `cross_entropy` to the function
_FAMILIES = [
    sys.modules[f"{__name__}.{name}"]
    for name in (
        "iou",
        "dfl",
        "bce",
        "cross_entropy",
        "focal",
        "varifocal",
        "quality_focal",
        "hinge",
        "regression",
        "dice",
        "boundary",
        "cldice",
        "penalty",
    )
]

__all__ = [
    "available",
    "build",
    "LossModule",
    "LossOptions",
    "loss_function",
    "register",
    "reference",
    "REDUCTIONS",
    "Checks",
    "apply_weight",
    "as_float",
    "as_target",
    "autocast_off",
    "check_choice",
    "check_number",
    "check_reduction",
    "check_same_shape",
    "reduce",
    *(name for family in _FAMILIES for name in family.__all__),
]
