"""FAMO, GradNorm and random loss weighting: toy problems with a known balanced answer, the exact update rules, the
task's hooks, checkpoints, agreement of the ranks under DDP, the loss configs and the errors."""

import functools
import json
import socket

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from detloss.composite import FAMO, CompositeLoss, Criterion, GradNorm, Position, RandomLossWeighting, View
from detloss.composite.step_balancing import adam_step
from detloss.losses import MSELoss
from detloss.tasks import LossTask


class Value(nn.Module):
    """A term whose view holds its value already (a toy loss computed by the test)."""

    def forward(self, value, reduction="mean"):
        return value


def value_terms(*names):
    return {n: {"loss": Value(), "weight": 1.0, "view": n} for n in names}


def at(step):
    return Position(step=step, epoch=0.0, total_steps=10_000, epochs=1)


class PairCriterion(Criterion):
    """Column 0 of the prediction against column 0 of the target (term ``a``, weight 4), column 1 (``b``, weight 1)."""

    views = frozenset({"a", "b"})

    def __init__(self, balancing):
        terms = {
            "a": {"loss": MSELoss(), "weight": 4.0, "view": "a"},
            "b": {"loss": MSELoss(), "weight": 1.0, "view": "b"},
        }
        super().__init__(2, CompositeLoss(terms, balancing=balancing))

    def build_views(self, pred, target):
        return {"a": View((pred[:, 0], target[:, 0])), "b": View((pred[:, 1], target[:, 1]))}


def trunk_and_head():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))


def pair_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    return x, torch.cat([x[:, :1] * 2 + 1, x[:, 1:2] - x[:, 2:]], 1)


# ------------------------------------------------------------------------------------------------------ FAMO


def test_famo_factors_give_the_gradient_of_the_weighted_log_losses():
    famo = FAMO()
    loss = CompositeLoss(value_terms("a", "b", "c"), balancing=famo)
    famo.logits.copy_(torch.tensor([0.3, -0.2, 0.5]))
    theta = torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64, requires_grad=True)
    values = {"a": theta[0] ** 2, "b": 10 * theta[1].exp(), "c": 0.01 * theta[2] ** 4}
    out = loss({n: View((v.float(),)) for n, v in values.items()})
    (grad,) = torch.autograd.grad(out.total, theta, retain_graph=True)
    # by hand: K c Σ z_i ∇log ℓ_i with c = (Σ z_i / ℓ_i)⁻¹
    z = torch.softmax(torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64), 0)
    ell = torch.stack(list(values.values())).detach()
    c = 1 / (z / ell).sum()
    (expected,) = torch.autograd.grad((3 * c * z * torch.stack(list(values.values())).log()).sum(), theta)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=0)
    factors = famo.factors()
    assert sum(factors.values()) == pytest.approx(3.0)
    assert list(factors.values()) == pytest.approx((3 * c * z / ell).tolist(), rel=1e-5)


def test_famo_logit_step_is_adam_on_the_softmax_gradient_of_the_decrease():
    famo = FAMO(lr=0.05, decay=0.01)
    loss = CompositeLoss(value_terms("a", "b"), balancing=famo)
    reference = torch.zeros(2, requires_grad=True)
    adam = torch.optim.Adam([reference], lr=0.05, weight_decay=0.01)
    history = [(4.0, 2.0), (3.8, 1.5), (3.7, 1.0), (3.65, 0.8)]
    for step, (a, b) in enumerate(history):
        loss({"a": View((torch.tensor(a),)), "b": View((torch.tensor(b),))})
        famo.after_step()
        if step == 0:
            assert famo.logits.tolist() == [0.0, 0.0]  # nothing to compare with yet
            continue
        delta = torch.tensor(history[step - 1]).log() - torch.tensor(history[step]).log()
        adam.zero_grad()
        (torch.softmax(reference, 0) * delta).sum().backward()  # ∇_ξ zᵀδ
        adam.step()
        torch.testing.assert_close(famo.logits, reference.detach(), rtol=1e-5, atol=1e-7)
    # the term whose log-loss falls less at every step (a) gains weight
    assert famo.logits[0] > famo.logits[1]


