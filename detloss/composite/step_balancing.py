"""Learned balancing that moves every optimizer step: FAMO, GradNorm and random loss weighting.

Each is a :class:`~detloss.composite.Balancer` (``balancing:`` in a loss config). Like the others, it gets the terms'
weighted values ``v_i = w_i · L_i`` (``w_i`` the configured, scheduled weight) and returns ``Σ f_i · v_i`` with a
factor ``f_i`` per term; the task logs ``train/weight/<term> = w_i · f_i``. Their state (logits, weights, optimiser
moments, the previous step's losses) is made of buffers, so checkpoints carry it and a resumed run goes on where it
stopped; the model's optimizer never sees them: each method updates its own weights.

The task calls the :class:`~detloss.composite.Balancer` hooks: :meth:`~Balancer.attach` once with the network,
:meth:`~Balancer.before_backward` with each training step's term values, :meth:`~Balancer.after_step` after each
optimizer step. Under DDP every rank calls them in step, and the updates use values summed over the ranks (one
all-reduce per optimizer step), so every rank holds the same weights.

* :class:`FAMO` — Liu, Liu, Jin, Stone and Liu, *FAMO: Fast Adaptive Multitask Optimization*, NeurIPS 2023.
* :class:`GradNorm` — Chen, Badrinarayanan, Lee and Rabinovich, *GradNorm: Gradient Normalization for Adaptive
  Loss Balancing in Deep Multitask Networks*, ICML 2018.
* :class:`RandomLossWeighting` — Lin, Ye, Xu, Shi and Zhang, *Reasonable Effectiveness of Random Weighting: A
  Litmus Test for Multi-Task Learning*, TMLR 2022.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..losses import check_number
from .balancing import Balancer
from .weight_schedules import Position

__all__ = ["FAMO", "GradNorm", "RandomLossWeighting"]


def world_sum(values: Tensor) -> Tensor:
    """``values`` summed over the ranks of the default process group (a copy; ``values`` itself on one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
    return values


def adam_step(param: Tensor, grad: Tensor, state: dict[str, Tensor], lr: float, weight_decay: float = 0.0) -> None:
    """One Adam step (Kingma and Ba, ICLR 2015; betas 0.9, 0.999, eps 1e-8) on ``param`` in place, with
    ``weight_decay`` added to the gradient as an L2 term (``torch.optim.Adam``'s ``weight_decay``). ``state`` holds
    the buffers ``exp_avg``, ``exp_avg_sq`` and ``step``, updated in place."""
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    grad = grad + weight_decay * param
    state["step"] += 1
    state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
    state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    first = state["exp_avg"] / (1 - beta1 ** state["step"])
    second = state["exp_avg_sq"] / (1 - beta2 ** state["step"])
    param.sub_(lr * first / (second.sqrt() + eps))


class _StepBalancer(Balancer):
    """What FAMO and GradNorm share: the terms' values of the training forwards since the last optimizer step
    (summed, with their count), and an Adam state for their own weights."""

    def bind(self, names: list[str]) -> None:
        super().bind(names)
        n = len(names)
        self.register_buffer("sums", torch.zeros(n))
        self.register_buffer("count", torch.zeros(n))
        self.register_buffer("exp_avg", torch.zeros(n))
        self.register_buffer("exp_avg_sq", torch.zeros(n))
        self.register_buffer("step", torch.zeros(()))

    @property
    def adam(self) -> dict[str, Tensor]:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "step": self.step}

    def stack(self, values: dict[str, Tensor]) -> Tensor:
        """The terms' values in the order of :attr:`names`, detached, NaN for a term not computed."""
        nan = self.sums.new_tensor(float("nan"))
        return torch.stack([values[n].detach().float().to(nan.device) if n in values else nan for n in self.names])

    def record(self, values: Tensor, usable: Tensor) -> None:
        if torch.is_grad_enabled():  # a training forward (evaluation runs without grad and is not counted)
            self.sums += torch.where(usable, values, 0.0)
            self.count += usable

    def step_means(self, *extra: Tensor) -> list[Tensor]:
        """The mean value of each term over this optimizer step's forwards on every rank (NaN where there was
        none), then ``extra`` (further ``(sums, counts)`` pairs) likewise, all in one all-reduce; resets the sums."""
        pairs = [self.sums, self.count, *extra]
        sums = world_sum(torch.cat(pairs)).split(len(self.names))
        self.sums.zero_()
        self.count.zero_()
        means = []
        for total, count in zip(sums[::2], sums[1::2]):
            means.append(torch.where(count > 0, total / count.clamp(min=1), float("nan")))
        return means


