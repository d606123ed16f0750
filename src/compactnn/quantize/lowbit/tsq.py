"""TSQ: two-step quantization (Wang et al., CVPR 2018): code learning, then transformation-function learning.

The full text was not at hand; choices are written here.

**Step 1, code learning.** Every ReLU becomes a :class:`.quantizers.SparseQuant`: values below a threshold ``eps``
become 0, the rest go to ``2^n - 1`` uniform levels ``step * {1, ..., 2^n - 1}``. ``(eps, step)`` are fitted per
activation to the float model's pre-activations on ``samples`` training inputs, minimising the squared error to the
ReLU output (:func:`.quantizers.fit_sparse`). Then the network is trained with these activations and float weights
(``code_finetune``).

**Step 2, transformation learning.** Per quantized layer, with ``X`` the layer's (quantized) inputs in the step-1
network (conv: im2col patches), ``y`` its float outputs there and ``b`` its bias, solve

    min over alpha (one per output channel) and ternary t of  || y - r(alpha * X t + b) ||^2

where ``r`` is the ReLU when the layer's next module (in registration order) is the activation, else the identity
(a BatchNorm or a pool in between: the layer is fitted to its own output). As in the paper, an auxiliary ``z`` makes
it tractable: ``min || y - r(z) ||^2 + lam || z - (alpha X t + b) ||^2``, alternating

- z-step (elementwise, closed form, :func:`z_step`);
- alpha-step: ``alpha = t^T X^T (z - b) / (t^T X^T X t)`` per channel (:func:`alpha_step`);
- t-step: exact coordinate descent, each ``t_i`` the best of ``{-1, 0, 1}`` with the others fixed
  (:func:`t_step`: ``t_i = sign(q_i)`` if ``|q_i| > alpha G_ii / 2`` else 0, with ``G = X^T X`` and
  ``q_i = c_i - alpha (G t - G_ii t_i)``), one sweep per iteration.

Initialised from TWN on the float weights. Each step lowers the auxiliary objective. Then the layer's weight is
``alpha * t`` with a learned per-row scale (threshold ``alpha / 2``), and the whole network is fine-tuned
(``finetune``).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ...api import register_method
from ...config import Bits, FineTune, PositiveInt, Range, check
from ...errors import ModelError
from ...layers import Target, require_data, run_finetune
from .base import LowBitConfig
from .core import attach, check_act_bits, choose_layers, harden, quantize_activations
from .elq import training_head
from .quantizers import SparseQuant, TernaryWeight, fit_sparse

__all__ = ["TSQ", "z_step", "alpha_step", "t_step", "solve_layer", "aux_objective"]


@dataclasses.dataclass(frozen=True)
class TSQ(LowBitConfig):
    """Two-step quantization: sparse low-bit activations, then ternary weights fitted layer by layer.

    Args:
        weight_bits: 2 (ternary; the paper's setting).
        act_bits: activation bits (2 in the paper); None skips step 1.
        samples: training inputs used to fit the activation quantizers and the layers.
        max_rows: rows of ``X`` kept per layer (a seeded subsample of the im2col rows).
        iterations: alternations of the z / alpha / t steps.
        lam: weight of the auxiliary term ``|| z - (alpha X t + b) ||^2``.
        code_finetune: training after step 1 (float weights, quantized activations); None: none.
        finetune: training after step 2.
    """

    method = "tsq"
    description = "Two-step quantization: sparse k-bit activations, then per-layer ternary fits (TSQ, 2018)"
    example = {"act_bits": 2, "samples": 64, "iterations": 2, "code_finetune": {"epochs": 1},
               "finetune": {"epochs": 1}}

    weight_bits: Bits = 2
    act_bits: Bits | None = 2
    samples: PositiveInt = 512
    max_rows: PositiveInt = 8192
    iterations: Annotated[int, Range(0, 1000)] = 10
    lam: Annotated[float, Range(0.0, 1e6, lo_open=True)] = 1.0
    code_finetune: FineTune | None = FineTune(epochs=2)
    finetune: FineTune | None = FineTune(epochs=3)

    def validate(self) -> None:
        super().validate()
        check(self.weight_bits == 2, f"tsq fits ternary weights (2 bits); got weight_bits={self.weight_bits}")


# ------------------------------------------------------------------------------------------------ closed forms
def z_step(y: Tensor, v: Tensor, lam: float, relu: bool) -> Tensor:
    """Elementwise ``argmin_z (y - r(z))^2 + lam (z - v)^2`` (``r`` = ReLU or identity)."""
    z1 = (y + lam * v) / (1 + lam)
    if not relu:
        return z1
    c1 = torch.where(z1 >= 0, (y - z1) ** 2 + lam * (z1 - v) ** 2, torch.full_like(z1, float("inf")))
    z2 = torch.clamp(v, max=0.0)
    c2 = y ** 2 + lam * (z2 - v) ** 2
    return torch.where(c1 <= c2, z1, z2)


def alpha_step(G: Tensor, c: Tensor, t: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
    """Per column ``o``: ``alpha_o = t_o^T c_o / (t_o^T G t_o)`` (``t``: ``d x o``); a negative alpha flips ``t``;
    an all-zero ``t`` keeps its alpha. Returns ``(alpha, t)``."""
    num = (t * c).sum(0)
    den = (t * (G @ t)).sum(0)
    new = torch.where(den > 0, num / den.clamp(min=1e-300), alpha)
    sign = torch.where(new < 0, -1.0, 1.0).to(t.dtype)
    return new.abs(), t * sign


def t_step(G: Tensor, c: Tensor, alpha: Tensor, t: Tensor, sweeps: int = 1) -> Tensor:
    """Exact coordinate descent on ``t`` (``d x o``, values in {-1, 0, 1}) for
    ``-2 alpha t^T c + alpha^2 t^T G t`` per column, ``sweeps`` passes over the coordinates."""
    t = t.clone()
    Gt = G @ t
    diag = torch.diagonal(G)
    for _ in range(sweeps):
        for i in range(t.shape[0]):
            q = c[i] - alpha * (Gt[i] - diag[i] * t[i])
            new = torch.where(q.abs() > alpha * diag[i] / 2, torch.sign(q), torch.zeros_like(q))
            delta = new - t[i]
            if bool(delta.any()):
                Gt += G[:, i:i + 1] * delta.unsqueeze(0)
                t[i] = new
    return t


def aux_objective(X: Tensor, y: Tensor, z: Tensor, b: Tensor, alpha: Tensor, t: Tensor, lam: float,
                  relu: bool) -> float:
    """``|| y - r(z) ||^2 + lam || z - (alpha X t + b) ||^2``."""
    r = torch.relu(z) if relu else z
    return float(((y - r) ** 2).sum() + lam * ((z - (X @ t) * alpha - b) ** 2).sum())


@torch.no_grad()
def solve_layer(X: Tensor, y: Tensor, w: Tensor, b: Tensor | None, relu: bool, lam: float = 1.0,
                iterations: int = 10) -> tuple[Tensor, Tensor]:
    """Ternary ``t`` (``o x d``) and scales ``alpha`` (``o``) for one layer (see the module docstring).

    Args:
        X: inputs, ``n x d``; y: float targets, ``n x o`` (after ``r``); w: the float weight ``o x d`` (init);
        b: bias ``o`` or None; relu: ``r`` is the ReLU.
    """
    X, y, w = X.double(), y.double(), w.double()
    b = torch.zeros(w.shape[0], dtype=torch.float64) if b is None else b.double()
    a = w.abs()
    t = (torch.sign(w) * (a > 0.7 * a.mean(1, keepdim=True))).T.contiguous()  # d x o
    G = X.T @ X
    alpha = torch.ones(w.shape[0], dtype=torch.float64)
    alpha, t = alpha_step(G, X.T @ (y - b), t, alpha)
    for _ in range(iterations):
        z = z_step(y, (X @ t) * alpha + b, lam, relu)
        c = X.T @ (z - b)
        alpha, t = alpha_step(G, c, t, alpha)
        t = t_step(G, c, alpha, t)
        alpha, t = alpha_step(G, c, t, alpha)
    return alpha.float(), t.T.contiguous().float()


# ------------------------------------------------------------------------------------------------------ pipeline
def _rows(layer: nn.Module, x: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
    """``(X, Y)`` rows for a layer from its input and output batch."""
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1 or isinstance(layer.padding, str) or layer.padding_mode != "zeros":
            raise ModelError("tsq: grouped or non-zero-padded convolutions are not supported")
        cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # N, d, L
        return cols.transpose(1, 2).reshape(-1, cols.shape[1]), out.permute(0, 2, 3, 1).reshape(-1, out.shape[1])
    return x.reshape(-1, x.shape[-1]), out.reshape(-1, out.shape[-1])


def _followed_by_activation(model: nn.Module, name: str) -> bool:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    keys = list(parent._modules)
    i = keys.index(leaf)
    return i + 1 < len(keys) and isinstance(parent._modules[keys[i + 1]], (nn.ReLU, SparseQuant))


@torch.no_grad()
def _capture(model: nn.Module, modules: dict[str, nn.Module], x: Tensor, inputs: bool) -> dict[str, list]:
    seen: dict[str, list] = {n: [] for n in modules}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: seen[n].append((i[0].detach(), o.detach())))
             for n, m in modules.items()]
    was = model.training
    model.eval()
    try:
        for i in range(0, len(x), 128):
            model(x[i:i + 128])
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return seen


@register_method(TSQ)
def _tsq(model: nn.Module, config: TSQ, data: Any, target: Target) -> nn.Module:
    method = TSQ.method
    check_act_bits(model, config)
    require_data(data, method)
    layers = choose_layers(model, config, target)
    x, _ = training_head(data, config.samples)
    if config.act_bits is not None:  # step 1: code learning
        relus = {n: m for n, m in model.named_modules() if isinstance(m, nn.ReLU) and n}
        seen = _capture(model, relus, x, True)
        fitted = {n: fit_sparse(torch.cat([i for i, _ in seen[n]]), config.act_bits) for n in relus}
        quantize_activations(model, lambda n: SparseQuant(config.act_bits, fitted[n][0], fitted[n][1]))
        if config.code_finetune is not None:
            run_finetune(model, data, config.code_finetune, method)
    # step 2: transformation learning, every layer against the step-1 network's float outputs
    seen = _capture(model, layers, x, True)
    gen = torch.Generator().manual_seed(0)
    solved = {}
    for name, layer in tqdm(layers.items(), desc="tsq layers", leave=False, disable=None):
        pairs = [_rows(layer, i, o) for i, o in seen[name]]
        X, Y = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
        if len(X) > config.max_rows:
            keep = torch.randperm(len(X), generator=gen)[: config.max_rows]
            X, Y = X[keep], Y[keep]
        relu = _followed_by_activation(model, name)
        w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        alpha, t = solve_layer(X, torch.relu(Y) if relu else Y, w, layer.bias, relu, config.lam, config.iterations)
        solved[name] = alpha
        layer.weight.data.copy_((t * alpha[:, None]).reshape(layer.weight.shape))
    attach(layers, lambda n, m: TernaryWeight(m.weight, "row", "half", 0.0, "learned",
                                              solved[n].reshape((-1,) + (1,) * (m.weight.dim() - 1))))
    if config.finetune is not None:
        run_finetune(model, data, config.finetune, method)
    return harden(model)
