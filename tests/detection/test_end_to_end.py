"""YOLO26: the end-to-end criterion against a dense reference written from its description (and Ultralytics when it
is installed), ProgLoss, topk2, STAL, the two-head model and its NMS-free inference, and the assignment statistics."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import preset
from yolo26_reference import yolo26_loss
from yolov8_reference import assign_dense

from detloss.composite import Position, ProgLoss
from detloss.detection import (
    DetectionCriterion,
    EndToEndCriterion,
    TaskAlignedAssigner,
    make_anchors,
)
from detloss.detection.targets import pack_targets
from detloss.tasks.diagnostics import assignment_stats

NUM_CLASSES, IMAGE, STRIDES = 4, 128, (8, 16, 32)


def heads(batch=3, seed=0, image=IMAGE, requires_grad=False, negative=False):
    """Raw maps of both heads, one channel per side: distances of 0.5–3 grid units (some negative if asked)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for head in ("one2many", "one2one"):
        maps = []
        for s in STRIDES:
            n = image // s
            f = torch.randn(batch, 4 + NUM_CLASSES, n, n, generator=g)
            f[:, :4] = f[:, :4] if negative else f[:, :4].abs() * 1.2 + 0.5
            f[:, 4:] -= 1.0
            maps.append(f.requires_grad_(requires_grad))
        out[head] = maps
    return out


def boxes(batch=3, num_gt=5, image=IMAGE, empty=(), seed=1, low=6.0, high=50.0):
    g = torch.Generator().manual_seed(seed)
    targets = []
    for i in range(batch):
        n = 0 if i in empty else num_gt
        wh = torch.rand(n, 2, generator=g) * (high - low) + low
        xy = torch.rand(n, 2, generator=g) * (image - wh)
        labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": labels})
    return targets


@pytest.mark.parametrize("seed, negative", [(0, False), (1, False), (2, True)])
def test_total_and_terms_equal_the_reference_at_the_first_step(seed, negative):
    outputs = heads(seed=seed, requires_grad=True, negative=negative)
    targets = boxes(seed=seed + 10, empty=(1,))
    out = EndToEndCriterion(NUM_CLASSES)(outputs, targets)
    total, many, one = yolo26_loss(outputs, targets, NUM_CLASSES)
    torch.testing.assert_close(out.total, total, rtol=1e-4, atol=1e-6)
    for head, ref, w in (("one2many", many, 0.8), ("one2one", one, 0.2)):
        for name, value in zip(("box", "cls", "l1"), ref):
            torch.testing.assert_close(out.terms[f"{head}/{name}"], (w * value).detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(sum(out.terms.values()), out.total.detach(), rtol=1e-6, atol=1e-6)

    (g_ours,) = torch.autograd.grad(out.total, outputs["one2one"][0], retain_graph=True)
    (g_ref,) = torch.autograd.grad(total, outputs["one2one"][0])
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-7)


def test_equals_ultralytics_e2e_loss_when_installed():
    loss_module = pytest.importorskip("ultralytics.utils.loss")
    head = SimpleNamespace(nc=NUM_CLASSES, reg_max=1, stride=torch.tensor(STRIDES, dtype=torch.float32))
    model = torch.nn.Module()
    model.register_parameter("p", torch.nn.Parameter(torch.zeros(1)))
    model.args, model.model = SimpleNamespace(box=7.5, cls=0.5, dfl=1.5, epochs=10), [head]
    theirs = loss_module.E2ELoss(model)
    outputs, targets = heads(seed=3), boxes(seed=4, empty=(2,))
    preds = {}
    for name, maps in outputs.items():
        x = torch.cat([f.flatten(2) for f in maps], 2)
        preds[name] = {"boxes": x[:, :4], "scores": x[:, 4:], "feats": maps}
    all_boxes = torch.cat([t["boxes"] for t in targets])
    xywh = torch.cat([(all_boxes[:, :2] + all_boxes[:, 2:]) / 2, all_boxes[:, 2:] - all_boxes[:, :2]], 1) / IMAGE
    batch_idx = torch.cat([torch.full((len(t["labels"]),), float(i)) for i, t in enumerate(targets)])
    batch = {"batch_idx": batch_idx, "cls": torch.cat([t["labels"] for t in targets]).float(), "bboxes": xywh}
    total, _ = theirs(preds, batch)
    ours = EndToEndCriterion(NUM_CLASSES)(outputs, targets).total
    torch.testing.assert_close(ours, total.sum() / 3, rtol=1e-4, atol=0)


