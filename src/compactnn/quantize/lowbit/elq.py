"""ELQ: explicit loss-error-aware quantization (Zhou et al., CVPR 2018), binary or ternary weights.

The full text was not at hand; this is the derivation used (written here so it can be judged).

Objective. Quantizing ``W`` to ``Q = alpha * t`` (``t`` in ``{-1, 1}`` or ``{-1, 0, 1}``) perturbs the loss by
``dL ~ g^T (Q - W) + 1/2 (Q - W)^T H (Q - W)``. At a trained model the first-order term averages out over the data,
and with a diagonal curvature ``H ~ diag(d)`` the loss perturbation is ``1/2 sum_i d_i (q_i - w_i)^2``. ELQ combines
it with the plain weight approximation error ``sum_i (q_i - w_i)^2``:

    E(alpha, t) = sum_i h_i (w_i - alpha t_i)^2,   h_i = d_i / mean(d) + lambda     (lambda = approx_weight)

with ``d_i = sqrt(mean over batches of g_i^2)``, the second-moment estimate loss-aware binarization (Hou et al.
2017, on which ELQ builds) uses, measured on ``curvature_batches`` training batches of the float model.

Closed forms (per layer):
- binary: ``t = sign(w)``, ``alpha = sum h |w| / sum h``;
- ternary, for a fixed support ``S``: ``alpha = sum_S h |w| / sum_S h`` and ``E = sum h w^2 - (sum_S h |w|)^2 /
  sum_S h``; for a fixed ``alpha``, each ``t_i`` is ``sign(w_i)`` if ``|w_i| > alpha / 2`` else 0 (threshold
  ``delta = alpha / 2``, whatever ``h_i > 0``). So the optimal support is the ``k`` largest ``|w|`` for some ``k``,
  and scanning ``k`` with cumulative sums gives the exact minimiser (no alternation, no local optimum).

Incremental quantization (as INQ): accumulated portions of each layer (largest ``|w|`` first) are frozen at
``alpha * t`` and the rest retrained, ``alpha`` fixed at its closed form on the float weights.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...api import register_method
from ...config import Bits, FineTune, NonNegative, Range, check
from ...layers import Target
from .base import LowBitConfig
from .incremental import check_portions, run_incremental
from .quantizers import BinaryWeight, TernaryWeight

__all__ = ["ELQ", "elq_closed_form", "elq_objective", "curvature"]


@dataclasses.dataclass(frozen=True)
class ELQ(LowBitConfig):
    """Loss-error-aware binary/ternary weights with closed-form scale and threshold, quantized incrementally.

    Args:
        weight_bits: 1 (binary) or 2 (ternary).
        approx_weight: lambda, the weight of the approximation error against the (mean-normalised) curvature term.
        curvature_batches: training batches (of 128) for the curvature estimate.
        portions: accumulated fractions quantized at each step (ending at 1.0).
        finetune: the retraining after each step.
    """

    method = "elq"
    description = "Loss-error-aware binary/ternary weights, closed-form scale, incremental (ELQ, Zhou et al. 2018)"
    example = {"weight_bits": 2, "portions": [0.5, 1.0], "curvature_batches": 1, "finetune": {"epochs": 1}}

    weight_bits: Bits = 2
    approx_weight: NonNegative = 1.0
    curvature_batches: Annotated[int, Range(0, 100_000)] = 8
    portions: tuple[float, ...] = (0.5, 0.75, 0.875, 1.0)
    finetune: FineTune | None = FineTune(epochs=2)

    def validate(self) -> None:
        super().validate()
        check(self.weight_bits in (1, 2), f"weight_bits must be 1 (binary) or 2 (ternary), got {self.weight_bits}")
        problem = check_portions(self.portions)
        check(problem is None, problem or "")


def elq_objective(w: Tensor, h: Tensor, alpha: float, t: Tensor) -> float:
    """``sum h (w - alpha t)^2``."""
    return float((h * (w - alpha * t) ** 2).sum())


@torch.no_grad()
def elq_closed_form(w: Tensor, h: Tensor, bits: int) -> tuple[float, Tensor]:
    """``(alpha, t)`` minimising :func:`elq_objective` exactly, by the closed forms above."""
    w, h = w.detach().double(), h.detach().double()
    a = w.abs()
    if bits == 1:
        t = torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
        return float((h * a).sum() / h.sum().clamp(min=1e-300)), t
    order = torch.argsort(a.reshape(-1), descending=True)
    hs, ha = h.reshape(-1)[order], (h * a).reshape(-1)[order]
    s1, s0 = torch.cumsum(ha, 0), torch.cumsum(hs, 0)
    gain = torch.where(s0 > 0, s1 ** 2 / s0.clamp(min=1e-300), torch.zeros_like(s0))  # E_k = sum h w^2 - gain_k
    k = int(torch.argmax(gain)) + 1
    alpha = float(s1[k - 1] / s0[k - 1])
    support = torch.zeros(a.numel(), dtype=torch.bool)
    support[order[:k]] = True
    support = support.reshape(a.shape)
    return alpha, torch.sign(w) * support


def curvature(model: nn.Module, layers: dict[str, nn.Module], data: Any, batches: int,
              batch_size: int = 128) -> dict[str, Tensor]:
    """``{name: sqrt(mean g^2)}`` of each layer's weight over ``batches`` training batches (eval mode)."""
    out = {n: torch.zeros_like(m.weight) for n, m in layers.items()}
    if batches <= 0 or data is None:
        return {n: torch.ones_like(v) for n, v in out.items()}
    x_all, y_all = training_head(data, batches * batch_size)
    was = model.training
    model.eval()
    n = 0
    for i in range(0, len(x_all), batch_size):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x_all[i:i + batch_size]), y_all[i:i + batch_size]).backward()
        for name, m in layers.items():
            out[name] += m.weight.grad.detach() ** 2
        n += 1
    model.zero_grad(set_to_none=True)
    model.train(was)
    return {k: (v / max(n, 1)).sqrt() for k, v in out.items()}


def training_head(data: Any, n: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` training inputs and labels of a DataBundle (``data.train.x`` / ``.y``)."""
    train = getattr(data, "train", data)
    x, y = getattr(train, "x", None), getattr(train, "y", None)
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        from ...errors import ConfigError

        raise ConfigError("this method needs in-memory training data (a DataBundle with train.x and train.y)")
    return x[:n], y[:n]


@register_method(ELQ)
def _elq(model: nn.Module, config: ELQ, data: Any, target: Target) -> nn.Module:
    scales: dict[str, float] = {}

    def prepare(m: nn.Module, layers: dict) -> None:
        d = curvature(m, layers, data, config.curvature_batches)
        for name, layer in layers.items():
            h = d[name] / d[name].mean().clamp(min=1e-30) + config.approx_weight
            scales[name], _ = elq_closed_form(layer.weight, h, config.weight_bits)

    def inner(name: str, layer: nn.Module):
        init = torch.tensor(scales[name])
        if config.weight_bits == 1:
            return BinaryWeight(layer.weight, "layer", "fixed", init)
        return TernaryWeight(layer.weight, "layer", "half", 0.0, "fixed", init)

    return run_incremental(model, config, data, target, inner, config.portions, config.finetune, config.act_bits,
                           prepare)
