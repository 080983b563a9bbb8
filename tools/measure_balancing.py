"""Fixed weights against FAMO, GradNorm and random loss weighting, 3 seeds each, in both tasks (docs/benchmarks).

    python tools/measure_balancing.py                       # both tasks, into outputs/balancing/
    python tools/measure_balancing.py --task segmentation   # one task
    python tools/measure_balancing.py --epochs 3 --num-train 320 --image-size 64 --seeds 0,1,2
    python tools/measure_balancing.py --task segmentation --epochs 5 -- model.base_channels=8   # further overrides

Per task, one Hydra multirun of ``python -m detloss.train -m`` on the embedded data, shortened further than
``experiment=quick`` (``--num-train`` training images or scans of ``--image-size`` pixels, ``--epochs`` epochs,
64 validation samples):

* detection: ``loss=yolo,yolo_famo,yolo_gradnorm,yolo_rlw seed=0,1,2``;
* segmentation: ``task=segmentation loss=dice_ce,dice_ce_famo,dice_ce_gradnorm,dice_ce_rlw seed=0,1,2``;

then ``detloss-report SWEEP_DIR --baseline loss=yolo`` (``loss=dice_ce``): per point the mean, sample std and 95 %
interval of the optimised metric over the seeds, and its difference to the fixed weights paired by seed, with its
interval, p-value and whether the seeds resolve it. The reports' tables are printed; the sweeps stay under
``outputs/balancing/<task>/``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

SWEEPS = {
    # the U-Net's depth and the batch as measured on docs/benchmarks/balancing.md (the task plans them otherwise)
    "segmentation": ("dice_ce", ["task=segmentation", "model.depth=4", "data.batch_size=16"]),
    "detection": ("yolo", ["task=detection"]),
}


def measure(task: str, out: Path, epochs: int, num_train: int, image_size: int, seeds: str, extra_args: list) -> None:
    fixed, extra = SWEEPS[task]
    losses = ",".join([fixed] + [f"{fixed}_{method}" for method in ("famo", "gradnorm", "rlw")])
    sweep_dir = out / task
    overrides = [
        *extra,
        f"loss={losses}",
        f"seed={seeds}",
        f"data.num_train={num_train}",
        f"data.image_size={image_size}",
        "data.num_val=64",
        f"trainer.max_epochs={epochs}",
        "task.num_previews=0",
        f"hydra.sweep.dir={sweep_dir}",
        *extra_args,
    ]
    start = time.perf_counter()
    command = [sys.executable, "-m", "detloss.train", "-m", *overrides]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True)
    minutes = (time.perf_counter() - start) / 60
    subprocess.run(["detloss-report", str(sweep_dir), "--baseline", f"loss={fixed}"], check=True)
    size = f"{num_train} samples of {image_size} px"
    print(f"## {task}: {len(seeds.split(','))} seeds x 4 losses, {epochs} epochs of {size}, {minutes:.1f} min\n")
    print((sweep_dir / "report" / "report.md").read_text(), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(SWEEPS), nargs="*", default=["segmentation", "detection"])
    parser.add_argument("--out", type=Path, default=Path("outputs/balancing"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num-train", type=int, default=320)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("overrides", nargs="*", help="further overrides of every run, e.g. model.base_channels=8")
    args = parser.parse_args(argv)
    for task in args.task:
        measure(task, args.out, args.epochs, args.num_train, args.image_size, args.seeds, args.overrides)


if __name__ == "__main__":
    main()
