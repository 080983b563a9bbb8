"""The shipped configs: where Hydra finds them, the resolvers they use, and a run's config rebuilt on top of the
config a checkpoint carries.

Where: in a checkout the configs live at the repository's top level (``configs/``); a wheel installs them as the
package ``detloss.configs`` (``pyproject.toml`` maps the folder), which Hydra reads by package,
``pkg://detloss.configs``. :data:`CONFIG_SOURCE` is what the entry points hand to ``hydra.main``, and
:data:`CONFIG_DIR` the folder on disk. A user's own config folder joins them with ``--config-dir DIR`` (or
``hydra.searchpath=[file://DIR]``): its ``loss/``, ``model/``, ``data/`` ... options sit beside the shipped ones.

Checkpoint: training stores the resolved config in every checkpoint (:class:`detloss.runs.ConfigInCheckpoint`);
for ``detloss-eval`` and ``detloss-predict`` :func:`checkpoint_arguments` makes it the default option of the groups
it fills, so that Hydra composes on it and the command line wins as it always does (see there).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

__all__ = [
    "CONFIG_DIR",
    "CONFIG_SOURCE",
    "CHECKPOINT_CONFIG",
    "CHECKPOINT_DATA",
    "CHECKPOINT_OPTION",
    "CHECKPOINT_GROUPS",
    "read_checkpoint",
    "write_checkpoint_options",
    "checkpoint_arguments",
]

log = logging.getLogger(__name__)

_ROOT = Path(__file__).resolve().parents[1]


def _in_checkout() -> bool:
    """Whether this detloss runs from its source tree (a checkout, installed editable or on ``PYTHONPATH``)."""
    pyproject = _ROOT / "pyproject.toml"
    in_repository = (_ROOT / "configs" / "train.yaml").is_file() and pyproject.is_file()
    return in_repository and 'name = "detloss"' in pyproject.read_text(encoding="utf-8")


if _in_checkout():
    CONFIG_DIR = _ROOT / "configs"
    CONFIG_SOURCE = str(CONFIG_DIR)
else:  # an installed wheel: the package detloss.configs
    from importlib.resources import files

    CONFIG_DIR = Path(str(files("detloss.configs")))
    CONFIG_SOURCE = "pkg://detloss.configs"

#: checkpoint keys: the resolved config of the run, and what the model knows of its data (a DataModule's
#: ``describe()``: kind, class names, the data's own category ids, channels, size)
CHECKPOINT_CONFIG = "detloss_config"
CHECKPOINT_DATA = "detloss_data"


def _left_to_the_task() -> tuple[str, ...]:
    """The run's keys that ``train.yaml`` leaves to its task (their value there is ``???``): its name and metric."""
    primary = OmegaConf.load(CONFIG_DIR / "train.yaml")
    return tuple(key for key in primary if key != "defaults" and OmegaConf.is_missing(primary, key))


#: the option that holds a checkpoint's part of each group, and the keys of the checkpoint's config each group
#: holds: the loss brings its criterion, as a shipped loss config does; the task its own node and the run's keys that
#: ``train.yaml`` leaves to it
CHECKPOINT_OPTION = "checkpoint"
CHECKPOINT_GROUPS = {
    "model": ("model",),
    "data": ("data",),
    "loss": ("loss", "criterion"),
    "task": (*_left_to_the_task(), "task"),
}

_PREFIX = "detloss_checkpoint_"  # of the temporary folder of a checkpoint's options

# ``${detloss_or:a,b}``: ``a`` unless it is null, else ``b`` (``oc.select`` falls back for missing keys only);
# configs/hydra/default.yaml uses it to put a run resumed with ``resume=RUN_DIR`` back into RUN_DIR.
# ``${detloss_set:a}``: whether ``a`` is not null.
# ``${detloss_workers:n}``: data-loader workers for file-based data, at most ``n`` and two fewer than the machine's
# CPUs (0 on 2 cores), so that the workers never take the cores the training's own threads run on.
if not OmegaConf.has_resolver("detloss_workers"):
    OmegaConf.register_new_resolver("detloss_workers", lambda cap: max(0, min(int(cap), (os.cpu_count() or 1) - 2)))
