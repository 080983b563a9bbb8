"""tools/profile_step.py's core on a tiny run: every part timed, positive, and within the step."""

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from profile_step import PARTS, profile, rows  # noqa: E402


def test_parts_are_positive_and_sum_to_at_most_the_step(tmp_path):
    small = ["data.num_train=48", "data.num_val=8", "data.batch_size=8", "data.image_size=64", "logger=none"]
    result = profile([*small, "callbacks=none"], warmup=1, steps=3, val_batches=1, loader_batches=2)
    assert result["steps"] == 3
    for part in PARTS[1:5]:
        assert result[part] > 0, (part, result)
    assert result["data wait"] >= 0 and result["other"] >= -1e-9
    assert sum(result[p] for p in PARTS[1:]) <= result["step"] * (1 + 1e-9)
    assert 0 < result["val metric update"] <= result["val batch"]
    assert result["val metric compute"] > 0  # the mAP at the validation's end
    assert result["loader img/s"] > 0 and math.isclose(result["step img/s"], 8 / result["step"])
    assert rows("tiny", result)[0].startswith("| tiny | 8 |")
