"""Where a training step's time goes, for the default runs (docs/benchmarks/training_step.md).

    python tools/profile_step.py                                  # detection, segmentation, volumetric defaults
    python tools/profile_step.py --tasks detection --steps 30 -- compile=true     # Hydra overrides after --

For each task the default run (``python -m detloss.train task=<task>``, its real configs, loader, callbacks and
logger) trains ``--warmup + --steps`` batches of one epoch and validates ``--val-batches`` batches. A callback
(:class:`StepProfiler`) reads the clock at Lightning's hooks, plus thin wrappers around the task's
``training_step``, its ``on_train_batch_end`` (where the EMA is updated), the criterion's forward and the
validation metrics' ``update``; nothing of the loop is re-implemented. Per training step after the warm-up:

- data wait: from the end of the previous step to ``on_train_batch_start`` (the loader's ``next``, Lightning's
  bookkeeping);
- forward: ``training_step`` start → criterion start; criterion: the criterion's call;
- backward: ``on_before_backward`` → ``on_after_backward``;
- optimizer: ``on_before_optimizer_step`` → the end of the task's ``on_train_batch_end`` (gradient clipping, the
  optimizer, the LR scheduler, the EMA update, the callbacks' batch-end hooks);
- step: ``on_train_batch_start`` → that end, so the parts (besides the data wait) sum to at most the step; the
  rest (logging, the NaN guard's check, zero_grad) is "other".

And per validation batch: the metric updates (every torchmetrics ``Metric`` of the task) and the whole batch; per
validation: the metrics' ``compute`` at its end (detection: the COCO evaluation behind the mAP).

The loader alone: the training DataLoader at the configured ``num_workers``, iterated for ``--loader-batches``
batches after its first (worker start-up excluded), in images per second, against what the step consumes: the
batch size over the mean step time without the data wait.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from torchmetrics import Metric

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detloss.config import CONFIG_DIR
from detloss.train import build, make_trainer  # noqa: E402

PARTS = ("data wait", "forward", "criterion", "backward", "optimizer", "other")


class StepProfiler(L.Callback):
    """Times the parts of each training step and each validation batch (see the module docstring)."""

    def __init__(self, warmup: int = 3):
        self.warmup = warmup
        self.steps: list[dict[str, float]] = []
        self.val: list[dict[str, float]] = []
        self._t: dict[str, float] = {}
        self._end: float | None = None
        self._metric_time = 0.0
        self._compute_time = 0.0
        self.computes: list[float] = []

    # -------------------------------------------------------------------------------------------- wrapping

    def setup(self, trainer, task, stage):
        original_step, original_end = task.training_step, task.on_train_batch_end

        def training_step(*args, **kwargs):
            self._t["step_start"] = time.perf_counter()
            return original_step(*args, **kwargs)

        def on_train_batch_end(*args, **kwargs):
            out = original_end(*args, **kwargs)
            self._finish_step()
            return out

        task.training_step, task.on_train_batch_end = training_step, on_train_batch_end
        task.criterion.register_forward_pre_hook(lambda *_: self._t.__setitem__("crit_start", time.perf_counter()))
        task.criterion.register_forward_hook(lambda *_: self._t.__setitem__("crit_end", time.perf_counter()))
        for metric in (m for m in task.modules() if isinstance(m, Metric)):
            metric.update = self._timed(metric.update, "_metric_time")
            metric.compute = self._timed(metric.compute, "_compute_time")

    def _timed(self, method, total: str):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                setattr(self, total, getattr(self, total) + time.perf_counter() - start)

        return timed

    # ------------------------------------------------------------------------------------------- training

    def on_train_batch_start(self, trainer, task, batch, batch_idx):
        now = time.perf_counter()
        self._t = {"start": now, "wait": now - self._end if self._end is not None else float("nan")}

    def on_before_backward(self, trainer, task, loss):
        self._t["bwd_start"] = time.perf_counter()

    def on_after_backward(self, trainer, task):
        self._t["bwd_end"] = time.perf_counter()

    def on_before_optimizer_step(self, trainer, task, optimizer):
        self._t["opt_start"] = time.perf_counter()

    def _finish_step(self):
        self._end = end = time.perf_counter()
        t = self._t
        if "opt_start" not in t or "crit_end" not in t:  # a skipped step: not timed
            return
        row = {
            "data wait": t["wait"],
            "forward": t["crit_start"] - t["step_start"],
            "criterion": t["crit_end"] - t["crit_start"],
            "backward": t["bwd_end"] - t["bwd_start"],
            "optimizer": end - t["opt_start"],
            "step": end - t["start"],
        }
        row["other"] = row["step"] - sum(row[p] for p in PARTS[1:5])
        self.steps.append(row)

    def on_train_epoch_end(self, trainer, task):
        self._end = None  # the next epoch's first wait includes the worker start-up: not a step's wait

    # ----------------------------------------------------------------------------------------- validation

    def on_validation_epoch_start(self, trainer, task):
        self._compute_time = 0.0

    def on_validation_end(self, trainer, task):  # after the task's on_validation_epoch_end, where metrics compute
        if not trainer.sanity_checking:
            self.computes.append(self._compute_time)

    def on_validation_batch_start(self, trainer, task, batch, batch_idx, dataloader_idx=0):
        self._metric_time, self._val_start = 0.0, time.perf_counter()

    def on_validation_batch_end(self, trainer, task, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.val.append({"metric update": self._metric_time, "batch": time.perf_counter() - self._val_start})

    # -------------------------------------------------------------------------------------------- results

    def summary(self) -> dict[str, float]:
        """Mean seconds of each part over the steps after the warm-up (and of the validation batches)."""
        steps = self.steps[self.warmup :]
        if not steps:
            raise ValueError(f"no training step after the {self.warmup} warm-up steps was timed")
        out = {k: sum(s[k] for s in steps) / len(steps) for k in (*PARTS, "step")}
        out["steps"] = len(steps)
        if self.val:
            out["val metric update"] = sum(v["metric update"] for v in self.val) / len(self.val)
            out["val batch"] = sum(v["batch"] for v in self.val) / len(self.val)
        if self.computes:
            out["val metric compute"] = sum(self.computes) / len(self.computes)
        return out


def loader_rate(datamodule, batches: int) -> float:
    """Images per second of the training DataLoader alone, after its first batch."""
    loader = datamodule.train_dataloader()
    it = iter(loader)
    next(it)  # worker start-up
    images, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            inputs, _ = next(it)
        except StopIteration:
            break
        images += len(inputs)
    elapsed = time.perf_counter() - start
    del it
    return images / elapsed


def profile(overrides, warmup: int = 3, steps: int = 20, val_batches: int = 4, loader_batches: int = 20) -> dict:
    """Train ``warmup + steps`` batches of the configured run (``overrides``: Hydra's) and time their parts."""
    with tempfile.TemporaryDirectory() as out, initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"paths.output_dir={out}",
                "trainer.max_epochs=1",
                f"+trainer.limit_train_batches={warmup + steps}",
                f"+trainer.limit_val_batches={val_batches}",
                "trainer.num_sanity_val_steps=0",
                *overrides,
            ],
        )
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule, task = build(cfg)
        profiler = StepProfiler(warmup)
        trainer = make_trainer(cfg, [profiler])
        trainer.fit(task, datamodule=datamodule)
        result = profiler.summary()
        result["batch size"] = cfg.data.batch_size
        result["num_workers"] = cfg.data.get("num_workers", 0)
        result["loader img/s"] = loader_rate(datamodule, loader_batches) if loader_batches else float("nan")
        result["step img/s"] = cfg.data.batch_size / (result["step"])
        return result