if not OmegaConf.has_resolver("detloss_or"):
    OmegaConf.register_new_resolver("detloss_or", lambda value, default: default if value is None else value)
if not OmegaConf.has_resolver("detloss_set"):
    OmegaConf.register_new_resolver("detloss_set", lambda value: value is not None)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path`` (on the CPU, tensors memory-mapped).

    Raises:
        FileNotFoundError: naming ``ckpt_path`` and the path.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path: no checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=False, mmap=True)


def write_checkpoint_options(saved: Mapping[str, Any], folder: Path) -> list[str]:
    """Write the parts of ``saved`` (a checkpoint's config) as the option :data:`CHECKPOINT_OPTION` of each group
    of :data:`CHECKPOINT_GROUPS` into ``folder`` (``folder/<group>/checkpoint.yaml``); the groups written."""
    written = []
    for group, keys in CHECKPOINT_GROUPS.items():
        part = {key: saved[key] for key in keys if key in saved}
        if not part:
            continue
        (folder / group).mkdir(parents=True, exist_ok=True)
        text = OmegaConf.to_yaml(OmegaConf.create(part))
        (folder / group / f"{CHECKPOINT_OPTION}.yaml").write_text(f"# @package _global_\n{text}", encoding="utf-8")
        written.append(group)
    return written


def checkpoint_arguments(args: Sequence[str], flags_with_values: Sequence[str]) -> list[str]:
    """The command line ``args`` of ``detloss-eval`` / ``detloss-predict`` with the checkpoint's config as defaults.

    The config stored in the checkpoint of ``ckpt_path=...`` is written as the option ``checkpoint`` of the groups
    model, data, loss (with its criterion) and task (:func:`write_checkpoint_options`, into a temporary folder that
    joins ``hydra.searchpath``), and ``<group>=checkpoint`` is added for each of them that the command line does
    not choose. Hydra then composes as it always does, so the precedence is Hydra's: the entry point's config
    (``eval.yaml``, ``predict.yaml``, on ``train.yaml``) for the rest (trainer, paths, logger, ...), the checkpoint's
    options for its groups, a group chosen on the command line instead of the checkpoint's (``data=coco``), and
    the values of the command line last (``data.num_val=64``, ``+data.class_names=[...]``, ``~loss.terms.l1``).

    Unchanged: without ``ckpt_path``, a checkpoint that cannot be read (the entry point reports it) or that carries
    no config (written before checkpoints carried one: the training overrides must then be given again).
    ``flags_with_values``: Hydra's flags that take a value (``--config-dir DIR``), which are not overrides.
    """
    args = list(args)
    if any(arg.startswith("hydra.searchpath=") and _PREFIX in arg for arg in args):
        return args  # already added (the ranks that Lightning's DDP starts run this command line again)
    overrides, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in flags_with_values
        else:
            overrides.append(arg)
    parsed = OverridesParser.create().parse_overrides(overrides)
    path = next((o.value() for o in parsed if o.key_or_group == "ckpt_path"), None)
    try:
        saved = read_checkpoint(path).get(CHECKPOINT_CONFIG) if path else None
    except Exception:  # a missing or unreadable checkpoint is reported by the entry point, naming it
        saved = None
    if not saved:
        if path:
            log.warning("detloss: %s carries no config; the command line alone describes the run", path)
        return args
    folder = Path(tempfile.mkdtemp(prefix=_PREFIX))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    chosen = {o.key_or_group.split("@")[0] for o in parsed}
    added = [f"{g}={CHECKPOINT_OPTION}" for g in write_checkpoint_options(saved, folder) if g not in chosen]
    searchpath = next((o for o in parsed if o.key_or_group == "hydra.searchpath"), None)
    paths = [*(searchpath.value() if searchpath is not None else []), f"file://{folder}"]
    if searchpath is not None:
        args.remove(searchpath.input_line)
    return [*added, f"hydra.searchpath=[{','.join(paths)}]", *args]
