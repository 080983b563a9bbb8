"""Two CPU processes over gloo (``trainer=ddp_sim``): what DDP must not change, checked against one process."""

import functools
import json
import os
import subprocess
import sys

import lightning as L
import pytest
import torch
from conftest import compose_config, quiet_trainer
from test_tasks import TwoTerms  # cls turns NaN on the batch that holds a target marked -1 (sample 5 here)
from torch import nn

from detloss.tasks import LossTask
from detloss.train import build, train

#: 13 validation images on 2 ranks: Lightning's DistributedSampler would pad them to 14 (one counted twice)
DDP = [
    "trainer=ddp_sim",
    "data.num_train=16",
    "data.num_val=13",
    "data.batch_size=4",
    "data.image_size=64",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "task.num_previews=1",
]
METRICS = {
    "detection": ["val/map", "val/map_50", "val/map_75", "val/mar_100"],
    "segmentation": ["val/dice", "val/generalized_dice"],
}


class RankProbe(L.Callback):
    """Writes, per rank and step, the rank's own loss and the logged (reduced) one, and what DDP set up."""

    def __init__(self, out_dir):
        self.out_dir, self.steps = str(out_dir), []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.steps.append({"local": float(outputs["loss"]), "logged": float(trainer.callback_metrics["train/loss"])})

    def on_train_end(self, trainer, module):
        sync_bn = any(isinstance(m, torch.nn.SyncBatchNorm) for m in module.model.modules())
        record = {"steps": self.steps, "sync_bn": sync_bn, "seed": torch.initial_seed()}
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(record, f)


def compose_cfg(run_dir, *overrides):
    return compose_config(f"paths.output_dir={run_dir}", *overrides)


def validate_on_one_process(cfg, checkpoint):
    """The metrics of ``checkpoint`` on the whole validation set, in this process alone."""
    datamodule, task = build(cfg)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, default_root_dir=cfg.paths.output_dir
    )
    (result,) = trainer.validate(task, datamodule=datamodule, ckpt_path=str(checkpoint), verbose=False)
    return result


#: the U-Nets of the segmentation cases, given so that both runs build the same one without measuring candidates
UNET, WIDE_UNET = ["model.base_channels=16", "model.depth=4"], ["model.base_channels=32", "model.depth=3"]


# the wider U-Net predicts classes absent from some images: their generalized Dice must not depend on which images
# share a validation batch (each rank batches other images)
@pytest.mark.parametrize("task, recipe", [("detection", []), ("segmentation", UNET), ("segmentation", WIDE_UNET)])
def test_two_process_run_matches_one_process(tmp_path, task, recipe):
    run_dir, probes = tmp_path / "run", tmp_path / "probes"
    probes.mkdir()
    # PyTorch's init for the U-Net: with the background prior, 2 steps predict only background and every Dice is 0
    extra = ["model.background_prior=null"] if task == "segmentation" else []
    cfg = compose_cfg(run_dir, f"task={task}", *DDP, *recipe, *extra)
    metrics = train(cfg, callbacks=[RankProbe(probes)])

    # one run directory, one metrics.json, checkpoints written once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probes", "run"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "ok" and record["steps"] == 2  # 16 images, batch 4, 2 ranks

    # validation metrics: every image counted once, as one process counts them
    one_process = compose_cfg(tmp_path / "single", f"task={task}", *DDP[1:], *recipe)
    single = validate_on_one_process(one_process, run_dir / "checkpoints" / "last.ckpt")
    values = {k: (metrics[k], single[k]) for k in METRICS[task]}
    if task == "segmentation":  # two steps do not teach a detector anything: test_map_over_ranks covers mAP
        assert any(abs(v) > 0 for v, _ in values.values()), values
    for key, (ddp, one) in values.items():
        assert ddp == pytest.approx(one, abs=1e-6), key

    # logged losses are reduced over the ranks; the ranks draw different augmentations
    ranks = [json.loads((probes / f"rank{r}.json").read_text()) for r in (0, 1)]
    for a, b in zip(ranks[0]["steps"], ranks[1]["steps"]):
        assert a["logged"] == pytest.approx((a["local"] + b["local"]) / 2, rel=1e-5) == b["logged"]
    assert not any(r["sync_bn"] for r in ranks)  # GPU only in torch: trainer=ddp turns it on (test_ddp_config)
    assert ranks[0]["seed"] != ranks[1]["seed"]


class WeightProbe(L.Callback):
    """Writes, per rank, the balancer's factors after every optimizer step."""

    def __init__(self, out_dir):
        self.out_dir, self.factors = str(out_dir), []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.factors.append(module.criterion.loss.balancing.factors())

    def on_train_end(self, trainer, module):
        with open(os.path.join(self.out_dir, f"weights{trainer.global_rank}.json"), "w") as f:
            json.dump(self.factors, f)


