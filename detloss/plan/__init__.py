"""Planning a recipe from the data and the machine, as nnU-Net does: a dataset's fingerprint
(:mod:`~detloss.plan.fingerprint`), nnU-Net's rules on it (:mod:`~detloss.plan.rules`) and the plan under a
compute budget (:mod:`~detloss.plan.budget`: memory on a GPU, time on a CPU).

The plan is data, not code paths: a :class:`VolumePlan` that the data module, the model and the trainer read; the
run (:func:`detloss.train.plan_run`) fills what the configuration leaves ``null`` with it, prints it, writes it to
the run directory and stores it in the checkpoints.
"""

from .budget import Measure, VolumePlan, cached_plan, machine, plan_volumes
from .fingerprint import VolumeFingerprint, crop_to_nonzero_box, volume_fingerprint
from .rules import initial_patch, normalisation, shrink_patch, target_spacing, topology

__all__ = [
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
