"""Loss-term dynamics: weight schedules, learned balancing, per-term gradient diagnostics."""

import copy
import csv
import functools

import lightning as L
import pytest
import torch
from conftest import quiet_trainer
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from detloss.composite import (
    CompositeLoss,
    Cosine,
    Criterion,
    DynamicWeightAverage,
    HandOver,
    LinearWarmup,
    Position,
    Step,
    UncertaintyWeighting,
    View,
)
from detloss.loggers import CSVLogger
from detloss.losses import MSELoss
from detloss.tasks import GradientDiagnostics, LossTask
from detloss.train import train


def at(step=0, epoch=0.0, total=100):
    return Position(step, epoch, total)


# ---------------------------------------------------------------------------------------------- schedules


def test_schedules_give_the_expected_factors():
    warm = LinearWarmup(duration=2, unit="epoch", start=0.1)
    assert [warm.factor(at(epoch=e)) for e in (0, 1, 2, 5)] == pytest.approx([0.1, 0.55, 1.0, 1.0])
    assert LinearWarmup(duration=4, unit="step").factor(at(step=1)) == pytest.approx(0.25)
    step = Step(milestones=[2, 4], gamma=0.1)
    assert [step.factor(at(epoch=e)) for e in (1.9, 2, 3, 4.5)] == pytest.approx([1, 0.1, 0.1, 0.01])
    assert Cosine(end=0.2).factor(at(step=50, total=100)) == pytest.approx(0.6)
    assert Cosine(end=0.0, duration=10, unit="step").factor(at(step=10)) == pytest.approx(0.0, abs=1e-12)
    hand = HandOver(to="b", begin=0.2, end=0.8)
    assert [hand.share(at(step=s)) for s in (0, 20, 50, 80, 100)] == pytest.approx([0, 0, 0.5, 1, 1])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: LinearWarmup(duration=-1), "duration"),
        (lambda: LinearWarmup(duration=1, unit="batch"), "unit"),
        (lambda: Step(milestones=[3, 1]), "increasing"),
        (lambda: HandOver(to="b", begin=0.8, end=0.2), "begin"),
        (lambda: HandOver(to=""), "to"),
    ],
)
def test_bad_schedule_options(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def two_terms(**extra):
    return {
        "a": {"loss": MSELoss(), "weight": 2.0, "view": "a", **extra},
        "b": {"loss": MSELoss(), "weight": 4.0, "view": "b"},
    }


def test_composite_applies_schedules_and_hand_over():
    loss = CompositeLoss(two_terms(schedule=HandOver(to="b", begin=0.0, end=1.0)))
    assert loss.current_weights() == {"a": 2.0, "b": 0.0}  # the start of training
    loss.update(at(step=25, total=100))
    assert loss.current_weights() == pytest.approx({"a": 1.5, "b": 1.0})
    x = torch.ones(3)
    out = loss({"a": View((x, x * 0)), "b": View((x, x * 2))})
    assert out.terms["a"].item() == pytest.approx(1.5) and out.terms["b"].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="hands its weight over"):
        CompositeLoss(two_terms(schedule=HandOver(to="c")))
    with pytest.raises(ValueError, match="schedule must be a WeightSchedule"):
        CompositeLoss(two_terms(schedule="warmup"))


TINY = [
    "data.num_train=16",
    "data.num_val=8",
    "data.batch_size=8",
    "data.image_size=64",
    "trainer.log_every_n_steps=1",
    "callbacks=default",
    "task.num_previews=0",
]


def test_a_scheduled_weight_is_logged_and_survives_resume(tmp_path, compose):
    warmup = "+loss.terms.box.schedule={_target_: detloss.composite.LinearWarmup, duration: 4, unit: step, start: 0.1}"
    first = compose(warmup, *TINY, "trainer.max_epochs=1")
    second = compose(warmup, *TINY, "trainer.max_epochs=2", f"resume={tmp_path}")
    train(first)
    train(second)
    rows = [r for r in csv.DictReader((tmp_path / "csv" / "metrics.csv").open()) if r.get("train/weight/box")]
    logged = [float(r["train/weight/box"]) for r in rows]
    expected = [7.5 * (0.1 + 0.9 * min(1.0, g / 4)) for g in range(4)]  # 2 steps per epoch, 2 epochs
    assert logged == pytest.approx(expected)  # no restart from step 0 after the resume


# ----------------------------------------------------------------------------------------- learned balancing


