"""Evidence for the benchmarks' sweep, loss-dynamics and YOLO26 pages (docs/benchmarks/dynamics.md, yolo26.md),
from real runs on the shipped datasets.

    python tools/measure_dynamics.py                  # both parts, into outputs/dynamics/
    python tools/measure_dynamics.py --part sweep     # only the fixed-vs-learned segmentation sweep
    python tools/measure_dynamics.py --part yolo26 stal --det-epochs 6   # YOLOv8 against YOLO26; STAL off and on

1. ``sweep``: a Hydra multirun ``task=segmentation loss=dice_ce,dice_ce_uncertainty seed=0,1,2`` of short runs
   (fixed Dice + CE weights against uncertainty weighting, 3 seeds each), then ``detloss-report`` on it: its
   Markdown table (metric mean ± std over seeds, wall time) is what docs/benchmarks/dynamics.md shows, with its plot.
2. ``diagnostics``: the default detection run, shortened, with ``callbacks=diagnostics``; its report's
   ``grad_share.png`` is that page's figure, and the cost of the diagnostics is the sum of the logged
   ``diag/seconds`` over the run's wall time (also against a run without them, same length).
3. ``yolo26``: a Hydra multirun ``loss=yolo,yolo26 seed=0,1,2`` on ``shapes`` (the YOLOv8 and the YOLO26
   formulation on one backbone; YOLO26 evaluated NMS-free), shortened (``--det-train`` images, ``--det-epochs``
   epochs), then ``detloss-report`` on it: its table and plot are docs/benchmarks/yolo26.md's comparison.
4. ``stal``: ``loss=yolo26 callbacks=diagnostics`` with STAL off and on
   (``criterion.one2many_assigner.min_box_side=0,16``, same length as ``yolo26``); per head and COCO size bin the
   share of ground truths without a positive anchor and the positives per ground truth, averaged over the logged
   steps, and the final mAP; each run's ``diag_assign.png`` is copied.

The figures are copied to ``tools/results/`` (the benchmarks pages show copies in docs/benchmarks/img/). Each job
is ``python -m detloss.train`` in a subprocess, exactly as a user runs it.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def train(*overrides: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "detloss.train", *overrides], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"detloss.train {' '.join(overrides)} failed")
    return time.perf_counter() - start


def report(path: Path) -> Path:
    from detloss.report import main

    if main([str(path)]) != 0:  # it printed why
        raise SystemExit(f"detloss-report {path} failed")
    return path / "report"


def multirun(out: Path, name: str, *overrides: str) -> tuple[float, Path]:
    """A Hydra multirun into ``out/name`` and ``detloss-report`` on it; its sweep plots are copied to ``RESULTS``
    as ``<name>_sweep_*.png``. Returns the wall time and the report's folder."""
    sweep_dir = out / name
    shutil.rmtree(sweep_dir, ignore_errors=True)
    seconds = train("-m", *overrides, f"hydra.sweep.dir={sweep_dir}")
    report_dir = report(sweep_dir)
    RESULTS.mkdir(exist_ok=True)
    for png in report_dir.glob("sweep_*.png"):
        shutil.copy(png, RESULTS / f"{name.split('_')[0]}_{png.name}")
    return seconds, report_dir


#: the U-Net and batch that docs/benchmarks/dynamics.md measured (the segmentation task plans them otherwise)
RECIPE = ("model.base_channels=16", "model.depth=4", "data.batch_size=16")


def sweep(out: Path, epochs: int) -> None:
    overrides = ("task=segmentation", "loss=dice_ce,dice_ce_uncertainty", "seed=0,1,2", f"trainer.max_epochs={epochs}")
    overrides += RECIPE
    seconds, report_dir = multirun(out, "seg_sweep", *overrides)
    print(f"## sweep: 6 jobs of {epochs} epochs in {seconds / 60:.1f} min\n")
    print((report_dir / "report.md").read_text())


