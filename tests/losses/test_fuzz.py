"""Property-based fuzzing: every registered loss and both criteria on random degenerate but valid input.

"Degenerate but valid": zero-area, point and identical boxes, inverted *predicted* boxes (targets stay valid),
images without objects, empty masks, every pixel ignored, all-background score maps, logits at ±100, a single
class, a batch of one, empty tensors; for the region losses also soft multilabel targets down to 1e-30 against
saturated logits, with class weights and a small ``smooth``. Each example runs forward and backward in one of four
precisions: float32, float16 and bfloat16 leaves, or float32 leaves under ``torch.autocast("cpu",
dtype=torch.bfloat16)`` (the prediction cast to bfloat16 inside the region, as a layer's output would be, or left
float32). The properties:

* every value and every gradient is finite;
* box losses: ``|grad| < 1e4`` for pairs whose boxes have sides <= 1000 and whose enclosing diagonal is >= 1e-2,
  beyond what the IoU term adds for thin boxes (:func:`unfaded_slope`, pinned by a strict xfail at the end of
  this file), and an exactly zero gradient for identical pairs (the findings of this fuzzer in iou.py, each
  pinned by its smallest example at the end of this file);
* the criteria: the total, every term and the gradient of the head's output are finite.

Two hypothesis profiles: ``detloss-fuzz`` (the default suite: derandomized, so a run is reproducible, and small
enough that this file takes well under a minute on 2 cores: 500 examples per loss property, shared by its
parametrized tests, a quarter of that per criterion) and ``detloss-fuzz-long`` (``>= 10,000`` random examples per
property): the tests marked ``slow``, ``pytest -m slow tests/losses/test_fuzz.py``. No example database is kept.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import detloss.losses as L
from detloss.composite import CompositeLoss
from detloss.detection import DetectionCriterion
from detloss.segmentation import SegmentationCriterion
from detloss.segmentation.distance import class_masks, mask_distance

_COMMON = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("detloss-fuzz", max_examples=500, derandomize=True, **_COMMON)
settings.register_profile("detloss-fuzz-long", max_examples=10_000, derandomize=False, **_COMMON)
FAST, LONG = settings.get_profile("detloss-fuzz"), settings.get_profile("detloss-fuzz-long")
LONG_TIMEOUT = 4 * 3600  # seconds; the suite's 600 s is less than 10,000 examples of a criterion take on 2 cores


def share(profile: settings, parts: int) -> settings:
    """``profile`` with its examples split over ``parts`` parametrized tests (one property in total)."""
    return settings(profile, max_examples=max(10, math.ceil(profile.max_examples / parts)))


PRECISIONS = ("float32", "float16", "bfloat16", "autocast")
LOW = {"float16": torch.float16, "bfloat16": torch.bfloat16}
EXTREMES = (-100.0, 100.0, 0.0, -30.0, 30.0, -1.0, 1.0)
REDUCTIONS = ("none", "mean", "sum")
BOX = ("iou", "giou", "diou", "ciou", "siou", "eiou")
# the library's own losses (a test module may register one of its own: tests/losses/test_adding_a_loss.py)
LIBRARY = [n for n in L.available() if type(L.build(n)).__module__.startswith("detloss.losses.")]
LOSSES = [n for n in LIBRARY if n not in BOX]
REGION = ("dice", "generalized_dice", "tversky", "focal_tversky", "jaccard")


# ----------------------------------------------------------------------------------------------------- strategies


def values(lo: float = -100.0, hi: float = 100.0, specials=EXTREMES):
    """A float32-representable number in ``[lo, hi]``, often one of ``specials``."""
    inside = [v for v in specials if lo <= v <= hi]
    return st.one_of(st.sampled_from(inside), st.floats(lo, hi, width=32)) if inside else st.floats(lo, hi, width=32)


@st.composite
def tensors(draw, shape, lo: float = -100.0, hi: float = 100.0, specials=EXTREMES) -> torch.Tensor:
    """A float64 tensor of ``shape``: one value everywhere, elementwise values, or a seeded random field."""
    n = math.prod(shape)
    kind = draw(st.sampled_from(["constant", "elementwise", "random"]) if n <= 64 else st.just("random"))
    if kind == "constant" or n == 0:
        return torch.full(shape, draw(values(lo, hi, specials)), dtype=torch.float64)
    if kind == "elementwise":
        items = draw(st.lists(values(lo, hi, specials), min_size=n, max_size=n))
        return torch.tensor(items, dtype=torch.float64).view(shape)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([0.1, 1.0, 10.0, 1000.0]))
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).clamp(lo, hi)
    if draw(st.booleans()):  # some elements pinned at the ends of the range
        x = torch.where(torch.rand(shape, generator=g) < 0.3, torch.full_like(x, draw(st.sampled_from([lo, hi]))), x)
    return x.float().double()


def shapes(max_dims: int = 3, max_side: int = 4, min_side: int = 0):
    return st.lists(st.integers(min_side, max_side), min_size=1, max_size=max_dims).map(tuple)


@st.composite
def unit_targets(draw, shape) -> torch.Tensor:
    """Targets in [0, 1]: all 0 (no positives), all 1, hard labels or soft values."""
    kind = draw(st.sampled_from(["zeros", "ones", "hard", "soft"]))
    if kind in ("zeros", "ones"):
        return torch.full(shape, float(kind == "ones"), dtype=torch.float64)
    t = draw(tensors(shape, 0.0, 1.0, (0.0, 1.0, 0.5)))
    return t.round() if kind == "hard" else t


@st.composite
def maybe_weight(draw, shape):
    """``None`` or an elementwise weight in [0, 1] of ``shape`` (zeros included)."""
    return draw(st.none() | tensors(shape, 0.0, 1.0, (0.0, 1.0)))


@st.composite
def region_case(draw):
    """``(options, logits (B, C, 8, 8), target)`` for a region loss, every mode."""
    mode = draw(st.sampled_from(["multiclass", "multiclass", "binary", "multilabel"]))
    batch = draw(st.integers(1, 2))
    classes = 1 if mode == "binary" else draw(st.integers(1, 3))
    options = {"mode": mode, "squared": draw(st.booleans()), "batch_dice": draw(st.booleans())}
    if mode != "binary" and classes > 1:
        options["include_background"] = draw(st.booleans())
    logits = draw(tensors((batch, classes, 8, 8)))
    if mode == "multiclass":
        kind = draw(st.sampled_from(["background", "ignored", "random", "one class"]))
        labels = torch.randint(
            0, classes, (batch, 8, 8), generator=torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
        )
        if kind == "background":  # empty masks: no foreground
            labels.zero_()
        elif kind == "ignored":
            labels.fill_(255)
        elif kind == "one class":
            labels.fill_(classes - 1)
        if draw(st.booleans()):
            labels[..., : draw(st.integers(0, 8)), :] = 255  # some rows ignored
        return options, logits, labels
    target = draw(unit_targets((batch, classes, 8, 8))).round()
    if draw(st.booleans()):
        target[..., : draw(st.integers(0, 8))] = 255.0  # ignored elements (dense ignore_index)
    return options, logits, target


@st.composite
def loss_case(draw, name: str):
    """``(loss module, prediction (float64), other inputs, keyword arguments)`` for the non-box loss ``name``."""
    reduction = draw(st.sampled_from(REDUCTIONS))
    if name in ("bce", "focal", "varifocal", "quality_focal"):
        shape = draw(shapes())
        if name == "bce":
            options = {
                "label_smoothing": draw(st.sampled_from([0.0, 0.1])),
                "pos_weight": draw(st.none() | st.just(2.0)),
            }
        elif name == "focal":
            options = {"alpha": draw(st.sampled_from([0.25, -1.0])), "gamma": draw(st.sampled_from([0.0, 0.5, 2.0]))}
        else:
            options = {"beta" if name == "quality_focal" else "gamma": draw(st.sampled_from([0.5, 2.0]))}
        kwargs = {"reduction": reduction, "weight": draw(maybe_weight(shape))}
        return L.build(name, **options), draw(tensors(shape)), (draw(unit_targets(shape)),), kwargs
    if name == "cross_entropy":
        n, c = draw(st.integers(0, 4)), draw(st.integers(1, 4))  # a single class too
        spatial = draw(st.sampled_from([(), (2,), (2, 3)]))
        logits = draw(tensors((n, c, *spatial)))
        options = {
            "gamma": draw(st.sampled_from([0.0, 0.5, 2.0])),
            "label_smoothing": draw(st.sampled_from([0.0, 0.1])),
        }
        if draw(st.booleans()):  # class indices, some or all ignored
            size = n * math.prod(spatial)
            labels = draw(st.lists(st.sampled_from([*range(c), 255]), min_size=size, max_size=size))
            target = torch.tensor(labels, dtype=torch.long).view(n, *spatial)
        else:  # probabilities
            target = draw(unit_targets((n, c, *spatial)))
        return L.build(name, **options), logits, (target,), {"reduction": reduction}
    if name == "dfl":
        n, bins = draw(st.integers(0, 4)), draw(st.sampled_from([2, 4, 16]))
        target = draw(tensors((n, 4), -5.0, bins + 5.0, (0.0, bins - 1.0, bins - 1.01, 0.5)))
        return (
            L.build(name),
            draw(tensors((n, 4, bins))),
            (target,),
            {"reduction": reduction, "weight": draw(maybe_weight((n,)))},
        )
    if name == "hinge":
        options = {"p": draw(st.sampled_from([1, 2])), "margin": draw(st.sampled_from([1.0, 0.0, -0.5]))}
        if draw(st.booleans()):
            shape = draw(shapes())
            labels = draw(unit_targets(shape)).round()
            if draw(st.booleans()):
                labels = labels * 2 - 1
            return L.build(name, **options), draw(tensors(shape)), (labels,), {"reduction": reduction}
        n, c = draw(st.integers(0, 4)), draw(st.integers(1, 4))
        labels = torch.tensor(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)), dtype=torch.long)
        return L.build(name, **options), draw(tensors((n, c))), (labels,), {"reduction": reduction}
    if name in ("mse", "l1", "smooth_l1"):
        shape = draw(shapes())
        pred = draw(tensors(shape, -1000.0, 1000.0))
        target = pred.clone() if draw(st.booleans()) else draw(tensors(shape, -1000.0, 1000.0))
        options = {"beta": draw(st.sampled_from([0.0, 1.0]))} if name == "smooth_l1" else {}
        return L.build(name, **options), pred, (target,), {"reduction": reduction, "weight": draw(maybe_weight(shape))}
    if name == "distance_l1":  # per box: (N, 4) sides, a weight per box
        n = draw(st.integers(0, 6))
        pred = draw(tensors((n, 4), -1000.0, 1000.0))
        target = pred.clone() if draw(st.booleans()) else draw(tensors((n, 4), -1000.0, 1000.0))
        return L.build(name), pred, (target,), {"reduction": reduction, "weight": draw(maybe_weight((n,)))}
    if name in ("boundary", "hausdorff_dt", "cldice"):  # multiclass or multilabel; distance maps from the masks
        options, logits, target = draw(region_case().filter(lambda c: c[0]["mode"] != "binary"))
        kept = {"mode": options["mode"], "include_background": logits.shape[1] == 1 or draw(st.booleans())}
        if name == "cldice":
            kept["batch_dice"] = options["batch_dice"]
            return L.build(name, **kept), logits, (target,), {"reduction": reduction}
        masks = class_masks(target, logits.shape[1]) if options["mode"] == "multiclass" else target == 1
        distances = (mask_distance(masks, signed=name == "boundary"),)
        if name == "hausdorff_dt":
            distances += (mask_distance(logits > 0, signed=False),)
        return L.build(name, **kept), logits, (target, *distances), {"reduction": reduction}
    assert name in REGION, name
    return draw(region_loss_case(name, draw(region_case()), reduction))


@st.composite
def saturated_soft_case(draw):
    """``(options, logits, target)`` of the multilabel case where ``1/T²`` nears float32's largest value: soft
    targets down to 1e-30 against logits saturated at one value (or random), with a small ``smooth`` (down to
    1e-30, where every count of an empty class is tiny too)."""
    batch, classes = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    shape = (batch, classes, 8, 8)
    if draw(st.integers(0, 3)):
        logits = torch.full(shape, draw(st.sampled_from([88.0, 20.0, 100.0, -88.0])), dtype=torch.float64)
    else:
        logits = draw(tensors(shape))
    target = draw(tensors(shape, 0.0, 1.0, (1.0, 0.5, 0.0))) * draw(st.sampled_from([2e-21, 1e-20, 1e-30, 1e-6]))
    options = {"mode": "multilabel", "squared": draw(st.booleans()), "batch_dice": draw(st.booleans())}
    if classes > 1:
        options["include_background"] = draw(st.booleans())
    options["smooth"] = draw(st.sampled_from([1e-5, 1e-8, 1e-30]))
    return options, logits, target


@st.composite
def region_loss_case(draw, name: str, case, reduction: str):
    """A region loss ``name`` on ``case`` (``(options, logits, target)``), its own options and class weights drawn."""
    options, logits, target = case
    if name in ("tversky", "focal_tversky") and not options["squared"]:
        options["alpha"], options["beta"] = draw(st.sampled_from([(0.5, 0.5), (0.3, 0.7), (1.0, 0.0)]))
    if name == "focal_tversky":
        options["gamma"] = draw(st.sampled_from([0.5, 0.75, 2.0]))
    if name == "generalized_dice":
        options["weight_type"] = draw(st.sampled_from(["square", "simple", "uniform"]))
    if draw(st.booleans()):
        kept = logits.shape[1] - (0 if options.get("include_background", True) else 1)
        options["class_weights"] = draw(st.lists(st.sampled_from([0.5, 1.0, 2.0]), min_size=kept, max_size=kept))
    return L.build(name, **options), logits, (target,), {"reduction": reduction}


# ------------------------------------------------------------------------------------------------------ running


def leaf(x: torch.Tensor, precision: str) -> torch.Tensor:
    """``x`` as a leaf tensor of the precision's dtype (float32 for ``autocast``)."""
    return x.to(LOW.get(precision, torch.float32)).requires_grad_()


