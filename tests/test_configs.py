"""Every shipped config file composes: each option of each group (``configs/<group>/<option>.yaml``, nested groups
such as ``hydra/launcher`` included) is chosen once, with what it needs, and its values resolve."""

import pytest
from conftest import CONFIGS, compose_config
from omegaconf import OmegaConf

#: the shipped options, as ``(group, option)``: every ``configs/<group>/<option>.yaml``
OPTIONS = sorted(
    (p.parent.relative_to(CONFIGS).as_posix(), p.stem) for p in CONFIGS.glob("*/**/*.yaml") if p.parent != CONFIGS
)

#: what an option that reads files needs on the command line (composed only, never instantiated)
PATHS = {
    "coco": [
        "data.train_images=a",
        "data.train_annotations=a.json",
        "data.val_images=b",
        "data.val_annotations=b.json",
    ],
    "yolo": ["data.root=r"],
    "masks": ["data.root=r", "data.num_classes=3"],
    "nnunet": ["data.root=r"],
}
#: options of a volumetric part, composed with task=volumetric
VOLUMETRIC = {"data": ("lesions3d", "nnunet"), "model": ("unet3d", "unet3d_large")}
#: options of a segmentation part, composed with task=segmentation (their interpolations read its data config)
SEGMENTATION = {
    "data": ("lesions", "masks"),
    "model": ("unet", "unet_large"),
    "task": ("segmentation",),
    "criterion": ("segmentation",),
}
#: groups that only a config of another group puts in the defaults list: what chooses them
REACHED_THROUGH = {"model_head": ["loss=yolo26"]}
#: how a group placed in another package is named in an override
OVERRIDE_KEY = {"model_head": "model_head@model"}
#: the Hydra plugin that an option of these groups needs
PLUGINS = {
    "hparams_search": "optuna",  # the detloss_optuna sweeper (hydra_plugins/detloss_optuna_sweeper) runs on it
    "hydra/launcher": "hydra_plugins.hydra_submitit_launcher",
}


def segmentation(group: str, option: str) -> bool:
    if group == "loss":
        return not option.startswith("yolo")
    if group == "hparams_search":
        return option.startswith("segmentation")
    return option in SEGMENTATION.get(group, ())


def test_the_shipped_groups_are_all_found():
    groups = {group for group, _ in OPTIONS}
    assert {"callbacks", "data", "hparams_search", "hydra/launcher", "logger", "loss", "model", "task"} <= groups


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_shipped_config_composes_and_resolves(tmp_path, group, option):
    if group in PLUGINS:
        pytest.importorskip(PLUGINS[group], reason=f"{group}={option} needs a Hydra plugin")
    key = OVERRIDE_KEY.get(group, group)
    overrides = [f"paths.output_dir={tmp_path}", *REACHED_THROUGH.get(group, []), f"{key}={option}"]
    if option in VOLUMETRIC.get(group, ()):
        overrides.insert(0, "task=volumetric")
    elif segmentation(group, option) and group != "task":
        overrides.insert(0, "task=segmentation")
    if group == "data":
        overrides += PATHS.get(option, [])
    cfg = compose_config(*overrides, return_hydra_config=True)
    assert cfg.hydra.runtime.choices[key] == option
    # every value outside hydra resolves (the paths above are only strings); of hydra, what the option sets
    OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    hydra_part = {"hydra": ["run.dir", "sweep.dir"], "hydra/launcher": ["launcher"], "hparams_search": ["sweeper"]}
    for key in hydra_part.get(group, []):
        value = OmegaConf.select(cfg.hydra, key)  # resolves a value; a node is resolved here:
        if OmegaConf.is_config(value):
            OmegaConf.to_container(value, resolve=True)


def test_the_eval_config_composes(tmp_path):
    cfg = compose_config(f"paths.output_dir={tmp_path}", "ckpt_path=x.ckpt", config_name="eval")
    assert cfg.ckpt_path == "x.ckpt"
    OmegaConf.to_container(cfg, resolve=True)