def test_famo_equalises_the_decrease_rates_of_terms_of_very_different_scales():
    # ℓ_a = 100 e^{θ_a}, ℓ_b = 0.01 e^{θ_b / 4}: along Σ z_i ∇log ℓ_i the log-losses fall by lr·z_a and lr·z_b / 16;
    # equal rates need z_a / z_b = 1/16, where fixed equal weights leave them 16 apart
    famo = FAMO(decay=0.0)
    loss = CompositeLoss(value_terms("a", "b"), balancing=famo)
    theta = torch.zeros(2, requires_grad=True)
    logs = []
    for _ in range(600):
        la, lb = 100 * theta[0].exp(), 0.01 * (theta[1] / 4).exp()
        logs.append([float(la.log()), float(lb.log())])
        out = loss({"a": View((la,)), "b": View((lb,))})
        (grad,) = torch.autograd.grad(out.total, theta)
        with torch.no_grad():  # the total is K c Σ z_i log ℓ_i's gradient; divide out c (= total / K)
            theta -= 0.1 * grad / (out.total / 2)
        famo.after_step()
    rates = -torch.tensor(logs).diff(dim=0)
    first, last = rates[0], rates[-50:].mean(0)
    assert first[0] / first[1] == pytest.approx(16, rel=0.05)
    assert last[0] / last[1] == pytest.approx(1.0, rel=0.05)
    z = torch.softmax(famo.logits, 0)
    assert z[0] / z[1] == pytest.approx(1 / 16, rel=0.15)


def test_famo_sits_out_a_term_at_zero_without_nan():
    famo = FAMO()
    loss = CompositeLoss(value_terms("box", "cls"), balancing=famo)
    box = torch.zeros((), requires_grad=True)  # a batch without objects
    cls = torch.tensor(0.7, requires_grad=True)
    out = loss({"box": View((box * 1.0,)), "cls": View((cls * 1.0,))})
    out.total.backward()
    assert torch.isfinite(out.total) and torch.isfinite(box.grad) and torch.isfinite(cls.grad)
    assert famo.factors() == pytest.approx({"box": 0.0, "cls": 2.0})
    assert float(cls.grad) == pytest.approx(2.0)
    famo.after_step()
    assert torch.isnan(famo.previous[0]) and famo.previous[1] == pytest.approx(torch.tensor(0.7).log())


# -------------------------------------------------------------------------------------------------- GradNorm


def test_gradnorm_update_equals_the_papers_rule_by_hand():
    model = trunk_and_head()
    gradnorm = GradNorm("0", alpha=1.5, lr=0.1)
    criterion = PairCriterion(gradnorm)
    gradnorm.attach(model)
    reference = torch.ones(2, requires_grad=True)
    adam = torch.optim.Adam([reference], lr=0.1)
    x, y = pair_data()
    initial = None
    for _ in range(3):
        out = criterion(model(x), y)
        raw = {n: v / gradnorm.weights[i] for i, (n, v) in enumerate(out.values.items())}  # w_i L_i / f_i
        gradnorm.before_backward(out.values)
        layer = list(model[0].parameters())
        grads = [torch.autograd.grad(v, layer, retain_graph=True) for v in raw.values()]
        unit = torch.stack([torch.cat([g.flatten() for g in gs]).norm() for gs in grads])  # ‖∇_W w_i L_i‖
        losses = torch.stack([v.detach() for v in raw.values()])
        initial = losses if initial is None else initial
        norms = reference.detach() * unit  # G_i
        ratio = losses / initial
        target = norms.mean() * (ratio / ratio.mean()) ** 1.5
        adam.zero_grad()
        reference.grad = torch.sign(norms - target) * unit
        adam.step()
        with torch.no_grad():
            reference.clamp_(min=1e-4).mul_(2 / reference.sum())
        out.total.backward()
        gradnorm.after_step()
        torch.testing.assert_close(gradnorm.weights, reference.detach(), rtol=1e-5, atol=1e-6)
        with torch.no_grad():  # the model moves too, so the ratios leave 1
            for p in model.parameters():
                p -= 0.05 * p.grad
                p.grad = None
    assert gradnorm.weights.sum().item() == pytest.approx(2.0)
    assert not torch.allclose(gradnorm.weights, torch.ones(2))


def test_gradnorm_drives_the_weighted_gradient_norms_equal():
    # term a's weight is 4 and its target larger: its gradient on the shared layer starts several times b's
    model = trunk_and_head()
    gradnorm = GradNorm("0", alpha=0.0, lr=0.01)  # α = 0: the target is the mean norm for every term
    criterion = PairCriterion(gradnorm)
    gradnorm.attach(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001)  # the model drifts slowly under the weights
    x, y = pair_data()

    def norms():  # G_i = ‖∇_W f_i w_i L_i‖ on the shared layer's parameters
        out = criterion(model(x), y)
        grads = [torch.autograd.grad(v, list(model[0].parameters()), retain_graph=True) for v in out.values.values()]
        return torch.stack([torch.cat([g.flatten() for g in gs]).norm() for gs in grads])

    start = norms()
    assert start[0] / start[1] > 3
    for _ in range(250):
        out = criterion(model(x), y)
        gradnorm.before_backward(out.values)
        optimizer.zero_grad()
        out.total.backward()
        optimizer.step()
        gradnorm.after_step()
    end = norms()
    assert end[0] / end[1] == pytest.approx(1.0, abs=0.05)
    assert gradnorm.weights.sum().item() == pytest.approx(2.0)
    assert gradnorm.weights[0] < gradnorm.weights[1]