def diagnostics(out: Path, epochs: int) -> None:
    runs = {}
    for name, extra in (("with", ["callbacks=diagnostics"]), ("without", [])):
        run_dir = out / f"det_{name}_diagnostics"
        shutil.rmtree(run_dir, ignore_errors=True)
        train(f"trainer.max_epochs={epochs}", f"hydra.run.dir={run_dir}", *extra)
        runs[name] = run_dir
    run_dir = runs["with"]
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    diag = [float(r["diag/seconds"]) for r in rows if r.get("diag/seconds")]
    fit = {name: json.loads((d / "metrics.json").read_text())["seconds"] for name, d in runs.items()}
    report_dir = report(run_dir)
    RESULTS.mkdir(exist_ok=True)
    for name in ("grad_share.png", "grad_norm.png", "grad_cos.png"):
        if (report_dir / name).is_file():
            shutil.copy(report_dir / name, RESULTS / f"det_{name}")
    print(f"## diagnostics: detection, {epochs} epochs, every 50 steps")
    print(f"measured steps: {len(diag)}, total {sum(diag):.2f} s, mean {1e3 * sum(diag) / max(1, len(diag)):.1f} ms")
    print(f"run with diagnostics {fit['with']:.1f} s, without {fit['without']:.1f} s")
    print(
        f"cost: {100 * sum(diag) / fit['with']:.2f} % of the run (logged diag/seconds); "
        f"{100 * (fit['with'] / fit['without'] - 1):+.1f} % wall time against the run without"
    )


def yolo26(out: Path, epochs: int, num_train: int) -> None:
    overrides = ("loss=yolo,yolo26", "seed=0,1,2", f"data.num_train={num_train}", f"trainer.max_epochs={epochs}")
    seconds, report_dir = multirun(out, "yolo26_sweep", *overrides)
    print(f"## yolo26: 6 jobs of {epochs} epochs on {num_train} images in {seconds / 60:.1f} min\n")
    print((report_dir / "report.md").read_text())


def stal(out: Path, epochs: int, num_train: int) -> None:
    print(f"## STAL: loss=yolo26 callbacks=diagnostics, {epochs} epochs on {num_train} images\n")
    print("| STAL (`min_box_side`) | val/map_50 | val/map_small | key | mean over the logged steps |")
    print("| --- | ---: | ---: | --- | ---: |")
    for side in (0, 16):
        run_dir = out / f"stal_{side}"
        shutil.rmtree(run_dir, ignore_errors=True)
        train(
            "loss=yolo26",
            "callbacks=diagnostics",
            f"criterion.one2many_assigner.min_box_side={side}",
            f"data.num_train={num_train}",
            f"trainer.max_epochs={epochs}",
            f"hydra.run.dir={run_dir}",
        )
        final = json.loads((run_dir / "metrics.json").read_text())["metrics"]
        rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
        keys = sorted({k for r in rows for k in r if k.startswith("diag/assign/")})
        for key in keys:
            values = [float(r[key]) for r in rows if r.get(key)]
            mean = sum(values) / len(values) if values else float("nan")
            small = final.get("val/map_small")
            print(
                f"| {side} | {final['val/map_50']:.3f} | {'—' if small is None else f'{small:.3f}'} | "
                f"`{key}` | {mean:.3f} |"
            )
        report_dir = report(run_dir)
        RESULTS.mkdir(exist_ok=True)
        if (report_dir / "diag_assign.png").is_file():
            shutil.copy(report_dir / "diag_assign.png", RESULTS / f"stal_{side}_diag_assign.png")
    print()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--part", choices=["sweep", "diagnostics", "yolo26", "stal", "both"], default=["both"], nargs="+"
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/dynamics"))
    parser.add_argument("--seg-epochs", type=int, default=4)
    parser.add_argument("--det-epochs", type=int, default=4)
    parser.add_argument("--det-train", type=int, default=800, help="training images of the yolo26 and stal parts")
    args = parser.parse_args(argv)
    parts = set(args.part)
    if parts & {"sweep", "both"}:
        sweep(args.out, args.seg_epochs)
    if parts & {"diagnostics", "both"}:
        diagnostics(args.out, args.det_epochs)
    if "yolo26" in parts:
        yolo26(args.out, args.det_epochs, args.det_train)
    if "stal" in parts:
        stal(args.out, args.det_epochs, args.det_train)
    return 0


if __name__ == "__main__":
    sys.exit(main())