def region(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "autocast" else nullcontext()


def seen(x: torch.Tensor, precision: str, cast: bool) -> torch.Tensor:
    """What a loss receives: under autocast the prediction as a layer inside the region would give it."""
    return x.to(torch.bfloat16) if precision == "autocast" and cast else x


def assert_finite(name: str, what: str, x: torch.Tensor) -> None:
    assert torch.isfinite(x).all(), f"{name}: {what} not finite: {x}"


def other_input(x: torch.Tensor, precision: str) -> torch.Tensor:
    return x.to(LOW.get(precision, torch.float32)) if x.is_floating_point() else x


def check_weight_penalty(data) -> None:
    """``weight_penalty`` takes a module: a linear layer and a batch norm with weights at up to ±100."""
    precision = data.draw(st.sampled_from(PRECISIONS), label="precision")
    inputs, outputs = data.draw(st.integers(1, 4), label="in"), data.draw(st.integers(1, 4), label="out")
    model = torch.nn.Sequential(torch.nn.Linear(inputs, outputs), torch.nn.BatchNorm1d(outputs))
    model = model.to(LOW.get(precision, torch.float32))
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(data.draw(tensors(tuple(param.shape)), label="weights"))
    options = {"p": data.draw(st.sampled_from([1, 2])), "exclude_norm_and_bias": data.draw(st.booleans())}
    with region(precision):
        out = L.build("weight_penalty", **options)(model, reduction=data.draw(st.sampled_from(REDUCTIONS)))
    assert_finite("weight_penalty", "value", out)
    out.sum().backward()
    for param in model.parameters():
        assert param.grad is None or torch.isfinite(param.grad).all(), param.grad


def check_loss(name: str, data, case=None) -> None:
    """The properties for the loss ``name`` on an example of ``case`` (a strategy; default: :func:`loss_case`)."""
    if name == "weight_penalty":
        return check_weight_penalty(data)
    loss, pred, others, kwargs = data.draw(loss_case(name) if case is None else case, label="case")
    precision = data.draw(st.sampled_from(PRECISIONS), label="precision")
    cast = data.draw(st.booleans(), label="cast under autocast")
    x = leaf(pred, precision)
    others = [other_input(o, precision) for o in others]
    kwargs = {k: (other_input(v, precision) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    with region(precision):
        out = loss(seen(x, precision, cast), *others, **kwargs)
    assert out.dtype == torch.float32, f"{name}: output dtype {out.dtype}"
    assert_finite(name, "value", out)
    out.sum().backward()
    assert x.grad is not None and x.grad.dtype == x.dtype
    assert_finite(name, "gradient", x.grad)


@pytest.mark.parametrize("name", LOSSES)
@share(FAST, len(LOSSES))
@given(data=st.data())
def test_losses_finite(name, data):
    check_loss(name, data)


@pytest.mark.slow
@pytest.mark.timeout(LONG_TIMEOUT)
@pytest.mark.parametrize("name", LOSSES)
@share(LONG, len(LOSSES))
@given(data=st.data())
def test_losses_finite_long(name, data):
    check_loss(name, data)


def check_saturated_soft(name: str, data) -> None:
    reduction = data.draw(st.sampled_from(REDUCTIONS), label="reduction")
    check_loss(name, data, saturated_soft_case().flatmap(lambda c: region_loss_case(name, c, reduction)))


@pytest.mark.parametrize("name", REGION)
@share(FAST, 4 * len(REGION))  # 125 examples over the five region losses
@given(data=st.data())
def test_region_losses_finite_on_saturated_logits_and_tiny_soft_targets(name, data):
    check_saturated_soft(name, data)


@pytest.mark.slow
@pytest.mark.timeout(LONG_TIMEOUT)
@pytest.mark.parametrize("name", REGION)
@share(LONG, len(REGION))
@given(data=st.data())
def test_region_losses_finite_on_saturated_logits_and_tiny_soft_targets_long(name, data):
    check_saturated_soft(name, data)


# ------------------------------------------------------------------------------------------------------ box losses


@st.composite
def box_pairs(draw):
    """``(pred (N, 4), target (N, 4))`` float64: valid targets; predictions equal, near, degenerate or inverted."""
    n = draw(st.integers(0, 4))
    coord = values(-1000.0, 1000.0, (0.0, 1.0, -1.0, 1000.0, -1000.0, 0.5))
    side = values(0.0, 1000.0, (0.0, 0.0, 1e-3, 1e-2, 1.0, 1000.0))
    pred, target = [], []
    for _ in range(n):
        x1, y1, w, h = draw(coord), draw(coord), draw(side), draw(side)
        t = [x1, y1, x1 + w, y1 + h]
        kind = draw(st.sampled_from(["same", "other", "shifted", "point", "inverted"]))
        if kind == "same":
            p = list(t)
        elif kind == "other":
            p = [draw(coord), draw(coord)]
            p += [p[0] + draw(side), p[1] + draw(side)]
        elif kind == "shifted":
            d = draw(values(-10.0, 10.0, (1e-3, -1e-3, 0.0)))
            p = [v + d for v in t]
        elif kind == "point":
            p = [x1, y1, x1, y1]
        else:  # inverted prediction: x2 < x1 and/or y2 < y1
            p = [x1 + w, y1 + h, x1 - draw(side), y1 - draw(side)]
        pred.append(p)
        target.append(t)
    as64 = dict(dtype=torch.float64)
    return torch.tensor(pred, **as64).view(n, 4), torch.tensor(target, **as64).view(n, 4)


EPS = 1e-7  # the box losses' default eps


def unfaded_slope(p: torch.Tensor, t: torch.Tensor, name: str) -> torch.Tensor:
    """How large iou.py lets a pair's gradient grow through the one term it does not fade, per pair, from the
    float64 boxes: the IoU term ``(U − I) / (U + eps)``, whose slope is up to ~``2·side / (U + eps)`` per
    coordinate, i.e. ``~side/eps`` for a box of area ~0 (thin boxes), whatever the enclosing diagonal
    (test_thin_boxes_bounded_gradient says why it stays)."""
    wp, wt = (p[:, 2:] - p[:, :2]).clamp(min=0), t[:, 2:] - t[:, :2]
    inter = (torch.minimum(p[:, 2:], t[:, 2:]) - torch.maximum(p[:, :2], t[:, :2])).clamp(min=0).prod(1)
    union = wp.prod(1) + wt.prod(1) - inter
    side = torch.cat([(p[:, 2:] - p[:, :2]).abs(), wt], 1).amax(1)
    return 4 * side / (union + EPS)


def check_box_loss(name: str, data) -> None:
    pred, target = data.draw(box_pairs(), label="boxes")
    precision = data.draw(st.sampled_from(PRECISIONS), label="precision")
    cast = data.draw(st.booleans(), label="cast under autocast")
    reduction = data.draw(st.sampled_from(REDUCTIONS), label="reduction")
    x = leaf(pred, precision)
    target = other_input(target, precision)
    with region(precision):
        p = seen(x, precision, cast)
        out = L.build(name)(p, target, reduction=reduction)
    assert_finite(name, "value", out)
    assert (out >= 0).all(), f"{name}: negative loss {out}"
    out.sum().backward()
    g = x.grad.double()
    # what the loss saw, in float64
    p64, t64 = p.detach().double(), target.double()
    unfaded = unfaded_slope(p64, t64, name)
    bound = 1e4 + unfaded
    # a float16 leaf holds its gradient in float16: beyond 65504 (only through the unfaded terms) it is inf
    representable = bound < torch.finfo(x.dtype).max
    assert torch.isfinite(g[representable]).all(), f"{name}: gradient {g[representable].tolist()} not finite"
    corners = torch.cat([p64.view(-1, 2, 2), t64.view(-1, 2, 2)], 1)  # (N, 4 corners, xy)
    diagonal = (corners.amax(1) - corners.amin(1)).norm(dim=1)
    sides = torch.cat([(p64[:, 2:] - p64[:, :2]).abs(), t64[:, 2:] - t64[:, :2]], 1).amax(1)
    tame = (diagonal >= 1e-2) & (sides <= 1000) & representable
    big = g.abs().amax(1) if len(g) else g.new_zeros(0)
    assert (big[tame] < bound[tame]).all(), (
        f"{name}: |grad| {big[tame].tolist()} above {bound[tame].tolist()} on {p64[tame].tolist()} vs "
        f"{t64[tame].tolist()}"
    )
    same = (p64 == t64).all(1)
    assert (g[same] == 0).all(), f"{name}: gradient {g[same].tolist()} on identical boxes {t64[same].tolist()}"


@pytest.mark.parametrize("name", BOX)
@share(FAST, len(BOX))
@given(data=st.data())
def test_box_losses_finite_bounded(name, data):
    check_box_loss(name, data)


@pytest.mark.slow
@pytest.mark.timeout(LONG_TIMEOUT)
@pytest.mark.parametrize("name", BOX)
@share(LONG, len(BOX))
@given(data=st.data())
def test_box_losses_finite_bounded_long(name, data):
    check_box_loss(name, data)


# -------------------------------------------------------------------------------------------------------- criteria

IMAGE, STRIDES = 64, (8, 16, 32)
_CRITERIA: dict = {}


def detection_criterion(classes: int, reg_max: int, box: str, cls: str) -> DetectionCriterion:
    key = ("det", classes, reg_max, box, cls)
    if key not in _CRITERIA:
        loss = CompositeLoss(
            {
                "box": {"loss": L.build(box), "weight": 7.5, "view": "box"},
                "cls": {"loss": L.build(cls), "weight": 0.5, "view": "cls"},
                "dfl": {"loss": L.build("dfl"), "weight": 1.5, "view": "dist"},
            }
        )
        _CRITERIA[key] = DetectionCriterion(classes, STRIDES, reg_max, loss=loss)
    return _CRITERIA[key]


@st.composite
def detection_case(draw):
    classes = draw(st.sampled_from([1, 3]))
    reg_max = draw(st.sampled_from([4, 16]))
    batch = draw(st.integers(1, 2))
    channels = 4 * reg_max + classes
    feats = []
    for stride in STRIDES:
        side = IMAGE // stride
        f = draw(tensors((batch, channels, side, side)))
        if draw(st.booleans()):  # an all-background score map: every class logit at -100
            f[:, 4 * reg_max :] = -100.0
        feats.append(f)
    coord = values(-16.0, IMAGE + 16.0, (0.0, float(IMAGE), 32.0, 31.5))
    side = values(0.0, 80.0, (0.0, 0.0, 1e-3, 1.0, 8.0, float(IMAGE)))
    targets = []
    for _ in range(batch):
        n = draw(st.integers(0, 4))  # 0: an image without objects
        boxes = []
        for _ in range(n):
            x1, y1 = draw(coord), draw(coord)
            boxes.append([x1, y1, x1 + draw(side), y1 + draw(side)])  # zero-area and point boxes included
        if n and draw(st.booleans()):
            boxes[-1] = list(boxes[0])  # a duplicate
        labels = draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n))
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32).view(n, 4),
                "labels": torch.tensor(labels, dtype=torch.long),
            }
        )
    box = draw(st.sampled_from(["ciou", "ciou", "giou", "siou", "eiou"]))
    cls = draw(st.sampled_from(["bce", "bce", "focal", "varifocal", "quality_focal"]))
    return detection_criterion(classes, reg_max, box, cls), feats, targets


