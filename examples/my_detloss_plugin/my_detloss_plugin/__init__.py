"""A user's own parts for detloss: a loss term (:mod:`.losses`) and a detector (:mod:`.models`), and beside the
package a config folder (``configs/``) that adds them to detloss's config groups. See detloss's docs,
docs/guide/extending.md."""

from .losses import CenterDistanceLoss, center_distance_loss
from .models import TinyDetector

__all__ = ["CenterDistanceLoss", "center_distance_loss", "TinyDetector"]
