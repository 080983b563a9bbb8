"""The launch plumbing of a run: what Hydra's multirun and Lightning's DDP re-launch need from each other.

Lightning's ``strategy=ddp`` starts ranks 1..N-1 by re-running ``sys.argv`` (with ``hydra.run.dir`` of the
launching process); inside a Hydra multirun that command line is the whole sweep. :func:`relaunch_this_job_only`
rewrites it to this job, and :func:`fresh_distributed_state` gives every job of a multirun the process state the
first one had.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict, read_write

__all__ = [
    "VALUE_FLAGS",
    "job_overrides",
    "in_multirun",
    "relaunch_this_job_only",
    "hydra_flags",
    "fresh_distributed_state",
]

#: what Lightning's DDP launcher sets in the launching process (and never unsets)
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
_ENV_AT_START = {key: os.environ.get(key) for key in _LAUNCH_ENV}
#: Hydra's command-line flags that take a value and must reach the ranks Lightning starts
VALUE_FLAGS = ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir")


def job_overrides() -> list[str]:
    """The command-line overrides of this Hydra job (empty outside a Hydra run, e.g. under ``compose``)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def relaunch_this_job_only(out_dir: Path) -> None:
    """Make Lightning's DDP re-launch (``strategy=ddp``) start the other ranks on this sweep job, in its directory.

    Lightning starts ranks 1..N-1 as ``python -m detloss.train <sys.argv[1:]> hydra.run.dir=<hydra.run.dir>``.
    Inside a multirun that command line is the whole sweep (``-m``, comma lists) and ``hydra.run.dir`` is not the
    job's directory, so every job would start a sweep of its own and scatter run directories. Here, in the
    launching process of a sweep job, the command line becomes Hydra's flags (``-cn``, ``-cp``, ...) and this
    job's own overrides, and ``hydra.run.dir`` its output directory. Outside a multirun (including the ranks
    Lightning starts, which run a single job) nothing changes.
    """
    if not in_multirun():
        return
    sys.argv = [sys.argv[0], *hydra_flags(sys.argv[1:]), *job_overrides()]
    hydra_cfg = HydraConfig.get()
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = str(out_dir)


def hydra_flags(args: Sequence[str]) -> list[str]:
    """The flags of a Hydra command line (with their values), without ``-m`` / ``--multirun`` and overrides."""
    kept, take_next = [], False
    for arg in args:
        if take_next:
            kept.append(arg)
            take_next = False
        elif arg in ("-m", "--multirun") or not arg.startswith("-"):
            continue
        else:
            kept.append(arg)
            take_next = arg in VALUE_FLAGS
    return kept


@contextlib.contextmanager
def fresh_distributed_state():
    """Each job of a multirun starts as the first did: Lightning's DDP launcher leaves its environment variables
    (``LOCAL_RANK=0`` makes the next job believe that its ranks are started by someone else, and wait for them)
    and its process group behind in the launching process; they are restored and destroyed around every job."""
    if in_multirun():
        for key, value in _ENV_AT_START.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        yield
    finally:
        if in_multirun() and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