def check_criterion(call, inputs: list[torch.Tensor], precision: str, cast: bool) -> None:
    """``call(inputs as the head gives them)`` -> LossOutput: finite total, terms and gradients."""
    leaves = [leaf(x, precision) for x in inputs]
    with region(precision):
        out = call([seen(x, precision, cast) for x in leaves])
    assert_finite("criterion", "total", out.total)
    for name, value in out.terms.items():
        assert_finite("criterion", f"term {name}", value)
    out.total.backward()
    for x in leaves:
        assert x.grad is not None, "no gradient reached the head"
        assert_finite("criterion", "gradient", x.grad)


def check_detection(data) -> None:
    criterion, feats, targets = data.draw(detection_case(), label="case")
    precision = data.draw(st.sampled_from(PRECISIONS), label="precision")
    cast = data.draw(st.booleans(), label="cast under autocast")
    check_criterion(lambda f: criterion(f, targets), feats, precision, cast)


@share(FAST, 4)  # an example of a criterion costs about as much as four of a loss
@given(data=st.data())
def test_detection_criterion_finite(data):
    check_detection(data)


@pytest.mark.slow
@pytest.mark.timeout(LONG_TIMEOUT)
@LONG
@given(data=st.data())
def test_detection_criterion_finite_long(data):
    check_detection(data)


