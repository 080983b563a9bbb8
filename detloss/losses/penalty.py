"""Weight penalties (L1 / L2 regularisation) as a loss term a composite can weigh.

``p = 2`` gives ``Σ w²`` (the squared L2 norm, the classic weight-decay term); ``p = 1`` gives ``Σ |w|`` (the
lasso). Biases and the affine parameters of normalisation layers are left out by default, as weight decay
usually leaves them (Goyal et al., 2017).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._api import register
from ._utils import check_choice, check_reduction

__all__ = ["weight_penalty", "penalised_parameters"]

_NORM_LAYERS = tuple(
    cls
    for cls in (
        nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
        nn.GroupNorm,
        nn.LayerNorm,
        getattr(nn, "RMSNorm", None),
        nn.LocalResponseNorm,
    )
    if cls is not None
)


def penalised_parameters(module: nn.Module, exclude_norm_and_bias: bool = True) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs that :func:`weight_penalty` sums over, in ``named_parameters`` order."""
    if not isinstance(module, nn.Module):
        raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not exclude_norm_and_bias:
        return list(module.named_parameters())
    skip = {id(p) for m in module.modules() if isinstance(m, _NORM_LAYERS) for p in m.parameters(recurse=False)}
    return [
        (name, p)
        for name, p in module.named_parameters()
        if id(p) not in skip and not name.rsplit(".", 1)[-1] == "bias"
    ]


def weight_penalty(
    module: nn.Module, *, p: int = 2, exclude_norm_and_bias: bool = True, reduction: str = "sum"
) -> Tensor:
    """The L``p`` penalty of a module's weights (half and bfloat16 weights are summed in float32).

    Args:
        module: the model (or part of it) to regularise.
        p: 1 (``Σ|w|``) or 2 (``Σ w²``).
        exclude_norm_and_bias: leave out biases and normalisation-layer parameters.
        reduction: ``"sum"`` (default) the penalty; ``"none"`` a ``(P,)`` tensor with one value per penalised
            parameter tensor; ``"mean"`` the penalty per penalised element (sum / number of elements).

    A module with nothing to penalise gives 0 (``(0,)`` for ``"none"``).
    """
    check_choice("p", p, (1, 2))
    check_reduction(reduction)
    params = [w for _, w in penalised_parameters(module, exclude_norm_and_bias)]
    if not params:
        return torch.zeros(0 if reduction == "none" else ())
    params = [w.float() if w.dtype in (torch.float16, torch.bfloat16) else w for w in params]
    per_tensor = torch.stack([(w.abs() if p == 1 else w.square()).sum() for w in params])
    if reduction == "none":
        return per_tensor
    total = per_tensor.sum()
    return total if reduction == "sum" else total / sum(w.numel() for w in params)


@register("weight_penalty")
class WeightPenalty(nn.Module):
    """Module form of :func:`weight_penalty`: ``WeightPenalty(p=2)(model)``."""

    def __init__(self, *, p: int = 2, exclude_norm_and_bias: bool = True, reduction: str = "sum"):
        super().__init__()
        check_choice("p", p, (1, 2))
        check_reduction(reduction)
        self.p, self.exclude_norm_and_bias, self.reduction = p, exclude_norm_and_bias, reduction

    def forward(self, module: nn.Module, reduction: str | None = None) -> Tensor:
        return weight_penalty(
            module,
            p=self.p,
            exclude_norm_and_bias=self.exclude_norm_and_bias,
            reduction=self.reduction if reduction is None else reduction,
        )

    def extra_repr(self) -> str:
        return f"p={self.p}, exclude_norm_and_bias={self.exclude_norm_and_bias}, reduction={self.reduction!r}"