def test_gradnorm_errors_name_the_layer_and_the_term():
    model = trunk_and_head()
    with pytest.raises(ValueError, match=r"shared_layer '3\.weight' is not a module of Sequential"):
        CompositeLoss(value_terms("a"), balancing=GradNorm("3.weight")).balancing.attach(model)
    with pytest.raises(ValueError, match=r"shared_layer 'nope' is not a module"):
        GradNorm("nope").attach(model)
    with pytest.raises(ValueError, match=r"shared_layer '1' has no trainable parameters"):
        GradNorm("1").attach(model)
    with pytest.raises(ValueError, match="shared_layer must be"):
        GradNorm("")
    for bad in ({"alpha": -1.0}, {"lr": 0.0}, {"min_weight": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            GradNorm("0", **bad)
    gradnorm = GradNorm("b")
    criterion = PairCriterion(gradnorm)
    x, y = pair_data(8)
    out = criterion(model(x), y)
    with pytest.raises(ValueError, match="GradNorm needs the model: call attach"):
        gradnorm.before_backward(out.values)
    branches = TwoBranches()
    gradnorm = GradNorm("b")
    loss = CompositeLoss(value_terms("a", "b"), balancing=gradnorm)
    gradnorm.attach(branches)
    out = loss({n: View((getattr(branches, n)(x).pow(2).mean(),)) for n in "ab"})  # term a never passes through b
    with pytest.raises(ValueError, match="term 'a' gives shared_layer 'b' no gradient"):
        gradnorm.before_backward(out.values)


class TwoBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 1), nn.Linear(3, 1)


# --------------------------------------------------------------------------------------- random loss weighting


def test_rlw_weights_have_mean_one_sum_k_and_follow_seed_and_step():
    rlw = RandomLossWeighting(seed=3)
    CompositeLoss(value_terms("a", "b", "c"), balancing=rlw)
    draws = []
    for step in range(4000):
        rlw.update(at(step))
        draws.append(list(rlw.factors().values()))
    draws = torch.tensor(draws)
    torch.testing.assert_close(draws.sum(1), torch.full((4000,), 3.0))
    assert draws.mean(0).tolist() == pytest.approx([1.0, 1.0, 1.0], abs=0.03)
    assert draws.std(0).min() > 0.3  # they do move
    rlw.update(at(17))
    again = RandomLossWeighting(seed=3)
    CompositeLoss(value_terms("a", "b", "c"), balancing=again)
    again.update(at(17))
    assert again.factors() == rlw.factors()  # the same (seed, step): the same draw, on any rank or resume
    again.update(at(18))
    assert again.factors() != rlw.factors()
    other = RandomLossWeighting(seed=4)
    CompositeLoss(value_terms("a", "b", "c"), balancing=other)
    other.update(at(17))
    assert other.factors() != rlw.factors()
    with pytest.raises(ValueError, match="seed"):
        RandomLossWeighting(seed=1.5)
    with pytest.raises(ValueError, match="seed"):
        RandomLossWeighting(seed=-1)


def test_rlw_seed_none_reads_the_runs_seed(monkeypatch):
    seeded, from_env = RandomLossWeighting(seed=7), RandomLossWeighting()
    for rlw in (seeded, from_env):
        CompositeLoss(value_terms("a", "b"), balancing=rlw)
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    torch.testing.assert_close(from_env.draw(5), seeded.draw(5))


# --------------------------------------------------------------------------------- the task, checkpoints


def make_balancer(kind):
    return {"famo": FAMO, "gradnorm": lambda: GradNorm("0"), "rlw": lambda: RandomLossWeighting(seed=0)}[kind]()


@pytest.mark.parametrize("kind", ["famo", "gradnorm", "rlw"])
def test_the_task_drives_each_balancer_and_checkpoints_its_state(tmp_path, kind):
    balancer = make_balancer(kind)
    task = LossTask(trunk_and_head(), PairCriterion(balancer), functools.partial(torch.optim.SGD, lr=0.05))
    from conftest import quiet_trainer

    used = []  # the factors of each step, before its optimizer step (GradNorm and FAMO move after it)
    spy = type("Spy", (L.Callback,), {"on_before_optimizer_step": lambda *_: used.append(balancer.factors())})()
    trainer = quiet_trainer(max_epochs=2, default_root_dir=tmp_path, log_every_n_steps=1, callbacks=[spy])
    x, y = pair_data(32)
    trainer.fit(task, DataLoader(TensorDataset(x, y), batch_size=8))  # 8 optimizer steps
    factors = balancer.factors()
    assert len(used) == 8 and used[-1] != pytest.approx(used[0])  # they moved
    assert sum(factors.values()) == pytest.approx(2.0)
    assert float(trainer.callback_metrics["train/weight/a"]) == pytest.approx(4.0 * used[-1]["a"], rel=1e-5)
    assert not list(task.criterion.parameters())  # its own update, not the model's optimizer
    (ckpt,) = (tmp_path / "checkpoints").glob("*.ckpt")
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    restored = make_balancer(kind)
    fresh = LossTask(trunk_and_head(), PairCriterion(restored), functools.partial(torch.optim.SGD, lr=0.05))
    fresh.load_state_dict(state)
    assert restored.factors() == pytest.approx(factors)
    for name, buffer in balancer.named_buffers():
        torch.testing.assert_close(getattr(restored, name), buffer, equal_nan=True)
    if kind == "famo":
        assert "criterion.loss.balancing.logits" in state and "criterion.loss.balancing.exp_avg_sq" in state
    if kind == "gradnorm":
        assert "criterion.loss.balancing.weights" in state and "criterion.loss.balancing.initial" in state
        assert not any(k.startswith("criterion.loss.balancing._layer") for k in state)  # not the model's layer


def test_adam_step_equals_torch_adam():
    param = torch.tensor([0.5, -1.0, 2.0])
    state = {"exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3), "step": torch.zeros(())}
    reference = param.clone().requires_grad_()
    adam = torch.optim.Adam([reference], lr=0.03, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        grad = torch.randn(3, generator=g)
        adam_step(param, grad, state, lr=0.03, weight_decay=0.1)
        reference.grad = grad.clone()
        adam.step()
        torch.testing.assert_close(param, reference.detach())


# ------------------------------------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, path: str):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    x, y = pair_data(16, seed=10 + rank)  # each rank its own data
    result = {}
    for kind in ("famo", "gradnorm", "rlw"):
        balancer = make_balancer(kind)
        model = trunk_and_head()
        criterion = PairCriterion(balancer)
        balancer.attach(model)
        ddp = DistributedDataParallel(model)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05)
        for step in range(6):
            balancer.update(at(step))
            loss = criterion(ddp(x), y)
            balancer.before_backward(loss.values)
            optimizer.zero_grad()
            loss.total.backward()
            optimizer.step()
            balancer.after_step()
        result[kind] = balancer.factors()
    with open(f"{path}.{rank}", "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


def test_every_rank_holds_the_same_weights_under_ddp(tmp_path):
    out = tmp_path / "factors"
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"factors.{r}").read_text()) for r in range(2)]
    for kind in ("famo", "gradnorm", "rlw"):
        assert ranks[0][kind] == ranks[1][kind], kind  # exactly
        assert ranks[0][kind] != pytest.approx({"a": 1.0, "b": 1.0}), kind  # and they moved