def rows(name: str, r: dict) -> list[str]:
    timed = (*PARTS, "step", "val metric update", "val batch", "val metric compute")
    ms = {k: 1e3 * v for k, v in r.items() if k in timed}
    parts = " | ".join(f"{ms[p]:.1f}" for p in PARTS)
    return [
        f"| {name} | {r['batch size']} | {parts} | {ms['step']:.1f} | {ms.get('val metric update', float('nan')):.1f} "
        f"/ {ms.get('val batch', float('nan')):.1f} | {ms.get('val metric compute', float('nan')):.0f} | "
        f"{r['loader img/s']:.0f} ({r['num_workers']} workers) | "
        f"{r['step img/s']:.0f} |"
    ]


HEADER = [
    "| run | batch | data wait (ms) | forward | criterion | backward | optimizer (+EMA) | other | step (ms) | "
    "val: metric update / batch (ms) | val: metric compute (ms) | loader alone (img/s) | step consumes (img/s) |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["detection", "segmentation", "volumetric"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--val-batches", type=int, default=4)
    parser.add_argument("--loader-batches", type=int, default=20)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every task (after --)")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    lines = list(HEADER)
    for task in args.tasks:
        result = profile(
            [f"task={task}", *args.overrides], args.warmup, args.steps, args.val_batches, args.loader_batches
        )
        lines += rows(" ".join([f"`task={task}`", *(f"`{o}`" for o in args.overrides)]), result)
        print("\n".join(lines), file=sys.stderr, flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
