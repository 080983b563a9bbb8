"""Runtime plumbing, no maths: a pool of large CPU buffers, and one intra-op thread for work of many small ops.

The buffer pool. :func:`empty` reuses the large CPU buffers that the fused losses and the detection criterion
allocate at every call.

The CPU allocator of torch has no cache: it asks glibc, which serves every block above its mmap threshold (at most
32 MiB) with a fresh ``mmap`` and gives it back with ``munmap`` when the tensor dies. Every page of such a block
then faults on its first touch, and the kernel zeroes it: for the criterion's dense ``(B, C, A)`` tensors at batch
16, 640 px and 80 classes (43 MB each) that is about 10 500 faults per tensor per step, a large part of the
criterion's time (docs/benchmarks/detection_criterion.md). :func:`empty` instead hands out the memory of a block that an
earlier call allocated, once nothing holds it any more.

"Nothing holds it" is decided by the storage's reference count, which counts every tensor on that memory (views,
``detach()``-ed aliases, tensors that autograd saved for a backward or accumulated into ``.grad``), so a buffer a
caller still holds, a graph kept with ``retain_graph=True`` or a gradient kept as ``.grad`` is never handed out
twice: the call allocates a fresh block instead. The pool keeps at most :data:`CAPACITY` blocks, dropping the
least recently used; :func:`clear` releases them all. On other devices (whose allocators cache), for blocks under
:data:`MIN_BYTES` (which glibc serves from its heap), inside ``torch.compile`` and where torch cannot report the
count, :func:`empty` is ``torch.empty``; ``detloss.runtime.CAPACITY = 0`` turns the pool off.

Threads. :func:`one_thread` runs a block of small tensor ops on one intra-op thread (a data sample, the detection
criterion's assignment and views).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = ["CAPACITY", "MIN_BYTES", "clear", "empty", "one_thread", "pooled_bytes"]

#: blocks smaller than this are not pooled: glibc's heap serves them without page faults once warm
MIN_BYTES = 4 << 20
#: blocks the pool keeps at most (a YOLO26 step at 640 px and 80 classes uses 10: 5 per head)
CAPACITY = 16

_use_count = getattr(torch._C, "_storage_Use_Count", None)  # a private function of torch; without it: no pool
_lock = threading.Lock()
_blocks: list[torch.UntypedStorage] = []  # most recently used first


def empty(
    shape: Sequence[int],
    *,
    dtype: torch.dtype,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Tensor:
    """An uninitialised tensor, as ``torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)``,
    on the memory of a pooled block that nothing else holds, when there is one of the same size (module doc)."""
    device = torch.device(device)
    shape = tuple(shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if device.type != "cpu" or nbytes < MIN_BYTES or _use_count is None or torch.compiler.is_compiling():
        return torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
    stride = torch.empty(shape, device="meta", memory_format=memory_format).stride()  # allocates nothing
    with _lock:
        block = next((b for b in _blocks if b.nbytes() == nbytes and _use_count(b._cdata) == 1), None)
        if block is None:
            block = torch.UntypedStorage(nbytes, device=device)
            _blocks.insert(0, block)
            del _blocks[CAPACITY:]
        elif _blocks[0] is not block:
            _blocks.remove(block)
            _blocks.insert(0, block)
        return torch.empty(0, dtype=dtype, device=device).set_(block, 0, shape, stride)


def pooled_bytes() -> int:
    """The bytes of the pooled blocks (in use or free)."""
    with _lock:
        return sum(b.nbytes() for b in _blocks)


def clear() -> None:
    """Release every pooled block (the memory goes back to the system once no tensor holds it)."""
    with _lock:
        _blocks.clear()


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