def segmentation_criterion(classes: int, terms: tuple[str, str]) -> SegmentationCriterion:
    key = ("seg", classes, terms)
    if key not in _CRITERIA:
        region_loss, ce = terms
        ce_options = {"gamma": 2.0} if ce == "focal_ce" else {"label_smoothing": 0.1} if ce == "smoothed_ce" else {}
        loss = CompositeLoss(
            {
                "region": {"loss": L.build(region_loss, include_background=False), "weight": 1.0, "view": "pixels"},
                "ce": {"loss": L.build("cross_entropy", **ce_options), "weight": 1.0, "view": "pixels"},
            }
        )
        _CRITERIA[key] = SegmentationCriterion(classes, loss=loss)
    return _CRITERIA[key]


@st.composite
def segmentation_case(draw):
    classes = draw(st.sampled_from([2, 3]))  # background and one class: the smallest head
    batch = draw(st.integers(1, 2))
    logits = draw(tensors((batch, classes, 8, 8)))
    kind = draw(st.sampled_from(["background", "ignored", "random", "one class"]))
    masks = torch.randint(
        0, classes, (batch, 8, 8), generator=torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    )
    if kind == "background":  # empty masks
        masks.zero_()
    elif kind == "ignored":  # every pixel ignored
        masks.fill_(255)
    elif kind == "one class":
        masks.fill_(classes - 1)
    if draw(st.booleans()):
        masks[:, : draw(st.integers(0, 8))] = 255
    region_loss = draw(st.sampled_from(REGION))
    ce = draw(st.sampled_from(["ce", "focal_ce", "smoothed_ce"]))
    return segmentation_criterion(classes, (region_loss, ce)), logits, masks


