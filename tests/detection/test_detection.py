"""Anchors, task-aligned assignment and the YOLO detection criterion."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import compose_config, config_names
from hydra.utils import instantiate
from yolov8_reference import yolov8_loss

from detloss.composite import CompositeLoss
from detloss.detection import DetectionCriterion, TaskAlignedAssigner, bbox2dist, dist2bbox, make_anchors
from detloss.losses import iou_loss

# ---------------------------------------------------------------------------------------------- geometry


def test_make_anchors_cell_centres():
    points, stride = make_anchors([(2, 3), (1, 2)], (8, 16))
    assert points.tolist() == [
        [0.5, 0.5],
        [1.5, 0.5],
        [2.5, 0.5],
        [0.5, 1.5],
        [1.5, 1.5],
        [2.5, 1.5],
        [0.5, 0.5],
        [1.5, 0.5],
    ]
    assert stride.view(-1).tolist() == [8] * 6 + [16] * 2
    with pytest.raises(ValueError, match="levels"):
        make_anchors([(2, 2)], (8, 16))


def test_dist_box_round_trip():
    points = torch.tensor([[4.0, 4.0], [10.0, 2.0]])
    dist_ = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5]])
    boxes = dist2bbox(dist_, points)
    assert boxes.tolist() == [[3.0, 2.0, 7.0, 8.0], [9.5, 1.5, 10.5, 2.5]]
    torch.testing.assert_close(bbox2dist(points, boxes), dist_)
    assert bbox2dist(points, boxes, max_dist=3).max().item() == pytest.approx(2.99)


# ---------------------------------------------------------------------------------------------- assigner
# One level of stride 8 on a 32 × 32 image: a 4 × 4 grid, anchor a = 4·row + col at ((col + .5)·8, (row + .5)·8).

POINTS = make_anchors([(4, 4)], (8,))[0] * 8


def assign(gt_boxes, gt_labels, pred_boxes=None, logits=None, mask=None, num_classes=2, **kw):
    gt_boxes = torch.tensor(gt_boxes, dtype=torch.float32).view(1, -1, 4)
    g = gt_boxes.shape[1]
    gt_labels = torch.tensor(gt_labels).view(1, g)
    mask = torch.ones(1, g, dtype=torch.bool) if mask is None else torch.tensor(mask).view(1, g)
    if pred_boxes is None:  # every anchor predicts the first ground truth exactly
        pred_boxes = gt_boxes[0, :1].expand(16, 4)
    logits = torch.zeros(1, num_classes, 16) if logits is None else logits
    kw.setdefault("min_box_side", 0)
    return TaskAlignedAssigner(**kw)(logits, pred_boxes.view(1, 16, 4), POINTS, gt_boxes, gt_labels, mask)


def test_box_covering_four_anchors_topk_and_scores():
    logits = torch.zeros(1, 2, 16)
    logits[0, 1, [0, 1, 4, 5]] = torch.tensor([2.0, 1.0, 0.0, -1.0])
    res = assign([[0, 0, 16, 16]], [1], logits=logits, topk=2)
    fg = res.fg_mask(1, 16)[0]
    assert fg.nonzero().view(-1).tolist() == [0, 1]  # the two best aligned of the four candidates
    scores = res.target_scores(1, 2, 16)[0]
    # u = 1 at every candidate, so score = t / max_t = sqrt(σ(l) / σ(2))
    assert scores[1, 0].item() == pytest.approx(1.0, abs=1e-6)
    assert scores[1, 1].item() == pytest.approx(
        math.sqrt(torch.sigmoid(torch.tensor(1.0)) / torch.sigmoid(torch.tensor(2.0))), abs=1e-6
    )
    assert scores[0].abs().sum() == 0 and scores[:, 2:].abs().sum() == 0
    # with top-10 every candidate counts, and only candidates do
    res = assign([[0, 0, 16, 16]], [1], logits=logits, topk=10)
    assert res.fg_mask(1, 16)[0].nonzero().view(-1).tolist() == [0, 1, 4, 5]
    assert int(res.fg.sum()) == 4


def test_score_normalisation_hand_computed():
    gt = [[0.0, 0, 16, 16]]
    pred = torch.tensor(gt).expand(16, 4).clone()
    pred[1] = torch.tensor([0.0, 0, 16, 12])  # a worse box at anchor 1
    res = assign(gt, [0], pred_boxes=pred, topk=10)
    u1 = 1 - iou_loss(pred[1:2], torch.tensor(gt), "ciou").item()
    u0 = 1 - iou_loss(pred[0:1], torch.tensor(gt), "ciou").item()
    t0, t1 = 0.5**0.5 * u0**6, 0.5**0.5 * u1**6  # s = σ(0) = 0.5
    scores = res.target_scores(1, 2, 16)[0, 0]
    assert scores[1].item() == pytest.approx(t1 * max(u0, u1) / max(t0, t1), rel=1e-5)
    assert scores[0].item() == pytest.approx(t0 * max(u0, u1) / max(t0, t1), rel=1e-5)


def test_two_overlapping_boxes_shared_anchor_goes_to_higher_ciou():
    a, b = [0.0, 0, 16, 16], [8.0, 0, 24, 16]  # share anchors 1 and 5
    pred = torch.tensor([a] * 16)
    pred[[1, 2, 6]] = torch.tensor(b)  # anchor 1 predicts b exactly, anchor 5 predicts a exactly
    res = assign([a, b], [0, 1], pred_boxes=pred, topk=4)
    fg = res.fg
    owner = {int(anc): int(g) for anc, g in zip(res.anchor[fg], res.gt[fg])}
    assert owner == {0: 0, 4: 0, 5: 0, 1: 1, 2: 1, 6: 1}
    labels = {int(anc): int(lab) for anc, lab in zip(res.anchor[fg], res.labels[fg])}
    assert labels[1] == 1 and labels[5] == 0
    assert int(fg.sum()) == 6  # one slot per foreground anchor


def test_tiny_box_gets_candidates_only_when_enlarged():
    tiny = [[13.0, 13, 15, 15]]  # 2 × 2 px between anchor centres 12 and 20
    pred = torch.tensor(tiny).expand(16, 4)
    assert int(assign(tiny, [0], pred_boxes=pred, min_box_side=0).fg.sum()) == 0
    res = assign(tiny, [0], pred_boxes=pred, min_box_side=16)  # enlarged to [6, 6, 22, 22] for the test
    assert res.fg_mask(1, 16)[0].nonzero().view(-1).tolist() == [5, 6, 9, 10]
    assert res.boxes[res.fg].tolist() == tiny * 4  # the target stays the true box


def test_absent_ground_truth_selects_nothing():
    res = assign([[0.0, 0, 16, 16], [0.0, 0, 32, 32]], [0, 1], mask=[True, False], topk=10)
    assert set(res.gt[res.fg].tolist()) == {0}
    assert int(res.fg.sum()) == 4
    none = assign([[0.0, 0, 16, 16]], [0], mask=[False])
    assert int(none.fg.sum()) == 0 and none.scores.abs().sum() == 0


def test_assigner_options_checked():
    with pytest.raises(ValueError, match="topk"):
        TaskAlignedAssigner(topk=0)
    with pytest.raises(ValueError, match="alpha"):
        TaskAlignedAssigner(alpha=-1)
    with pytest.raises(ValueError, match="min_box_side"):
        TaskAlignedAssigner(min_box_side=-2)


def test_chunked_equals_unchunked():
    torch.manual_seed(0)
    feats, targets = random_batch(batch=2, num_gt=9)
    whole = DetectionCriterion(NUM_CLASSES)(feats, targets)
    chunked = DetectionCriterion(NUM_CLASSES, assigner=TaskAlignedAssigner(chunk_elements=3000))(feats, targets)
    torch.testing.assert_close(whole.total, chunked.total)


# --------------------------------------------------------------------------------------------- criterion

NUM_CLASSES, REG_MAX, IMAGE = 4, 16, 128


def random_batch(batch=3, num_gt=6, image=IMAGE, empty=(), requires_grad=False, seed=0):
    """Head maps whose boxes overlap the ground truths (no ties at the top-k), and random targets."""
    g = torch.Generator().manual_seed(seed)
    feats = []
    for s in (8, 16, 32):
        n = image // s
        f = torch.randn(batch, 4 * REG_MAX + NUM_CLASSES, n, n, generator=g)
        f[:, : 4 * REG_MAX] *= 0.5
        f[:, : 4 * REG_MAX].view(batch, 4, REG_MAX, n, n)[:, :, 1:5] += 2.0  # boxes of 1–4 cells a side
        feats.append(f.requires_grad_(requires_grad))
    targets = []
    for i in range(batch):
        n = 0 if i in empty else num_gt
        xy = torch.rand(n, 2, generator=g) * (image - 40)
        wh = torch.rand(n, 2, generator=g) * 36 + 4
        targets.append(
            {"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, NUM_CLASSES, (n,), generator=g)}
        )
    return feats, targets


@pytest.mark.parametrize("min_box_side", [0.0, 16.0])
def test_criterion_equals_reference(min_box_side):
    feats, targets = random_batch(batch=3, num_gt=6, empty=(1,))
    crit = DetectionCriterion(NUM_CLASSES, assigner=TaskAlignedAssigner(min_box_side=min_box_side))
    out = crit(feats, targets)
    box, cls, dfl = yolov8_loss(feats, targets, NUM_CLASSES, min_box_side=min_box_side)
    assert set(out.terms) == {"box", "cls", "dfl"}
    for name, ref in (("box", box), ("cls", cls), ("dfl", dfl)):
        torch.testing.assert_close(out.terms[name], ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.total, box + cls + dfl, rtol=1e-5, atol=1e-6)


def test_criterion_gradients_equal_reference():
    feats, targets = random_batch(batch=2, num_gt=5, requires_grad=True)
    DetectionCriterion(NUM_CLASSES, assigner=TaskAlignedAssigner(min_box_side=0))(feats, targets).total.backward()
    ours = [f.grad.clone() for f in feats]
    for f in feats:
        f.grad = None
    sum(yolov8_loss(feats, targets, NUM_CLASSES)).backward()
    for a, b in zip(ours, feats):
        torch.testing.assert_close(a, b.grad, rtol=1e-4, atol=1e-7)


def test_criterion_hand_checked_empty_batch():
    # no objects: box and dfl are exactly 0 and attached; cls is 0.5 · Σ softplus(x) / 1 = 0.5 · ln 2 per logit
    feats = [torch.zeros(2, 4 * REG_MAX + NUM_CLASSES, IMAGE // s, IMAGE // s, requires_grad=True) for s in (8, 16, 32)]
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    out = DetectionCriterion(NUM_CLASSES)(feats, empty)
    anchors = sum((IMAGE // s) ** 2 for s in (8, 16, 32))
    assert out.terms["box"].item() == 0.0 and out.terms["dfl"].item() == 0.0
    assert out.terms["cls"].item() == pytest.approx(0.5 * math.log(2) * 2 * NUM_CLASSES * anchors, rel=1e-6)
    out.total.backward()
    grads = [f.grad for f in feats]
    assert all(g[:, : 4 * REG_MAX].abs().sum() == 0 for g in grads)  # still in the graph, zero gradient
    assert all((g[:, 4 * REG_MAX :] == 0.5 * 0.5).all() for g in grads)  # 0.5 · σ(0)


def test_empty_image_in_a_batch_and_box_terms_attached():
    feats, targets = random_batch(batch=2, num_gt=4, empty=(0, 1), requires_grad=True)
    out = DetectionCriterion(NUM_CLASSES)(feats, targets)
    views = DetectionCriterion(NUM_CLASSES).build_views(feats, targets)
    assert views["box"].args[0].shape == (0, 4) and views["box"].args[0].requires_grad
    assert out.terms["box"].item() == 0 and out.terms["dfl"].item() == 0
    out.total.backward()


def test_gradients_reach_the_right_channels():
    feats, targets = random_batch(batch=2, num_gt=3, requires_grad=True)
    crit = DetectionCriterion(NUM_CLASSES)
    views, assignment = crit.match(feats, targets)
    crit.loss(views).total.backward()
    fg = assignment.fg_mask(2, sum(f.shape[2] * f.shape[3] for f in feats))
    dist_grad = torch.cat([f.grad[:, : 4 * REG_MAX].flatten(2) for f in feats], 2).abs().sum(1)  # (B, A)
    cls_grad = torch.cat([f.grad[:, 4 * REG_MAX :].flatten(2) for f in feats], 2)
    assert (dist_grad[fg] > 0).all()  # every foreground anchor's distribution learns
    assert (dist_grad[~fg] == 0).all()  # background anchors' boxes are not trained
    assert (cls_grad != 0).all()  # every class logit of every anchor is trained


@pytest.mark.parametrize("sync", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_head_maps_read_and_write_the_slots_of_every_level(sync, channels_last):
    # the slots' side channels are read straight from the per-level maps and their gradients added back there,
    # repeated anchors accumulating: against plain indexing of an anchor-major concatenation, and by gradcheck
    from detloss.detection.criterion import _HeadMaps

    g = torch.Generator().manual_seed(0)
    sides, classes, sizes = 3, 2, ((4, 4), (2, 2), (1, 1))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    feats = [
        torch.randn(2, sides + classes, h, w, generator=g, dtype=torch.float64)
        .contiguous(memory_format=fmt)
        .requires_grad_()
        for h, w in sizes
    ]
    batch = torch.tensor([0, 1, 1, 0, 1, 1, 0])
    anchor = torch.tensor([0, 15, 16, 19, 20, 20, 5])  # every level, anchor 20 twice
    cls = torch.cat([f.detach()[:, sides:].flatten(2) for f in feats], 2)

    def ours(*maps):
        return _HeadMaps.apply(sides, sync, cls, batch, anchor, *maps)

    def plain(*maps):
        flat = torch.cat([f.flatten(2) for f in maps], 2)  # (B, S + C, A)
        return flat[:, sides:], flat.transpose(1, 2)[batch, anchor, :sides]

    for a, b in zip(ours(*feats), plain(*feats)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    w_cls = torch.randn(cls.shape, generator=g, dtype=torch.float64)
    w_sides = torch.randn(len(anchor), sides, generator=g, dtype=torch.float64)
    outputs = (ours(*feats), plain(*feats))
    grads = [torch.autograd.grad((c * w_cls).sum() + (s * w_sides).sum(), feats) for c, s in outputs]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
        assert a.is_contiguous(memory_format=fmt)
    for pick in (0, 1):  # one output alone (a composite without a class term, or without box terms)
        w = (w_cls, w_sides)[pick]
        alone = [torch.autograd.grad((o[pick] * w).sum(), feats) for o in (ours(*feats), plain(*feats))]
        for a, b in zip(*alone):
            torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda *m: ours(*m)[1], feats)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda t: t[1].update(labels=torch.tensor([0, 7, 1, 2, 3, 0])), r"targets\[1\]\['labels'\]\[1\] = 7"),
        (lambda t: t[0]["boxes"].__setitem__((2, 1), float("nan")), r"targets\[0\]\['boxes'\]\[2\].*NaN"),
        (lambda t: t[2]["boxes"].__setitem__((0, 2), -5.0), r"targets\[2\]\['boxes'\]\[0\].*x2 < x1"),
        (lambda t: t[0].update(labels=torch.zeros(2, dtype=torch.long)), r"targets\[0\]\['labels'\] must be"),
        (lambda t: t[0].update(boxes=torch.zeros(6, 5)), r"targets\[0\]\['boxes'\] must be"),
        (lambda t: t.pop(), "list of 3 dicts"),
        (lambda t: t[1].pop("labels"), r"targets\[1\] must be a dict"),
    ],
)
def test_bad_targets(mutate, match):
    feats, targets = random_batch(batch=3, num_gt=6)
    mutate(targets)
    with pytest.raises(ValueError, match=match):
        DetectionCriterion(NUM_CLASSES)(feats, targets)


def test_bad_feats_and_options():
    feats, targets = random_batch(batch=2, num_gt=2)
    crit = DetectionCriterion(NUM_CLASSES)
    with pytest.raises(ValueError, match="levels"):
        crit(feats[:2], targets)
    with pytest.raises(ValueError, match=r"feats\[1\] must have shape"):
        crit([feats[0], feats[1][:, 1:], feats[2]], targets)
    with pytest.raises(ValueError, match=r"feats\[2\] height"):
        crit([feats[0], feats[1], feats[1]], targets)
    with pytest.raises(ValueError, match="num_classes"):
        DetectionCriterion(0)
    seg = CompositeLoss({"dice": {"loss": instantiate({"_target_": "detloss.losses.DiceLoss"}), "view": "pixels"}})
    with pytest.raises(ValueError, match="view 'pixels'"):
        DetectionCriterion(NUM_CLASSES, loss=seg)


def test_half_precision_head():
    feats, targets = random_batch(batch=2, num_gt=3)
    ref = DetectionCriterion(NUM_CLASSES)(feats, targets).total
    out = DetectionCriterion(NUM_CLASSES)([f.bfloat16() for f in feats], targets).total
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0)


@pytest.mark.parametrize("name", [n for n in config_names("loss") if n.startswith("yolo") and "26" not in n])
def test_shipped_loss_configs_instantiate_and_run(name):
    cfg = compose_config(f"loss={name}", "loss.terms.box.weight=5").loss
    loss = instantiate(cfg)
    assert (
        isinstance(loss, CompositeLoss) and loss.base_weights["box"] == 5.0
    )  # a schedule may scale the weight in force
    feats, targets = random_batch(batch=2, num_gt=3, requires_grad=True)
    out = DetectionCriterion(NUM_CLASSES, loss=loss)(feats, targets)
    assert set(out.terms) == set(cfg.terms) and torch.isfinite(out.total)
    out.total.backward()


def test_term_class_swapped_from_the_command_line():
    cfg = compose_config("loss.terms.cls.loss._target_=detloss.losses.VarifocalLoss", "~loss.terms.dfl")
    loss = instantiate(cfg.loss)
    assert type(loss.losses["cls"]).__name__ == "VarifocalLoss" and "dfl" not in loss.names


# ------------------------------------------------------------------------------------------------ DDP


def _shared_params():
    """A per-channel scale of each level: parameters shared by every image, as a head's are."""
    return [torch.ones(1, 4 * REG_MAX + NUM_CLASSES, 1, 1, requires_grad=True) for _ in range(3)]


