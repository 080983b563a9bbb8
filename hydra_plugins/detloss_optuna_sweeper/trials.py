"""What the sweeper does to the trials of a study: tell them, count them, keep their heartbeats, and fail those
whose process is gone.

A trial's heartbeat is the unix time in its system attribute :data:`.storage.HEARTBEAT_ATTR`, written by the
process that runs it (:class:`Heartbeat`); a running trial whose heartbeat is older than the sweeper's
``grace_period`` belongs to a process that has died (:func:`fail_stale_trials`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING

from .storage import HEARTBEAT_ATTR

if TYPE_CHECKING:
    import optuna

__all__ = ["Heartbeat", "abandon", "fail_stale_trials", "tell_trial", "trial_count"]

log = logging.getLogger(__name__)


def tell_trial(study: optuna.Study, trial: optuna.trial.Trial, values: list | None = None, state=None) -> None:
    """``study.tell``. Optuna's grid sampler calls ``study.stop()`` once the grid is done, which Optuna refuses
    outside ``study.optimize``; the trial is stored before that (Optuna's ``_tell`` stores it in a ``finally``), and
    the sweeper stops on the grid's ``is_exhausted``."""
    try:
        study.tell(trial, values, state, skip_if_finished=True)
    except RuntimeError as error:
        if "Study.stop" not in str(error):
            raise


def trial_count(storage: optuna.storages.BaseStorage, study_name: str) -> int:
    """The trials of study ``study_name`` in ``storage`` (0 if there is no such study)."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return 0
    return len(storage.get_all_trials(study_id, deepcopy=False))


def _enqueue_again(study: optuna.Study, trial: optuna.trial.FrozenTrial | optuna.trial.Trial) -> bool:
    """Enqueue ``trial``'s parameters once more, unless it is itself a retry; whether it was enqueued."""
    if "retry_of" in trial.user_attrs:
        return False
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return True


def fail_stale_trials(study: optuna.Study, grace_period: float, retry: bool) -> None:
    """Mark failed the running trials whose heartbeat is older than ``grace_period`` seconds (their process is
    gone); with ``retry``, enqueue each once more with its parameters. Trials without a heartbeat (run by something
    other than this sweeper) are left alone."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = trial.system_attrs.get(HEARTBEAT_ATTR)
        if beat is None or now - beat < grace_period:
            continue
        try:
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue
        enqueued = retry and _enqueue_again(study, trial)
        log.warning(
            "detloss_optuna: trial %d had no heartbeat for %.0f s: marked failed%s",
            trial.number,
            now - beat,
            ", and enqueued again" if enqueued else "",
        )


def abandon(study: optuna.Study, trials: list, retry: bool) -> None:
    """Tell this process's ``trials`` failed when the search stops under them; with ``retry``, enqueue each once
    more with its parameters (as :func:`fail_stale_trials` does)."""
    from optuna.trial import TrialState

    for trial in trials:
        tell_trial(study, trial, state=TrialState.FAIL)
        if retry:
            _enqueue_again(study, trial)
    log.warning("detloss_optuna: trials %s told failed%s", [t.number for t in trials], ", and enqueued" * retry)


class Heartbeat:
    """While in its ``with`` block, record the time in each trial's :data:`HEARTBEAT_ATTR` every ``interval``
    seconds (once at the start), from a daemon thread. A trial that has finished meanwhile is dropped."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_ids: list[int], interval: float) -> None:
        self.storage, self.trial_ids, self.interval = storage, list(trial_ids), interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="detloss-optuna-heartbeat", daemon=True)

    def beat(self) -> None:
        for trial_id in list(self.trial_ids):
            try:
                self.storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
            except Exception as error:  # a finished trial, or a storage that is briefly unavailable
                log.debug("detloss_optuna: no heartbeat for trial id %d: %s", trial_id, error)
                with contextlib.suppress(Exception):
                    if self.storage.get_trial(trial_id).state.is_finished():
                        self.trial_ids.remove(trial_id)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def __enter__(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
