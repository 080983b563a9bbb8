"""The criterion contract: what a task may rely on in the loss of a head.

A criterion knows the geometry of one task (anchors and boxes, or pixels and voxels). It turns the raw output of a
model and the batch's targets into *views*, the matched inputs that one kind of term needs, and lets its
:class:`~detloss.composite.CompositeLoss` weigh the terms. Tasks, callbacks and tools rely on exactly this:

* ``criterion(outputs, targets) -> LossOutput``;
* ``criterion.loss``: the composite (its terms, weights, schedules and balancing);
* ``criterion.views``: the names of the views it builds (the composite's terms must ask for those);
* ``criterion.num_classes``: the classes of the head (background included for segmentation).

A new task's criterion subclasses :class:`Criterion`, sets ``views`` (or passes them to the constructor, when
they depend on its arguments: one set per scale under deep supervision) and implements :meth:`build_views`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from ..losses import check_number
from ..runtime import one_thread
from .loss import CompositeLoss, LossOutput, View

__all__ = ["Criterion"]


class Criterion(nn.Module):
    """Base of the criteria: checks the composite against the views at construction, and computes
    ``loss(build_views(outputs, targets))``.

    Args:
        num_classes: classes of the head, at least ``min_classes``.
        loss: the composite whose terms take this criterion's views.
        views: the names of the views this instance builds; ``None``: the class's ``views``.
    """

    views: ClassVar[frozenset[str]] = frozenset()
    min_classes: ClassVar[int] = 1

    def __init__(self, num_classes: int, loss: CompositeLoss, views: Iterable[str] | None = None):
        super().__init__()
        self.num_classes = check_number("num_classes", num_classes, integer=True, ge=self.min_classes)
        if not isinstance(loss, CompositeLoss):
            raise ValueError(f"loss must be a detloss.composite.CompositeLoss, got {type(loss).__name__}")
        if views is not None:
            self.views = frozenset(views)
        loss.check_views(self.views, type(self).__name__)
        self.loss = loss

    def build_views(self, outputs: Any, targets: Any) -> Mapping[str, View]:
        """The views of one batch, by name (a subset of :attr:`views` is allowed where terms do not need all)."""
        raise NotImplementedError

    #: compute on one intra-op thread when the outputs are on the CPU (:func:`detloss.runtime.one_thread`): for
    #: criteria of many small ops (the detection criteria), whose thread fork/join costs more than it gains on an idle
    #: machine and many times the work on a busy one (the benchmarks pages measure it)
    _single_thread_on_cpu: bool = False

    def forward(self, outputs: Any, targets: Any) -> LossOutput:
        if self._single_thread_on_cpu and _first_tensor(outputs).device.type == "cpu":
            with one_thread():
                return self.loss(self.build_views(outputs, targets))
        return self.loss(self.build_views(outputs, targets))


def _first_tensor(outputs: Any) -> Tensor:
    """The first tensor of a model's outputs: a tensor, or nested sequences and mappings of them."""
    while not isinstance(outputs, Tensor):
        if isinstance(outputs, Mapping):
            outputs = next(iter(outputs.values()))
        elif isinstance(outputs, Sequence) and len(outputs) > 0:
            outputs = outputs[0]
        else:
            raise ValueError(f"the model's outputs hold no tensor: {type(outputs).__name__}")
    return outputs