def check_segmentation(data) -> None:
    criterion, logits, masks = data.draw(segmentation_case(), label="case")
    precision = data.draw(st.sampled_from(PRECISIONS), label="precision")
    cast = data.draw(st.booleans(), label="cast under autocast")
    check_criterion(lambda x: criterion(x[0], masks), [logits], precision, cast)


@share(FAST, 4)  # an example of a criterion costs about as much as four of a loss
@given(data=st.data())
def test_segmentation_criterion_finite(data):
    check_segmentation(data)


@pytest.mark.slow
@pytest.mark.timeout(LONG_TIMEOUT)
@LONG
@given(data=st.data())
def test_segmentation_criterion_finite_long(data):
    check_segmentation(data)


# ------------------------------------------------------------------------------- what the fuzzer found in iou.py
# each finding by its smallest example: fixed in iou.py, but for the thin boxes' IoU term (a strict xfail, which
# starts failing the suite once that is fixed, so that the allowance above, unfaded_slope, can go).


def _box_grad(name: str, pred, target, dtype=torch.float32):
    x = torch.tensor(pred, dtype=dtype).requires_grad_()
    value = L.build(name)(x, torch.tensor(target, dtype=dtype), reduction="none")
    value.sum().backward()
    return value.detach(), x.grad


@pytest.mark.parametrize("name", BOX)
def test_identical_boxes_zero_gradient(name):
    # was eps·side / (2 (U + eps)²), 41 per coordinate for the 0.001-sided box, from IoU = I / (U + eps)
    box = [[0.0, 0.0, 1e-3, 1e-3], [10.0, 10.0, 11.0, 11.0], [0.0, 0.0, 1.0, 200.0]]
    value, grad = _box_grad(name, box, box)
    assert (value == 0).all() and (grad == 0).all(), (value, grad)


