"""``detloss-check [training overrides]``: the loss-config check on the run that the overrides describe.

The training overrides compose ``configs/train.yaml`` as ``detloss-train`` would (``detloss-check loss=yolo_vfl``,
``detloss-check task=segmentation loss.terms.dice.loss.include_background=true``). The run is built (data, model,
criterion; the composite checks itself as it is built, :mod:`detloss.composite.checks`), then checked with the
run's facts: the head's classes, the data's regions, the run's epochs and steps, and one training batch through the
model and the criterion (what each term's view gives it, and whether its gradient reaches the model). Nothing is
trained or written.

Prints one line per finding, naming its term, and a summary; the exit status is 1 if there is an error (training
cannot work as configured), 0 otherwise (warnings printed).
"""

from __future__ import annotations

import math
import sys
import tempfile
import warnings
from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from .composite import Finding, LossConfigWarning, check_loss, check_views
from .composite.checks import ERROR, LossConfigError

__all__ = ["compose_run", "run_check", "steps_per_epoch", "main"]

USAGE = "usage: detloss-check [training overrides], e.g. detloss-check loss=yolo_vfl trainer.max_epochs=20"


def compose_run(overrides: Sequence[str], output_dir: str) -> DictConfig:
    """``configs/train.yaml`` composed with the training ``overrides``, its run directory ``output_dir`` unless the
    overrides name one (``paths.output_dir=...``)."""
    from .config import CONFIG_DIR

    overrides = list(overrides)
    if not any(o.startswith("paths.output_dir=") for o in overrides):
        overrides.insert(0, f"paths.output_dir={output_dir}")
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


def steps_per_epoch(cfg: DictConfig, batches: int) -> int:
    """Optimizer steps in one epoch of ``batches`` training batches under ``cfg.trainer`` (its
    ``limit_train_batches`` and ``accumulate_grad_batches``), as Lightning counts them."""
    limit = cfg.trainer.get("limit_train_batches")
    if isinstance(limit, float) and limit <= 1.0:
        batches = int(batches * limit)
    elif limit is not None:
        batches = min(batches, int(limit))
    return max(1, math.ceil(batches / max(1, int(cfg.trainer.get("accumulate_grad_batches") or 1))))


def run_check(overrides: Sequence[str]) -> list[Finding]:
    """The findings on the run that ``overrides`` describe (see the module docstring)."""
    import torch

    from .tasks.diagnostics import _tensors
    from .train import build

    with tempfile.TemporaryDirectory(prefix="detloss_check_") as out:
        try:
            cfg = compose_run(overrides, out)
        except Exception as error:  # a wrong override: Hydra says which
            return [Finding(ERROR, None, f"the config does not compose: {error}")]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", LossConfigWarning)  # checked below with the run's facts
                datamodule, task = build(cfg, pretrained=False)
        except Exception as error:
            check = _loss_config_error(error)  # Hydra wraps what a target raises
            if check is not None:
                return check.findings
            return [Finding(ERROR, None, f"the run cannot be built: {type(error).__name__}: {error}")]
        loader = datamodule.train_dataloader()
        epochs = cfg.trainer.get("max_epochs") or 1
        # the composite as configured (the criterion may have replicated it per scale of deep supervision)
        configured = instantiate(cfg.loss, check=False)
        criterion = task.criterion
        findings = check_loss(
            configured,
            num_classes=criterion.num_classes,
            regions=bool(datamodule.describe().get("regions")),
            epochs=int(epochs),
            steps_per_epoch=steps_per_epoch(cfg, len(loader)),
        )
        inputs, targets = next(iter(loader))
        task.train()
        composite = criterion.loss
        saved = composite.weights
        # every term on its view, whatever its weight now (a criterion builds only the views of non-zero terms)
        composite.weights = {n: (w if w != 0 else 1.0) for n, w in saved.items()}
        try:
            with torch.enable_grad():
                outputs = task.model(inputs)
                views = criterion.build_views(outputs, targets)
                batch = check_views(composite, views, _tensors(outputs))
        except Exception as error:
            return [*findings, Finding(ERROR, None, f"one batch fails: {type(error).__name__}: {error}")]
        finally:
            composite.weights = saved
    return findings + _as_configured(batch, configured.names)


def _loss_config_error(error: BaseException | None) -> LossConfigError | None:
    """The :class:`LossConfigError` that ``error`` is or was raised from, if any."""
    for _ in range(16):
        if error is None or isinstance(error, LossConfigError):
            return error
        error = error.__cause__ or error.__context__
    return None


def _as_configured(findings: list[Finding], names: list[str]) -> list[Finding]:
    """Findings on the copies of a term that a criterion made (``scale2/dice`` of ``dice``, on view
    ``scale2/pixels``) once, under its configured name."""
    seen, out = set(), []
    for f in findings:
        term, message = f.term, f.message
        if term is not None and term not in names and "/" in term and term.split("/", 1)[1] in names:
            group, term = term.split("/", 1)
            message = message.replace(f"'{group}/", "'")
        if (f.level, term, message) not in seen:
            seen.add((f.level, term, message))
            out.append(Finding(f.level, term, message))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``detloss-check``: print the findings; exit status 1 on an error, else 0."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(USAGE + "\n\n" + (__doc__ or "").strip())
        return 0
    flags = [a for a in args if a.startswith("-")]
    if flags:
        print(f"detloss-check: unknown option {flags[0]!r}\n{USAGE}", file=sys.stderr)
        return 2
    findings = run_check(args)
    for finding in findings:
        print(finding)
    errors = sum(f.level == ERROR for f in findings)
    warned = len(findings) - errors
    print(
        f"detloss-check: {errors} error{'s' * (errors != 1)}, {warned} warning{'s' * (warned != 1)}"
        + ("" if errors else " (training can start)")
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
