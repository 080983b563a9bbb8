"""The docs' "Extending" page (docs/guide/extending.md), run: ``examples/my_detloss_plugin`` (a package with a loss
and a detector, and a config folder beside it) plugs into the installed detloss through ``--config-dir`` or
``hydra.searchpath`` and ``_target_``, without touching detloss."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_config

from detloss.train import build, train

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "my_detloss_plugin"
#: what turns the docs' training command into a quick one
QUICK = ["++trainer.fast_dev_run=true", "data.num_train=16", "data.num_val=8", "data.image_size=64", "callbacks=none",
         "logger=none"]  # fmt: skip


def docs_section(title: str) -> str:
    text = (ROOT / "docs" / "guide" / "extending.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def docs_train_command() -> list[str]:
    """The training command of the docs' section, as its arguments."""
    section = docs_section("Your own configs")
    [line] = [line for line in section.splitlines() if line.startswith("python -m detloss.train --config-dir")]
    return shlex.split(line.split("#")[0])[3:]


@pytest.fixture
def plugin_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))


def test_the_docs_command_trains_with_the_users_model_and_loss(tmp_path):
    args = docs_train_command()
    assert args[:2] == ["--config-dir", "examples/my_detloss_plugin/configs"]
    args[1] = str(ROOT / args[1])  # the docs run it from the repository root; this test from a temporary folder
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLE), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "detloss.train", *args, *QUICK, "hydra.run.dir=run"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "ok" and "val/loss/center" in record["metrics"]
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "my_detloss_plugin.models.TinyDetector" in config and "my_detloss_plugin.losses.CenterDistanceLoss" in config


def test_the_search_path_adds_the_users_options_beside_the_shipped_ones(tmp_path, plugin_on_path):
    cfg = compose_config(f"hydra.searchpath=[file://{EXAMPLE / 'configs'}]", "model=tiny_detector", "loss=yolo_center",
                         f"paths.output_dir={tmp_path}", *QUICK[1:4])  # fmt: skip
    assert set(cfg.loss.terms) == {"box", "cls", "dfl", "center"}  # the shipped yolo composite and the new term
    assert cfg.criterion._target_ == "detloss.detection.DetectionCriterion"
    _, task = build(cfg)
    from my_detloss_plugin import CenterDistanceLoss, TinyDetector

    assert isinstance(task.model, TinyDetector) and isinstance(task.criterion.loss.losses["center"], CenterDistanceLoss)
    assert compose_config(f"hydra.searchpath=[file://{EXAMPLE / 'configs'}]", "loss=dice_ce").loss.terms.dice


def test_the_users_loss_is_a_composite_term_by_target_alone(tmp_path, plugin_on_path):
    term = "{loss: {_target_: my_detloss_plugin.losses.CenterDistanceLoss}, weight: 2.0, view: box}"
    metrics = train(compose_config(f"+loss.terms.center={term}", f"paths.output_dir={tmp_path}", *QUICK))
    assert torch.isfinite(torch.tensor(metrics["val/loss/center"]))


def test_the_docs_state_the_contract_the_example_keeps():
    section = docs_section("Your own model") + docs_section("Your own configs")
    for phrase in ("[B, 4·reg_max + C, H/s, W/s]", "postprocess", "[B, C, H, W]", "size_multiple"):
        assert phrase in section, phrase
    assert re.search(r"pip install -e examples/my_detloss_plugin", section)