class PairCriterion(Criterion):
    """Column 0 of the prediction against column 0 of the target (term ``clean``), column 1 (``noisy``)."""

    views = frozenset({"a", "b"})

    def __init__(self, loss):
        super().__init__(2, loss)

    def build_views(self, pred, target):
        return {"a": View((pred[:, 0], target[:, 0])), "b": View((pred[:, 1], target[:, 1]))}


def pair_terms():
    return {
        "clean": {"loss": MSELoss(), "weight": 1.0, "view": "a"},
        "noisy": {"loss": MSELoss(), "weight": 1.0, "view": "b"},
    }


def test_uncertainty_weighting_learns_a_larger_weight_for_the_cleaner_term():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 4, generator=g)
    signal = x @ torch.randn(4, 1, generator=g)
    y = torch.cat(
        [signal + 0.05 * torch.randn(512, 1, generator=g), signal + 1.0 * torch.randn(512, 1, generator=g)], 1
    )
    criterion = PairCriterion(CompositeLoss(pair_terms(), balancing=UncertaintyWeighting()))
    model = nn.Linear(4, 2)
    optimizer = torch.optim.Adam([*model.parameters(), *criterion.parameters()], lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        criterion(model(x), y).total.backward()
        optimizer.step()
    weights = criterion.loss.current_weights()
    assert weights["clean"] > 20 * weights["noisy"]
    # at the optimum of s, exp(-s) = 1 / loss: the noisy term's loss is about its noise variance, 1
    assert weights["noisy"] == pytest.approx(1.0, rel=0.2)
    assert set(criterion.state_dict()) >= {"loss.balancing.log_vars.clean", "loss.balancing.log_vars.noisy"}


def test_dynamic_weight_average_follows_the_loss_ratios():
    loss = CompositeLoss(pair_terms(), balancing=DynamicWeightAverage(temperature=2.0))
    x = torch.zeros(4)
    seen = []
    for epoch, (a, b) in enumerate([(4.0, 1.0), (2.0, 1.0), (1.0, 1.0)]):  # clean halves each epoch, noisy stalls
        loss.update(at(step=epoch, epoch=epoch))
        seen.append(list(loss.current_weights().values()))
        for _ in range(3):  # steps of the epoch: their mean is what counts
            loss({"a": View((x + a**0.5, x)), "b": View((x + b**0.5, x))})
    assert seen[0] == seen[1] == [1.0, 1.0]  # epochs 0 and 1: no two epochs of history yet
    ratios = torch.tensor([2.0 / 4.0, 1.0 / 1.0])  # epoch 1 over epoch 0
    assert seen[2] == pytest.approx((2 * torch.softmax(ratios / 2.0, 0)).tolist())
    assert seen[2][1] > seen[2][0]  # the stalling term gets more weight
    with torch.no_grad():  # evaluation does not count
        loss({"a": View((x + 100.0, x)), "b": View((x, x))})
    loss.update(at(step=3, epoch=3))
    ratios = torch.tensor([1.0 / 2.0, 1.0 / 1.0])
    assert list(loss.current_weights().values()) == pytest.approx((2 * torch.softmax(ratios / 2.0, 0)).tolist())
    # its state is in the module's state dict, so checkpoints carry it
    restored = CompositeLoss(pair_terms(), balancing=DynamicWeightAverage(temperature=2.0))
    restored.load_state_dict(loss.state_dict())
    assert restored.current_weights() == pytest.approx(loss.current_weights())


def test_learned_weights_are_in_the_optimizer_and_checkpoint(tmp_path):
    criterion = PairCriterion(CompositeLoss(pair_terms(), balancing=UncertaintyWeighting()))
    task = LossTask(nn.Linear(3, 2), criterion, functools.partial(torch.optim.SGD, lr=0.1))
    trainer = quiet_trainer(max_epochs=1, default_root_dir=tmp_path)
    trainer.fit(task, DataLoader(TensorDataset(torch.randn(8, 3), torch.randn(8, 2)), batch_size=4))
    log_vars = criterion.loss.balancing.log_vars
    assert all(float(p) != 0.0 for p in log_vars.values())  # they moved
    assert "train/weight/clean" in trainer.callback_metrics
    (ckpt,) = (tmp_path / "checkpoints").glob("*.ckpt")
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert float(state["criterion.loss.balancing.log_vars.clean"]) == float(log_vars["clean"])


# ------------------------------------------------------------------------------------------- diagnostics


def test_diagnostics_equal_hand_computed_gradients():
    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    terms = {
        "clean": {"loss": MSELoss(), "weight": 2.0, "view": "a"},
        "noisy": {"loss": MSELoss(), "weight": 0.5, "view": "b"},
    }
    task = LossTask(nn.Linear(3, 2), PairCriterion(CompositeLoss(terms)), functools.partial(torch.optim.SGD, lr=0.1))
    before = copy.deepcopy(task.model)
    diagnostics = GradientDiagnostics(every_n_steps=1, layer="model")
    trainer = quiet_trainer(max_steps=1, enable_checkpointing=False, callbacks=[diagnostics])
    trainer.fit(task, DataLoader(TensorDataset(x, y), batch_size=8))
    metrics = {k: torch.tensor(v) for k, v in diagnostics.last.items()}

    pred = before(x)  # by hand: d(w · mean((p − t)²)) / dp = 2 w (p − t) / n on that column, 0 elsewhere
    g_clean = torch.zeros_like(pred)
    g_clean[:, 0] = 2 * 2.0 * (pred[:, 0] - y[:, 0]) / 8
    g_noisy = torch.zeros_like(pred)
    g_noisy[:, 1] = 2 * 0.5 * (pred[:, 1] - y[:, 1]) / 8
    n_clean, n_noisy = g_clean.norm().item(), g_noisy.norm().item()
    assert metrics["diag/grad_norm/clean"].item() == pytest.approx(n_clean, rel=1e-5)
    assert metrics["diag/grad_norm/noisy"].item() == pytest.approx(n_noisy, rel=1e-5)
    assert metrics["diag/grad_share/clean"].item() == pytest.approx(n_clean / (n_clean + n_noisy), rel=1e-5)
    assert metrics["diag/grad_cos/clean__noisy"].item() == pytest.approx(0.0, abs=1e-6)  # disjoint columns
    # w.r.t. the layer's parameters: weight gradient g^T x, bias gradient Σ g
    layer = torch.cat([(g_clean.T @ x).flatten(), g_clean.sum(0)]).norm().item()
    assert metrics["diag/layer/grad_norm/clean"].item() == pytest.approx(layer, rel=1e-5)
    assert "diag/seconds" in metrics
    # the step itself is untouched: the same SGD step by hand
    optimizer = torch.optim.SGD(before.parameters(), lr=0.1)
    ((2.0 * (before(x)[:, 0] - y[:, 0]).pow(2).mean()) + 0.5 * (before(x)[:, 1] - y[:, 1]).pow(2).mean()).backward()
    optimizer.step()
    torch.testing.assert_close(task.model.weight, before.weight)


def test_diagnostics_are_logged_once_at_the_measured_steps(tmp_path):
    task = LossTask(
        nn.Linear(3, 2), PairCriterion(CompositeLoss(pair_terms())), functools.partial(torch.optim.SGD, lr=0.1)
    )
    logger = CSVLogger(tmp_path, name="", version="csv")
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=logger,
        log_every_n_steps=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[GradientDiagnostics(every_n_steps=5)],
    )
    trainer.fit(task, DataLoader(TensorDataset(torch.randn(48, 3), torch.randn(48, 2)), batch_size=4))  # 12 steps
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows if r.get("diag/grad_norm/clean")] == [0, 5, 10]


def test_diagnostics_bad_options():
    with pytest.raises(ValueError, match="every_n_steps"):
        GradientDiagnostics(every_n_steps=0)
    task = LossTask(nn.Linear(3, 2), PairCriterion(CompositeLoss(pair_terms())), torch.optim.SGD)
    with pytest.raises(ValueError, match="layer 'model.nope' not found"):
        GradientDiagnostics(layer="model.nope").setup(None, task, "fit")


def test_dynamics_configs_compose_and_build(compose):
    for overrides in (
        ["loss=yolo_warmup"],
        ["loss=yolo_uncertainty"],
        ["loss=yolo_dwa"],
        ["loss=yolo_handover"],
        ["task=segmentation", "loss=dice_ce_uncertainty"],
        ["callbacks=diagnostics"],
    ):
        cfg = compose(*overrides)
        if overrides[-1].startswith("callbacks"):
            assert any(isinstance(instantiate(c), GradientDiagnostics) for c in cfg.callbacks.values())
        else:
            assert instantiate(cfg.loss).is_dynamic
