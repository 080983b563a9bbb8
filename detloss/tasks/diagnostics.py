"""Per-term gradient diagnostics: how hard each loss term pulls, and whether the terms pull together.

:class:`GradientDiagnostics` (``callbacks=diagnostics``) measures, every ``every_n_steps`` optimizer steps, the
gradient of each computed term of the composite with respect to the model's output (the head maps that every
term shares; optionally also the parameters of a named shared layer), and logs

* ``diag/grad_norm/<term>``: the L2 norm of that term's gradient;
* ``diag/grad_share/<term>``: its norm over the sum of the terms' norms (the shares add up to 1);
* ``diag/grad_cos/<a>__<b>``: the cosine similarity of two terms' gradients (negative: they conflict);
* ``diag/seconds``: what the measurement cost on that step.

With ``layer`` set (a dotted path inside the task, e.g. ``model.top_down3`` of the YOLO) the same keys are logged under
``diag/layer/...`` for the gradients with respect to that module's parameters.

The gradients are taken with ``torch.autograd.grad`` before the step's own backward (the task hands every
:class:`~detloss.tasks.StepObserver` the step's output and loss terms right after the criterion), one backward per
term through the criterion only (through the head too when ``layer`` is set); the model's parameter gradients and
the optimizer step are untouched.
"""

from __future__ import annotations

import itertools
import time

import torch
from torch import Tensor

from ..losses import check_number
from .base import StepObserver

__all__ = ["GradientDiagnostics", "term_gradients", "gradient_stats"]


def _tensors(outputs) -> list[Tensor]:
    """The tensors of a model output (a tensor, or nested lists / tuples / dicts of them) that need grad."""
    if isinstance(outputs, Tensor):
        return [outputs] if outputs.requires_grad else []
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    if isinstance(outputs, (list, tuple)):
        return [t for item in outputs for t in _tensors(item)]
    return []


def term_gradients(values: dict[str, Tensor], inputs: list[Tensor]) -> dict[str, Tensor]:
    """Each term's gradient with respect to ``inputs``, flattened into one float32 vector (the graph is kept)."""
    grads = {}
    for name, value in values.items():
        parts = torch.autograd.grad(value, inputs, retain_graph=True, allow_unused=True)
        grads[name] = torch.cat(
            [(g if g is not None else torch.zeros_like(x)).detach().float().flatten() for g, x in zip(parts, inputs)]
        )
    return grads


def gradient_stats(grads: dict[str, Tensor]) -> dict[str, Tensor]:
    """``grad_norm/<term>``, ``grad_share/<term>`` and ``grad_cos/<a>__<b>`` of flattened per-term gradients."""
    norms = {name: g.norm() for name, g in grads.items()}
    total = torch.stack(list(norms.values())).sum()
    stats = {f"grad_norm/{n}": v for n, v in norms.items()}
    stats |= {f"grad_share/{n}": v / total.clamp(min=torch.finfo(v.dtype).tiny) for n, v in norms.items()}
    for a, b in itertools.combinations(grads, 2):
        denom = (norms[a] * norms[b]).clamp(min=torch.finfo(norms[a].dtype).tiny)
        stats[f"grad_cos/{a}__{b}"] = torch.dot(grads[a], grads[b]) / denom
    return stats


