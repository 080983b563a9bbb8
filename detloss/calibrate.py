"""``detloss-calibrate [options] [training overrides]``: the term weights that give each term a target share of the
gradient at the model's output, printed as overrides ready to paste.

The training overrides compose the run as ``detloss-train`` would; the run then trains its first ``--steps``
optimizer steps (default 200; fewer if the run is shorter) from its own config (data, model, optimizer, the
learning-rate and weight schedules over the run's whole length, balancing), without validation, checkpoints or
logs, while the gradient diagnostics (:class:`~detloss.tasks.GradientDiagnostics`, as ``callbacks=diagnostics``
measures them) take each term's gradient norm with respect to the model's output every ``--every`` steps. Over the
second half of the steps (the first half lets the start pass), a term ``c`` of configured weight ``b_c`` has the
mean norm per unit of weight ``m_c`` (the norms of the copies a criterion makes of a term, the scales of deep
supervision, added up), and the share ``s_c = b_c·m_c / Σ_j b_j·m_j``. The weights for target shares ``t_c`` are::

    b'_c = t_c · (Σ_j b_j·m_j) / m_c

which keeps the sum of the terms' gradient norms (so the step's size) as it was. The targets are equal shares, or,
with ``--reference OVERRIDES`` (e.g. ``--reference loss=yolo``), the shares measured the same way on the run with
those overrides added: the terms of both runs take the reference's shares, in proportion, of what the terms of this
run alone leave them. A term of weight 0 throughout (not computed) is not measured and keeps its weight.

Prints a table (weight, share, target, new weight per term) and one line of overrides, e.g.
``loss.terms.box.weight=5.12 loss.terms.cls.weight=1.31 loss.terms.dfl.weight=0.817``. The weights are those of
the configuration: a term inside a group (``loss.terms.one2many.box``) gets its own weight, the group's left as it
is. Ultralytics' gains and detloss's weights translate with :mod:`detloss.detection.gains`.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from .check import compose_run
from .tasks.diagnostics import GradientDiagnostics

__all__ = ["Measurement", "measure", "target_shares", "calibrated_weights", "overrides", "main"]


class _Recorder(GradientDiagnostics):
    """The gradient diagnostics, each measurement kept (with its step) rather than only the latest; it stops the
    run after ``steps`` optimizer steps."""

    def __init__(self, every_n_steps: int, steps: int):
        super().__init__(every_n_steps=every_n_steps)
        self.steps = steps
        self.records: list[tuple[int, dict[str, float]]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.steps:
            trainer.should_stop = True

    def on_loss(self, trainer, task, batch, outputs, loss) -> None:
        self.last = {}
        super().on_loss(trainer, task, batch, outputs, loss)
        if self.last:
            self.records.append((trainer.global_step, dict(self.last)))


@dataclass
class Measurement:
    """One calibration run: per configured term its weight ``b_c``, its mean gradient norm per unit of weight ``m_c``
    (``None``: not computed while measured) and share ``s_c``; the number of measurements averaged."""

    weights: dict[str, float]
    norms: dict[str, float | None]
    shares: dict[str, float]
    measurements: int
    steps: int


def _configured_term(name: str, configured: Sequence[str]) -> str | None:
    """The configured term that a term of the criterion's composite is (itself, or a copy ``<group>/<term>``)."""
    if name in configured:
        return name
    rest = name.split("/", 1)[1] if "/" in name else None
    return rest if rest in configured else None