@pytest.mark.parametrize("name", BOX)
def test_thin_identical_boxes_finite_in_float16(name):
    box = [[0.0, 0.041748046875, 1.1920928955078125e-07, 1.0419921875]]
    value, grad = _box_grad(name, box, box, torch.float16)
    assert value.item() == 0 and (grad == 0).all(), (value, grad)


@pytest.mark.xfail(
    strict=True,
    reason="the IoU term (U − I) / (U + eps) has the slope of 1 − IoU itself, up to ~2·side / U: 3.3e6 for "
    "[0, 0, 1e-7, 1] vs [0, 0, 2e-7, 1], inf as a float16 gradient. Bounding it (below 1e4 at side 1) means changing "
    "the term wherever U < 4e-4·side²: an eps of 2e-4·side in U + eps would move every box by ~2e-4·side / U (1e-3 "
    "for a 1 × 5 box); a fade there, as iou.py fades its other terms, must go to 1, the term's value once the boxes "
    "stop overlapping, or the loss jumps by up to 1 where thin boxes start to overlap, and faded to 1, identical "
    "thin boxes cost 1 − fade, with a gradient, against the zero gradient promised for identical boxes",
)
@pytest.mark.parametrize("name", BOX)
def test_thin_boxes_bounded_gradient(name):
    _, grad = _box_grad(name, [[0.0, 0.0, 1e-7, 1.0]], [[0.0, 0.0, 2e-7, 1.0]])
    assert grad.abs().max() < 1e4, grad


