"""Per-class Dice over time of segmentation runs on a ``masks`` folder: the evidence of
docs/benchmarks/segmentation_2d.md.

    python tools/make_masks_dataset.py outputs/data/shapes10
    python tools/measure_segmentation.py outputs/data/shapes10 --run before "model=unet loss=dice_ce ..." \
        --run after ""

Each ``--run NAME OVERRIDES`` is ``python -m detloss.train task=segmentation data=masks data.root=ROOT
data.num_classes=N data.image_size=SIZE`` plus the overrides, in a subprocess (what a user runs), timed from
start to exit. From its ``csv/metrics.csv`` the tool prints, per validation epoch, the wall time since the start
(read from the file's modification as the epochs are written: the tool polls it), the mean Dice and the Dice of
every class; and writes the same as JSON beside the run (``<out>/<name>/dice.json``).
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path


def read_classes(root: Path) -> list[str]:
    names = root / "classes.txt"
    if not names.is_file():
        raise FileNotFoundError(f"{names} not found (tools/make_masks_dataset.py writes it)")
    return [line.strip() for line in names.read_text().splitlines() if line.strip()]


def val_rows(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return [r for r in csv.DictReader(f) if r.get("val/dice")]


def run(name: str, overrides: list[str], root: Path, size: int, classes: list[str], out: Path) -> dict:
    run_dir = out / name
    names = "[" + ",".join(classes) + "]"
    cmd = [
        sys.executable, "-m", "detloss.train", "task=segmentation", "data=masks", f"data.root={root}",
        f"data.num_classes={len(classes)}", f"data.image_size={size}", f"+data.class_names={names}",
        f"hydra.run.dir={run_dir}", *overrides,
    ]  # fmt: skip
    start = time.perf_counter()
    log = (out / f"{name}.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    seen, times = 0, []
    while proc.poll() is None:  # the time at which each validation epoch reached the log
        time.sleep(2)
        rows = len(val_rows(run_dir))
        if rows > seen:
            times += [time.perf_counter() - start] * (rows - seen)
            seen = rows
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed with exit code {proc.returncode}; see {out / name}.log")
    rows = val_rows(run_dir)
    times += [seconds] * (len(rows) - len(times))
    epochs = [
        {
            "epoch": int(r["epoch"]),
            "seconds": round(t, 1),
            "dice": float(r["val/dice"]),
            "per_class": {c: float(r[f"val/dice/{c}"]) for c in classes[1:]},
        }
        for r, t in zip(rows, times)
    ]
    result = {"name": name, "overrides": overrides, "seconds": round(seconds, 1), "epochs": epochs}
    (run_dir / "dice.json").write_text(json.dumps(result, indent=2))
    return result


def table(result: dict, classes: list[str]) -> str:
    head = "| epoch | time | mean Dice | " + " | ".join(classes[1:]) + " |"
    lines = [head, "| ---: | ---: | ---: |" + " ---: |" * (len(classes) - 1)]
    for e in result["epochs"]:
        minutes, seconds = divmod(int(round(e["seconds"])), 60)
        cells = " | ".join(f"{e['per_class'][c]:.2f}" for c in classes[1:])
        lines.append(f"| {e['epoch'] + 1} | {minutes}:{seconds:02d} | **{e['dice']:.3f}** | {cells} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="a masks folder with classes.txt")
    parser.add_argument("--run", nargs=2, action="append", metavar=("NAME", "OVERRIDES"), required=True)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--out", type=Path, default=Path("outputs/measure_segmentation"))
    args = parser.parse_args(argv)
    classes = read_classes(args.root)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, overrides in args.run:
        result = run(name, shlex.split(overrides), args.root.resolve(), args.size, classes, args.out)
        print(f"\n### {name}: `{overrides or '(defaults)'}`, {result['seconds'] / 60:.1f} min\n")
        print(table(result, classes), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
