"""Planning a recipe from the data and the machine, as nnU-Net does: a dataset's fingerprint
(:mod:`~detloss.plan.fingerprint`), nnU-Net's rules on it (:mod:`~detloss.plan.rules`) and the plan under a
compute budget (:mod:`~detloss.plan.budget`: memory on a GPU, time on a CPU). 2D data has its own fingerprints
(:mod:`~detloss.plan.images`) and plan (:mod:`~detloss.plan.image_plan`): mask folders are planned, detection data
is fingerprinted.

The plan is data, not code paths: a :class:`VolumePlan` (or :class:`ImagePlan`) that the data module, the model and
the trainer read; the run (:func:`detloss.planning.plan_run`) fills what the configuration leaves ``null`` with it,
logs it, writes it to the run directory and stores it in the checkpoints.
"""

from .budget import MIN_STEPS, Measure, VolumePlan, cached_plan, plan_volumes
from .cache import machine
from .fingerprint import VolumeFingerprint, crop_to_nonzero_box, volume_fingerprint
from .image_plan import ImagePlan, cached_image_plan, class_weights, plan_images
from .images import ImageFingerprint, detection_fingerprint, mask_fingerprint
from .rules import initial_patch, normalisation, shrink_patch, target_spacing, topology

__all__ = [
    "ImageFingerprint",
    "ImagePlan",
    "cached_image_plan",
    "class_weights",
    "detection_fingerprint",
    "mask_fingerprint",
    "plan_images",
    "MIN_STEPS",
    "Measure",
    "cached_plan",
    "VolumePlan",
    "VolumeFingerprint",
    "crop_to_nonzero_box",
    "initial_patch",
    "machine",
    "normalisation",
    "plan_volumes",
    "shrink_patch",
    "target_spacing",
    "topology",
    "volume_fingerprint",
]
