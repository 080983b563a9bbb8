"""What both tasks share: the optimiser and its schedule, the logging of every loss term, preview files."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from ..composite import CompositeLoss, Criterion, LossOutput, Position
from ..losses.penalty import penalised_parameters

__all__ = ["LossTask", "StepObserver"]


class StepObserver(L.Callback):
    """A callback that sees each training step's model output and loss terms before the backward.

    :class:`LossTask` calls :meth:`on_loss` right after the criterion, on the steps where :meth:`observes` says so;
    the graph is still alive there, so an observer may differentiate single terms (the gradient diagnostics do).
    """

    def observes(self, trainer: L.Trainer, step: int) -> bool:
        return True

    def on_loss(self, trainer: L.Trainer, task: LossTask, batch, outputs, loss: LossOutput) -> None:
        """``batch``: the step's ``(inputs, targets)``; ``outputs``: the model's output; ``loss``: what the criterion
        returned for them."""


class LossTask(L.LightningModule):
    """A LightningModule that trains ``model`` on ``criterion`` and logs each term of its composite.

    Args:
        model: the network.
        criterion: a :class:`~detloss.composite.Criterion`: ``criterion(model output, targets)`` gives the
            :class:`~detloss.composite.LossOutput`, ``criterion.loss`` the composite whose terms are logged.
        optimizer: a partial taking parameter groups, e.g. ``functools.partial(torch.optim.AdamW, lr=1e-3)``;
            biases and normalisation parameters get no weight decay.
        scheduler: a partial ``(optimizer, total_steps=, steps_per_epoch=) -> LRScheduler`` stepped every
            optimizer step, or ``None``.
        num_previews: validation images drawn with predictions and targets at each validation. A preview that
            cannot be drawn or written warns once and turns the previews off; it never ends the run.
        nan_guard: what a NaN or inf in the loss or any of its terms does: ``"stop"`` raises
            ``FloatingPointError`` naming the terms, the step and the batch; ``"skip"`` warns and skips that
            optimizer step; ``"off"`` checks nothing (saves one host sync per step). Under DDP the ranks agree
            (one all-reduce of a flag), so all of them stop or skip together; there the bad batch backpropagates
            zeros (DDP lets no rank skip its backward) and its gradients are then dropped before the optimizer
            sees them, so the weights, momentum and weight decay stay as they were, as on one process. With
            gradient accumulation under DDP, the whole accumulated step is dropped.
        class_names: names of the classes, background included for segmentation (for per-class metrics and
            previews); ``None``: the class indices.
        channels_last: keep the weights (and so the activations) of the model's convolutions in NHWC order, which
            oneDNN and cuDNN run faster (docs/benchmarks/default_runs.md).

    Both tasks take these arguments (and options of their own, with defaults), so a run is built the same way for
    either. A composite's learned balancing gets the model at construction (:meth:`Balancer.attach`), each training
    step's term values before the backward (:meth:`Balancer.before_backward`) and a call after each optimizer step
    (:meth:`Balancer.after_step`).
    """

    NAN_GUARDS = ("stop", "skip", "off")

    def __init__(
        self,
        model: nn.Module,
        criterion: Criterion,
        optimizer: Callable,
        scheduler: Callable | None = None,
        class_names: Sequence[str] | None = None,
        num_previews: int = 4,
        nan_guard: str = "stop",
        channels_last: bool = False,
    ):
        super().__init__()
        if nan_guard not in self.NAN_GUARDS:
            raise ValueError(f"nan_guard must be one of {self.NAN_GUARDS}, got {nan_guard!r}")
        if not isinstance(criterion, Criterion):
            raise ValueError(
                f"criterion must be a detloss.composite.Criterion (its composite, views and num_classes), got "
                f"{type(criterion).__name__}"
            )
        self.model, self.criterion = model, criterion
        if criterion.loss.balancing is not None:  # a balancer may need the network (GradNorm's shared layer)
            criterion.loss.balancing.attach(model)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        num_classes = criterion.num_classes
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but the criterion has {num_classes} classes")
        self.class_names = (
            [str(c) for c in class_names] if class_names is not None else [str(c) for c in range(num_classes)]
        )
        self.num_previews = num_previews
        self.nan_guard = nan_guard
        self.channels_last = channels_last
        self._preview: list = []
        self._previews_failed = False  # set by save_previews when a preview could not be drawn
        #: set when ``nan_guard="skip"`` skips a step under DDP: its gradients are dropped before the optimizer step
        self._drop_gradients = False

    def setup(self, stage: str) -> None:
        if self.channels_last:
            self.apply_memory_format(torch.channels_last)

    def apply_memory_format(self, memory_format: torch.memory_format) -> None:
        self.model.to(memory_format=memory_format)

    # --------------------------------------------------------------------------------------------- training

    @property
    def composite(self) -> CompositeLoss:
        return self.criterion.loss

    def position(self, batch_idx: int) -> Position:
        """The training position that weight schedules read (restored with step and epoch on resume)."""
        batches = self.trainer.num_training_batches
        known = bool(batches) and math.isfinite(batches)
        epoch = self.current_epoch + (batch_idx / batches if known else 0.0)
        total = int(self.trainer.estimated_stepping_batches)
        epochs = self.trainer.max_epochs
        if not epochs or epochs < 0:  # a run bounded by max_steps: its length in epochs
            per_epoch = batches / self.trainer.accumulate_grad_batches if known else total
            epochs = max(1, math.ceil(total / max(per_epoch, 1)))
        return Position(self.global_step, epoch, total, epochs=int(epochs))

    def on_train_batch_start(self, batch, batch_idx):
        if self.composite.is_dynamic:
            self.composite.update(self.position(batch_idx))

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        outputs = self.model(inputs)
        out = self.criterion(outputs, targets)
        if not self.loss_is_finite(out, batch_idx):  # "skip"
            if self.trainer.world_size == 1:
                return None  # Lightning runs no backward; the optimizer passes over parameters without gradient
            self._drop_gradients = True  # see on_before_optimizer_step
            return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        self.log_loss("train", out, len(inputs))
        weights = {f"train/weight/{n}": w for n, w in self.composite.current_weights().items()}
        self.log_dict(weights, on_step=True, on_epoch=False, batch_size=len(inputs))
        for callback in self.trainer.callbacks:
            if isinstance(callback, StepObserver) and callback.observes(self.trainer, self.global_step):
                callback.on_loss(self.trainer, self, batch, outputs, out)
        if self.composite.balancing is not None:
            self.composite.balancing.before_backward(out.values or {})
        return out.total

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        if self.composite.balancing is not None:  # learned balancing that moves with each step (FAMO, GradNorm)
            self.composite.balancing.after_step()

    def on_before_optimizer_step(self, optimizer):
        # A step skipped under DDP: torch's optimizers leave parameters whose gradient is None untouched (no
        # momentum, no weight decay, no Adam step count), which makes it a true skip. Gradient clipping comes after
        # this hook and has nothing to clip.
        if self._drop_gradients:
            optimizer.zero_grad(set_to_none=True)
            self._drop_gradients = False

    def on_train_epoch_start(self):
        # Each epoch's random draws (augmentations, shuffling) come from seed, epoch and rank: the ranks of DDP draw
        # differently (it starts them all from rank 0's weights; the sampler splits the data), and a run resumed
        # at epoch e draws what the uninterrupted run drew there.
        world = self.trainer.world_size
        L.seed_everything(self._base_seed + self.global_rank + world * self.current_epoch, workers=True, verbose=False)

    def on_fit_start(self):
        self._base_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # the run's seed (seed_everything sets it)

    def loss_is_finite(self, out: LossOutput, batch_idx: int) -> bool:
        """Apply :attr:`nan_guard`: ``True`` when the loss and all its terms are finite (on every rank)."""
        if self.nan_guard == "off":
            return True
        names = ["total", *out.terms]
        values = torch.stack([out.total.detach().float(), *(v.float() for v in out.terms.values())])
        finite = torch.isfinite(values).all()
        if self.trainer.world_size > 1:
            finite = self.trainer.strategy.reduce_boolean_decision(bool(finite), all=True)
        if bool(finite):
            return True
        bad = ", ".join(f"{n} = {v:g}" for n, v in zip(names, values.tolist()) if not math.isfinite(v))
        where = f"at step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx})"
        message = f"non-finite loss {where}: {bad or 'on another rank'}"
        if self.nan_guard == "stop":
            raise FloatingPointError(message + "; set task.nan_guard=skip to skip such steps instead")
        rank_zero_warn(message + "; skipping this step (task.nan_guard=skip)")
        return False

    # ------------------------------------------------------------------------------------------------ optim

    def configure_optimizers(self):
        decay = {id(p) for _, p in penalised_parameters(self.model)}
        params = [p for p in self.model.parameters() if p.requires_grad]
        learned = [p for p in self.criterion.parameters() if p.requires_grad]  # e.g. learned loss balancing
        groups = [
            {"params": [p for p in params if id(p) in decay]},
            {"params": [p for p in params if id(p) not in decay] + learned, "weight_decay": 0.0},
        ]
        optimizer = self.optimizer_factory([g for g in groups if g["params"]])
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        scheduler = self.scheduler_factory(
            optimizer, total_steps=max(1, total), steps_per_epoch=max(1, total // epochs)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---------------------------------------------------------------------------------------------- logging

    def log_loss(self, stage: str, out: LossOutput, batch_size: int) -> None:
        """``<stage>/loss`` and ``<stage>/loss/<term>``: per step when training, per epoch when validating."""
        step = stage == "train"
        kw = dict(on_step=step, on_epoch=not step, batch_size=batch_size, sync_dist=True)
        self.log(f"{stage}/loss", out.total.detach(), prog_bar=step, **kw)
        for name, value in out.terms.items():
            self.log(f"{stage}/loss/{name}", value, **kw)

    # --------------------------------------------------------------------------------------------- previews

    def keep_preview(self, batch_idx: int, *items) -> None:
        """Keep up to ``num_previews`` validation samples (CPU copies) to draw at the end of the epoch."""
        if self.trainer.sanity_checking or not self.trainer.is_global_zero or self._previews_failed:
            return
        if len(self._preview) >= self.num_previews:
            return
        self._preview.extend(list(zip(*items))[: self.num_previews - len(self._preview)])

    def save_previews(self, draw: Callable) -> None:
        """Draw the kept samples into ``<run dir>/previews/epoch_<E>.png`` (and the logger, if it takes images).

        A preview never ends a run: if drawing or writing one raises, a warning names the error once and the
        previews are off for the rest of the run.
        """
        kept, self._preview = self._preview, []
        if not kept or self.trainer.sanity_checking or not self.trainer.is_global_zero or self._previews_failed:
            return
        try:
            self._write_previews(draw, kept)
        except Exception as error:  # a picture is not worth a run
            self._previews_failed = True
            rank_zero_warn(
                f"previews turned off for the rest of this run: drawing the epoch {self.current_epoch} preview "
                f"failed with {type(error).__name__}: {error}"
            )

    def _write_previews(self, draw: Callable, kept: list) -> None:
        from torchvision.utils import make_grid, save_image

        grid = make_grid([draw(*item) for item in kept], nrow=len(kept), padding=4, pad_value=255)
        out = Path(self.trainer.default_root_dir) / "previews" / f"epoch_{self.current_epoch:03d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid.float() / 255, out)
        for logger in self.loggers:  # e.g. TensorBoard, beside the CSV log
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                experiment.add_image("val/preview", grid, self.global_step)


def rgb_uint8(image: Tensor) -> Tensor:
    """A ``(C, H, W)`` float image in [0, 1] as ``(3, H, W)`` uint8."""
    image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
