"""The criteria with validation off never synchronise with the host (issue 15, "On a GPU").

On a GPU a step that reads a device value on the host (``.item()``, ``bool(t)``, ``nonzero``, a boolean mask
index, a copy to the CPU) waits for every queued kernel. Where a GPU is present the test runs the criteria on it
under ``torch.cuda.set_sync_debug_mode("error")``. On the CPU there is no queue to wait for, so the equivalent
check watches for the *calls* that would sync on a device, at two levels:

- the Python methods (``Tensor.item``, ``tolist``, ``__bool__``, ``__int__``, ``__float__``, ``__index__``,
  ``nonzero``, ``cpu``, ``numpy``, ``torch.nonzero``) are patched to raise;
- a ``TorchDispatchMode`` raises on the ATen operators that read a value on the host wherever they come from
  (C++ included, the backward too): ``_local_scalar_dense`` (what ``item``, ``bool``, ``int``, ``float`` become),
  ``nonzero``, ``masked_select``, indexing with a boolean mask, ``repeat_interleave`` without ``output_size``,
  ``unique``, and any copy from another device to the CPU.

The detection criteria run with ``pairs="dense"``: the default ``pairs="auto"`` picks the sparse assignment on the
CPU, which gathers the candidate pairs with ``nonzero`` (a host sync by design, and cheap on the CPU where there is
no queue to drain); the device path, the one this contract is about, is the dense one, which ``auto`` picks on a GPU.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from detloss.detection import DetectionCriterion, EndToEndCriterion, TaskAlignedAssigner
from detloss.segmentation import SegmentationCriterion

NUM_CLASSES, REG_MAX, IMAGE, STRIDES = 4, 16, 128, (8, 16, 32)

SYNCING_METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "cpu", "numpy")
SYNCING_OPS = {
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::nonzero_static",
    "aten::masked_select",
    "aten::_unique",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::argwhere",
}


class HostSync(AssertionError):
    pass


class _NoSyncMode(TorchDispatchMode):
    """Raise :class:`HostSync` on ATen operators that need a device value on the host."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name in SYNCING_OPS:
            raise HostSync(f"{name} would synchronise with the host")
        if name in ("aten::index.Tensor", "aten::index_put_", "aten::index_put", "aten::_index_put_impl_") or (
            name == "aten::index"
        ):
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(i is not None and i.dtype == torch.bool for i in indices):
                raise HostSync(f"{func} with a boolean mask would synchronise with the host")
        if name == "aten::repeat_interleave" and kwargs.get("output_size") is None and len(args) < 4:
            raise HostSync(f"{func} without output_size would synchronise with the host")
        if name in ("aten::_to_copy", "aten::copy_"):
            source = args[1] if name == "aten::copy_" else args[0]
            target = args[0].device if name == "aten::copy_" else kwargs.get("device")
            if target is not None and torch.device(target).type == "cpu" and source.device.type != "cpu":
                raise HostSync(f"{func} copies from {source.device} to the host")
        return func(*args, **kwargs)


def _raiser(name):
    def raise_(*args, **kwargs):
        raise HostSync(f"Tensor.{name} would synchronise with the host")

    return raise_


@contextlib.contextmanager
def no_host_sync(device: torch.device):
    """Fail on anything in the block that synchronises ``device`` with the host (see the module docstring)."""
    if device.type == "cuda":
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(previous)
        return
    with contextlib.ExitStack() as stack:
        for name in SYNCING_METHODS:
            stack.enter_context(mock.patch.object(torch.Tensor, name, _raiser(name)))
        stack.enter_context(mock.patch.object(torch, "nonzero", _raiser("torch.nonzero")))
        stack.enter_context(_NoSyncMode())
        yield


DEVICES = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def detection_batch(device, channels, batch=3, num_gt=6, seed=0, heads=None):
    g = torch.Generator().manual_seed(seed)

    def maps():
        out = []
        for s in STRIDES:
            n = IMAGE // s
            f = torch.randn(batch, channels, n, n, generator=g)
            out.append(f.to(device).requires_grad_(True))
        return out

    feats = maps() if heads is None else {h: maps() for h in heads}
    targets = []
    for i in range(batch):
        n = 0 if i == 1 else num_gt  # an image without objects too
        xy = torch.rand(n, 2, generator=g) * (IMAGE - 40)
        wh = torch.rand(n, 2, generator=g) * 36 + 4
        boxes, labels = torch.cat([xy, xy + wh], 1), torch.randint(0, NUM_CLASSES, (n,), generator=g)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return feats, targets


def _leaves(feats):
    if isinstance(feats, dict):
        return [f for maps in feats.values() for f in maps]
    return list(feats)


def test_the_check_catches_syncs():
    x = torch.randn(8, requires_grad=True)
    catches = [
        lambda: x.sum().item(),
        lambda: bool(x.sum() > 0),
        lambda: float(x.sum()),
        lambda: (x > 0).nonzero(),
        lambda: torch.nonzero(x),
        lambda: x[x > 0],
        lambda: x.detach().tolist(),
        lambda: torch.repeat_interleave(torch.tensor([1, 2])),
    ]
    for catch in catches:
        with pytest.raises(HostSync), no_host_sync(torch.device("cpu")):
            catch()
    with no_host_sync(torch.device("cpu")):  # and lets the ordinary ops through
        (x.sigmoid() * torch.where(x > 0, x, 0)).sum().backward()


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_detection_criterion_dense_path_does_not_sync(device):
    crit = DetectionCriterion(NUM_CLASSES, reg_max=REG_MAX, assigner=TaskAlignedAssigner(pairs="dense"), validate=False)
    feats, targets = detection_batch(device, 4 * REG_MAX + NUM_CLASSES)
    crit(feats, targets)  # the first call builds the anchors (cached after)
    with no_host_sync(device):
        out = crit(feats, targets)
        out.total.backward()
    assert all(f.grad is not None for f in feats)


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_end_to_end_criterion_dense_path_does_not_sync(device):
    crit = EndToEndCriterion(
        NUM_CLASSES,
        one2many_assigner=TaskAlignedAssigner(topk=10, pairs="dense"),
        one2one_assigner=TaskAlignedAssigner(topk=7, topk2=1, pairs="dense"),
        validate=False,
    )
    outputs, targets = detection_batch(device, 4 + NUM_CLASSES, heads=("one2many", "one2one"))
    crit(outputs, targets)
    with no_host_sync(device):
        out = crit(outputs, targets)
        out.total.backward()
    assert all(f.grad is not None for f in _leaves(outputs))


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("deep_supervision", [None, 3])
def test_segmentation_criterion_does_not_sync(device, deep_supervision):
    """The default Dice + CE composite (the distance views compute their maps on the host by design)."""
    crit = SegmentationCriterion(NUM_CLASSES, validate=False, deep_supervision=deep_supervision).to(device)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, NUM_CLASSES, (2, 32, 32), generator=g)
    labels[0, :4] = 255  # ignored pixels
    labels = labels.to(device)
    if deep_supervision is None:
        outputs = torch.randn(2, NUM_CLASSES, 32, 32, generator=g).to(device).requires_grad_(True)
        leaves = [outputs]
    else:
        leaves = [
            torch.randn(2, NUM_CLASSES, 32 // 2**i, 32 // 2**i, generator=g).to(device).requires_grad_(True)
            for i in range(deep_supervision)
        ]
        outputs = leaves
    with no_host_sync(device):
        out = crit(outputs, labels)
        out.total.backward()
    assert all(t.grad is not None for t in leaves)
