"""Run the default training jobs and report wall time and final metrics, for the README's results table.

    python tools/measure_training.py                      # detection and segmentation defaults, on this machine
    python tools/measure_training.py --task segmentation -- trainer.max_epochs=10   # extra overrides after --
    python tools/measure_training.py --task volumetric    # the 3D default (tools/measure_volumetric.py: and more)

Each job is `python -m detloss.train` in a subprocess (exactly what a user runs), timed from start to exit;
its `metrics.json` gives the final validation metrics. Output: one Markdown row per job.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

KEYS = {
    "detection": ["val/map_50", "val/map", "val/map_75"],
    "segmentation": ["val/dice", "val/generalized_dice"],
    "volumetric": ["val/dice", "val/hd95", "val/nsd"],
}


def run(task: str, overrides: list[str], out_root: Path) -> dict:
    run_dir = out_root / task / time.strftime("%Y%m%d-%H%M%S")
    cmd = [sys.executable, "-m", "detloss.train", f"task={task}", f"hydra.run.dir={run_dir}", *overrides]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    record = json.loads((run_dir / "metrics.json").read_text())
    return {"task": task, "seconds": seconds, "record": record, "command": " ".join(cmd[1:]), "dir": run_dir}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["detection", "segmentation", "volumetric", "both"], default="both")
    parser.add_argument("--out", default="outputs/measure")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job (after --)")
    args = parser.parse_args(argv)
    tasks = ["detection", "segmentation"] if args.task == "both" else [args.task]
    print(f"machine: {os.cpu_count()} CPUs; overrides: {args.overrides or 'none'}")
    print()
    print("| task | wall time | epochs | steps | key metrics |")
    print("| --- | ---: | ---: | ---: | --- |")
    for task in tasks:
        r = run(task, args.overrides, Path(args.out))
        m = r["record"]["metrics"]
        keys = KEYS[task] + sorted(k for k in m if k.startswith("val/dice/"))
        shown = ", ".join(f"{k} {m[k]:.3f}" for k in keys if k in m)
        minutes, seconds = divmod(int(round(r["seconds"])), 60)
        print(
            f"| {task} | {minutes} min {seconds:02d} s | {r['record']['epochs']} | {r['record']['steps']} | {shown} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
