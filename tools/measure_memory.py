"""Where the resident memory of a COCO-format detection run goes (docs/benchmarks/training_step.md, "Memory of a
640 px COCO-format run").

    python tools/make_coco.py /tmp/coco640                       # a synthetic COCO-format set, if you have none
    python tools/measure_memory.py /tmp/coco640 --steps 4         # data=coco data.image_size=640, the defaults
    python tools/measure_memory.py /tmp/coco640 data.num_workers=2     # Hydra overrides after the folder

In one process, the configured run (``data=coco data.image_size=640`` and the default model, loss, optimizer and
trainer) is built and trained for ``--steps`` batches of one epoch (and one validation batch), and measured:

- dataset caches: the growth of the main process's resident set while the DataModule is built (the annotation
  index and whatever the datasets keep per image), and what the two datasets hold, pickled (what a worker gets);
- model + optimizer state: bytes of the parameters, their gradients and the optimizer's state tensors (exact), and
  the EMA copy;
- one step's activations: the bytes of the distinct tensors the forward saves for the backward (through
  ``torch.autograd.graph.saved_tensors_hooks``; exact), the largest over the steps;
- workers: each loader worker's PSS and USS (``/proc/<pid>/smaps_rollup``: the pages it shares with the main
  process counted by share, and those it alone holds) at the end of each training step, the largest seen;
- peak RSS of the main process (``ru_maxrss``) and the sum of the main process's and the workers' largest PSS.
"""

from __future__ import annotations

import argparse
import gc
import pickle
import resource
import sys
import tempfile
from pathlib import Path

import lightning as L
import psutil
import torch
from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detloss.config import CONFIG_DIR
from detloss.train import build, make_trainer  # noqa: E402

MiB = 2**20


def rss() -> int:
    return psutil.Process().memory_info().rss


def smaps(pid: int) -> dict[str, int]:
    """``Rss``, ``Pss`` and ``Private_*`` (USS) of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":")
        out[key] = int(value.split()[0]) * 1024
    out["Uss"] = out.get("Private_Clean", 0) + out.get("Private_Dirty", 0)
    return out


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


class MemoryProbe(L.Callback):
    """Activations saved for the backward in each training step; the loader workers' memory after each step."""

    def __init__(self):
        self.activations: list[int] = []
        self.workers: dict[int, dict[str, int]] = {}
        self._saved: list[torch.Tensor] = []
        self._hooks = None

    def on_train_batch_start(self, trainer, task, batch, batch_idx):
        self._saved = []

        def pack(t):
            self._saved.append(t)
            return t

        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._hooks.__enter__()

    def on_before_backward(self, trainer, task, loss):
        self._hooks.__exit__(None, None, None)
        params = {p.untyped_storage().data_ptr() for p in task.parameters()}
        self.activations.append(tensor_bytes(t for t in self._saved if t.untyped_storage().data_ptr() not in params))
        self._saved = []

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
        for child in psutil.Process().children(recursive=True):
            try:
                mem = smaps(child.pid)
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
            best = self.workers.setdefault(child.pid, {"Pss": 0, "Uss": 0, "Rss": 0})
            for key in best:
                best[key] = max(best[key], mem.get(key, 0))


def measure(root: Path, overrides, steps: int = 4) -> dict[str, float]:
    data = [
        "data=coco",
        f"data.train_images={root / 'train'}",
        f"data.train_annotations={root / 'train.json'}",
        f"data.val_images={root / 'val'}",
        f"data.val_annotations={root / 'val.json'}",
        "data.image_size=640",
    ]
    with tempfile.TemporaryDirectory() as out, initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"paths.output_dir={out}",
                *data,
                "trainer.max_epochs=1",
                f"+trainer.limit_train_batches={steps}",
                "+trainer.limit_val_batches=1",
                "logger=none",
                *overrides,
            ],
        )
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        gc.collect()
        start = rss()
        datamodule, task = build(cfg)
        built = rss()
        # what the datasets hold: measured apart from the model, which build() made too
        datasets = sum(
            len(pickle.dumps(d, protocol=pickle.HIGHEST_PROTOCOL))
            for d in (datamodule.train_dataset, datamodule.val_dataset)
        )
        probe = MemoryProbe()
        trainer = make_trainer(cfg, [probe])
        trainer.fit(task, datamodule=datamodule)
        params = list(task.parameters())
        optimizer = trainer.optimizers[0]
        state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        ema = getattr(task, "ema", None)
        result = {
            "workers": cfg.data.num_workers,
            "pin_memory": bool(datamodule.pin_memory),
            "build (model + datasets)": built - start,
            "datasets pickled": datasets,
            "parameters": tensor_bytes(params),
            # zero_grad(set_to_none) has freed them by now: one per trainable parameter during the step
            "gradients": tensor_bytes(p for p in params if p.requires_grad),
            "optimizer state": tensor_bytes(state),
            "EMA copy": tensor_bytes(ema.module.state_dict().values()) if ema is not None else 0,
            "activations": max(probe.activations),
            "main peak RSS": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "main PSS now": smaps(psutil.Process().pid)["Pss"],
            "worker PSS (max)": max((w["Pss"] for w in probe.workers.values()), default=0),
            "worker USS (max)": max((w["Uss"] for w in probe.workers.values()), default=0),
            "worker PSS (sum)": sum(w["Pss"] for w in probe.workers.values()),
            "worker processes": len(probe.workers),
        }
        result["total PSS"] = result["main PSS now"] + result["worker PSS (sum)"]
        return result


def row(name: str, r: dict) -> str:
    mib = {k: v / MiB for k, v in r.items() if not isinstance(v, bool) and k not in ("workers", "worker processes")}
    model = mib["parameters"] + mib["gradients"] + mib["optimizer state"] + mib["EMA copy"]
    return (
        f"| {name} | {r['workers']} ({r['worker processes']} processes) | {mib['datasets pickled']:.1f} | "
        f"{model:.0f} | {mib['activations']:.0f} | {mib['main peak RSS']:.0f} | {mib['worker PSS (max)']:.0f} / "
        f"{mib['worker USS (max)']:.0f} | {mib['worker PSS (sum)']:.0f} | {mib['total PSS']:.0f} |"
    )


HEADER = [
    "| run | workers | datasets, pickled (MiB) | model + grads + AdamW + EMA (MiB) | one step's activations (MiB) | "
    "main peak RSS (MiB) | one worker: PSS / USS (MiB) | all workers' PSS (MiB) | total PSS (MiB) |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a folder written by tools/make_coco.py (train/, train.json, ...)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--name", default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    result = measure(args.root, args.overrides, args.steps)
    for key, value in result.items():
        print(
            f"{key}: {value / MiB:.1f} MiB" if isinstance(value, int) and value > 4096 else f"{key}: {value}",
            file=sys.stderr,
        )
    print("\n".join([*HEADER, row(args.name or " ".join(args.overrides) or "defaults", result)]))


if __name__ == "__main__":
    main()
