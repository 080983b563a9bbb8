"""detloss.runtime: a pooled block is handed out again only once nothing holds its memory; one_thread restores the
thread count."""

from __future__ import annotations

import pytest
import torch

from detloss import runtime
from detloss.detection import DetectionCriterion, EndToEndCriterion

SHAPE = (4, 8, 1024)  # 128 KiB in float32


@pytest.fixture
def pool(monkeypatch):
    """The pool on small blocks, empty before and after the test."""
    monkeypatch.setattr(runtime, "MIN_BYTES", 1)
    runtime.clear()
    yield runtime
    runtime.clear()


def _take(shape=SHAPE, **kw):
    return runtime.empty(shape, dtype=torch.float32, device=torch.device("cpu"), **kw)


def test_a_pooled_tensor_is_laid_out_as_torch_empty(pool):
    for fmt in (torch.contiguous_format, torch.channels_last):
        t = _take((2, 5, 3, 4), memory_format=fmt)
        ref = torch.empty((2, 5, 3, 4), memory_format=fmt)
        assert (t.shape, t.stride(), t.dtype, t.device) == (ref.shape, ref.stride(), ref.dtype, ref.device)
        assert t.storage_offset() == 0 and t._base is None and not t.requires_grad


def test_a_released_block_is_handed_out_again(pool):
    t = _take()
    ptr = t.data_ptr()
    del t
    assert _take().data_ptr() == ptr


def test_a_block_of_the_same_size_serves_another_shape(pool):
    t = _take((8, 4, 1024))
    ptr = t.data_ptr()
    del t
    u = _take((32, 1024))
    assert u.data_ptr() == ptr and u.shape == (32, 1024)