def test_progloss_steps_once_per_epoch_from_start_to_end():
    prog = ProgLoss(to="one2one")
    w = [1 - prog.share(Position(step=0, epoch=e, total_steps=100, epochs=10)) for e in (0, 0.99, 1, 4.5, 9, 9.5)]
    assert w == pytest.approx([0.8, 0.8, 0.8 - 0.7 / 9, 0.8 - 4 * 0.7 / 9, 0.1, 0.1])
    assert 1 - prog.share(Position(0, 0.0, 1, epochs=1)) == pytest.approx(0.8)
    crit = EndToEndCriterion(NUM_CLASSES)
    crit.loss.update(Position(step=0, epoch=9.0, total_steps=100, epochs=10))
    weights = crit.loss.current_weights()
    assert weights["one2many/box"] == pytest.approx(7.5 * 0.1) and weights["one2one/l1"] == pytest.approx(1.5 * 0.9)
    with pytest.raises(ValueError, match="start"):
        ProgLoss(to="one2one", start=1.5)


def test_an_image_or_a_batch_without_targets():
    outputs = heads(requires_grad=True)
    for targets in (boxes(empty=(0,)), boxes(empty=(0, 1, 2))):
        out = EndToEndCriterion(NUM_CLASSES)(outputs, targets)
        assert torch.isfinite(out.total)
        out.total.backward(retain_graph=True)
        assert all(torch.isfinite(f.grad).all() for maps in outputs.values() for f in maps)
    nothing = EndToEndCriterion(NUM_CLASSES)(outputs, boxes(empty=(0, 1, 2)))
    assert all(nothing.terms[f"{h}/{t}"].item() == 0.0 for h in ("one2many", "one2one") for t in ("box", "l1"))
    assert nothing.values["one2one/box"].requires_grad  # a zero that stays attached: DDP sees every parameter


def test_topk2_leaves_each_ground_truth_at_most_one_anchor():
    outputs, targets = heads(seed=5), boxes(num_gt=1, seed=6)
    _, assignments = EndToEndCriterion(NUM_CLASSES).match(outputs, targets)
    one, many = assignments["one2one"], assignments["one2many"]
    per_image_one = torch.zeros(3).index_add_(0, one.batch, one.fg.float())
    per_image_many = torch.zeros(3).index_add_(0, many.batch, many.fg.float())
    assert per_image_one.tolist() == [1.0, 1.0, 1.0] and (per_image_many > 1).all()


@pytest.mark.parametrize("topk2", [1, 2, 3])
def test_topk2_equals_the_dense_reference(topk2):
    g = torch.Generator().manual_seed(topk2)
    scores = torch.rand(2, 84, NUM_CLASSES, generator=g)
    points, stride = make_anchors([(8, 8), (4, 4), (2, 2)], STRIDES)
    dist = torch.rand(2, 84, 4, generator=g) * 2 + 0.5
    pred = torch.cat([points - dist[..., :2], points + dist[..., 2:]], -1) * stride
    targets = boxes(batch=2, num_gt=4, image=64, seed=topk2 + 7, low=10, high=40)
    packed = pack_targets(targets, 2, torch.device("cpu"))
    ours = TaskAlignedAssigner(topk=7, topk2=topk2, min_box_side=16)(
        scores.logit().transpose(1, 2), pred, points * stride, packed.boxes, packed.labels, packed.mask
    )
    _, ref_scores, ref_fg = assign_dense(
        scores, pred, points * stride, packed.labels, packed.boxes, packed.mask, NUM_CLASSES, topk=7,
        min_box_side=16.0, topk2=topk2,
    )  # fmt: skip
    assert torch.equal(ours.fg_mask(2, 84), ref_fg)
    torch.testing.assert_close(ours.target_scores(2, NUM_CLASSES, 84).transpose(1, 2), ref_scores, rtol=1e-5, atol=1e-6)


def test_more_ground_truths_than_anchors_in_a_level():
    outputs = heads(image=32)  # levels of 4², 2², 1² anchors
    targets = boxes(num_gt=9, image=32, low=2.0, high=20.0)
    out = EndToEndCriterion(NUM_CLASSES)(outputs, targets)
    assert torch.isfinite(out.total)