class FAMO(_StepBalancer):
    """Fast adaptive multitask optimization: task logits ``ξ``, weights ``z = softmax(ξ)``.

    The step descends ``Σ z_i log ℓ_i``: its gradient is ``Σ (z_i / ℓ_i) ∇ℓ_i``, which the paper rescales by
    ``c = (Σ z_j / ℓ_j)⁻¹`` to a convex combination of the terms' gradients. Here the factors are
    ``f_i = K · c · z_i / ℓ_i`` (``K`` terms, ``ℓ_i = v_i`` the weighted value, held constant in the backward), so
    the total ``Σ f_i v_i`` has that direction at the scale of an unweighted sum (the factors add up to ``K``, as with
    the other balancers). ``log(w ℓ) = log w + log ℓ``: the configured weights do not change the step.

    After each optimizer step, ``ξ`` follows the paper's Algorithm 1: with ``δ_i`` the decrease of ``log ℓ_i`` over a
    step, ``ξ ← ξ − β (∇_ξ zᵀδ + γ ξ)``, so a term whose loss falls more slowly gains weight; as in the paper's
    practical form (its Algorithm 2) the step on ``ξ`` is Adam's, with ``γ`` as its weight decay. ``δ`` is measured
    between consecutive optimizer steps, ``log ℓ_i`` of one step's batch minus that of the next (its mean over the
    micro-batches and ranks of each step); the paper re-evaluates the same batch after the update, an extra
    forward pass that this form saves, at the price of batch-to-batch noise in ``δ`` (zero in expectation: the
    batches are drawn independently). The update uses the previous step's ``δ``, so ``ξ`` lags one step.

    ``log ℓ`` needs ``ℓ > 0``: a term whose value is not above ``floor`` on a step (a box loss of 0 on a batch without
    objects, a negative value) sits that step out: factor 0, no ``δ`` measured for it. Under DDP a training forward
    takes ``ℓ_i`` as the mean over the ranks (an all-reduce of ``K`` values), so every rank uses the same factors and
    the averaged gradient is FAMO's direction for the whole batch.

    Args:
        lr: ``β``, Adam's learning rate for the logits (the paper's 0.025).
        decay: ``γ``, the weight decay of the logits (the paper's 1e-3).
        floor: the smallest value a term's loss must exceed to take part in a step.
    """

    needs_positive_terms = True  # logarithms of the terms

    def __init__(self, lr: float = 0.025, decay: float = 1e-3, floor: float = 1e-8):
        super().__init__()
        self.lr = check_number("lr", lr, gt=0)
        self.decay = check_number("decay", decay, ge=0)
        self.floor = check_number("floor", floor, ge=0)

    def bind(self, names: list[str]) -> None:
        super().bind(names)
        n = len(names)
        self.register_buffer("logits", torch.zeros(n))
        self.register_buffer("previous", torch.full((n,), float("nan")))  # log ℓ of the last optimizer step
        self.register_buffer("last_factors", torch.ones(n))  # of the latest training forward, for the log

    def forward(self, values):
        losses = self.stack(values)
        usable = torch.isfinite(losses) & (losses > self.floor)
        self.record(losses, usable)
        if torch.is_grad_enabled():  # training: ℓ_i is the mean over the ranks, so that they all use one factor
            total = world_sum(torch.cat([torch.where(usable, losses, 0.0), usable.float()]))
            sums, counts = total.split(len(self.names))
            usable = counts > 0
            losses = sums / counts.clamp(min=1)
        inverse = torch.where(usable, torch.softmax(self.logits, 0) / torch.where(usable, losses, 1.0), 0.0)
        factors = len(self.names) * inverse / inverse.sum().clamp(min=torch.finfo(inverse.dtype).tiny)
        if torch.is_grad_enabled():
            self.last_factors.copy_(factors)
        balanced = {n: values[n] * factors[i] for i, n in enumerate(self.names) if n in values}
        return sum(balanced.values()), balanced

    def after_step(self) -> None:
        (means,) = self.step_means()
        current = means.log()
        delta = self.previous - current
        measured = torch.isfinite(delta)
        self.previous.copy_(current)
        if not bool(measured.any()):  # the first step, or no term measured twice in a row
            return
        delta = torch.where(measured, delta, 0.0)
        z = torch.softmax(self.logits, 0)
        grad = z * (delta - (z * delta).sum())  # ∇_ξ zᵀδ: the softmax's Jacobian diag(z) − z zᵀ times δ
        adam_step(self.logits, grad, self.adam, self.lr, self.decay)

    def factors(self):
        return dict(zip(self.names, self.last_factors.tolist()))


