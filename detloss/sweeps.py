"""The part of an Optuna search (``hydra/sweeper=detloss_optuna``, the plugin ``hydra_plugins.detloss_optuna_sweeper``)
that runs inside a training job: :func:`trial_callbacks` gives a job that the sweeper launched an
:class:`OptunaTrial` callback, which talks to the job's trial in the study's storage (from any process or machine:
the job finds its trial through the environment, see ``hydra_plugins.detloss_optuna_sweeper.storage``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
from omegaconf import DictConfig

__all__ = ["OptunaTrial", "trial_callbacks", "pruned_epoch"]

log = logging.getLogger(__name__)


def trial_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """``[OptunaTrial]`` in a job that the Optuna sweeper launched (its trial identity is in the environment),
    reporting ``cfg.optimized_metric``; ``[]`` otherwise."""
    from hydra_plugins.detloss_optuna_sweeper.storage import TrialIdentity

    identity = TrialIdentity.from_env()
    return [] if identity is None else [OptunaTrial(identity, cfg.optimized_metric)]


def pruned_epoch(trainer: L.Trainer) -> int | None:
    """The epoch at which a callback of ``trainer`` pruned the run (its ``pruned_epoch``), or ``None``."""
    return next((c.pruned_epoch for c in trainer.callbacks if getattr(c, "pruned_epoch", None) is not None), None)


class OptunaTrial(L.Callback):
    """Report the run to its Optuna trial, and stop it when the trial's pruner says so.

    After each validation (not the sanity check), rank 0 reports ``monitor``'s value to the trial as
    ``trial.report(value, step=epoch)`` (``trainer.current_epoch``, 0-based) and asks ``trial.should_prune()``
    (single-objective studies only: Optuna does not prune several objectives); every rank gets rank 0's answer. A
    pruned run stops cleanly at the end of that epoch (``trainer.should_stop``), with its checkpoints and
    ``metrics.json`` (``status: pruned``, ``pruned_epoch``: this epoch, see :mod:`detloss.runs`); the trial gets the
    user attr ``pruned_epoch``, from which the sweeper tells it ``PRUNED``.

    At the end of fit rank 0 stores the run's scalar metrics in the trial's user attr ``metrics`` (what the
    sweeper's ``objectives`` are read from), with ``time/step``: the mean wall-clock seconds of a training batch on
    rank 0 (``on_train_batch_start`` to ``on_train_batch_end``: forward, backward and optimizer step, data loading
    left out; nothing waits for the GPU, so on CUDA it is the throughput over many steps).

    The trial is opened from the storage (``TrialIdentity.open``), so this works in another process or on another
    machine than the sweeper. A trial that another process has finished meanwhile (failed as stale) is left alone:
    the run goes on and a warning says so.
    """

    def __init__(self, identity: Any, monitor: str) -> None:
        self.identity, self.monitor = identity, monitor
        self._pruned_epoch: int | None = None
        self.trial = None
        self._single_objective = True
        self._seconds, self._steps, self._batch_start = 0.0, 0, None
        self._warned_missing = False

    @property
    def pruned_epoch(self) -> int | None:
        """The epoch at which the pruner stopped this run, or ``None``. Under ``ddp_spawn`` the ranks ran copies of
        this callback in other processes, so when this copy did not see the pruning the trial is asked (rank 0
        recorded it there as the user attr ``pruned_epoch``)."""
        if self._pruned_epoch is None and self.trial is None:
            try:
                return self.identity.open().user_attrs.get("pruned_epoch")
            except Exception as error:  # the storage is out of reach: the run's record says ok
                log.warning("detloss: could not read Optuna trial %d: %s", self.identity.number, error)
        return self._pruned_epoch

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.trial = self.identity.open()
            self._single_objective = len(self.trial.study.directions) == 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._batch_start is not None:
            self._seconds += time.perf_counter() - self._batch_start
            self._steps += 1
            self._batch_start = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune = self._report(trainer) if self.trial is not None else False
        if trainer.world_size > 1:
            prune = bool(trainer.strategy.broadcast(prune, src=0))
        if not prune:
            return
        self._pruned_epoch = trainer.current_epoch
        trainer.should_stop = True
        if self.trial is not None:
            self._talk(self.trial.set_user_attr, "pruned_epoch", self._pruned_epoch)
            log.info("detloss: Optuna trial %d pruned at epoch %d", self.identity.number, self._pruned_epoch)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.trial is None:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
        if self._steps:
            metrics["time/step"] = self._seconds / self._steps
        self._talk(self.trial.set_user_attr, "metrics", dict(sorted(metrics.items())))

    def _report(self, trainer: L.Trainer) -> bool:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            if not self._warned_missing:
                log.warning("detloss: %s (optimized_metric) was not logged: no report to the trial", self.monitor)
                self._warned_missing = True
            return False
        if not self._single_objective:
            return False
        if not self._talk(self.trial.report, float(value), trainer.current_epoch):
            return False
        return bool(self._talk(self.trial.should_prune))

    def _talk(self, method, *args) -> Any:
        """``method(*args)``, or ``None`` once the trial has been finished by another process (then no more)."""
        from optuna.exceptions import UpdateFinishedTrialError

        try:
            result = method(*args)
        except UpdateFinishedTrialError as error:
            log.warning(
                "detloss: Optuna trial %d was finished elsewhere (%s); no more reports", self.identity.number, error
            )
            self.trial = None
            return None
        return True if result is None else result
