"""What both tasks share: the optimiser and its schedule, the logging of every loss term, preview files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn

from ..losses import LossOutput
from ..losses.penalty import penalised_parameters

__all__ = ["LossTask"]


class LossTask(L.LightningModule):
    """A LightningModule that trains ``model`` on ``criterion`` and logs each term of its composite.

    Args:
        model: the network.
        criterion: returns :class:`~detloss.losses.LossOutput` for ``(model output, targets)``.
        optimizer: a partial taking parameter groups, e.g. ``functools.partial(torch.optim.AdamW, lr=1e-3)``;
            biases and normalisation parameters get no weight decay.
        scheduler: a partial ``(optimizer, total_steps=, steps_per_epoch=) -> LRScheduler`` stepped every
            optimizer step, or ``None``.
        num_previews: validation images drawn with predictions and targets at each validation.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: nn.Module,
        optimizer: Callable,
        scheduler: Callable | None = None,
        num_previews: int = 4,
    ):
        super().__init__()
        self.model, self.criterion = model, criterion
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.num_previews = num_previews
        self._preview: list = []

    # ------------------------------------------------------------------------------------------------ optim

    def configure_optimizers(self):
        decay = {id(p) for _, p in penalised_parameters(self.model)}
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if id(p) in decay]},
            {"params": [p for p in params if id(p) not in decay], "weight_decay": 0.0},
        ]
        optimizer = self.optimizer_factory([g for g in groups if g["params"]])
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        scheduler = self.scheduler_factory(optimizer, total_steps=max(1, total), steps_per_epoch=max(1, total // epochs))
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
        if self.trainer.sanity_checking or not self.trainer.is_global_zero or len(self._preview) >= self.num_previews:
            return
        self._preview.extend(list(zip(*items))[: self.num_previews - len(self._preview)])

    def save_previews(self, draw: Callable) -> None:
        """Draw the kept samples into ``<run dir>/previews/epoch_<E>.png`` (and the logger, if it takes images)."""
        kept, self._preview = self._preview, []
        if not kept or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        from torchvision.utils import make_grid, save_image

        grid = make_grid([draw(*item) for item in kept], nrow=len(kept), padding=4, pad_value=255)
        out = Path(self.trainer.default_root_dir) / "previews" / f"epoch_{self.current_epoch:03d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid.float() / 255, out)
        experiment = getattr(self.logger, "experiment", None)
        if hasattr(experiment, "add_image"):
            experiment.add_image("val/preview", grid, self.global_step)


def to_uint8(image: Tensor) -> Tensor:
    """A ``(C, H, W)`` float image in [0, 1] as ``(3, H, W)`` uint8."""
    image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
