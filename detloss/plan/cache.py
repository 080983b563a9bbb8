"""Where fingerprints and plans are kept: JSON files, written atomically, read back only while still valid.

One owner for the three things the planner keeps (the volume fingerprint, the 2D fingerprints, the measured plans):
a file's ``signature`` (what it was computed from), the folders it may live in (beside the data, else the user's
cache directory ``~/.cache/detloss/<kind>/``), and reading and writing without ever leaving a half-written file.
A measured plan is kept under what it depends on, the :func:`machine` included, and shared by the processes of a
distributed run (:func:`kept`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["signature", "key", "cache_folder", "read_json", "write_json", "machine", "kept"]


def signature(files: Iterable[Path], *facts: Any) -> str:
    """A short hash of ``files`` (each one's name, size and modification time) and of ``facts`` (JSON-able values
    the result also depends on, such as a version or the number of classes): it changes when any of them does."""
    digest = hashlib.sha1(json.dumps(facts, sort_keys=True, default=str).encode())
    for path in sorted(Path(p) for p in files):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def key(value: Any) -> str:
    """A short hash of a JSON-able ``value``: the file name under which it is kept."""
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_folder(kind: str) -> Path:
    """The user's cache folder for ``kind`` (``"fingerprints"``, ``"plans"``): ``~/.cache/detloss/<kind>``, the home
    folder read at each call."""
    return Path.home() / ".cache" / "detloss" / kind


def read_json(paths: Sequence[Path], valid: Callable[[dict], bool] = lambda data: True) -> dict | None:
    """The first of ``paths`` that reads as a JSON object for which ``valid`` holds; ``None`` when none does (a
    missing, unreadable or stale file is not an error: it is computed anew)."""
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and valid(data):
            return data
    return None


def write_json(paths: Sequence[Path], data: dict) -> Path | None:
    """``data`` written to the first of ``paths`` whose folder can be written (through a temporary file and an
    atomic rename, so that a reader never sees half a file); ``None`` when none can (not an error)."""
    text = json.dumps(data, indent=1)
    for path in paths:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(text)
            os.replace(tmp, path)
            return path
        except OSError:
            continue
    return None


def machine() -> str:
    """The machine a plan was measured on, in words: the GPU's name, or the CPU's model and count, and the torch
    that measured it; part of a kept plan's key, so that a plan measured on another processor or under another
    torch is measured anew, and naming nothing that differs between the processes of one run (torch's thread count
    does)."""
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"cpu: {_cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}"


def _cpu_model() -> str:
    """The CPU's model name (Linux's ``/proc/cpuinfo``, else :func:`platform.processor`), or its architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def kept(
    ident: Any,
    compute: Callable[[], Any],
    kind: Callable[..., Any],
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    rank: int = 0,
    wait_seconds: float = 1800.0,
):
    """``compute()``, a plan with ``to_dict()``, kept as JSON in ``cache_dir`` (default ``~/.cache/detloss/plans``)
    under the hash of ``ident`` (JSON-able: what the plan depends on) and read back as ``kind(**json)``.

    Rank 0 reads a kept plan (``use_cache``) or computes one and writes it (always, so that the others can read it);
    a file that cannot be read is computed anew. Every other rank of a distributed run measures nothing: it waits
    up to ``wait_seconds`` for rank 0's file and trains that plan, so that all processes build the same model (the
    ranks that Lightning's DDP starts after rank 0 has planned find it at once; ranks started together by torchrun
    or SLURM wait for it). A file that cannot be written is not an error on rank 0.

    Raises:
        TimeoutError: on a rank other than 0, no plan from rank 0 within ``wait_seconds`` (naming the file).
    """
    folder = Path(cache_dir) if cache_dir is not None else cache_folder("plans")
    path = folder / f"{key(ident)}.json"

    def read():
        try:
            return kind(**found) if (found := read_json([path])) is not None else None
        except TypeError:  # written by another version of the plan
            return None

    if rank != 0:
        deadline = time.monotonic() + wait_seconds
        while (plan := read()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"rank {rank} waited {wait_seconds:.0f} s for rank 0's plan at {path}; is rank 0 planning "
                    "this run with the same configuration and a shared home directory?"
                )
            time.sleep(1.0)
        return plan
    if use_cache and (plan := read()) is not None:
        return plan
    plan = compute()
    write_json([path], plan.to_dict())
    return plan
