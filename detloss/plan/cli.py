"""``detloss-plan [overrides]`` (``python -m detloss.plan``): the fingerprint and the plan of a run, without
training.

It composes the training config (``train.yaml``) with the same overrides as ``detloss-train``, builds the data and
plans as a run would (:func:`detloss.train.plan_run`: measured candidates on this machine where values are left to
the plan), and prints the fingerprint's summary and the plan::

    detloss-plan task=volumetric data=nnunet data.root=/data/Dataset001 [data.plan.budget_minutes=20]
"""

from __future__ import annotations

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from ..config import CONFIG_SOURCE

__all__ = ["main", "describe_fingerprint"]


def describe_fingerprint(fingerprint) -> str:
    """A few lines on a :class:`~detloss.plan.VolumeFingerprint`: cases, spacing and shape, channels, labels."""
    spacings, shapes = fingerprint.spacings, fingerprint.shapes
    lines = [
        f"  cases: {len(fingerprint.cases)}",
        "  spacing (mm, D H W): median {} (min {}, max {})".format(
            *(" × ".join(f"{v:g}" for v in row) for row in (np.median(spacings, 0), spacings.min(0), spacings.max(0)))
        ),
        "  shape (D H W): median {}, after cropping to the non-zero region {}".format(
            " × ".join(str(int(v)) for v in np.median(shapes, 0)),
            " × ".join(str(int(v)) for v in np.median(fingerprint.cropped_shapes, 0)),
        ),
    ]
    for name, stats in zip(fingerprint.channel_names, fingerprint.intensities):
        lines.append(
            f"  channel {name}: foreground mean {stats['mean']:.4g}, std {stats['std']:.4g}, "
            f"0.5-99.5 % [{stats['p00_5']:.4g}, {stats['p99_5']:.4g}]"
        )
    for label in fingerprint.labels:
        lines.append(
            f"  label {label['name']}: {100 * label['voxel_share']:.3f} % of the voxels, in {label['cases']} cases, "
            f"{label['components']} components (median {label['component_voxels_median']:.0f} voxels)"
        )
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONFIG_SOURCE, config_name="train")
def main(cfg: DictConfig) -> None:
    from ..train import plan_run

    datamodule = instantiate(cfg.data)
    fingerprint = getattr(datamodule, "fingerprint", None)
    if fingerprint is None:
        raise SystemExit(f"detloss-plan: data {cfg.data.get('_target_')} is not planned (volumetric data is)")
    print("Fingerprint:\n" + describe_fingerprint(fingerprint))
    plan_run(cfg, datamodule)  # logs the plan's table


if __name__ == "__main__":
    main()