def measure(cfg: DictConfig, steps: int = 200, every: int = 5) -> Measurement:
    """Train the run of ``cfg`` for ``steps`` steps and measure its terms' gradient shares (module docstring)."""
    from .train import build, make_trainer

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no banner of devices and tips
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, task = build(cfg)
    configured = instantiate(cfg.loss, check=False)
    weights = dict(configured.base_weights)
    recorder = _Recorder(every, steps)
    # the run's own length (its learning-rate and weight schedules read it), stopped after `steps` steps
    trainer = make_trainer(
        cfg,
        logger=False,
        callbacks=[recorder],
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, datamodule=datamodule)
    done = trainer.global_step
    kept = [stats for step, stats in recorder.records if step >= done // 2] or [s for _, s in recorder.records]
    sums = dict.fromkeys(weights, 0.0)
    seen: set[str] = set()
    for stats in kept:
        for key, value in stats.items():
            if not key.startswith("diag/grad_norm/"):
                continue
            term = _configured_term(key[len("diag/grad_norm/") :], list(weights))
            if term is not None:
                sums[term] += value
                seen.add(term)
    norms = {t: (sums[t] / len(kept) / weights[t] if t in seen and weights[t] > 0 else None) for t in weights}
    pulls = {t: weights[t] * m for t, m in norms.items() if m is not None}
    total = sum(pulls.values())
    shares = {t: (p / total if total > 0 else 0.0) for t, p in pulls.items()}
    return Measurement(weights, norms, shares, len(kept), done)


def target_shares(run: Measurement, reference: Measurement | None = None) -> dict[str, float]:
    """Equal shares over the measured terms of ``run``; with a ``reference``, its shares for the terms of both,
    scaled to what this run's other terms leave (those keep their measured shares)."""
    measured = [t for t, m in run.norms.items() if m is not None and m > 0]
    if not measured:
        raise ValueError("no term was measured: every term had weight 0 or no gradient at the model's output")
    if reference is None:
        return {t: 1.0 / len(measured) for t in measured}
    common = [t for t in measured if reference.shares.get(t, 0.0) > 0]
    if not common:
        raise ValueError(
            f"--reference: its measured terms {sorted(reference.shares)} share no name with this run's {measured}"
        )
    free = 1.0 - sum(run.shares[t] for t in measured if t not in common)
    scale = sum(reference.shares[t] for t in common)
    return {t: (reference.shares[t] * free / scale if t in common else run.shares[t]) for t in measured}


def calibrated_weights(run: Measurement, targets: Mapping[str, float]) -> dict[str, float]:
    """``b'_c = t_c · (Σ_j b_j·m_j) / m_c`` for the terms with a target (module docstring)."""
    pull = sum(run.weights[t] * m for t, m in run.norms.items() if m is not None)
    return {t: targets[t] * pull / run.norms[t] for t in targets}


def overrides(cfg: DictConfig, weights: Mapping[str, float]) -> list[str]:
    """``loss.terms.<path>.weight=<value>`` for each configured term: its weight within its groups (the flat
    weight divided by the weights of the groups that hold it), to four significant digits."""
    out = []
    for name, weight in weights.items():
        node, factor = cfg.loss.terms, 1.0
        parts = name.split("/")
        for group in parts[:-1]:
            node = node[group]
            factor *= float(node.get("weight", 1.0))
        out.append(f"loss.terms.{'.'.join(parts)}.weight={weight / factor:.4g}")
    return out


def _table(run: Measurement, targets: Mapping[str, float], new: Mapping[str, float]) -> str:
    width = max(len(t) for t in run.weights) + 2
    lines = [f"{'term':<{width}}{'weight':>10}{'share':>10}{'target':>10}{'new weight':>12}"]
    for term, weight in run.weights.items():
        if term not in new:
            lines.append(f"{term:<{width}}{weight:>10.4g}{'-':>10}{'-':>10}{'(kept)':>12}")
            continue
        share, target = run.shares[term], targets[term]
        lines.append(f"{term:<{width}}{weight:>10.4g}{share:>10.3f}{target:>10.3f}{new[term]:>12.4g}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detloss-calibrate",
        description="Print the term weights that give each term a target share of the gradient at the model's "
        "output (equal shares, or a reference run's), as overrides ready to paste.",
    )
    parser.add_argument("overrides", nargs="*", help="training overrides, as detloss-train takes them")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps to train and measure (default 200)")
    parser.add_argument("--every", type=int, default=5, help="measure every this many steps (default 5)")
    parser.add_argument(
        "--reference",
        action="append",
        default=None,
        metavar="OVERRIDES",
        help="target the shares of the run with these overrides added, e.g. --reference loss=yolo (repeatable; "
        "several overrides in one quoted argument)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``detloss-calibrate``: measure, print the table and the overrides; exit status 1 if nothing can be measured."""
    args = _parser().parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    if args.steps < 2 or args.every < 1:
        print("detloss-calibrate: --steps must be at least 2 and --every at least 1", file=sys.stderr)
        return 2
    reference_overrides = [o for value in args.reference or [] for o in shlex.split(value)]
    with tempfile.TemporaryDirectory(prefix="detloss_calibrate_") as out:
        cfg = compose_run(args.overrides, out)
        run = measure(cfg, args.steps, args.every)
        reference = None
        if reference_overrides:
            reference = measure(compose_run([*args.overrides, *reference_overrides], out), args.steps, args.every)
    try:
        targets = target_shares(run, reference)
    except ValueError as error:
        print(f"detloss-calibrate: {error}", file=sys.stderr)
        return 1
    new = calibrated_weights(run, targets)
    against = f"the shares of {' '.join(reference_overrides)}" if reference is not None else "equal shares"
    print(
        f"detloss-calibrate: {run.steps} steps, gradient shares at the model's output averaged over "
        f"{run.measurements} measurements of the second half; targets: {against}"
    )
    print(_table(run, targets, new))
    print()
    print(" ".join(overrides(cfg, new)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