def _ddp_worker(rank, world, init_file, batch, num_gt, queue):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        feats, targets = random_batch(batch=batch, num_gt=num_gt, empty=(1,))
        half = batch // world
        params = _shared_params()
        mine = [f[rank * half : (rank + 1) * half] * p for f, p in zip(feats, params)]
        DetectionCriterion(NUM_CLASSES)(mine, targets[rank * half : (rank + 1) * half]).total.backward()
        for p in params:  # what DDP does with the gradients of shared parameters: average them over the ranks
            dist.all_reduce(p.grad)
            p.grad /= world
        if rank == 0:
            queue.put([p.grad.numpy() for p in params])
    finally:
        dist.destroy_process_group()


def test_ddp_gradients_equal_one_process(tmp_path):
    batch, num_gt = 4, 5
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init = tmp_path / "init"
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, str(init), batch, num_gt, queue)) for r in range(2)]
    for p in procs:
        p.start()
    ddp = queue.get(timeout=120)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    feats, targets = random_batch(batch=batch, num_gt=num_gt, empty=(1,))
    params = _shared_params()
    DetectionCriterion(NUM_CLASSES)([f * p for f, p in zip(feats, params)], targets).total.backward()
    for p, g in zip(params, ddp):
        torch.testing.assert_close(torch.from_numpy(g), p.grad, rtol=1e-5, atol=1e-6)
    # rank-local normalisation (each half divided by its own target-score sum) gives other gradients
    local = _shared_params()
    for r in range(2):
        half = [f[r * 2 : (r + 1) * 2] * p for f, p in zip(feats, local)]
        (DetectionCriterion(NUM_CLASSES)(half, targets[r * 2 : (r + 1) * 2]).total / 2).backward()
    assert not all(torch.allclose(p.grad, torch.from_numpy(g), rtol=1e-3) for p, g in zip(local, ddp))


def test_a_non_finite_head_output_is_named_with_its_level_and_index():
    feats, targets = random_batch(batch=2, num_gt=3)
    feats[1][1, 7, 2, 3] = float("nan")
    with pytest.raises(
        ValueError, match=r"feats\[1\] \(the head output of stride 16\) contains NaN or inf at index \(1, 7, 2, 3\)"
    ):
        DetectionCriterion(NUM_CLASSES)(feats, targets)
    feats[1][1, 7, 2, 3] = float("inf")
    with pytest.raises(ValueError, match=r"feats\[1\].*index \(1, 7, 2, 3\)"):
        DetectionCriterion(NUM_CLASSES)(feats, targets)
    DetectionCriterion(NUM_CLASSES, validate=False)(feats, targets)  # not checked: the guard of the task sees it
