"""detloss-calibrate: the weights for target gradient shares (by hand and on a short detection run whose printed
overrides, applied, bring the shares to the target), and the translation of Ultralytics' gains against its
criterion's values."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf

from detloss.calibrate import Measurement, calibrated_weights, main, measure, overrides, target_shares
from detloss.composite import CompositeLoss
from detloss.detection import (
    DetectionCriterion,
    from_ultralytics_gains,
    ultralytics_gains,
    ultralytics_step_factor,
)
from detloss.losses import BCEWithLogitsLoss, CIoULoss, DFLoss

TOY = ["data.num_train=32", "data.num_val=16", "data.batch_size=8", "data.image_size=64", "data.num_workers=0"]


def run(weights, norms) -> Measurement:
    """A measurement made by hand: configured weights and mean gradient norms per unit of weight."""
    pulls = {t: weights[t] * m for t, m in norms.items() if m is not None}
    shares = {t: p / sum(pulls.values()) for t, p in pulls.items()}
    return Measurement(dict(weights), dict(norms), shares, measurements=4, steps=8)


# ------------------------------------------------------------------------------------------------ the weights


def test_calibrated_weights_give_the_target_shares_and_keep_the_total_pull():
    measured = run({"a": 2.0, "b": 1.0, "c": 0.5}, {"a": 3.0, "b": 1.0, "c": 4.0})  # pulls 6, 1, 2
    targets = target_shares(measured)
    assert targets == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    new = calibrated_weights(measured, targets)
    assert new == pytest.approx({"a": 1.0, "b": 3.0, "c": 0.75})  # 9 / 3 / m
    after = {t: new[t] * measured.norms[t] for t in new}
    assert sum(after.values()) == pytest.approx(9.0) and len(set(round(v, 9) for v in after.values())) == 1


def test_a_reference_gives_its_shares_to_the_terms_of_both_runs():
    measured = run({"a": 1.0, "b": 1.0, "c": 1.0}, {"a": 5.0, "b": 3.0, "c": 2.0})  # shares 0.5, 0.3, 0.2
    reference = run({"a": 1.0, "b": 3.0}, {"a": 1.0, "b": 1.0})  # shares 0.25, 0.75; no term c
    targets = target_shares(measured, reference)
    assert targets == pytest.approx({"a": 0.2, "b": 0.6, "c": 0.2})  # c keeps its 0.2, a and b share 0.8 as 1:3
    new = calibrated_weights(measured, targets)
    after = {t: new[t] * measured.norms[t] for t in new}
    assert {t: v / sum(after.values()) for t, v in after.items()} == pytest.approx(targets)
    with pytest.raises(ValueError, match="share no name"):
        target_shares(measured, run({"z": 1.0}, {"z": 1.0}))


def test_a_term_not_measured_keeps_its_weight():
    measured = run({"a": 1.0, "b": 0.0}, {"a": 2.0, "b": None})
    assert target_shares(measured) == {"a": 1.0}
    assert calibrated_weights(measured, target_shares(measured)) == {"a": 1.0}
    with pytest.raises(ValueError, match="no term was measured"):
        target_shares(run({"b": 0.0}, {"b": None}))


def test_overrides_give_the_weight_within_its_groups():
    cfg = OmegaConf.create(
        {"loss": {"terms": {"g": {"weight": 2.0, "x": {"weight": 3.0}}, "y": {"weight": 1.0}, "h": {"z": {}}}}}
    )
    assert overrides(cfg, {"g/x": 4.0, "y": 0.123456, "h/z": 2.0}) == [
        "loss.terms.g.x.weight=2",
        "loss.terms.y.weight=0.1235",
        "loss.terms.h.z.weight=2",
    ]


def test_the_printed_overrides_parse_and_bring_the_shares_to_the_target(capsys):
    assert main(["--steps", "8", "--every", "1", *TOY]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("detloss-calibrate: 8 steps,")  # the first 8 of the run's 36 (9 epochs of 4 batches)
    pasted = lines[-1].split()
    assert [p.split("=")[0] for p in pasted] == [f"loss.terms.{t}.weight" for t in ("box", "cls", "dfl")]
    table = {row.split()[0]: row.split()[1:] for row in lines[2:5]}
    before = {t: float(table[t][1]) for t in ("box", "cls", "dfl")}
    assert all(float(table[t][2]) == pytest.approx(1 / 3, abs=1e-3) for t in table)

    cfg = compose_config("paths.output_dir=unused", *TOY, *pasted)
    assert [cfg.loss.terms[t].weight for t in ("box", "cls", "dfl")] == [float(table[t][3]) for t in table]
    again = measure(cfg, steps=8, every=1)
    assert again.steps == 8 and again.measurements == 4  # steps 4 … 7, the second half
    after = again.shares
    off = lambda shares: sum(abs(shares[t] - 1 / 3) for t in shares)
    assert off(after) < 0.5 * off(before), (before, after)


def test_the_options_are_checked(capsys):
    assert main(["--steps", "1"]) == 2
    assert "--steps must be at least 2" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ Ultralytics' gains

NC, IMAGE, STRIDES, REG_MAX = 3, 64, (8, 16, 32), 16
GAINS = {"box": 7.5, "cls": 0.5, "dfl": 1.5}


def feats(batch: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 4 * REG_MAX + NC, IMAGE // s, IMAGE // s, generator=g).requires_grad_() for s in STRIDES]


def targets(batch: int, seed: int, per_image: int = 4) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        wh = torch.rand(per_image, 2, generator=g) * 30 + 6
        xy = torch.rand(per_image, 2, generator=g) * (IMAGE - wh)
        out.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, NC, (per_image,), generator=g)})
    return out


def ultralytics_loss(maps, boxes, gains):
    """Ultralytics' v8DetectionLoss on ``maps``, ``boxes``: its ``(3,)`` vector (box, cls, dfl), gains applied and
    times the batch."""
    loss_module = pytest.importorskip("ultralytics.utils.loss")
    head = SimpleNamespace(nc=NC, reg_max=REG_MAX, stride=torch.tensor(STRIDES, dtype=torch.float32))
    model = torch.nn.Module()
    model.register_parameter("p", torch.nn.Parameter(torch.zeros(1)))
    model.args, model.model = SimpleNamespace(**gains), [head]
    x = torch.cat([f.flatten(2) for f in maps], 2)
    preds = {"boxes": x[:, : 4 * REG_MAX], "scores": x[:, 4 * REG_MAX :], "feats": maps}
    xyxy = torch.cat([t["boxes"] for t in boxes])
    xywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1) / IMAGE
    batch = {
        "batch_idx": torch.cat([torch.full((len(t["labels"]),), float(i)) for i, t in enumerate(boxes)]),
        "cls": torch.cat([t["labels"] for t in boxes]).float(),
        "bboxes": xywh,
    }
    return loss_module.v8DetectionLoss(model)(preds, batch)[0]


def detloss_criterion(weights) -> DetectionCriterion:
    terms = {"box": (CIoULoss(), "box"), "cls": (BCEWithLogitsLoss(), "cls"), "dfl": (DFLoss(), "dist")}
    composite = CompositeLoss({k: {"loss": m, "weight": weights[k], "view": v} for k, (m, v) in terms.items()})
    return DetectionCriterion(NC, strides=STRIDES, reg_max=REG_MAX, loss=composite)


def test_the_gains_as_weights_give_ultralytics_terms_over_the_batch():
    maps, boxes = feats(4, 0), targets(4, 1)
    theirs = ultralytics_loss(maps, boxes, GAINS)
    ours = detloss_criterion(from_ultralytics_gains(GAINS))(maps, boxes)
    torch.testing.assert_close(torch.stack([ours.terms[k] for k in ("box", "cls", "dfl")]) * 4, theirs.detach())


def test_an_optimizer_step_gradient_equals_ultralytics_with_its_accumulation():
    batch, nbs = 4, 8  # Ultralytics adds the gradients of round(8 / 4) = 2 batches; Lightning averages them
    accumulate = max(round(nbs / batch), 1)
    assert ultralytics_step_factor(batch, nbs) == batch * accumulate == 8
    criterion = detloss_criterion(from_ultralytics_gains(GAINS, batch=batch, nbs=nbs))
    for seed in range(accumulate):
        maps, boxes = feats(batch, 10 + seed), targets(batch, 20 + seed)
        theirs = torch.autograd.grad(ultralytics_loss(maps, boxes, GAINS).sum(), maps)
        ours = torch.autograd.grad(criterion(maps, boxes).total / accumulate, maps)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_step_factor_and_round_trip():
    assert [ultralytics_step_factor(b) for b in (16, 24, 64, 128)] == [64, 72, 64, 128]
    weights = from_ultralytics_gains(GAINS, batch=16)
    assert weights == pytest.approx({"box": 480.0, "cls": 32.0, "dfl": 96.0})
    assert ultralytics_gains(weights, batch=16) == pytest.approx(GAINS)
    assert ultralytics_gains({"box": 7.5}) == {"box": 7.5}
    with pytest.raises(ValueError, match=r"\['l1'\] are not Ultralytics detection gains"):
        from_ultralytics_gains({"l1": 1.0})
    with pytest.raises(ValueError, match="gains\\['box'\\]"):
        from_ultralytics_gains({"box": -1.0})
    with pytest.raises(ValueError, match="batch"):
        ultralytics_step_factor(0)
