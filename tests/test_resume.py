"""A run killed with SIGKILL in the middle of an epoch, then resumed with ``resume=RUN_DIR``, ends with the final
metrics of the same run uninterrupted (slow: three short trainings in subprocesses)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
RUN = [
    "data.num_train=64", "data.num_val=32", "data.batch_size=8", "trainer.max_epochs=3", "seed=1",
    "logger=csv", "trainer.log_every_n_steps=1",
]  # fmt: skip


def train(*overrides: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "detloss.train", *RUN, *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_a_run_killed_mid_epoch_and_resumed_ends_as_the_uninterrupted_run(tmp_path, task):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert train(f"task={task}", f"hydra.run.dir={whole}").returncode == 0
    # 8 steps an epoch: killed after step 12, half-way through the second epoch (last.ckpt holds the first)
    cut = train(f"task={task}", f"hydra.run.dir={killed}", "+callbacks.killer={_target_: probes.KillAt, step: 12}")
    assert cut.returncode == -signal.SIGKILL and not (killed / "metrics.json").exists()
    resumed = train(f"task={task}", f"resume={killed}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((whole / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert (a["epochs"], a["steps"]) == (b["epochs"], b["steps"]) == (3, 24)
    # exactly equal on the CPU: the resumed run redoes the second epoch with the same data order, augmentations
    # (seeded from seed, epoch and rank), optimizer, schedule and EMA state as the uninterrupted run
    assert a["metrics"] == b["metrics"]
