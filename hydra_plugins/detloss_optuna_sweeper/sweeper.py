"""``DetlossOptunaSweeper``: an Optuna study whose trials are Hydra jobs, launched through the configured launcher.

One round: fail the running trials of the study whose process is gone (no heartbeat for ``grace_period``; re-run
them once if ``retry_stale``), ask ``n_jobs`` trials (``study.ask`` with the search space's distributions), hand
each job its sampled overrides and its trial identity (:mod:`.storage`), launch them as one batch
(``launcher.launch(batch, initial_job_idx)``; a job's number is its trial number, so the sweep's subdirectories
stay apart across resumed and shared runs), keep their heartbeats while they run, and tell each trial its outcome:

- the job failed (or the launcher did: a lost SLURM job), or returned ``None`` or a non-finite value: ``FAIL``;
- the job's run reported pruning (the user attr ``pruned_epoch``, set by :class:`detloss.sweeps.OptunaTrial`):
  ``PRUNED``;
- otherwise ``COMPLETE`` with the objective values: the job's return value (a number, or one per direction), or,
  with ``objectives``, those metrics of what the run stored in the trial's user attr ``metrics``.

The trial that a job's process tells first wins: a trial already finished (failed as stale by another process) is
left as it is. At the end ``optimization_results.yaml`` in the sweep directory gives the best parameters and value
(one objective) or the Pareto front (``best_trials``, several), and the trials by state.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf

from .config import SAMPLERS
from .search_space import SearchSpace, grid_of, search_space
from .storage import PRUNER_ATTR, TrialIdentity, build, build_pruner, normalise_storage, open_storage
from .trials import Heartbeat, abandon, fail_stale_trials, tell_trial, trial_count

if TYPE_CHECKING:
    import optuna

__all__ = ["DetlossOptunaSweeper"]

log = logging.getLogger(__name__)

_DIRECTIONS = ("minimize", "maximize")


def _plain(value: Any) -> Any:
    """A config node as plain containers, interpolations resolved."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


