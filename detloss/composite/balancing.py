"""Learned balancing of composite terms: the :class:`Balancer` contract, homoscedastic uncertainty weighting and
dynamic weight averaging (FAMO, GradNorm and random loss weighting are in :mod:`.step_balancing`).

A balancer sits inside a :class:`~detloss.composite.CompositeLoss` (``balancing:`` in a loss config) and turns the
terms' weighted values ``v_i = w_i · L_i`` into the total. Its state (learned parameters, loss history) is part of
the module, so checkpoints carry it; :meth:`Balancer.factors` gives each term's current multiplier, which the task
logs as part of ``train/weight/<term>`` (the configured weight times the factor). The task calls its hooks:
:meth:`Balancer.update` before each training step, :meth:`Balancer.attach` once with the model,
:meth:`Balancer.before_backward` with each step's term values, :meth:`Balancer.after_step` after each optimizer step.

* :class:`UncertaintyWeighting` — Kendall, Gal and Cipolla, *Multi-Task Learning Using Uncertainty to Weigh
  Losses*, CVPR 2018: one learned log-variance ``s_i`` per term, ``total = Σ exp(−s_i) · v_i + s_i``, optimised
  with the model (the task puts ``s`` in the optimizer, without weight decay). This is the paper's
  ``L / (2σ²) + log σ`` times 2 with ``s = log σ²``; the factor 2 keeps the start (``s = 0``) equal to the fixed
  weights. A term whose loss is noisy or large learns a larger ``s``, so a smaller factor ``exp(−s)``; at the
  optimum of ``s``, ``exp(−s_i) = 1 / v_i``.
* :class:`DynamicWeightAverage` — Liu, Johns and Davison, *End-to-End Multi-Task Learning with Attention*, CVPR
  2019: factors ``K · softmax(r / T)`` with ``r_i = v̄_i(e−1) / v̄_i(e−2)`` the ratio of the term's mean weighted
  training loss over the last two epochs (summed over ranks under DDP); 1 for the first two epochs. It needs no
  extra backward pass (GradNorm needs one per term and step through the shared layer), and it reacts to what the
  diagnostics show: a term whose loss stalls gets more weight.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..losses import check_number
from .weight_schedules import Position

__all__ = ["Balancer", "UncertaintyWeighting", "DynamicWeightAverage"]


class Balancer(nn.Module):
    """Combines weighted term values into a total; :meth:`bind` gives it the term names first."""

    names: list[str]

    def bind(self, names: list[str]) -> None:
        self.names = list(names)

    def forward(self, values: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """``(total, balanced values)`` from the weighted values of the computed terms."""
        raise NotImplementedError

    def factors(self) -> dict[str, float]:
        """Each term's current multiplier."""
        raise NotImplementedError

    def update(self, position: Position) -> None:
        """Called before each training step with the training position."""

    def attach(self, model: nn.Module) -> None:
        """Called once by the task with the network, before training (GradNorm finds its shared layer there)."""

    def before_backward(self, values: dict[str, Tensor]) -> None:
        """Called by the task on each training step, before its backward, with the step's balanced term values
        (:attr:`LossOutput.values`, still attached to the graph): a balancer may differentiate them (GradNorm)."""

    def after_step(self) -> None:
        """Called by the task after each optimizer step (after the accumulated step with gradient accumulation), on
        every rank under DDP: a balancer that learns from the step updates its weights here (FAMO, GradNorm)."""


class UncertaintyWeighting(Balancer):
    """``Σ exp(−s_i) · v_i + s_i`` with a learned log-variance ``s_i`` per term (initial value ``init``)."""

    needs_positive_terms = True  # the optimum exp(−s_i) = 1 / v_i exists only for v_i > 0

    def __init__(self, init: float = 0.0):
        super().__init__()
        self.init = check_number("init", init)
        self.log_vars = nn.ParameterDict()

    def bind(self, names: list[str]) -> None:
        super().bind(names)
        self.log_vars = nn.ParameterDict({n: nn.Parameter(torch.tensor(self.init)) for n in names})

    def forward(self, values):
        balanced, total = {}, None
        for name, s in self.log_vars.items():
            s = s.float()
            if name in values:
                balanced[name] = torch.exp(-s) * values[name]
                term = balanced[name] + s
            else:  # a term of weight 0 now (a schedule): kept in the graph, so DDP sees every parameter used
                term = s * 0.0
            total = term if total is None else total + term
        return total, balanced

    def factors(self):
        log_vars = torch.stack([s.detach().float() for s in self.log_vars.values()])
        return dict(zip(self.log_vars, torch.exp(-log_vars).tolist()))  # one host sync for all the terms


class DynamicWeightAverage(Balancer):
    """Factors ``K · softmax(r / temperature)`` from the epoch-to-epoch ratios ``r`` of each term's mean loss."""

    needs_positive_terms = True  # ratios of mean losses

    def __init__(self, temperature: float = 2.0):
        super().__init__()
        self.temperature = check_number("temperature", temperature, gt=0)
        self._seen_epoch: int | None = None  # the last epoch update() saw; not state: a resumed run reads the buffer

    def bind(self, names: list[str]) -> None:
        super().bind(names)
        n = len(names)
        # means of the last two finished epochs (row 0 the older), this epoch's sums and count, the epoch
        self.register_buffer("history", torch.full((2, n), math.nan, dtype=torch.float64))
        self.register_buffer("sums", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("count", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("epoch", torch.zeros((), dtype=torch.int64))
        self.register_buffer("weights", torch.ones(n, dtype=torch.float64))

    def forward(self, values):
        if torch.is_grad_enabled():  # training: add this step's finite values to the epoch's sums
            nan = self.sums.new_tensor(math.nan)
            step = torch.stack([values[n].detach().to(self.sums) if n in values else nan for n in self.names])
            finite = torch.isfinite(step)
            self.sums += torch.where(finite, step, 0.0)
            self.count += finite
        factors = self.weights.float()  # the tensor, not factors(): no host sync inside the loss
        balanced = {n: values[n] * factors[i] for i, n in enumerate(self.names) if n in values}
        return sum(balanced.values()), balanced

    def update(self, position: Position) -> None:
        epoch = int(position.epoch)
        if epoch == self._seen_epoch:  # within an epoch, no need to read the buffer (a host sync on a GPU)
            return
        self._seen_epoch = epoch
        if epoch <= int(self.epoch):
            return
        sums, count = self.sums.clone(), self.count.clone()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            both = torch.cat([sums, count])
            dist.all_reduce(both)
            sums, count = both.split(len(self.names))
        self.history[0] = self.history[1]
        self.history[1] = torch.where(count > 0, sums / count.clamp(min=1), math.nan)
        self.sums.zero_()
        self.count.zero_()
        self.epoch.fill_(epoch)
        # a term without a positive mean in both epochs (not computed, weight 0) keeps ratio 1
        older, newer = self.history
        usable = (older > 0) & (newer >= 0)
        ratio = torch.where(usable, newer / older.clamp(min=torch.finfo(older.dtype).tiny), 1.0)
        if bool(torch.isfinite(older).any()):
            self.weights.copy_(len(self.names) * torch.softmax(ratio / self.temperature, 0))

    def factors(self):
        return dict(zip(self.names, self.weights.tolist()))
