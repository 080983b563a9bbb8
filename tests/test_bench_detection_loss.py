"""tools/bench_detection_loss.py --parts: every part timed and positive, and the library as it was afterwards."""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import bench_detection_loss as bench  # noqa: E402

from detloss.detection import assigner, criterion  # noqa: E402
from detloss.losses import _modulated_bce  # noqa: E402


def test_parts_are_timed_and_the_wrappers_removed(capsys):
    before = (assigner.Assignment.target_scores, _modulated_bce._fused_forward, criterion._HeadMaps.backward)
    args = argparse.Namespace(gts=[2], warmup=0, repeats=1)
    bench.parts(args, torch.device("cpu"))
    row = capsys.readouterr().out.strip().splitlines()[-1]
    cells = [float(c) for c in row.strip("|").split("|")]
    assert cells[0] == 2 and len(cells) == 1 + len(bench.PARTS) + 3
    timed = dict(zip([*bench.PARTS, "forward", "backward", "fwd + bwd"], cells[1:]))
    assert all(timed[p] > 0 for p in ("assignment", "target scores", "class term", "head maps backward")), timed
    assert timed["fwd + bwd"] >= timed["forward"] >= timed["class term"]
    after = (assigner.Assignment.target_scores, _modulated_bce._fused_forward, criterion._HeadMaps.backward)
    assert after == before
