"""What the tests share: composing the shipped Hydra configs, and the YOLOv8 reference beside the tests."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from detloss.config import CONFIG_DIR

# the YOLOv8 reference used by the detection tests lives beside the tests; the helpers one test module takes from
# another (test_data's generators, test_tasks' toy criteria) import by module name from any folder of the tree, so a
# file runs alone as it runs in the suite (pytest's "prepend" import mode puts each folder on the path as it
# collects it, which makes such imports depend on the order of collection)
HERE = Path(__file__).resolve().parent
for folder in [HERE, *sorted(p for p in HERE.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))]:
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

CONFIGS = CONFIG_DIR


def compose_config(*overrides: str, config_name: str = "train", return_hydra_config: bool = False) -> DictConfig:
    """The shipped ``configs/<config_name>.yaml`` composed with ``overrides``, as the command line would."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)


def config_names(group: str) -> list[str]:
    """The options of a config group (``loss``, ``model``, ...), sorted."""
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def preset(group: str, name: str, **kwargs):
    """Instantiate one shipped config file (``preset("model", "yolo_nano", num_classes=3)``)."""
    return instantiate(OmegaConf.load(CONFIGS / group / f"{name}.yaml"), **kwargs)


@pytest.fixture
def compose(tmp_path):
    """``compose(*overrides)``: the train config, its run directory in the test's ``tmp_path``."""

    def _compose(*overrides: str, **kwargs) -> DictConfig:
        return compose_config(f"paths.output_dir={tmp_path}", *overrides, **kwargs)

    return _compose


def quiet_trainer(**kwargs) -> L.Trainer:
    """A CPU ``Trainer`` without logger, progress bar or model summary (``kwargs`` add to or override that)."""
    defaults = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(**{**defaults, **kwargs})
