"""Every shipped config file composes: each option of each group (``configs/<group>/<option>.yaml``, nested groups
such as ``hydra/launcher`` included) is chosen once, with what it needs, and its values resolve."""

import json
import re

import pytest
import torch
from conftest import CONFIGS, compose_config
from hydra.utils import instantiate
from omegaconf import OmegaConf

from detloss.config import CHECKPOINT_GROUPS, CHECKPOINT_OPTION, write_checkpoint_options
from detloss.planning import plan_run
from detloss.train import check_run_length

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
    overrides = [f"paths.output_dir={tmp_path}", f"{key}={option}"]
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


#: what the three default runs train with, as measured (docs: benchmarks, default runs): the optimizer's learning
#: rate, the epochs of the CPU trainer (None: planned from the data) and the batch Dice of the region terms
DEFAULT_RUNS = {
    "detection": {"lr": 0.003, "max_epochs": 9, "batch_dice": {}},
    "segmentation": {"lr": 0.002, "max_epochs": None, "batch_dice": {"dice": False}},
    "volumetric": {"lr": 0.002, "max_epochs": None, "batch_dice": {"dice": True}},
}


def learning_rate(cfg) -> float:
    """The learning rate of the optimizer that ``cfg`` builds (on one parameter)."""
    return instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))]).param_groups[0]["lr"]


def batch_dice(cfg) -> dict[str, bool]:
    """``{term: batch_dice}`` of the region terms of the loss that ``cfg`` builds."""
    loss = instantiate(cfg.loss)
    return {name: m.options.batch_dice for name, m in loss.losses.items() if hasattr(m.options, "batch_dice")}


@pytest.mark.parametrize("task", DEFAULT_RUNS)
def test_each_default_task_composes_to_the_values_of_its_measured_run(task, tmp_path):
    cfg = compose_config(f"paths.output_dir={tmp_path}", f"task={task}")
    expected = DEFAULT_RUNS[task]
    assert learning_rate(cfg) == expected["lr"]
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.max_epochs == expected["max_epochs"]
    assert batch_dice(cfg) == expected["batch_dice"]


def option(group: str, name: str):
    """The values that ``configs/<group>/<name>.yaml`` itself sets (its own defaults list merged first)."""
    own = OmegaConf.load(CONFIGS / group / f"{name}.yaml")
    parents = [OmegaConf.load(CONFIGS / group / f"{p}.yaml") for p in own.pop("defaults", []) if p != "_self_"]
    return OmegaConf.merge(*parents, own)


@pytest.mark.parametrize("task", DEFAULT_RUNS)
def test_a_group_chosen_on_the_command_line_brings_its_own_values_not_the_tasks(task, tmp_path):
    def compose(*overrides):
        return compose_config(f"paths.output_dir={tmp_path}", f"task={task}", *overrides)

    for name in ("sgd", "adamw"):
        assert learning_rate(compose(f"optimizer={name}")) == option("optimizer", name).lr
    for name in ("gpu", "cpu", "ddp_sim"):
        trainer = compose(f"trainer={name}").trainer
        assert trainer.max_epochs == option("trainer", name).max_epochs
    assert compose("trainer=gpu").trainer.max_epochs == 100 and compose("trainer=cpu").trainer.max_epochs is None
    if task != "detection":
        assert batch_dice(compose("loss=dice_ce")) == {"dice": False}
        assert batch_dice(compose("loss=dice_ce_batch")) == {"dice": True}
        assert batch_dice(compose("loss=tversky")) == {"tversky": False}
    # values under a group's own keys still win over the task's choice
    assert learning_rate(compose("optimizer.lr=0.01")) == 0.01
    assert compose("trainer.max_epochs=2").trainer.max_epochs == 2


#: groups that Hydra itself reads (``hydra``, and its plugins' options under it)
HYDRA_GROUPS = ("hydra",)


def test_every_selectable_group_is_in_the_defaults_of_train_yaml(tmp_path):
    cfg = compose_config(f"paths.output_dir={tmp_path}", return_hydra_config=True)
    chosen = {key.split("@")[0] for key in cfg.hydra.runtime.choices}
    groups = {p.parent.relative_to(CONFIGS).as_posix() for p in CONFIGS.glob("*/**/*.yaml")}
    listed = {(entry if isinstance(entry, str) else next(iter(entry))).split("@")[0].removeprefix("override ")
              for entry in OmegaConf.load(CONFIGS / "train.yaml").defaults}  # fmt: skip
    assert {g for g in groups if g.split("/")[0] not in HYDRA_GROUPS} <= listed - {"_self_"}
    assert groups <= chosen


