"""Run the default training jobs and report wall time and final metrics, for docs/benchmarks/default_runs.md.

    python tools/measure_training.py                      # detection and segmentation defaults, on this machine
    python tools/measure_training.py --task segmentation -- trainer.max_epochs=10   # extra overrides after --
    python tools/measure_training.py --task volumetric    # the 3D default (tools/measure_volumetric.py: and more)
    python tools/measure_training.py --seeds 0 1 2        # one job per seed, then mean ± sample std per task
    python tools/measure_training.py --task brats --seeds 0 1 2 -- data.plan.cache=false   # planned anew each job

Each job is `python -m detloss.train` in a subprocess (exactly what a user runs), timed from start to exit;
its `metrics.json` gives the final validation metrics. Output: one Markdown row per job and, with several seeds,
one row per task with the mean ± sample standard deviation of the wall time and of each metric over the seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

KEYS = {
    "detection": ["val/map_50", "val/map", "val/map_75"],
    "segmentation": ["val/dice", "val/dice_pooled", "val/generalized_dice"],
    "volumetric": ["val/dice", "val/hd95", "val/nsd"],
    "brats": ["val/dice", "val/hd95", "val/nsd"],
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


def _minutes(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s"


def _spread(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["detection", "segmentation", "volumetric", "brats", "both"], default="both")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="one job per seed (default: the config's)")
    parser.add_argument("--out", default="outputs/measure")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job (after --)")
    args = parser.parse_args(argv)
    tasks = ["detection", "segmentation"] if args.task == "both" else [args.task]
    seeds = args.seeds or [None]
    print(f"machine: {os.cpu_count()} CPUs; overrides: {args.overrides or 'none'}; seeds: {args.seeds or 'default'}")
    print()
    print("| task | seed | wall time | epochs | steps | key metrics |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    summary = []
    for task in tasks:
        runs = []
        for seed in seeds:
            extra = [] if seed is None else [f"seed={seed}"]
            r = run(task, [*args.overrides, *extra], Path(args.out))
            runs.append(r)
            m = r["record"]["metrics"]
            keys = KEYS[task] + sorted(k for k in m if k.startswith("val/dice/"))
            shown = ", ".join(f"{k} {m[k]:.3f}" for k in keys if m.get(k) is not None)
            seed_shown = r["record"].get("seed", seed)
            print(
                f"| {task} | {seed_shown} | {_minutes(r['seconds'])} | {r['record']['epochs']} | "
                f"{r['record']['steps']} | {shown} |",
                flush=True,
            )
        if len(runs) > 1:
            metrics = [r["record"]["metrics"] for r in runs]
            keys = KEYS[task] + sorted(k for k in metrics[0] if k.startswith("val/dice/"))
            shown = ", ".join(
                f"{k} {_spread([m[k] for m in metrics], '.3f')}"
                for k in keys
                if all(m.get(k) is not None for m in metrics)
            )
            seconds = [r["seconds"] for r in runs]
            wall = f"{_minutes(statistics.mean(seconds))} ± {statistics.stdev(seconds):.0f} s"
            summary.append(f"| {task} | mean ± std of {len(runs)} | {wall} | | | {shown} |")
    for row in summary:
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
