"""Where fingerprints and plans are kept: JSON files, written atomically, read back only while still valid.

One owner for the three things the planner keeps (the volume fingerprint, the 2D fingerprints, the measured plans):
a file's ``signature`` (what it was computed from), the folders it may live in (beside the data, else the user's
cache directory ``~/.cache/detloss/<kind>/``), and reading and writing without ever leaving a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["signature", "key", "cache_folder", "read_json", "write_json"]


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
