"""``detloss-report PATH [--out DIR] [--baseline KEY=VALUE ...]``: tables, statistics and plots of one training run
or of a Hydra sweep.

PATH is either a *run directory* (it holds ``metrics.json``) or a *sweep directory* (a Hydra multirun directory
whose job subdirectories ``0/``, ``1/``, ... are run directories; any depth-1 or depth-2 subdirectory holding a
``metrics.json`` counts, ``report/`` is skipped). The report goes to ``PATH/report/`` unless ``--out`` says where.

Inputs, as ``detloss-train`` writes them into a run directory:

``metrics.json``
    ``{"status": "ok" | "failed" | "pruned", "task", "optimized_metric": "val/map_50", "mode": "max" | "min",
    "value": float | null, "overrides": [Hydra command-line overrides], "seed", "metrics": {"val/...": float},
    "train": {"train/loss...": float}, "epochs", "steps", "seconds" (wall time), "best_checkpoint",
    "error" (failed runs only), "pruned_epoch" (pruned runs only)}``. Only ``status`` is relied on; older
    records without ``overrides`` / ``seed`` fall back to ``.hydra/overrides.yaml`` (a YAML list of strings) and
    the top-level ``seed`` of ``config.yaml``; ``mode`` defaults to ``max``. A numbered job directory without
    ``metrics.json`` counts as a failed job.
``csv/metrics.csv``
    Lightning's CSVLogger file: columns ``epoch``, ``step`` and one per logged key, rows sparse (a row holds
    only the keys logged at that step). Keys read: ``train/loss``, ``train/loss/<term>`` (per step),
    ``val/loss``, ``val/loss/<term>``, ``val/<metric>`` (per validation epoch), ``train/weight/<term>``,
    ``diag/grad_norm/<term>``, ``diag/grad_share/<term>``, ``diag/grad_cos/<a>__<b>``, and any other
    ``diag/<family>/<name>`` (such as ``diag/assign/one2one/unmatched/small``). Any may be absent.

Outputs. A sweep: ``report.md`` and ``report.csv`` with one row per sweep point (a job's overrides without
``seed=``; the jobs of one point differ only in seed and are aggregated over the seeds that finished: mean, sample
std and Student-t 95 % interval, ``<metric>_ci95_low`` / ``_ci95_high``), sorted by the optimised metric, plus
``sweep_<key>.png`` per swept key (metric against the value, lines for numeric keys, bars for categorical ones) and
the best run's report in ``best_run/``. With ``--baseline`` (overrides naming one point, apart from its seed), each
other point's difference to it paired by seed: ``<metric>_diff``, ``_diff_ci95_low``, ``_diff_ci95_high``, ``_p``
(paired t-test), ``_resolved`` (the interval excludes 0) (:mod:`detloss.report.stats`). The rank correlations
between validation loss terms and the optimised metric, per run over epochs and across points, in
``loss_metric_correlation.csv`` (:mod:`detloss.report.correlation`). For an Optuna search with a storage beside
the sweep, parameter importances and ``optuna_history.csv`` / ``.png`` (:mod:`detloss.report.study`). Runs that
an Optuna pruner stopped count neither as results nor as failures; they are listed. A run: ``report.md`` with
the final numbers, its loss-metric correlations, and ``loss_terms.png``, ``loss_share.png``, ``metrics.png``,
``weights.png``, ``grad_norm.png``, ``grad_share.png``, ``grad_cos.png`` where their data exists, and one
``diag_<family>.png`` (a line per ``<name>``) for each other ``diag/<family>/`` family logged.

Errors. ``report()`` raises ``FileNotFoundError`` for a PATH that does not exist and ``ValueError`` for one that is
not a directory or holds no run, or for a ``--baseline`` that names no point or several (the message names
``--baseline`` and lists the points); ``detloss-report`` prints them as one line, ``detloss-report: error: ...``, on
stderr and exits with status 1.
"""

# Layout: load.py reads run directories (metrics.json, csv/metrics.csv); aggregate.py groups a sweep's runs into
# points; stats.py takes their statistics over seeds and against a baseline (scipy); correlation.py the loss-metric
# rank correlations; study.py reads an Optuna study; tables.py formats numbers and writes the Markdown and CSV
# tables; plots.py draws the figures; write.py puts them together into report.md; cli.py is ``detloss-report``, the
# only place that prints errors and exits. The names below are the public API; the modules' other names are internal.

from detloss.report.aggregate import Point, group_points
from detloss.report.cli import main
from detloss.report.load import Run, find_runs, load_run, read_series
from detloss.report.stats import Paired, Summary, find_baseline, paired, summarise
from detloss.report.write import report, write_run_report, write_sweep_report

__all__ = [
    "Run",
    "Point",
    "load_run",
    "find_runs",
    "group_points",
    "read_series",
    "Summary",
    "Paired",
    "summarise",
    "paired",
    "find_baseline",
    "write_run_report",
    "write_sweep_report",
    "report",
    "main",
]