class _PooledGradient(torch.autograd.Function):
    """A backward that hands a pooled buffer over as the gradient (as the fused losses do)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return _take().copy_(grad)


@pytest.mark.parametrize("holder", ["tensor", "view", "detach", "saved for backward", "grad", "numpy"])
def test_a_held_block_is_never_handed_out_twice(pool, holder):
    t = _take()
    ptr = t.data_ptr()
    leaf = torch.ones(SHAPE, requires_grad=True)
    if holder == "tensor":
        kept = t
    elif holder == "view":
        kept = t.view(-1)[::2]
    elif holder == "detach":
        kept = t.detach()
    elif holder == "saved for backward":
        kept = (leaf * t).sum()  # mul saves t for the gradient of leaf
    elif holder == "grad":  # a backward hands its pooled buffer over as the gradient, autograd keeps it as .grad
        del t
        _PooledGradient.apply(leaf).sum().backward()
        t, ptr, kept = leaf.grad, leaf.grad.data_ptr(), leaf
    else:
        kept = t.numpy()
    del t
    assert _take().data_ptr() != ptr
    del kept
    leaf.grad = None
    both = _take(), _take()  # the block taken by the check above is free too
    assert ptr in {t.data_ptr() for t in both}


def test_the_pool_keeps_at_most_capacity_blocks_least_recently_used_out(pool, monkeypatch):
    monkeypatch.setattr(runtime, "CAPACITY", 3)
    held = [_take() for _ in range(5)]
    assert len(pool._blocks) == 3
    assert [b.data_ptr() for b in pool._blocks] == [t.data_ptr() for t in reversed(held[2:])]
    kept = {t.data_ptr() for t in held[2:]}
    del held
    assert _take().data_ptr() in kept
    runtime.clear()
    assert pool._blocks == []


def test_small_blocks_and_other_devices_are_not_pooled(monkeypatch):
    runtime.clear()
    monkeypatch.setattr(runtime, "MIN_BYTES", 1 << 30)
    _take()
    assert runtime._blocks == []
    monkeypatch.setattr(runtime, "MIN_BYTES", 1)
    t = runtime.empty(SHAPE, dtype=torch.float32, device=torch.device("meta"))
    assert t.device.type == "meta" and runtime._blocks == []


def _maps(seed: int, channels: int, batch: int = 2, memory_format=torch.contiguous_format):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, channels, s, s, generator=g).contiguous(memory_format=memory_format) for s in (16, 8, 4)]


def _targets(batch: int = 2):
    boxes = torch.tensor([[8.0, 8.0, 40.0, 48.0], [60.0, 20.0, 100.0, 70.0], [2.0, 90.0, 20.0, 126.0]])
    return [{"boxes": boxes[: 1 + i % 3], "labels": torch.tensor([1, 3, 2])[: 1 + i % 3]} for i in range(batch)]


def _step(criterion, feats, retain: bool = False):
    leaves = [f.clone().requires_grad_() for f in feats]  # clone keeps the memory format
    out = criterion(leaves, _targets())
    out.total.backward(retain_graph=retain)
    for leaf in leaves:  # the gradient maps keep the head's layout, pooled or not
        assert leaf.grad.stride() == leaf.stride()
    return out, leaves


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("pooled", [False, True])
def test_the_criterion_gives_the_same_steps_with_and_without_the_pool(pool, monkeypatch, pooled, memory_format):
    if not pooled:
        monkeypatch.setattr(runtime, "MIN_BYTES", 1 << 40)
    criterion = DetectionCriterion(5, reg_max=4)
    first, second = (_maps(seed, 4 * 4 + 5, memory_format=memory_format) for seed in (0, 1))
    ref = [criterion(f, _targets()).total.item() for f in (first, second)]

    # step 1's outputs and gradients are kept while step 2 runs: step 2 must not write over them
    out1, leaves1 = _step(criterion, first)
    grads1 = [leaf.grad.clone() for leaf in leaves1]
    out2, leaves2 = _step(criterion, second)
    assert out1.total.item() == pytest.approx(ref[0], rel=1e-6)
    assert out2.total.item() == pytest.approx(ref[1], rel=1e-6)
    for leaf, grad in zip(leaves1, grads1):
        torch.testing.assert_close(leaf.grad, grad, rtol=0, atol=0)

    # a graph kept for a second backward keeps its buffers: the same gradient twice
    out3, leaves3 = _step(criterion, first, retain=True)
    once = [leaf.grad.clone() for leaf in leaves3]
    _step(criterion, second)  # another step between the two backwards
    for leaf in leaves3:
        leaf.grad = None
    out3.total.backward()
    for leaf, grad in zip(leaves3, once):
        torch.testing.assert_close(leaf.grad, grad)
    for leaf, grad in zip(leaves3, grads1):
        torch.testing.assert_close(leaf.grad, grad)
    if pooled:
        assert pool._blocks, "the criterion's large tensors come from the pool"


def test_the_two_heads_of_the_end_to_end_criterion_take_separate_blocks(pool, monkeypatch):
    criterion = EndToEndCriterion(5)
    feats = {"one2many": _maps(0, 4 + 5), "one2one": _maps(1, 4 + 5)}
    ref = criterion(feats, _targets()).terms
    leaves = {k: [f.clone().requires_grad_() for f in v] for k, v in feats.items()}
    out = criterion(leaves, _targets())
    for name, value in ref.items():
        assert out.terms[name].item() == pytest.approx(value.item(), rel=1e-6)
    out.total.backward()
    assert len(pool._blocks) >= 2 * 3
    monkeypatch.setattr(runtime, "MIN_BYTES", 1 << 40)
    no_pool = {k: [f.clone().requires_grad_() for f in v] for k, v in feats.items()}
    criterion(no_pool, _targets()).total.backward()
    for k in leaves:
        for got, want in zip(leaves[k], no_pool[k]):
            torch.testing.assert_close(got.grad, want.grad)


def test_validation_in_inference_mode_between_training_steps(pool):
    """Lightning validates under ``torch.inference_mode``: blocks pass between inference and training tensors."""
    criterion = DetectionCriterion(5, reg_max=4)
    feats = _maps(0, 4 * 4 + 5)
    ref = criterion(feats, _targets()).total.item()
    with torch.inference_mode():
        assert criterion(feats, _targets()).total.item() == pytest.approx(ref, rel=1e-6)
    out, leaves = _step(criterion, feats)
    assert out.total.item() == pytest.approx(ref, rel=1e-6) and all(leaf.grad.isfinite().all() for leaf in leaves)
    with torch.inference_mode():
        assert criterion(feats, _targets()).total.item() == pytest.approx(ref, rel=1e-6)


def test_one_thread_runs_on_one_thread_and_restores_the_count():
    before = torch.get_num_threads()
    with runtime.one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
