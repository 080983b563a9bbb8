"""Callbacks that the subprocess tests put into a run through the command line (``+callbacks.x={_target_: ...}``,
with this folder on ``PYTHONPATH``)."""

import os
import signal
from pathlib import Path

import lightning as L
import torch


class KillAt(L.Callback):
    """The process kills itself with SIGKILL after optimizer step ``step``: no cleanup, no checkpoint."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class FirstStepProbe(L.Callback):
    """Saves, on each rank, what the first training step saw and did: the weights before it, the rank's batch, the
    gradients as the optimizer gets them (averaged over the ranks by DDP) and the logged loss terms."""

    def __init__(self, out: str):
        self.out = Path(out)

    def _file(self, trainer) -> Path:
        return self.out / f"rank{trainer.global_rank}.pt"

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0:
            self.record = {"weights": {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()},
                           "batch": batch}  # fmt: skip

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == 0:
            self.record["grads"] = {n: p.grad.detach().clone() for n, p in pl_module.model.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 1:
            terms = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/loss")}
            self.out.mkdir(parents=True, exist_ok=True)
            torch.save(self.record | {"terms": terms, "world": trainer.world_size}, self._file(trainer))