@pytest.mark.parametrize("name", ["diou", "ciou", "eiou", "siou"])
def test_identical_boxes_centre_offset(name):
    # was (x1g + x2g − x1 − x2) / 2 summed left to right: DIoU 1.009 and gradient 299, SIoU 6810 in float32
    box = [[1000.0, 0.0, 1000.0000610351562, 0.0]]
    value, grad = _box_grad(name, box, box)
    assert value.item() == 1.0 and (grad == 0).all(), (value, grad)


def test_ciou_aspect_term_finite_in_float16():
    # atan(w / (h + eps)) has slope up to 1 / eps; its fade's unit is now at least sqrt(eps) (was κ·sqrt(eps)):
    # a zero-height box of width ~eps next to a point target got 2.5e5 in float32, inf in float16
    pred = [[0.0003230571746826172, -1000.0, 0.00032329559326171875, -1000.0]]
    target = [[0.0003228187561035156, -1000.0, 0.0003228187561035156, -1000.0]]
    _, grad = _box_grad("ciou", pred, target, torch.float16)
    assert torch.isfinite(grad).all() and grad.abs().max() < 1e4, grad


def test_siou_faded_terms_bounded():
    # the shape cost |w − w_gt| / max(w, w_gt) and distance cost dx / cw, now faded: 8.8e4 in float32 before
    _, grad = _box_grad("siou", [[2.0, 2.0, 2.0000002, 2.0000002]], [[0.0, 0.0, 1e-7, 0.2]])
    assert grad.abs().max() < 1e4, grad