# ---------------------------------------------------------------------------------------------------- configs

TINY = [
    "data.num_train=16",
    "data.num_val=8",
    "data.batch_size=8",
    "data.image_size=64",
    "trainer.max_epochs=1",
    "callbacks=default",
    "logger=none",
    "task.num_previews=0",
]


@pytest.mark.parametrize(
    "loss", ["yolo_famo", "yolo_gradnorm", "yolo_rlw", "dice_ce_famo", "dice_ce_gradnorm", "dice_ce_rlw"]
)
def test_each_balancing_config_composes_and_trains_two_steps(tmp_path, loss):
    from conftest import compose_config, quiet_trainer

    from detloss.train import build

    task = "detection" if loss.startswith("yolo") else "segmentation"
    cfg = compose_config(f"paths.output_dir={tmp_path}", f"task={task}", f"loss={loss}", *TINY)
    datamodule, module = build(cfg)
    balancer = module.criterion.loss.balancing
    assert type(balancer).__name__ == cfg.loss.balancing._target_.rsplit(".", 1)[1]
    trainer = quiet_trainer(max_steps=2, default_root_dir=tmp_path, enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 2
    weights = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/weight/")}
    assert set(weights) == {f"train/weight/{n}" for n in module.criterion.loss.names}
    assert all(w > 0 for w in weights.values()) and all(torch.isfinite(torch.tensor(list(weights.values()))))
    if loss.endswith("famo"):
        assert bool(torch.isfinite(balancer.previous).all())  # the steps were measured
    if loss.endswith("gradnorm"):
        assert bool(torch.isfinite(balancer.initial).all())
        assert not torch.equal(balancer.weights, torch.ones_like(balancer.weights))