@pytest.mark.parametrize(("task", "loss"), [("detection", "yolo_gradnorm"), ("segmentation", "dice_ce_famo")])
def test_a_learned_balancer_holds_the_same_weights_on_every_rank(tmp_path, task, loss):
    """GradNorm (its extra backward through the shared layer of the DDP-wrapped model) and FAMO under Lightning's
    DDP: every rank moves its weights by the values of all ranks, so the ranks hold the same weights at every step,
    and the checkpoint holds them."""
    run_dir, probes = tmp_path / "run", tmp_path / "probes"
    probes.mkdir()
    overrides = [o for o in DDP if o != "task.num_previews=1"] + ["task.num_previews=0", "trainer.max_epochs=2"]
    cfg = compose_cfg(run_dir, f"task={task}", f"loss={loss}", *overrides)
    train(cfg, callbacks=[WeightProbe(probes)])
    ranks = [json.loads((probes / f"weights{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 4  # 2 epochs of 2 steps
    assert ranks[0] == ranks[1]  # exactly, at every step
    assert ranks[0][-1] != pytest.approx(dict.fromkeys(ranks[0][-1], 1.0))  # and they moved
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    _, restored = build(cfg)
    restored.load_state_dict(state)
    assert restored.criterion.loss.balancing.factors() == pytest.approx(ranks[0][-1], rel=1e-6)


def _images(n: int):
    """``n`` images of 0-2 boxes each with predictions of every quality (some exact, some off, some missing)."""
    g = torch.Generator().manual_seed(0)
    preds, targets = [], []
    for i in range(n):
        k = i % 3
        xy = torch.rand(k, 2, generator=g) * 50
        boxes = torch.cat([xy, xy + 10 + torch.rand(k, 2, generator=g) * 20], 1)
        labels = torch.randint(0, 3, (k,), generator=g)
        shift = torch.rand(k, 1, generator=g) * 8 * (i % 2)
        preds.append({"boxes": boxes + shift, "scores": torch.rand(k, generator=g), "labels": labels})
        targets.append({"boxes": boxes, "labels": labels})
    return preds, targets


def _map_worker(rank: int, world: int, port: int, out: str):
    import torch.distributed as dist
    from torchmetrics.detection import MeanAveragePrecision

    from detloss.tasks.detection import pad_to_equal_image_counts

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    preds, targets = _images(7)
    mine = list(range(rank, 7, world))  # 4 images on rank 0, 3 on rank 1, as the validation sampler splits them
    metric = MeanAveragePrecision()
    for i in mine:
        metric.update([preds[i]], [targets[i]])
    pad_to_equal_image_counts(metric)
    result = {k: float(v) for k, v in metric.compute().items() if v.numel() == 1}
    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


def test_map_over_ranks_with_unequal_image_counts(tmp_path):
    from torchmetrics.detection import MeanAveragePrecision

    out = tmp_path / "ddp.json"
    torch.multiprocessing.spawn(_map_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    preds, targets = _images(7)
    single = MeanAveragePrecision()
    single.update(preds, targets)
    expected = {k: float(v) for k, v in single.compute().items() if v.numel() == 1}
    got = json.loads(out.read_text())
    assert 0 < expected["map_50"] < 1  # neither trivial nor perfect
    for key in ("map", "map_50", "map_75", "mar_100"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_config():
    cfg = compose_config("trainer=ddp", "trainer.devices=4")
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.sync_batchnorm and cfg.trainer.use_distributed_sampler


@pytest.mark.slow
@pytest.mark.parametrize(
    "trainer",
    [
        ["trainer=ddp_sim"],  # spawned ranks
        # ranks started by Lightning as new processes of the same command line (what GPUs use)
        ["trainer=ddp", "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.sync_batchnorm=false"],
    ],
    ids=["spawn", "subprocess"],
)
def test_a_multirun_of_ddp_jobs_keeps_each_job_in_its_directory(tmp_path, trainer):
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "detloss.train",
        "-m",
        "loss.terms.box.weight=1,2",
        *DDP,
        *trainer,
        "trainer.devices=2",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job in ("0", "1"):
        record = json.loads((sweep / job / "metrics.json").read_text())
        assert record["status"] == "ok" and record["steps"] == 2
        assert sorted(p.name for p in (sweep / job / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def _rank_batches(rank: int) -> list[list[int]]:
    """The samples of each step on ``rank``: Lightning's DistributedSampler (shuffled, seed 0), batch 2."""
    sampler = torch.utils.data.DistributedSampler(range(16), num_replicas=2, rank=rank, shuffle=True, seed=0)
    sampler.set_epoch(0)
    order = list(sampler)
    return [order[i : i + 2] for i in range(0, len(order), 2)]


def _nan_fit(nan_guard: str, out_dir: str):
    torch.manual_seed(0)
    x, y = torch.randn(16, 3), torch.randn(16, 2)
    y[5, 0] = -1
    optimizer = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=0.1)
    task = LossTask(nn.Linear(3, 2), TwoTerms(), optimizer, nan_guard=nan_guard)
    trainer = quiet_trainer(
        max_epochs=1, devices=2, strategy="ddp_spawn", enable_checkpointing=False, default_root_dir=out_dir
    )
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=2)
    trainer.fit(task, loader)
    return trainer, task


def test_nan_guard_under_ddp_stops_or_skips_on_every_rank(tmp_path, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # the seed of the distributed sampler
    batches = {rank: _rank_batches(rank) for rank in (0, 1)}
    ((_, bad_step),) = [(r, k) for r, b in batches.items() for k, idx in enumerate(b) if 5 in idx]
    with pytest.raises(Exception, match=f"non-finite loss at step {bad_step} "):
        _nan_fit("stop", str(tmp_path))
    _, task = _nan_fit("skip", str(tmp_path))  # ddp_spawn brings the weights back to this process

    # by hand: DDP averages the two ranks' gradients; at the bad step both ranks skip, the finite one too, and
    # the skipped step moves nothing (momentum and weight decay would move the weights even on a zero gradient)
    torch.manual_seed(0)
    x, y = torch.randn(16, 3), torch.randn(16, 2)
    model = nn.Linear(3, 2)
    groups = [{"params": [model.weight]}, {"params": [model.bias], "weight_decay": 0.0}]  # as LossTask
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=0.1)
    for step in range(4):
        if step == bad_step:
            continue
        optimizer.zero_grad()
        for rank in (0, 1):
            idx = batches[rank][step]
            (TwoTerms()(model(x[idx]), y[idx]).total / 2).backward()
        optimizer.step()
    torch.testing.assert_close(task.model.weight, model.weight)
    torch.testing.assert_close(task.model.bias, model.bias)
