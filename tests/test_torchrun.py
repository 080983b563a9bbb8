"""The README's several-machines command, ``torchrun --nnodes=2 ...``, run as 2 nodes × 1 process on this machine
over gloo: one run directory, and the loss terms and gradients of one process on the same global batch (slow)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_config

from detloss.train import build

TESTS = Path(__file__).resolve().parent
RUN = [
    "data.num_train=16", "data.num_val=8", "data.batch_size=4", "data.image_size=64", "data.augment=false",
    "trainer.max_epochs=1", "trainer.log_every_n_steps=1", "task.ema=false", "task.num_previews=0",
]  # fmt: skip
CPU_DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.sync_batchnorm=false"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_of_one_process_train_as_one_process_on_the_global_batch(tmp_path):
    run, probe, port = tmp_path / "run", tmp_path / "probe", _free_port()
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={rank}",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint=127.0.0.1:{port}",
                "-m",
                "detloss.train",
                *CPU_DDP,
                "trainer.devices=1",
                "trainer.num_nodes=2",
                *RUN,
                f"hydra.run.dir={run}",
                f"+callbacks.probe={{_target_: probes.FirstStepProbe, out: {probe}}}",
            ],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=900)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), outputs[0][-3000:] + outputs[1][-3000:]

    # one run directory: one metrics.json (rank 0), the checkpoints once
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "ok" and record["steps"] == 2  # 16 images, batch 4 on each of 2 ranks
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe", "run"]

    # one process, the same weights, the two ranks' batches as one global batch: the model runs on each rank's
    # half (BatchNorm statistics are per device: torch's SyncBatchNorm is GPU-only) and the criterion on all of it
    ranks = [torch.load(probe / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["world"] == 2 and not torch.equal(ranks[0]["batch"][0], ranks[1]["batch"][0])
    cfg = compose_config(f"paths.output_dir={tmp_path / 'one'}", *RUN)
    _, task = build(cfg)
    task.model.load_state_dict(ranks[0]["weights"])
    task.model.train()
    outs = [task.model(r["batch"][0]) for r in ranks]
    feats = [torch.cat(level) for level in zip(*outs)]
    targets = ranks[0]["batch"][1] + ranks[1]["batch"][1]
    out = task.criterion(feats, targets)
    out.total.backward()
    for name, value in out.terms.items():
        for rank in ranks:
            assert rank["terms"][f"train/loss/{name}"] == pytest.approx(float(value), rel=1e-5), name
    # (to float32 accumulation: the run's convolutions are channels-last, this process's are not; each parameter's
    # gradient within 1e-4 of its norm)
    for name, p in task.model.named_parameters():
        for rank in ranks:
            error = float((rank["grads"][name] - p.grad).norm() / p.grad.norm().clamp(min=1e-12))
            assert error < 1e-4, (name, error)