#: ``${a.b}`` and ``${oc.select:a.b,...}``: the key an interpolation reads (other resolvers read no key)
READS = re.compile(r"\$\{(?:oc\.select:)?([A-Za-z_][\w.]*)(?=[},])")


def test_no_group_reads_a_key_that_another_group_sets_at_the_top_level():
    """A group's values read its own keys, another group's own node (``${model.strides}``, ``${data.ignore_index}``)
    or the run's keys that train.yaml declares (``${seed}``, ``${task_name}``), never a key that exists only because
    some group sets it at the top level for another to read."""
    groups = {p.parent.relative_to(CONFIGS).parts[0] for p in CONFIGS.glob("*/**/*.yaml")}
    primary = OmegaConf.load(CONFIGS / "train.yaml")
    allowed = groups | {key for key in primary if key != "defaults"} | {"hydra"}
    found = {}
    for path in sorted(CONFIGS.glob("*/**/*.yaml")):
        for key in READS.findall(path.read_text(encoding="utf-8")):
            if key.split(".")[0] not in allowed:
                found.setdefault(path.relative_to(CONFIGS).as_posix(), []).append(key)
    assert not found, f"configs read keys that no group owns and train.yaml does not declare: {found}"
    assert READS.findall('a: ${oc.select:adamw_lr,0.002}\nb: "${batch_dice}"\nc: ${now:%H} ${x.y}') == [
        "adamw_lr",
        "batch_dice",
        "x.y",
    ]


def test_a_checkpoints_task_option_holds_the_task_and_the_run_keys_train_yaml_leaves_to_it(tmp_path):
    primary = OmegaConf.load(CONFIGS / "train.yaml")
    assert [key for key in primary if OmegaConf.is_missing(primary, key)] == ["task_name", "optimized_metric"]
    assert set(CHECKPOINT_GROUPS["task"]) == {"task_name", "optimized_metric", "task"}
    saved = OmegaConf.to_container(compose_config(f"paths.output_dir={tmp_path}", "task=segmentation"), resolve=True)
    assert write_checkpoint_options(saved, tmp_path) == ["model", "data", "loss", "task"]
    written = OmegaConf.load(tmp_path / "task" / f"{CHECKPOINT_OPTION}.yaml")
    assert set(written) == {"task_name", "optimized_metric", "task"} and written.task_name == "segmentation"


def test_a_run_without_a_length_is_refused_naming_trainer_max_epochs(tmp_path):
    cfg = compose_config(f"paths.output_dir={tmp_path}", "trainer=cpu")
    assert cfg.trainer.max_epochs is None  # planned for planned data only; the shapes are not
    with pytest.raises(ValueError, match=r"trainer\.max_epochs is null"):
        check_run_length(cfg.trainer)
    check_run_length(compose_config(f"paths.output_dir={tmp_path}", "trainer=cpu", "+trainer.max_steps=10").trainer)
    check_run_length(compose_config(f"paths.output_dir={tmp_path}").trainer)


def test_the_config_groups_page_names_every_group_and_option():
    page = (CONFIGS.parent / "docs" / "guide" / "config_groups.md").read_text(encoding="utf-8")
    named = {g: f"`{g}`" in page for g, _ in OPTIONS}
    missing = [f"{g}={option}" for g, option in OPTIONS if f"`{option}`" not in page or not named[g]]
    assert not missing, f"docs/guide/config_groups.md does not name these options: {missing}"


def test_planned_epochs_fill_the_trainers_own_key_and_a_resumed_run_keeps_its_plan(tmp_path):
    """task=volumetric leaves trainer.max_epochs to the planner; resumed (resume=RUN_DIR), the run takes the epochs of
    the plan.json it started with."""
    data = [f"data.cache_dir={tmp_path / 'cache'}", "data.num_cases=6", "data.shape=[16,32,32]", "data.batch_size=2",
            "data.patch_size=[16,32,32]", "data.patches_per_epoch=4", "model.base_channels=4"]  # fmt: skip
    first = compose_config(f"paths.output_dir={tmp_path}", "task=volumetric", "trainer.max_epochs=3", *data)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "plan.json").write_text(json.dumps(plan_run(first, instantiate(first.data)).to_dict()))
    resumed = compose_config(f"paths.output_dir={run_dir}", "task=volumetric", f"resume={run_dir}", *data)
    assert resumed.trainer.max_epochs is None
    plan_run(resumed, instantiate(resumed.data))
    assert resumed.trainer.max_epochs == 3
    check_run_length(resumed.trainer)