class DetlossOptunaSweeper(Sweeper):
    """See the module's docstring and :class:`~.config.DetlossOptunaSweeperConf` for the keys."""

    def __init__(
        self,
        sampler: Any = None,
        pruner: Any = None,
        direction: Any = "minimize",
        objectives: Any = None,
        study_name: str | None = None,
        storage: Any = None,
        n_trials: int = 20,
        max_trials: int | None = None,
        n_jobs: int = 1,
        max_failure_rate: float = 0.0,
        params: Mapping[str, Any] | None = None,
        heartbeat_interval: float = 60.0,
        grace_period: float | None = None,
        retry_stale: bool = True,
    ) -> None:
        self.sampler_spec, self.pruner_spec = _plain(sampler), _plain(pruner)
        self.directions = _directions(_plain(direction))
        objectives = _plain(objectives)
        if isinstance(objectives, str):
            objectives = [objectives]
        if objectives is not None and len(objectives) != len(self.directions):
            raise ValueError(
                f"hydra.sweeper.objectives: one metric per direction, got {len(objectives)} objectives for "
                f"directions {self.directions}"
            )
        if len(self.directions) > 1 and self.pruner_spec not in (None, "none") and not _is_nop(self.pruner_spec):
            raise ValueError(
                "hydra.sweeper.pruner: Optuna prunes single-objective studies only; with several directions use "
                "pruner: none (override /hydra/sweeper/pruner: none)"
            )
        for key, value, low in (("n_trials", n_trials, 0), ("n_jobs", n_jobs, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"hydra.sweeper.{key}: an integer >= {low}, got {value!r}")
        if max_trials is not None and (not isinstance(max_trials, int) or max_trials < 0):
            raise ValueError(f"hydra.sweeper.max_trials: null or an integer >= 0, got {max_trials!r}")
        if not 0.0 <= max_failure_rate <= 1.0:
            raise ValueError(f"hydra.sweeper.max_failure_rate: between 0 and 1, got {max_failure_rate}")
        if heartbeat_interval <= 0:
            raise ValueError(f"hydra.sweeper.heartbeat_interval: seconds > 0, got {heartbeat_interval}")
        if grace_period is not None and grace_period < 0:
            raise ValueError(f"hydra.sweeper.grace_period: null or seconds >= 0, got {grace_period}")
        self.objectives = objectives
        self.study_name = study_name or "detloss"
        self.storage_spec = _plain(storage)
        self.n_trials, self.max_trials, self.n_jobs = n_trials, max_trials, n_jobs
        self.max_failure_rate = max_failure_rate
        self.params = _plain(params) or {}
        self.heartbeat_interval = float(heartbeat_interval)
        self.grace_period = float(grace_period) if grace_period is not None else 2 * self.heartbeat_interval + 60
        self.retry_stale = retry_stale
        self.storage_url: str | None = None  # the normalised storage spec, once the study is created
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        if len(self.directions) > 1 and self.objectives is None and isinstance(config.get("optimized_metric"), str):
            raise ValueError(
                f"hydra.sweeper.objectives: {len(self.directions)} directions need as many metric names (e.g. "
                f"[{config.optimized_metric}, time/step]); a detloss job returns only optimized_metric"
            )
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # -- the study -------------------------------------------------------------------------------------------------

    def create_study(self, space: SearchSpace) -> optuna.Study:
        """The study in its storage: created, or loaded if it exists (a resumed or shared search)."""
        import optuna

        sweep_dir = Path(self.config.hydra.sweep.dir)
        self.storage_url = normalise_storage(self.storage_spec, sweep_dir)
        storage = open_storage(self.storage_url)
        study = optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            sampler=self.build_sampler(space, trial_count(storage, self.study_name)),
            pruner=build_pruner(self.pruner_spec),
            directions=self.directions,
            load_if_exists=True,
        )
        found = [d.name.lower() for d in study.directions]
        if found != self.directions:
            raise ValueError(
                f"hydra.sweeper.direction: the study {self.study_name!r} in {self.storage_url} optimises {found}, "
                f"got {self.directions}"
            )
        return study

    def build_sampler(self, space: SearchSpace, trials_before: int = 0) -> optuna.samplers.BaseSampler:
        """The configured sampler; a grid sampler without a ``search_space`` gets the grid of the params.

        Joining a study that holds ``trials_before`` trials (a resumed search, a second process), a sampler's
        ``seed`` is offset by that count, so that its random draws (TPE's startup trials, the random sampler) do not
        repeat those of the run that started the study with the same seed."""
        spec = self.sampler_spec if self.sampler_spec is not None else "tpe"
        if trials_before and isinstance(spec, Mapping) and isinstance(spec.get("seed"), int):
            spec = {**spec, "seed": spec["seed"] + trials_before}
            log.info("detloss_optuna: the study holds %d trials: sampler seed %d", trials_before, spec["seed"])
        target = SAMPLERS.get(spec, spec) if isinstance(spec, str) else (spec or {}).get("_target_", "")
        extra = {}
        if str(target).endswith("GridSampler") and not (isinstance(spec, Mapping) and spec.get("search_space")):
            extra["search_space"] = grid_of(space.distributions)
        return build(spec, SAMPLERS, "hydra.sweeper.sampler", "optuna.samplers.BaseSampler", **extra)

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        """Run ``n_trials`` trials (fewer where ``max_trials`` or an exhausted grid stop it); see the module."""
        import optuna

        space = search_space(self.params, arguments)
        study = self.create_study(space)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info(
            "detloss_optuna: study %r in %s, %s, sampler %s, pruner %s; %d trials (%d before this run)",
            self.study_name,
            self.storage_url,
            self.directions,
            type(study.sampler).__name__,
            type(study.pruner).__name__,
            self.n_trials,
            len(study.trials),
        )
        returns: list[Sequence[JobReturn]] = []
        launched = failed = 0
        while launched < self.n_trials:
            fail_stale_trials(study, self.grace_period, retry=self.retry_stale)
            size = min(self.n_jobs, self.n_trials - launched)
            if self.max_trials is not None:
                states = (
                    optuna.trial.TrialState.COMPLETE,
                    optuna.trial.TrialState.PRUNED,
                    optuna.trial.TrialState.RUNNING,
                )
                size = min(size, self.max_trials - len(study.get_trials(deepcopy=False, states=states)))
            if isinstance(study.sampler, optuna.samplers.GridSampler) and study.sampler.is_exhausted(study):
                log.info("detloss_optuna: every point of the grid has been tried")
                break
            if size <= 0:
                log.info("detloss_optuna: the study holds max_trials=%d trials", self.max_trials)
                break
            trials = [study.ask(space.distributions) for _ in range(size)]
            try:
                results = self.run_trials(study, space, trials)
            except KeyboardInterrupt:  # Ctrl-C: the batch's trials are re-run when the search resumes
                abandon(study, trials, retry=self.retry_stale)
                raise
            except Exception:  # a job that cannot be composed: it would fail again
                abandon(study, trials, retry=False)
                raise
            for trial, result in zip(trials, results):
                failed += self.tell(study, trial, result) == optuna.trial.TrialState.FAIL
            launched += size
            returns.append(results)
            if failed / launched > self.max_failure_rate:
                self.write_results(study)
                raise RuntimeError(
                    f"{failed} of {launched} trials failed, more than hydra.sweeper.max_failure_rate="
                    f"{self.max_failure_rate} allows (each job's error is in its directory)"
                )
        self.write_results(study)
        return returns

    def run_trials(self, study: optuna.Study, space: SearchSpace, trials: list) -> list[JobReturn]:
        """Launch one batch of trials, keeping their heartbeats meanwhile. Runs of consecutive trial numbers are
        launched together (the launcher numbers its jobs from ``initial_job_idx`` on)."""
        storage = study._storage
        pruner = self.pruner_spec if self.pruner_spec is not None else "none"
        batch = []
        for trial in trials:
            storage.set_trial_system_attr(trial._trial_id, PRUNER_ATTR, pruner)
            overrides = space.overrides(trial.params)
            log.info("detloss_optuna: trial %d: %s", trial.number, " ".join(overrides) or "(no parameters)")
            batch.append(overrides + TrialIdentity(self.storage_url, self.study_name, trial.number).overrides())
        self.validate_batch_is_legal(batch)
        results: list[JobReturn] = []
        with Heartbeat(storage, [t._trial_id for t in trials], self.heartbeat_interval):
            start = 0
            for end in range(1, len(trials) + 1):
                if end == len(trials) or trials[end].number != trials[end - 1].number + 1:
                    results += self._launch(batch[start:end], trials[start].number)
                    start = end
        return results

    def _launch(self, batch: list[list[str]], first: int) -> list[JobReturn]:
        """``launcher.launch``; a launcher that raises (the submitit launcher does when a SLURM job is lost) fails
        the batch's trials rather than the search."""
        try:
            return list(self.launcher.launch(batch, initial_job_idx=first))
        except Exception as error:
            log.error("detloss_optuna: the launcher failed for trials %d-%d: %r", first, first + len(batch) - 1, error)
            failed = []
            for _ in batch:
                result = JobReturn()
                result.status, result._return_value = JobStatus.FAILED, error
                failed.append(result)
            return failed

    def tell(self, study: optuna.Study, trial: optuna.trial.Trial, result: JobReturn) -> optuna.trial.TrialState:
        """Tell ``trial`` the outcome of its job (see the module's docstring); the state told (or found)."""
        from optuna.trial import TrialState

        frozen = study._storage.get_trial(trial._trial_id)
        if frozen.state.is_finished():
            log.warning("detloss_optuna: trial %d was already %s (by another process)", trial.number, frozen.state.name)
            return frozen.state
        values, why = None, None
        if result.status != JobStatus.COMPLETED:
            why = f"the job raised {result._return_value!r}"
        elif "pruned_epoch" in frozen.user_attrs:
            tell_trial(study, trial, state=TrialState.PRUNED)
            log.info("detloss_optuna: trial %d pruned at epoch %s", trial.number, frozen.user_attrs["pruned_epoch"])
            return TrialState.PRUNED
        elif result.return_value is None:
            why = "the job returned None (a failed run: see its metrics.json)"
        else:
            values, why = self.objective_values(result.return_value, frozen.user_attrs.get("metrics"))
        if values is None:
            log.warning("detloss_optuna: trial %d failed: %s", trial.number, why)
            tell_trial(study, trial, state=TrialState.FAIL)
            return TrialState.FAIL
        tell_trial(study, trial, values)
        log.info("detloss_optuna: trial %d: %s", trial.number, values if len(values) > 1 else values[0])
        return TrialState.COMPLETE

    def objective_values(self, returned: Any, metrics: Mapping[str, float] | None) -> tuple[list | None, str | None]:
        """The trial's objective values, or ``None`` and why not."""
        if self.objectives is not None:
            if metrics is None:
                return None, "the run stored no metrics in its trial (objectives need detloss.train's trial callback)"
            missing = [name for name in self.objectives if name not in metrics]
            if missing:
                return None, f"hydra.sweeper.objectives {missing} are not among the run's metrics {sorted(metrics)}"
            values = [metrics[name] for name in self.objectives]
        else:
            values = list(returned) if isinstance(returned, (list, tuple)) else [returned]
        if len(values) != len(self.directions):
            return None, f"{len(values)} values for {len(self.directions)} directions"
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            return None, f"the objective values are not numbers: {values!r}"
        if not all(math.isfinite(v) for v in values):
            return None, f"non-finite objective values {values}"
        return values, None

    def _optimized_metric(self) -> list[str] | None:
        """``[optimized_metric]`` of the sweep's config (what a detloss job returns), for a study of one objective."""
        metric = self.config.get("optimized_metric")
        return [metric] if isinstance(metric, str) and len(self.directions) == 1 else None

    def write_results(self, study: optuna.Study) -> None:
        """``optimization_results.yaml`` in the sweep directory."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        results: dict[str, Any] = {
            "name": "detloss_optuna",
            "study_name": self.study_name,
            "storage": self.storage_url,
            "directions": self.directions,
            "objectives": self.objectives or self._optimized_metric(),
            "trials": {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState},
        }
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if len(self.directions) == 1 and complete:
            best = study.best_trial
            results |= {"best_trial": best.number, "best_params": dict(best.params), "best_value": best.value}
        elif complete:
            front = [
                {"number": t.number, "values": list(t.values), "params": dict(t.params)} for t in study.best_trials
            ]
            results["best_trials"] = sorted(front, key=lambda t: t["number"])
        path = Path(self.config.hydra.sweep.dir) / "optimization_results.yaml"
        OmegaConf.save(OmegaConf.create(results), path)
        log.info("detloss_optuna: results in %s", path)


def _directions(direction: Any) -> list[str]:
    directions = [direction] if isinstance(direction, str) else list(direction or [])
    if not directions or any(d not in _DIRECTIONS for d in directions):
        raise ValueError(f"hydra.sweeper.direction: minimize, maximize or a list of them, got {direction!r}")
    return directions


def _is_nop(spec: Any) -> bool:
    return isinstance(spec, Mapping) and str(spec.get("_target_", "")).endswith("NopPruner")