def test_tiny_boxes_get_candidates_only_through_stal():
    outputs = heads(batch=1, seed=8)
    for maps in outputs.values():  # predicted boxes of 4 px around each anchor: they overlap the tiny objects
        for f in maps:
            f[:, :4] = 0.25 * 8 / (IMAGE / f.shape[-1])
    # 3 px boxes between the anchor centres of the stride-8 grid (centres at 4 + 8k): no centre strictly inside
    tiny = torch.tensor([[9.0, 9.0, 12.0, 12.0], [41.0, 73.0, 44.0, 76.0]])
    targets = [{"boxes": tiny, "labels": torch.tensor([1, 2])}]

    def unmatched(min_box_side: float) -> float:
        crit = EndToEndCriterion(
            NUM_CLASSES,
            one2many_assigner=TaskAlignedAssigner(topk=10, min_box_side=min_box_side),
            one2one_assigner=TaskAlignedAssigner(topk=7, topk2=1, min_box_side=min_box_side),
        )
        stats = {h: assignment_stats(*a) for h, a in crit.assignments(outputs, targets).items()}
        return stats["one2many"]["unmatched/small"], stats["one2one"]["unmatched/small"]

    assert unmatched(0.0) == (1.0, 1.0)
    assert unmatched(16.0) == (0.0, 0.0)


def test_assignment_stats_by_size_bin_hand_counted():
    crit = DetectionCriterion(NUM_CLASSES, reg_max=1)
    feats = heads(batch=1, seed=9)["one2many"]
    targets = [
        {
            "boxes": torch.tensor([[10.0, 10, 30, 30], [40, 40, 100, 120], [9.0, 9, 12, 12]]),
            "labels": torch.tensor([0, 1, 2]),
        }
    ]
    (assignment, packed) = crit.assignments(feats, targets)["one2many"]
    stats = assignment_stats(assignment, packed)
    positives = torch.zeros(3).index_add_(0, assignment.gt, assignment.fg.float())
    small = positives[[0, 2]]
    assert stats["positives/small"] == pytest.approx(float(small.mean()))
    assert stats["unmatched/small"] == pytest.approx(float((small == 0).float().mean()))
    assert stats["positives/medium"] == pytest.approx(float(positives[1]))  # 60 × 80 px: medium
    assert "unmatched/large" not in stats


# ----------------------------------------------------------------------------------------------- the model


