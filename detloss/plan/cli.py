"""``detloss-plan [overrides]`` (``python -m detloss.plan``): the fingerprint and the plan of a run, without
training.

It composes the training config (``train.yaml``) with the same overrides as ``detloss-train``, builds the data and
plans as a run would (:func:`detloss.planning.plan_run`: measured candidates on this machine where values are left to
the plan), and prints the fingerprint's summary and the plan::

    detloss-plan data=nnunet data.root=/data/Dataset001 [data.plan.budget_minutes=20]
    detloss-plan data=masks data.root=/data/masks data.num_classes=11

Without ``task=`` on the command line the data's own task is planned (``task=volumetric`` for volumes,
``task=segmentation`` for 2D masks; the line that says so is printed); a given ``task=`` that does not train the
data is refused, as ``detloss-train`` refuses it. Detection data (``data=coco``, ``yolo``, ``shapes``) is not
planned: its fingerprint alone is printed.
"""

from __future__ import annotations

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

from ..config import CONFIG_SOURCE

__all__ = ["main", "describe_fingerprint"]


def describe_fingerprint(fingerprint) -> str:
    """A few lines on a :class:`~detloss.plan.VolumeFingerprint` (cases, spacing and shape, channels, labels) or an
    :class:`~detloss.plan.images.ImageFingerprint` (images, sizes, classes)."""
    if hasattr(fingerprint, "kind"):
        return _describe_images(fingerprint)
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


def _describe_images(fingerprint) -> str:
    h, w = fingerprint.height, fingerprint.width
    lines = [
        f"  images ({fingerprint.kind}, training split): {fingerprint.num_images}",
        f"  size (H × W): median {h['median']:g} × {w['median']:g} (min {h['min']:g} × {w['min']:g}, "
        f"max {h['max']:g} × {w['max']:g})",
    ]
    for c in fingerprint.classes:
        if fingerprint.kind == "masks":
            parts = f", {c['components']} components (median {c['component_pixels_median']:.0f} px)"
            lines.append(
                f"  class {c['name']}: {100 * c['pixel_share']:.3f} % of the pixels, in {c['images']} images"
                + (parts if c["components"] else "")
            )
        else:
            lines.append(
                f"  class {c['name']}: {c['boxes']} boxes in {c['images']} images, median "
                f"{c['box_width_median']:.1f} × {c['box_height_median']:.1f} px (w × h), "
                f"small / medium / large {c['small']} / {c['medium']} / {c['large']}"
            )
    if fingerprint.boxes is not None:
        b = fingerprint.boxes
        lines.append(
            f"  all boxes: {b['count']}, median {b['box_width_median']:.1f} × {b['box_height_median']:.1f} px, "
            f"small / medium / large {b['small']} / {b['medium']} / {b['large']}"
        )
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONFIG_SOURCE, config_name="train")
def main(cfg: DictConfig) -> None:
    from ..data.base import DetectionDataModule
    from ..planning import plan_run
    from ..train import adapt_to_data

    cfg = _with_the_task_of_its_data(cfg)
    datamodule = instantiate(cfg.data)
    if isinstance(datamodule, DetectionDataModule):
        from .images import detection_fingerprint

        print("Fingerprint:\n" + describe_fingerprint(detection_fingerprint(datamodule)))
        print("(detection data is not planned: its recipe is the configuration's)")
        return
    fingerprint = getattr(datamodule, "fingerprint", None)
    if fingerprint is None:
        raise SystemExit(
            f"detloss-plan: data {cfg.data.get('_target_')} is not planned (volumetric data and masks folders are)"
        )
    print("Fingerprint:\n" + describe_fingerprint(fingerprint))
    adapt_to_data(cfg, datamodule)  # the loss that training would plan with: regions, computed class weights
    plan_run(cfg, datamodule)  # logs the plan's table


def _with_the_task_of_its_data(cfg: DictConfig) -> DictConfig:
    """``cfg``, or where the command line gives no ``task=`` and the default task does not train the data, the
    config composed again with the data's task (:func:`~detloss.train.task_for_data`)."""
    from hydra import compose

    from ..train import check_task_fits_data, task_for_data

    data_class = get_class(cfg.data._target_)
    try:
        check_task_fits_data(cfg, data_class)
        return cfg
    except ValueError:
        overrides = list(HydraConfig.get().overrides.task)
        if any(o.lstrip("+~").startswith("task=") for o in overrides):
            raise
    kind = task_for_data(data_class)
    print(f"detloss-plan: {data_class.__name__} is {kind} data, planned as task={kind} (give task=... for another)")
    return compose(config_name="train", overrides=[*overrides, f"task={kind}"])


if __name__ == "__main__":
    main()
