"""detloss's plan of datasets side by side with nnU-Net's own ``3d_fullres`` plan (``tools/nnunet_plan.py``).

    python tools/make_volume_datasets.py outputs/data/volumes
    python tools/compare_plans.py outputs/data/volumes/*  [--measure] [--budget-minutes 10]

For each dataset: nnU-Net's target spacing, patch, poolings per axis and normalisation (planned offline under its
default 8 GB GPU-memory target), and detloss's: the same rules without a budget (``--measure`` off: the patch
before any shrinking), and with ``--measure`` the plan a training run makes on this machine
(``detloss.planning.plan_run``, which measures candidate steps within ``data.plan.budget_minutes``). Prints a Markdown
table (the benchmarks page's) and writes ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nnunet_plan import nnunet_plan  # noqa: E402


def _axes(values) -> str:
    return " × ".join(f"{v:g}" for v in values)


def _pools(pools) -> str:
    counts = [sum(1 for p in pools if p[a] == 2) for a in range(3)]
    return " × ".join(map(str, counts))


def detloss_plan(root: Path, measure: bool, budget_minutes: float) -> dict:
    """detloss's plan of ``root``: unmeasured (the rules alone) or, with ``measure``, a run's measured plan."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from detloss.config import CONFIG_DIR
    from detloss.plan import initial_patch, normalisation, target_spacing, topology
    from detloss.planning import plan_run

    overrides = ["task=volumetric", "data=nnunet", f"data.root={root}", f"data.plan.budget_minutes={budget_minutes}"]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    datamodule = instantiate(cfg.data)
    fingerprint = datamodule.fingerprint
    spacing = target_spacing(fingerprint)
    depth, patch, _, pools = topology(spacing, initial_patch(spacing, fingerprint.median_shape_at(spacing)))
    out = {
        "spacing": list(spacing),
        "median_shape": list(fingerprint.median_shape_at(spacing)),
        "rules_patch": patch,
        "rules_pools": [list(p) for p in pools],
        "normalization": normalisation(fingerprint),
    }
    if measure:
        out["plan"] = plan_run(cfg, datamodule).to_dict()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", type=Path, help="nnU-Net raw dataset folders")
    parser.add_argument("--measure", action="store_true", help="also the measured CPU plan of a training run")
    parser.add_argument("--budget-minutes", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=None, help="write the plans as JSON here")
    args = parser.parse_args(argv)
    rows, records = [], {}
    for root in args.datasets:
        ours = detloss_plan(root, args.measure, args.budget_minutes)
        theirs = nnunet_plan(root)
        records[root.name] = {"detloss": ours, "nnunet": theirs}
        same = "yes" if all(abs(a - b) <= 1e-4 * b for a, b in zip(ours["spacing"], theirs["spacing"])) else "NO"
        norm = ", ".join(
            {"ct": "CT", "zscore": "z" + ("/mask" if n.get("nonzero_mask") else "")}.get(n["scheme"], n["scheme"])
            for n in ours["normalization"]
        )
        row = [
            root.name,
            _axes(theirs["spacing"]),
            same,
            _axes(theirs["patch_size"]),
            _pools(theirs["pool_op_kernel_sizes"][1:]),
            _axes(ours["rules_patch"]),
            _pools(ours["rules_pools"]),
            norm,
        ]
        if args.measure:
            plan = ours["plan"]
            steps = plan["epochs"] * plan["patches_per_epoch"] // plan["batch_size"]
            row += [f"{_axes(plan['patch_size'])}, {plan['base_channels']} ch, {steps} steps"]
        rows.append(row)
    header = [
        "dataset",
        "nnU-Net spacing (D H W)",
        "same in detloss",
        "nnU-Net patch",
        "poolings D×H×W",
        "detloss rules patch",
        "poolings",
        "detloss normalisation",
    ]
    if args.measure:
        header.append(f"detloss CPU plan ({args.budget_minutes:g} min)")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.out:
        args.out.write_text(json.dumps(records, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
