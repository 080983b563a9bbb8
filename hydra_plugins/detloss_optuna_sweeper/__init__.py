"""detloss's Hydra sweeper on Optuna (>= 4): ``hydra/sweeper=detloss_optuna``.

It takes the search-space syntax of Hydra's Optuna sweeper (``choice``, ``interval``, ``range``, ``tag(log, ...)``,
``int(...)``, lists; :mod:`.search_space`) and its keys (``n_trials``, ``n_jobs``, ``direction``, ``study_name``,
``storage``, ``sampler``), adds ``pruner``, ``objectives``, ``max_trials`` and the heartbeat of running trials
(:mod:`.config`), keeps the study in SQLite in the sweep directory, any database, or Optuna's journal file shared by
many processes (:mod:`.storage`), and launches each trial as a job of the configured Hydra launcher (basic,
submitit/SLURM) with its trial identity, so that a job in any process reports its epochs and is pruned
(:mod:`detloss.sweeps`). The sweeper is :class:`.sweeper.DetlossOptunaSweeper`.

Hydra finds the plugin by scanning the namespace package ``hydra_plugins`` (which has no ``__init__.py``: other
plugins share it). The scan imports every module here, in every Hydra application of the environment, so no module
imports Optuna or detloss at the top.
"""
