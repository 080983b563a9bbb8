"""Intra-op threads for work made of many small tensor ops."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["one_thread"]


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the ops inside on one intra-op thread, then restore the thread count.

    For work whose tensors are too small to gain from intra-op threads (a data sample; the detection criterion's
    assignment and views): each parallel op forks and joins the threads, which costs 10-20x the work on a busy
    machine, where the other thread waits for a core. DataLoader workers use one thread anyway.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