class GradNorm(_StepBalancer):
    """Learned weights ``f_i`` (starting at 1, renormalised to sum to ``K``, the number of terms) that equalise the
    terms' gradient norms on a shared layer, scaled by how far each term lags in training.

    Per step (Chen et al., Algorithm 1): ``G_i = ‖∇_W f_i v_i‖`` on the parameters ``W`` of ``shared_layer``,
    ``Ḡ`` their mean, ``r_i = ṽ_i / mean_j ṽ_j`` with ``ṽ_i = v_i(t) / v_i(0)`` the relative inverse training rate,
    and the weights descend ``Σ_i |G_i − Ḡ · r_i^α|`` with the target held constant: the gradient with respect to
    ``f_i`` is ``sign(G_i − Ḡ r_i^α) · ‖∇_W v_i‖``. The step on the weights is Adam's (learning rate ``lr``); after it
    they are kept positive (at least ``min_weight``) and renormalised to sum to ``K``. ``v_i(0)`` is the first
    positive value of term ``i``; a term without one yet has ``r_i = 1``.

    Cost: one extra backward per term, from the term's value through the layers after ``shared_layer`` down to its
    parameters (``torch.autograd.grad`` with respect to them only), before the step's own backward. Under DDP the
    norms and values are averaged over the ranks before the update (each rank's norm: the mean of the ranks' norms,
    not the norm of the averaged gradient). The configured weights only set the start: GradNorm balances the
    weighted gradients whatever they were.

    Args:
        shared_layer: dotted path of a module inside the model (``top_down3`` of the YOLO, ``head`` of the 2D U-Net)
            that every term depends on; its trainable parameters are ``W``. The paper takes the last shared layer.
        alpha: ``α``, how strongly lagging terms are favoured (the paper's default 1.5; 0 equalises the norms).
        lr: Adam's learning rate for the weights.
        min_weight: the smallest weight, before renormalisation.
    """

    needs_positive_terms = True  # training rates are ratios of a term's values

    def __init__(self, shared_layer: str, alpha: float = 1.5, lr: float = 0.025, min_weight: float = 1e-4):
        super().__init__()
        if not isinstance(shared_layer, str) or not shared_layer:
            raise ValueError(f"shared_layer must be the dotted path of a module in the model, got {shared_layer!r}")
        self.shared_layer = shared_layer
        self.alpha = check_number("alpha", alpha, ge=0)
        self.lr = check_number("lr", lr, gt=0)
        self.min_weight = check_number("min_weight", min_weight, gt=0)
        self._layer: tuple[nn.Module, ...] = ()  # a tuple, so that the model's layer is not a submodule of this one

    def bind(self, names: list[str]) -> None:
        super().bind(names)
        n = len(names)
        self.register_buffer("weights", torch.ones(n))
        self.register_buffer("initial", torch.full((n,), float("nan")))  # v_i(0)
        self.register_buffer("norm_sums", torch.zeros(n))
        self.register_buffer("norm_count", torch.zeros(n))

    def attach(self, model: nn.Module) -> None:
        try:
            layer = model.get_submodule(self.shared_layer)
        except AttributeError:
            children = ", ".join(name for name, _ in model.named_children())
            raise ValueError(
                f"GradNorm: shared_layer {self.shared_layer!r} is not a module of {type(model).__name__} "
                f"(its top-level modules: {children})"
            ) from None
        if not any(p.requires_grad for p in layer.parameters()):
            raise ValueError(f"GradNorm: shared_layer {self.shared_layer!r} has no trainable parameters")
        self._layer = (layer,)

    def forward(self, values):
        losses = self.stack(values)
        self.record(losses, torch.isfinite(losses))
        weights = self.weights.clone()  # the buffer changes after the step; the graph keeps this step's weights
        balanced = {n: values[n] * weights[i] for i, n in enumerate(self.names) if n in values}
        return sum(balanced.values()), balanced

    def before_backward(self, values: dict[str, Tensor]) -> None:
        if not self._layer:
            raise ValueError(
                "GradNorm needs the model: call attach(model) first (LossTask does; shared_layer "
                f"{self.shared_layer!r})"
            )
        params = [p for p in self._layer[0].parameters() if p.requires_grad]
        norms = []
        for name in self.names:
            value = values.get(name)
            if value is None or not value.requires_grad:
                norms.append(self.norm_sums.new_tensor(float("nan")))
                continue
            grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
            if all(g is None for g in grads):
                raise ValueError(
                    f"GradNorm: term {name!r} gives shared_layer {self.shared_layer!r} no gradient; name a layer "
                    "that every term depends on (loss.balancing.shared_layer=...)"
                )
            norms.append(torch.stack([g.float().pow(2).sum() for g in grads if g is not None]).sum().sqrt())
        norms = torch.stack([n.to(self.norm_sums.device) for n in norms])
        usable = torch.isfinite(norms) & (norms > 0)  # a term without gradient on this batch sits it out
        self.norm_sums += torch.where(usable, norms, 0.0)
        self.norm_count += usable

    def after_step(self) -> None:
        losses, norms = self.step_means(self.norm_sums, self.norm_count)  # G_i = ‖∇_W f_i v_i‖
        self.norm_sums.zero_()
        self.norm_count.zero_()
        self.initial.copy_(torch.where(torch.isnan(self.initial) & (losses > 0), losses, self.initial))
        measured = torch.isfinite(norms)
        if not bool(measured.any()):  # no training forward since the last step (a skipped step)
            return
        ratio = losses / self.initial  # ṽ_i
        known = torch.isfinite(ratio) & (self.initial > 0)
        mean_ratio = torch.where(known, ratio, 0.0).sum() / known.sum().clamp(min=1)
        rate = torch.where(known, ratio / mean_ratio.clamp(min=torch.finfo(ratio.dtype).tiny), 1.0)  # r_i
        target = torch.where(measured, norms, 0.0).sum() / measured.sum() * rate**self.alpha
        grad = torch.where(measured, torch.sign(norms - target) * norms / self.weights, 0.0)
        adam_step(self.weights, grad, self.adam, self.lr)
        self.weights.clamp_(min=self.min_weight)
        self.weights.mul_(len(self.names) / self.weights.sum())

    def factors(self):
        return dict(zip(self.names, self.weights.tolist()))


