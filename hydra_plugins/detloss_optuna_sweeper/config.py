"""The sweeper's config, registered in Hydra's ConfigStore as ``hydra/sweeper=detloss_optuna``, and the samplers and
pruners it offers by name as the groups ``hydra/sweeper/sampler`` and ``hydra/sweeper/pruner``.

This module imports neither Optuna nor detloss: Hydra imports every module of a plugin package when it scans for
plugins, in every Hydra application of the environment. It has no ``from __future__ import annotations``: Hydra's
scan runs modules outside ``sys.modules``, where a dataclass cannot resolve string annotations.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

__all__ = ["DetlossOptunaSweeperConf", "SAMPLERS", "PRUNERS"]

#: the samplers by short name (``sampler: tpe``) and the group configs of the same names; any other sampler is a
#: ``_target_`` mapping (``sampler: {_target_: optuna.samplers.QMCSampler, seed: 0}``)
SAMPLERS = {
    "tpe": "optuna.samplers.TPESampler",
    "random": "optuna.samplers.RandomSampler",
    "grid": "optuna.samplers.GridSampler",
    "cmaes": "optuna.samplers.CmaEsSampler",
    "nsgaii": "optuna.samplers.NSGAIISampler",
    "qmc": "optuna.samplers.QMCSampler",
}

#: the pruners by short name (``pruner: median``) and the group configs of the same names
PRUNERS = {
    "none": "optuna.pruners.NopPruner",
    "median": "optuna.pruners.MedianPruner",
    "successive_halving": "optuna.pruners.SuccessiveHalvingPruner",
    "hyperband": "optuna.pruners.HyperbandPruner",
}

#: the options of each group config, with Optuna's defaults (Optuna 4 and 5); a key set in an ``hparams_search``
#: config or on the command line must be one of these (Hydra refuses others, naming the key) or go through a
#: ``_target_`` mapping of one's own
_SAMPLER_OPTIONS: dict[str, dict[str, Any]] = {
    "tpe": {
        "seed": None,
        "n_startup_trials": 10,
        "n_ei_candidates": 24,
        "multivariate": False,
        "group": False,
        "constant_liar": True,
    },  # fmt: skip
    "random": {"seed": None},
    "grid": {"seed": None, "search_space": None},  # null: the grid of the params (choices and ranges)
    "cmaes": {
        "seed": None,
        "n_startup_trials": 1,
        "sigma0": None,
        "popsize": None,
        "restart_strategy": None,
        "use_separable_cma": False,
        "with_margin": False,
        "lr_adapt": False,
    },  # fmt: skip
    "nsgaii": {
        "seed": None,
        "population_size": 50,
        "mutation_prob": None,
        "crossover_prob": 0.9,
        "swapping_prob": 0.5,
    },  # fmt: skip
    "qmc": {"seed": None, "qmc_type": "sobol", "scramble": False},
}
_PRUNER_OPTIONS: dict[str, dict[str, Any]] = {
    "none": {},
    "median": {"n_startup_trials": 5, "n_warmup_steps": 0, "interval_steps": 1, "n_min_trials": 1},
    "successive_halving": {
        "min_resource": "auto",
        "reduction_factor": 4,
        "min_early_stopping_rate": 0,
        "bootstrap_count": 0,
    },  # fmt: skip
    "hyperband": {"min_resource": 1, "max_resource": "auto", "reduction_factor": 3, "bootstrap_count": 0},
}


@dataclass
class DetlossOptunaSweeperConf:
    """``hydra/sweeper=detloss_optuna``: an Optuna (>= 4) study whose trials are Hydra jobs.

    Keys (the guide's *Sweeps and reports* page, "An Optuna search"):
        sampler, pruner: a group config (``override /hydra/sweeper/sampler: tpe`` with its options beside it), a
            short name (``tpe``, ``random``, ``grid``, ``cmaes``, ``nsgaii``, ``qmc``; ``none``, ``median``,
            ``successive_halving``, ``hyperband``) or a ``_target_`` mapping.
        direction: ``minimize`` / ``maximize``, or a list of them for several objectives.
        objectives: ``null``: the job's return value is the objective (detloss: ``optimized_metric``); or the
            names of the metrics a detloss run reports to its trial at the end of fit (its scalar metrics, e.g.
            ``val/map_50``, and ``time/step``), one per direction.
        study_name: the study's name in the storage (``null``: ``detloss``).
        storage: ``null``: ``sqlite:///<sweep dir>/optuna.db``; a database URL (``sqlite:///...``,
            ``postgresql://...``, ``mysql://...``); Optuna's journal file, ``journal:///path/to/optuna.log`` or
            ``{journal: path, lock: open | symlink}``. Several processes share a study through one storage.
        n_trials: the trials this process launches (Optuna's ``optimize(n_trials=...)``).
        max_trials: ``null``, or a cap on the study's trials, all processes together (complete, pruned and
            running trials count): a resumed or shared study stops there.
        n_jobs: the trials asked and launched together (one launcher batch: the basic launcher runs them one after
            another, the submitit launcher as parallel SLURM jobs).
        max_failure_rate: the share of this process's launched trials that may fail before the sweep stops with
            an error (pruned trials are not failures).
        params: the search space, ``{override key: Hydra sweep string}`` (``choice(...)``, ``interval(a, b)``,
            ``range(a, b, step)``, ``tag(log, interval(...))``, ``int(interval(...))``, a comma list) or a YAML
            list (a choice); a plain value is passed to every job.
        heartbeat_interval, grace_period: seconds; this process records a heartbeat of each trial it runs every
            ``heartbeat_interval``; a running trial of this study without one for ``grace_period`` (``null``:
            ``2 * heartbeat_interval + 60``) belonged to a process that is gone and is marked failed.
        retry_stale: re-run a trial so marked, once, with the same parameters (a new trial number whose user attr
            ``retry_of`` names the first).
    """

    defaults: list[Any] = field(default_factory=lambda: ["_self_", {"sampler": "tpe"}, {"pruner": "none"}])
    _target_: str = "hydra_plugins.detloss_optuna_sweeper.sweeper.DetlossOptunaSweeper"
    # the sweeper gets sampler and pruner as configs: the pruner's config goes to every job, which builds its own
    _recursive_: bool = False
    sampler: Any = None
    pruner: Any = None
    direction: Any = "minimize"
    objectives: Any = None
    study_name: str | None = None
    storage: Any = None
    n_trials: int = 20
    max_trials: int | None = None
    n_jobs: int = 1
    max_failure_rate: float = 0.0
    params: dict[str, Any] | None = None
    heartbeat_interval: float = 60.0
    grace_period: float | None = None
    retry_stale: bool = True


def _register() -> None:
    store = ConfigStore.instance()
    store.store(group="hydra/sweeper", name="detloss_optuna", node=DetlossOptunaSweeperConf, provider="detloss")
    for name, options in _SAMPLER_OPTIONS.items():
        node = {"_target_": SAMPLERS[name], **options}
        store.store(group="hydra/sweeper/sampler", name=name, node=node, provider="detloss")
    for name, options in _PRUNER_OPTIONS.items():
        node = {"_target_": PRUNERS[name], **options}
        store.store(group="hydra/sweeper/pruner", name=name, node=node, provider="detloss")


_register()