class GradientDiagnostics(StepObserver):
    """Log per-term gradient norms, shares and cosines every ``every_n_steps`` steps.

    Args:
        every_n_steps: measuring interval in optimizer steps (the first step is measured).
        layer: optional dotted path of a shared module inside the task (``model.top_down3``) whose parameters' per-term
            gradients are measured as well.
    """

    #: its values go only to the loggers (``make_trainer`` leaves it out without one)
    needs_logger = True

    def __init__(self, every_n_steps: int = 50, layer: str | None = None):
        self.every_n_steps = check_number("every_n_steps", every_n_steps, integer=True, ge=1)
        self.layer = layer
        #: the values of the latest measurement
        self.last: dict[str, float] = {}

    def setup(self, trainer, pl_module, stage):
        if self.layer is not None:
            self._layer_params(pl_module)  # fail at once on a wrong path

    def _layer_params(self, pl_module) -> list[Tensor]:
        module = pl_module
        for part in self.layer.split("."):
            if not hasattr(module, part):
                raise ValueError(f"GradientDiagnostics: layer {self.layer!r} not found in {type(pl_module).__name__}")
            module = getattr(module, part)
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"GradientDiagnostics: layer {self.layer!r} has no trainable parameters")
        return params

    def observes(self, trainer, step: int) -> bool:
        return step % self.every_n_steps == 0

    def on_loss(self, trainer, task, batch, outputs, loss) -> None:
        values = loss.values or {}
        if not values:
            return
        start = time.perf_counter()
        stats = {f"diag/{k}": v for k, v in gradient_stats(term_gradients(values, _tensors(outputs))).items()}
        if self.layer is not None:
            layer_grads = term_gradients(values, self._layer_params(task))
            stats |= {f"diag/layer/{k}": v for k, v in gradient_stats(layer_grads).items()}
        if loss.total.device.type == "cuda":
            torch.cuda.synchronize(loss.total.device)  # the time of the work, not of its launch
        logged = {key: float(value) for key, value in stats.items()}
        logged["diag/seconds"] = time.perf_counter() - start
        self.last = logged
        # straight to the loggers, at the measured step: through LightningModule.log a value logged every N steps
        # would be written again at each logging interval in between, and at the interval's step
        log_at_step(trainer, logged)


def log_at_step(trainer, values: dict[str, float]) -> None:
    """Write ``values`` straight to the loggers at this step (rank zero): through ``LightningModule.log`` a value
    measured every N steps would be written again at each logging interval in between."""
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)


#: COCO's object-size bins by box area in pixels (small < 32², medium < 96², large)
SIZE_BINS = (("small", 32.0**2), ("medium", 96.0**2), ("large", float("inf")))


def assignment_stats(assignment, targets) -> dict[str, float]:
    """``unmatched/<bin>``: the share of ground truths with no positive anchor; ``positives/<bin>``: the mean
    number of positive anchors per ground truth; by COCO size bin of the box area, bins without ground truth left
    out. ``assignment`` is a :class:`~detloss.detection.Assignment`, ``targets`` the packed
    :class:`~detloss.detection.targets.Targets` it was made from."""
    boxes, mask = targets.boxes, targets.mask
    batch, num_gt = mask.shape
    if num_gt == 0:
        return {}
    positives = torch.zeros(batch * num_gt, device=mask.device)
    owner = assignment.batch * num_gt + assignment.gt
    positives.index_add_(0, owner, assignment.fg.float())
    positives = positives.view(batch, num_gt)
    area = (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    stats, low = {}, 0.0
    for name, high in SIZE_BINS:
        in_bin = mask & (area >= low) & (area < high)
        count = int(in_bin.sum())
        if count:
            stats[f"unmatched/{name}"] = float(((positives == 0) & in_bin).sum()) / count
            stats[f"positives/{name}"] = float(positives[in_bin].sum()) / count
        low = high
    return stats


class AssignmentDiagnostics(StepObserver):
    """Log, every ``every_n_steps`` optimizer steps, how the assigner serves each size of object, per head:
    ``diag/assign/<head>/unmatched/<bin>`` (the share of ground truths that got no positive anchor) and
    ``diag/assign/<head>/positives/<bin>`` (positive anchors per ground truth), bins as COCO's (small < 32²,
    medium < 96², large). What small-target-aware assignment (STAL, ``min_box_side``) exists to change.

    It asks the criterion for the step's assignments (``criterion.assignments(outputs, targets)``, which the
    detection criteria have; a criterion without it is skipped), a second assignment without gradient on the
    measured steps only.
    """

    needs_logger = True  # its values go to the loggers only

    def __init__(self, every_n_steps: int = 50):
        self.every_n_steps = check_number("every_n_steps", every_n_steps, integer=True, ge=1)
        #: the values of the latest measurement
        self.last: dict[str, float] = {}

    def observes(self, trainer, step: int) -> bool:
        return step % self.every_n_steps == 0

    def on_loss(self, trainer, task, batch, outputs, loss) -> None:
        assignments = getattr(task.criterion, "assignments", None)
        if assignments is None:
            return
        _, targets = batch
        logged = {}
        for head, (assignment, packed) in assignments(outputs, targets).items():
            logged |= {f"diag/assign/{head}/{k}": v for k, v in assignment_stats(assignment, packed).items()}
        self.last = logged
        log_at_step(trainer, logged)