class RandomLossWeighting(Balancer):
    """Factors ``K · softmax(λ)`` with ``λ ~ N(0, I)`` drawn anew at every optimizer step (``K`` terms): each
    factor has mean 1 and the factors add up to ``K`` (Lin et al., the normal draw of their RLW).

    The draw comes from a generator seeded by ``(seed, global step)`` (NumPy's ``default_rng([seed, step])``, whose
    seed sequence mixes both), so every rank of DDP draws the same weights
    without communicating, the micro-batches of an accumulated step share them, and a resumed run draws what the
    uninterrupted run drew.

    Args:
        seed: the seed of the draws, at least 0; ``None``: the run's seed (``PL_GLOBAL_SEED``, which
            ``seed_everything`` sets; 0 without it).
    """

    def __init__(self, seed: int | None = None):
        super().__init__()
        self.seed = None if seed is None else check_number("seed", seed, integer=True, ge=0)

    def bind(self, names: list[str]) -> None:
        super().bind(names)
        self.register_buffer("weights", torch.ones(len(names)))

    def draw(self, step: int) -> Tensor:
        """The factors of optimizer step ``step``."""
        seed = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        draw = np.random.default_rng([seed, int(step)]).standard_normal(len(self.names))  # seeded by both, mixed
        return len(self.names) * torch.softmax(torch.from_numpy(draw), 0).float()

    def update(self, position: Position) -> None:
        self.weights.copy_(self.draw(position.step))

    def forward(self, values):
        weights = self.weights.clone()
        balanced = {n: values[n] * weights[i] for i, n in enumerate(self.names) if n in values}
        return sum(balanced.values()), balanced

    def factors(self):
        return dict(zip(self.names, self.weights.tolist()))