def test_model_returns_both_heads_and_the_one_to_one_head_trains_on_detached_features():
    model = preset("model", "yolo26_nano", num_classes=NUM_CLASSES)
    out = model(torch.randn(2, 3, 64, 64))
    assert set(out) == {"one2many", "one2one"}
    for maps in out.values():
        assert [tuple(f.shape) for f in maps] == [(2, 4 + NUM_CLASSES, 64 // s, 64 // s) for s in STRIDES]
    loss = EndToEndCriterion(NUM_CLASSES)(out, boxes(batch=2, image=64, low=8, high=30))
    sum(v for k, v in loss.values.items() if k.startswith("one2one")).backward()
    assert all(p.grad is None for p in model.stem.parameters()) and all(
        p.grad is None for p in model.box_heads.parameters()
    )
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.one2one_cls_heads.parameters())


def test_nms_free_inference_keeps_the_one_to_one_heads_top_scores():
    model = preset("model", "yolo26_nano", num_classes=NUM_CLASSES).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
        out["one2one"][0][0, 4 + 2, 3, 5] = 8.0  # one confident (anchor, class) pair in image 0
        dets = model.postprocess(out, max_det=5, conf_threshold=0.0)
    assert [len(d["scores"]) for d in dets] == [5, 5]
    assert dets[0]["labels"][0] == 2 and dets[0]["scores"][0] == pytest.approx(torch.sigmoid(torch.tensor(8.0)).item())
    assert (dets[0]["scores"][:-1] >= dets[0]["scores"][1:]).all()  # sorted, and no NMS: boxes may overlap freely
    centre = (dets[0]["boxes"][0, :2] + dets[0]["boxes"][0, 2:]) / 2
    assert centre.tolist() == pytest.approx([(5 + 0.5) * 8, (3 + 0.5) * 8])  # symmetric distances: the anchor


def test_criteria_refuse_the_other_kind_of_output():
    model = preset("model", "yolo26_nano", num_classes=NUM_CLASSES)
    out = model(torch.randn(1, 3, 64, 64))
    targets = boxes(batch=1, image=64, low=8, high=30)
    with pytest.raises(ValueError, match="end-to-end"):
        DetectionCriterion(NUM_CLASSES, reg_max=1)(out, targets)
    with pytest.raises(ValueError, match="model.end2end"):
        EndToEndCriterion(NUM_CLASSES)(out["one2many"], targets)


def test_l1_view_is_in_fractions_of_the_input():
    outputs, targets = heads(batch=1, seed=11), boxes(batch=1, num_gt=2, seed=12)
    views, _ = EndToEndCriterion(NUM_CLASSES).match(outputs, targets)
    pred, target = views["one2one/dist"].args
    weight = views["one2one/dist"].weight
    fg = weight > 0
    assert fg.any() and pred.shape == target.shape == (weight.shape[0], 4)
    assert (target[fg].abs() < 1).all() and not math.isnan(float(pred.sum()))


@pytest.mark.parametrize("topk2, num_gt", [(None, 6), (None, 30), (1, 6), (2, 4), (None, 60)])
def test_the_sparse_and_the_dense_assignment_agree(topk2, num_gt):
    """The CPU path (candidate pairs only) and the no-sync path (every pair, in blocks) assign alike, with the
    predicted boxes given as a tensor or as the function the criteria pass (which the sparse path calls for the
    candidate pairs, or for every anchor once the pairs outnumber twice the anchors: the 60-box case)."""
    outputs, targets = heads(seed=num_gt), boxes(num_gt=num_gt, seed=num_gt + 1, empty=(1,), high=90.0)
    maps = outputs["one2many"]
    x = torch.cat([m.flatten(2) for m in maps], 2)
    points, stride = make_anchors(maps, STRIDES)
    pred = torch.cat([points - x[:, :2].transpose(1, 2), points + x[:, 2:4].transpose(1, 2)], -1) * stride
    packed = pack_targets(targets, 3, torch.device("cpu"))
    levels = [(m.shape[2], m.shape[3], s) for m, s in zip(maps, STRIDES)]
    got, asked = {}, []

    def pred_boxes(batch, anchor):
        asked.append(batch.numel())
        return pred[batch, anchor]

    for pairs in ("dense", "sparse"):
        for form, boxes_in in (("tensor", pred), ("function", pred_boxes)):
            assigner = TaskAlignedAssigner(topk=10, topk2=topk2, min_box_side=16, pairs=pairs)
            a = assigner(x[:, 4:], boxes_in, points * stride, packed.boxes, packed.labels, packed.mask, levels)
            got[pairs, form] = (a.fg_mask(3, points.shape[0]), a.target_scores(3, NUM_CLASSES, points.shape[0]))
    want = got["dense", "tensor"]
    assert want[0].any()
    for key, (fg, scores) in got.items():
        assert torch.equal(fg, want[0]), key
        torch.testing.assert_close(scores, want[1], rtol=1e-5, atol=1e-6)
    every = 3 * points.shape[0]
    assert asked[0] == every  # the dense path decodes every anchor
    if num_gt <= 6:  # the sparse path: the candidate pairs, fewer than the anchors ...
        assert asked[1] < every
    if num_gt == 60:  # ... or every anchor once the pairs are many
        assert asked[1] == every


def test_the_criteria_compute_on_one_thread_on_cpu_and_restore_the_count(monkeypatch):
    """Their many small ops run on one intra-op thread on the CPU (docs/benchmarks/detection_criterion.md: a 2-thread
    fork/join per op costs many times the work on a busy machine), and the caller's thread count comes back."""
    import detloss.detection.criterion as module

    seen = []
    normaliser = module._normaliser
    monkeypatch.setattr(module, "_normaliser", lambda s: seen.append(torch.get_num_threads()) or normaliser(s))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        EndToEndCriterion(NUM_CLASSES)(heads(), boxes())
        assert seen == [1, 1] and torch.get_num_threads() == 2  # one normaliser per head
    finally:
        torch.set_num_threads(threads)
    assert DetectionCriterion._single_thread_on_cpu and EndToEndCriterion._single_thread_on_cpu
