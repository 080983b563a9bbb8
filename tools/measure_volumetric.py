"""Measure the volumetric task for docs/benchmarks/volumetric.md: the default run, training memory at 128³,
sliding-window time.

    python tools/measure_volumetric.py                       # all three parts, this machine
    python tools/measure_volumetric.py --part run -- trainer.max_epochs=4      # Hydra overrides after --
    python tools/measure_volumetric.py --part memory --device cuda

* ``run``: ``python -m detloss.train task=volumetric`` in a subprocess, exactly as a user runs it, timed from start to
  exit (data generation on a cold cache included if ``--cold``, training, every validation, checkpoints); its
  ``metrics.json`` gives the final metrics and its CSV log the validation Dice of each epoch.
The memory and inference parts fix the network and window (:data:`RECIPE`: 8 channels, 3 poolings, a 24 × 48 × 48
window), since a run plans its own from the data and the machine.

* ``memory``: the task's model, criterion and optimizer (``task=volumetric``'s configs: deep supervision, Dice + CE
  with batch Dice, AdamW) on a 128 × 128 × 128 patch of 1 mm voxels, batch 2, 2 input channels and 4 classes; peak
  memory over 2 training steps, in a fresh process: on CPU the growth of the peak resident set (``ru_maxrss``), on a
  GPU ``torch.cuda.max_memory_allocated``.
* ``inference``: sliding-window inference (``VolumetricTask.infer``: MONAI, Gaussian weights, the default overlap and
  window batch) of the default model over a 256 × 256 × 160 volume (x × y × z; ``(D, H, W) = (160, 256, 256)``) at the
  default data's spacing, with the default window (``data.patch_size``); one warm-up window first.

Each part prints the Markdown rows that page's tables hold.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from measure_training import run  # tools/ is on the path of a script run from it

from detloss.config import CONFIG_DIR

CLASSES, CHANNELS = 4, 2


#: the network and window of the memory and inference parts: the task's model at 8 channels and 3 poolings, the
#: embedded data's recipe at 2 x 1 x 1 mm (a run plans its own: ``detloss-plan task=volumetric``)
RECIPE = ("model.base_channels=8", "model.depth=3", "data.patch_size=[24,48,48]")


def config(*overrides: str):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=["task=volumetric", "paths.output_dir=.", *RECIPE, *overrides])


def part_run(overrides: list[str], out_root: Path, cold: bool) -> None:
    if cold:
        cache = out_root / "cold-cache"
        shutil.rmtree(cache, ignore_errors=True)
        overrides = [f"data.cache_dir={cache}", *overrides]
    r = run("volumetric", overrides, out_root)  # measure_training.py's: a subprocess, timed, its metrics.json
    record, m = r["record"], r["record"]["metrics"]
    labels = sorted(k.split("/")[-1] for k in m if k.startswith("val/dice/"))
    minutes, secs = divmod(int(round(r["seconds"])), 60)
    print(f"command: {r['command']}")
    print()
    per_label = " | ".join(f"dice {n}" for n in labels)
    print(f"| wall time | epochs | steps | val/dice | {per_label} | hd95 (mm) | nsd |")
    print("| ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in labels) + " | ---: | ---: |")
    cells = [f"{minutes} min {secs:02d} s", record["epochs"], record["steps"], f"**{m['val/dice']:.3f}**"]
    cells += [f"{m[f'val/dice/{n}']:.3f}" for n in labels] + [f"{m['val/hd95']:.2f}", f"{m['val/nsd']:.3f}"]
    print("| " + " | ".join(str(c) for c in cells) + " |")
    log = r["dir"] / "csv" / "metrics.csv"
    if log.is_file():  # the validation Dice after each epoch
        rows = [row for row in csv.DictReader(log.open()) if row.get("val/dice")]
        print()
        print("| epoch | " + " | ".join(str(int(row["epoch"]) + 1) for row in rows) + " |")
        print("| --- | " + " | ".join("---:" for _ in rows) + " |")
        print("| step | " + " | ".join(str(int(row["step"]) + 1) for row in rows) + " |")
        print("| val/dice | " + " | ".join(f"{float(row['val/dice']):.3f}" for row in rows) + " |")


def memory_worker(device_name: str) -> None:
    """Two training steps at 128³, batch 2, in this fresh process; print the peak memory growth (MiB) as JSON."""
    cfg = config("+model.spacing=[1.0,1.0,1.0]", "+model.patch_size=[128,128,128]")
    device = torch.device(device_name)
    model = instantiate(cfg.model, num_classes=CLASSES, in_channels=CHANNELS).to(device).train()
    loss = instantiate(cfg.loss)
    criterion = instantiate(cfg.criterion, num_classes=CLASSES, loss=loss).to(device)
    optimizer = instantiate(cfg.optimizer)([p for p in model.parameters()])
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, CHANNELS, 128, 128, 128, generator=g).to(device)
    labels = torch.randint(0, CLASSES, (2, 128, 128, 128), generator=g).to(device)
    if device.type == "cuda":
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        out = criterion(model(images), {"labels": labels, "spacing": torch.ones(2, 3)})
        out.total.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    seconds = (time.perf_counter() - start) / 2
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"mib": peak / 2**20, "seconds_per_step": seconds, "params": params}))


def part_memory(device: str) -> None:
    cmd = [sys.executable, __file__, "--memory-worker", device]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit("the memory worker failed")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    kind = "peak RSS growth" if device == "cpu" else "torch.cuda.max_memory_allocated"
    print("| training step | device | parameters | peak memory | seconds per step |")
    print("| --- | --- | ---: | ---: | ---: |")
    print(
        f"| 128³ patch, batch 2, 2 channels, 4 classes | {device} ({kind}) | {r['params'] / 1e6:.2f} M | "
        f"{r['mib']:,.0f} MiB | {r['seconds_per_step']:.1f} |"
    )


def part_inference(device_name: str) -> None:
    cfg = config()
    device = torch.device(device_name)
    spacing, roi = tuple(cfg.data.spacing), tuple(cfg.data.patch_size)  # the generator's 2 x 1 x 1 mm
    model = instantiate(cfg.model, num_classes=CLASSES, in_channels=CHANNELS, spacing=spacing, patch_size=roi)
    criterion = instantiate(cfg.criterion, num_classes=CLASSES, loss=instantiate(cfg.loss))
    task = instantiate(cfg.task, model=model.to(device).eval(), criterion=criterion, optimizer=None)
    shape = (160, 256, 256)
    volume = torch.randn(1, CHANNELS, *shape, device=device)
    with torch.no_grad():
        task.infer(torch.randn(1, CHANNELS, *roi, device=device))  # warm-up
        start = time.perf_counter()
        logits = task.infer(volume)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    assert logits.shape == (1, CLASSES, *shape)
    steps = [max(1, int(r * (1 - task.sw_overlap))) for r in roi]
    windows = 1
    for size, r, step in zip(shape, roi, steps):
        windows *= -(-(size - r) // step) + 1 if size > r else 1
    print("| volume (x × y × z) | spacing (mm, z y x) | window (z y x) | overlap | windows | device | seconds |")
    print("| --- | --- | --- | ---: | ---: | --- | ---: |")
    print(
        f"| 256 × 256 × 160 | {' × '.join(f'{s:g}' for s in spacing)} | {' × '.join(map(str, roi))} | "
        f"{task.sw_overlap} | {windows:,} | {device_name} | {seconds:.1f} |"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["run", "memory", "inference", "all"], default="all")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="outputs/measure")
    parser.add_argument("--cold", action="store_true", help="run: generate the data into a fresh cache, timed")
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the run (after --)")
    args = parser.parse_args(argv)
    if args.memory_worker:
        memory_worker(args.memory_worker)
        return 0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    threads = torch.get_num_threads()
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f}, torch {torch.__version__}, {threads} threads")
    print()
    if args.part in ("run", "all"):
        part_run(args.overrides, Path(args.out), args.cold)
        print()
    if args.part in ("memory", "all"):
        part_memory(args.device)
        print()
    if args.part in ("inference", "all"):
        part_inference(args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
