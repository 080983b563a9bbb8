"""``compile=true``: the model's forward under ``torch.compile``, with checkpoints, EMA and fine-tuning unchanged.

The runs use ``backend: aot_eager``: TorchDynamo captures the graph and AOTAutograd splits forward and backward
exactly as with the default inductor backend, so what these tests are about (the module's class, its state-dict
keys, EMA, checkpoints, fine-tuning) is the same, without inductor's C++ code generation, which took over 9 minutes
for the first YOLO nano step on the shared 2-core CPU. ``test_inductor_compiles_the_unet`` (slow) runs inductor.
"""

import json

import pytest
import torch

from detloss.train import build, train

SMALL = ["data.num_train=32", "data.num_val=16", "data.batch_size=8", "data.num_workers=0", "data.image_size=64"]

AOT = "compile={backend: aot_eager}"


def test_compiled_detection_checkpoint_loads_uncompiled_and_fine_tunes(tmp_path, compose):
    steps = ["trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "logger=none"]
    cfg = compose(*SMALL, *steps, AOT)
    datamodule, task = build(cfg)
    assert task.model._compiled_call_impl is not None and task.ema.module._compiled_call_impl is None
    metrics = train(cfg)
    assert cfg.optimized_metric in metrics

    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    keys = list(ckpt["state_dict"]) + list(ckpt["ema"]["module"])
    assert not [k for k in keys if "_orig_mod" in k], keys[:5]
    _, plain = build(compose(*SMALL, *steps))  # compile=false
    plain.load_state_dict(ckpt["state_dict"])  # strict: the same keys
    plain.on_load_checkpoint(ckpt)
    assert ckpt["ema"]["updates"] == 2 and plain.ema.updates == 2

    # the trained weights give the same outputs compiled and not (eval mode: BatchNorm's running statistics)
    task.load_state_dict(ckpt["state_dict"])
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = task.model.eval()(images), plain.model.eval()(images)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)

    # a compiled run continued from that checkpoint (a new run directory): one more epoch of 2 steps
    again = compose(*SMALL, *steps[1:], "trainer.max_epochs=2", AOT)
    again.paths.output_dir = str(tmp_path / "fine_tune")
    again.ckpt_path = str(tmp_path / "checkpoints" / "last.ckpt")
    train(again)
    record = json.loads((tmp_path / "fine_tune" / "metrics.json").read_text())
    assert record["status"] == "ok" and record["steps"] == 4, record


@pytest.mark.parametrize("compile_", [AOT, pytest.param("compile=true", marks=pytest.mark.slow)])
def test_compiled_segmentation_fast_dev_run(tmp_path, compose, compile_):
    cfg = compose("task=segmentation", *SMALL, "+trainer.fast_dev_run=2", "callbacks=none", "logger=none", compile_)
    metrics = train(cfg)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "ok" and cfg.optimized_metric in metrics
