"""The shared low-bit core: weight and activation quantizers with straight-through estimators (STE).

Weight quantizers are ``torch.nn.utils.parametrize`` parametrizations: ``layer.weight`` becomes ``Q(latent)``, the
latent float weight is what the optimizer updates, and :meth:`WeightQuantizer.codes` gives the integer codes and the
scale tensor that :func:`decode` turns back into exactly ``Q(latent)`` (what :mod:`.modules` stores after training).

Scale granularity (``granularity``): ``"layer"`` (one scale), ``"row"`` (one per output channel / row) or
``"pixel"`` (conv only: one per kernel position ``(kh, kw)``, shared by all channels, as SYQ). A Linear layer asked
for ``"pixel"`` gets ``"layer"`` (SYQ: one scale per FC layer).

Codes and decoding (``decode``):
- ``"linear"``: ``w = scale * code``; binary codes are ``{-1, 1}``, ternary ``{-1, 0, 1}``, symmetric k-bit
  ``[-(2^(k-1)-1), 2^(k-1)-1]``, LSQ ``[-2^(k-1), 2^(k-1)-1]``, DoReFa the odd integers in ``[-(2^k-1), 2^k-1]``.
- ``"pow2"``: ``w = scale * sign(code) * 2^(|code|-1)`` (INQ: ``scale = 2^n2``, code 0 is the weight 0).

Activation quantizers are modules that replace a ReLU: :class:`ClipQuant` (DoReFa/SYQ: clip to [0, 1], k bits),
:class:`SparseQuant` (TSQ: below a threshold to 0, the rest on ``2^k - 1`` uniform levels) and :class:`LSQQuant`
(learned step size). Each has a uniform output grid ``{0, step, ..., levels*step}`` (:meth:`grid`), which the
integer-engine conversion uses.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...pack.spec import packable

__all__ = ["ste", "ste_round", "grad_scale", "group_reduce", "group_shape", "WeightQuantizer", "BinaryWeight",
           "TernaryWeight", "UniformWeight", "DoReFaWeight", "LSQWeight", "Pow2Weight", "Incremental", "pow2_levels",
           "pow2_quantize", "ClipQuant", "SparseQuant", "LSQQuant", "fit_sparse", "sparse_quantize", "decode"]


# ------------------------------------------------------------------------------------------------------- helpers
class _Straight(torch.autograd.Function):
    """Forward: ``q`` exactly; backward: the gradient goes to ``x`` unchanged (none to ``q``)."""

    @staticmethod
    def forward(ctx, x: Tensor, q: Tensor) -> Tensor:  # noqa: D102
        return q.detach().clone()

    @staticmethod
    def backward(ctx, g: Tensor):  # noqa: D102
        return g, None


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, g: float) -> Tensor:  # noqa: D102
        ctx.g = g
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        return grad * ctx.g, None


def ste(x: Tensor, q: Tensor) -> Tensor:
    """Value exactly ``q``, gradient straight through to ``x`` (identity). (``x + (q - x).detach()`` would be off
    by a rounding error, and the hardened model must compute what training computed.)"""
    return _Straight.apply(x, q)


def ste_round(x: Tensor) -> Tensor:
    """``round`` (half away from zero) with an identity gradient."""
    return ste(x, torch.sign(x) * torch.floor(x.abs() + 0.5))


def grad_scale(x: Tensor, g: float) -> Tensor:
    """Value ``x``, gradient multiplied by ``g`` (LSQ's step-size gradient scale)."""
    return _GradScale.apply(x, g)


def group_shape(w: Tensor, granularity: str) -> tuple[int, ...]:
    """Shape of the scale tensor for ``w`` at ``granularity`` (broadcastable against ``w``)."""
    if granularity == "row":
        return (w.shape[0],) + (1,) * (w.dim() - 1)
    if granularity == "pixel" and w.dim() == 4:
        return (1, 1) + tuple(w.shape[2:])
    return (1,) * w.dim()


def _group_dims(w: Tensor, granularity: str) -> tuple[int, ...]:
    shape = group_shape(w, granularity)
    return tuple(d for d in range(w.dim()) if shape[d] == 1)


def group_reduce(x: Tensor, granularity: str, weights: Tensor | None = None) -> Tensor:
    """Per-group sum of ``x`` (times ``weights`` if given), shaped as :func:`group_shape`."""
    dims = _group_dims(x, granularity)
    y = x if weights is None else x * weights
    return y.sum(dim=dims, keepdim=True) if dims else y.clone()


def group_mean(x: Tensor, granularity: str, mask: Tensor | None = None) -> Tensor:
    """Per-group mean of ``x`` (over ``mask`` if given; 0 for an empty group)."""
    if mask is None:
        mask = torch.ones_like(x)
    mask = mask.to(x.dtype)
    return group_reduce(x, granularity, mask) / group_reduce(mask, granularity).clamp(min=1)


def decode(codes: Tensor, scale: Tensor, mode: str = "linear", dtype: torch.dtype = torch.float32) -> Tensor:
    """Weights from integer ``codes`` and ``scale`` (see the module docstring); exact in float32."""
    c = codes.to(dtype)
    if mode == "linear":
        return c * scale.to(dtype)
    if mode == "pow2":
        mag = torch.where(c == 0, torch.zeros_like(c), torch.exp2(c.abs() - 1))
        return torch.sign(c) * mag * scale.to(dtype)
    raise ConfigError(f"unknown weight decoding {mode!r}; use 'linear' or 'pow2'")


def _code_dtype(lo: int, hi: int) -> torch.dtype:
    return torch.int8 if -128 <= lo and hi <= 127 else torch.int16


# ---------------------------------------------------------------------------------------------- weight quantizers
class WeightQuantizer(nn.Module):
    """Base of the weight parametrizations: ``forward(latent) -> Q(latent)``; :meth:`codes` for storage."""

    decode_mode = "linear"
    bits = 32

    def quantize(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """``(codes as float, scale)`` with ``Q(w) = decode(codes, scale)`` (no gradient)."""
        raise NotImplementedError

    @torch.no_grad()
    def codes(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """Integer codes (int8, or int16 when the range needs it) and the float32 scale tensor of ``Q(w)``."""
        c, s = self.quantize(w.detach())
        lo, hi = int(c.min()), int(c.max())
        return c.round().to(_code_dtype(lo, hi)), s.detach().to(torch.float32).clone()


def _sign(w: Tensor) -> Tensor:
    return torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w))


class BinaryWeight(WeightQuantizer):
    """``Q(w) = alpha_g * sign(w)`` (sign(0) = +1).

    Args:
        weight: the initial latent weight (for the scale's shape and initial value).
        granularity: ``"layer"``, ``"row"`` or ``"pixel"``.
        scale: ``"learned"`` (SYQ: a parameter initialised to the group's mean ``|w|``, whose gradient is
            ``sum_g dL/dQ * sign(w)``, the autograd of ``alpha * sign(w)``), ``"mean"`` (BWN: the group's mean
            ``|w|`` recomputed each step, constant for the gradient) or ``"fixed"`` (a buffer set from ``init``).
        init: initial scale for ``"learned"`` / ``"fixed"``.

    The latent weight always gets ``dL/dQ`` unchanged (straight through).
    """

    bits = 1

    def __init__(self, weight: Tensor, granularity: str = "layer", scale: str = "mean",
                 init: Tensor | None = None) -> None:
        super().__init__()
        self.granularity, self.scale_mode = granularity, scale
        _init_scale(self, weight, granularity, scale, init)

    def _alpha(self, w: Tensor) -> Tensor:
        return group_mean(w.detach().abs(), self.granularity) if self.scale_mode == "mean" else self.scale

    def forward(self, w: Tensor) -> Tensor:
        t = _sign(w.detach())
        alpha = self._alpha(w)
        # value alpha*t; dQ/dw = 1 (straight through); dQ/dalpha = t (so alpha gets sum_g dL/dQ * t)
        return ste(w, alpha.detach() * t) + (alpha - alpha.detach()) * t

    def quantize(self, w: Tensor) -> tuple[Tensor, Tensor]:
        return _sign(w), self._alpha(w).detach()


def _init_scale(self: nn.Module, weight: Tensor, granularity: str, scale: str, init: Tensor | None) -> None:
    if scale not in ("learned", "fixed", "mean"):
        raise ConfigError(f"unknown scale mode {scale!r}; use 'learned', 'mean' or 'fixed'")
    if scale in ("learned", "fixed"):
        value = group_mean(weight.detach().abs(), granularity) if init is None else init.detach().clone()
        value = value.reshape(group_shape(weight, granularity)).to(weight.dtype)
        if scale == "learned":
            self.scale = nn.Parameter(value)
        else:
            self.register_buffer("scale", value)


class TernaryWeight(WeightQuantizer):
    """``Q(w) = alpha_g * sign(w) * [|w| > delta]``.

    Args:
        weight: the initial latent weight.
        granularity: scale groups (see the module docstring).
        threshold: ``"max"`` (SYQ: ``delta = eta * max|W|`` over the layer, no gradient), ``"mean"`` (TWN:
            ``delta = ratio * mean|W|`` over the layer) or ``"half"`` (``delta = alpha_g / 2``: each weight goes to
            the nearest of ``{-alpha, 0, alpha}``; ELQ and TSQ, whose scales come from closed forms).
        factor: ``eta`` for ``"max"``, ``ratio`` for ``"mean"`` (ignored for ``"half"``).
        scale: ``"learned"`` (a parameter, initialised to the group's mean ``|w|``, or to ``init`` when given),
            ``"mean"`` (TWN: the group's mean ``|w|`` over the kept weights, recomputed each step) or ``"fixed"``
            (a buffer set from ``init``).
        init: initial scale tensor (shape :func:`group_shape`), for ``"learned"`` / ``"fixed"``.
    """

    bits = 2

    def __init__(self, weight: Tensor, granularity: str = "layer", threshold: str = "mean", factor: float = 0.7,
                 scale: str = "mean", init: Tensor | None = None) -> None:
        super().__init__()
        self.granularity, self.threshold, self.factor, self.scale_mode = granularity, threshold, float(factor), scale
        _init_scale(self, weight, granularity, scale, init)

    def _delta(self, w: Tensor) -> Tensor:
        a = w.detach().abs()
        if self.threshold == "max":
            return self.factor * a.max()
        if self.threshold == "mean":
            return self.factor * a.mean()
        return self.scale.detach().abs() / 2

    def _mask(self, w: Tensor) -> Tensor:
        return (w.detach().abs() > self._delta(w)).to(w.dtype)

    def _alpha(self, w: Tensor, mask: Tensor) -> Tensor:
        if self.scale_mode == "mean":
            return group_mean(w.detach().abs(), self.granularity, mask)
        return self.scale

    def forward(self, w: Tensor) -> Tensor:
        mask = self._mask(w)
        t = torch.sign(w.detach()) * mask
        alpha = self._alpha(w, mask)
        return ste(w, alpha.detach() * t) + (alpha - alpha.detach()) * t

    def quantize(self, w: Tensor) -> tuple[Tensor, Tensor]:
        mask = self._mask(w)
        return torch.sign(w) * mask, self._alpha(w, mask).detach()


class UniformWeight(WeightQuantizer):
    """Symmetric narrow-range k-bit: ``Q(w) = s * clamp(round(w / s), -m, m)``, ``m = 2^(k-1) - 1``,
    ``s = max|W| / m`` per group (recomputed each step, constant for the gradient; STE inside the range)."""

    def __init__(self, weight: Tensor, bits: int, granularity: str = "layer") -> None:
        super().__init__()
        if bits < 2:
            raise ConfigError(f"uniform symmetric weights need >= 2 bits, got {bits}")
        self.bits, self.granularity = int(bits), granularity

    def _scale(self, w: Tensor) -> Tensor:
        m = 2 ** (self.bits - 1) - 1
        dims = _group_dims(w, self.granularity)
        amax = w.detach().abs().amax(dim=dims, keepdim=True) if dims else w.detach().abs()
        return torch.where(amax > 0, amax / m, torch.ones_like(amax))

    def quantize(self, w: Tensor) -> tuple[Tensor, Tensor]:
        m = 2 ** (self.bits - 1) - 1
        s = self._scale(w)
        return torch.clamp(torch.sign(w / s) * torch.floor((w / s).abs() + 0.5), -m, m), s

    def forward(self, w: Tensor) -> Tensor:
        c, s = self.quantize(w.detach())
        return ste(w, c * s)


class DoReFaWeight(WeightQuantizer):
    """DoReFa-Net weights (Zhou et al. 2016). k = 1: ``E|W| * sign(W)`` (per layer); k > 1:
    ``2 * quantize_k(tanh(W) / (2 max|tanh W|) + 1/2) - 1`` with ``quantize_k(x) = round(x (2^k-1)) / (2^k-1)``,
    the gradient straight through the rounding and exact through tanh and the normalisation."""

    def __init__(self, weight: Tensor, bits: int) -> None:
        super().__init__()
        self.bits = int(bits)

    def _unit(self, w: Tensor) -> Tensor:
        t = torch.tanh(w)
        return t / (2 * t.detach().abs().max().clamp(min=1e-12)) + 0.5

    def quantize(self, w: Tensor) -> tuple[Tensor, Tensor]:
        if self.bits == 1:
            return _sign(w), w.abs().mean().reshape((1,) * w.dim())
        n = 2 ** self.bits - 1
        c = torch.floor(self._unit(w) * n + 0.5)
        return 2 * c - n, torch.full((1,) * w.dim(), 1.0 / n, dtype=w.dtype)

    def forward(self, w: Tensor) -> Tensor:
        if self.bits == 1:
            return ste(w, w.detach().abs().mean() * _sign(w.detach()))
        n = 2 ** self.bits - 1
        u = self._unit(w)
        c = torch.floor(u.detach() * n + 0.5)
        # value (2c - n) * (1/n), the stored form; gradient of 2u - 1 (straight through the rounding)
        return ste(2 * u - 1, (2 * c - n) * torch.full((1,) * w.dim(), 1.0 / n, dtype=w.dtype))


class LSQWeight(WeightQuantizer):
    """LSQ (Esser et al., ICLR 2020): ``Q(w) = s * clamp(round(w / s), -2^(k-1), 2^(k-1) - 1)`` with a learned
    per-layer step ``s`` (init ``2 mean|W| / sqrt(Qp)``) whose gradient is scaled by ``1 / sqrt(N * Qp)``."""

    def __init__(self, weight: Tensor, bits: int) -> None:
        super().__init__()
        if bits < 2:
            raise ConfigError(f"lsq needs weight_bits >= 2, got {bits}")
        self.bits = int(bits)
        self.qn, self.qp = 2 ** (bits - 1), 2 ** (bits - 1) - 1
        self.numel = int(weight.numel())
        init = 2 * weight.detach().abs().mean() / math.sqrt(self.qp)
        self.step = nn.Parameter(init.reshape((1,) * weight.dim()).clamp(min=1e-8))

    def forward(self, w: Tensor) -> Tensor:
        s = grad_scale(self.step, 1.0 / math.sqrt(self.numel * self.qp))
        return ste_round(torch.clamp(w / s, -self.qn, self.qp)) * s

    def quantize(self, w: Tensor) -> tuple[Tensor, Tensor]:
        s = self.step.detach().abs().clamp(min=1e-12)
        v = torch.clamp(w / s, -self.qn, self.qp)
        return torch.sign(v) * torch.floor(v.abs() + 0.5), s


def pow2_levels(w: Tensor, bits: int) -> tuple[int, int]:
    """INQ's exponent range ``(n1, n2)``: ``n1 = floor(log2(4 s / 3))`` with ``s = max|W|``, and
    ``n2 = n1 + 1 - 2^(bits-1) / 2`` (one bit of the ``bits`` for the zero, so ``2^(bits-2)`` magnitudes)."""
    s = float(w.detach().abs().max())
    n1 = math.floor(math.log2(4 * s / 3)) if s > 0 else 0
    return n1, n1 + 1 - 2 ** (bits - 1) // 2


def pow2_quantize(w: Tensor, n1: int, n2: int) -> Tensor:
    """INQ's rule: ``beta * sign(w)`` where ``(a + beta) / 2 <= |w| < 3 beta / 2`` for adjacent ``a < beta`` in
    ``{0, 2^n2, ..., 2^n1}``, else 0. Returns pow2 *codes* (0, or ``sign * (e - n2 + 1)`` for ``beta = 2^e``)."""
    a = w.abs()
    codes = torch.zeros_like(w)
    for e in range(n2, n1 + 1):
        beta = 2.0 ** e
        below = 0.0 if e == n2 else 2.0 ** (e - 1)
        hit = (a >= (below + beta) / 2) & (a < 3 * beta / 2)
        if e == n1:
            hit = a >= (below + beta) / 2  # the top level also takes anything above (cannot happen for max|W|)
        codes = torch.where(hit, torch.full_like(w, e - n2 + 1), codes)
    return torch.sign(w) * codes


class Pow2Weight(WeightQuantizer):
    """INQ's power-of-two quantizer (forward quantizes everything; INQ wraps it in :class:`Incremental`)."""

    decode_mode = "pow2"

    def __init__(self, weight: Tensor, bits: int) -> None:
        super().__init__()
        self.bits = int(bits)
        self.n1, self.n2 = pow2_levels(weight, bits)

    def quantize(self, w: Tensor) -> tuple[Tensor, Tensor]:
        return pow2_quantize(w, self.n1, self.n2), torch.full((1,) * w.dim(), 2.0 ** self.n2, dtype=w.dtype)

    def forward(self, w: Tensor) -> Tensor:
        c, s = self.quantize(w.detach())
        return ste(w, decode(c, s, "pow2", w.dtype))


class Incremental(WeightQuantizer):
    """Incremental quantization (INQ, also ELQ): a growing part of the weights is frozen at its quantized value
    (``inner``'s quantization, computed when frozen), the rest stays float and keeps training. Frozen positions
    get zero gradient. The part to freeze next is the largest ``|w|`` among the unfrozen (INQ's pruning-inspired
    partition).

    Args:
        weight: the initial latent weight.
        inner: the quantizer whose ``quantize`` gives the values (its scale must not change while freezing).
    """

    def __init__(self, weight: Tensor, inner: WeightQuantizer) -> None:
        super().__init__()
        self.inner = inner
        self.decode_mode = inner.decode_mode
        self.bits = inner.bits
        self.register_buffer("frozen", torch.zeros_like(weight, dtype=torch.bool))
        self.register_buffer("fixed", torch.zeros_like(weight))

    @torch.no_grad()
    def freeze(self, w: Tensor, fraction: float) -> None:
        """Freeze weights until ``round(fraction * numel)`` are frozen (already frozen ones stay)."""
        n = w.numel()
        target = min(n, int(round(fraction * n)))
        have = int(self.frozen.sum())
        if target <= have:
            return
        score = w.detach().abs().reshape(-1).clone()
        score[self.frozen.reshape(-1)] = float("inf")
        idx = torch.topk(score, target, largest=True).indices
        newly = torch.zeros(n, dtype=torch.bool, device=w.device)
        newly[idx] = True
        newly = newly.reshape(w.shape) & ~self.frozen
        c, s = self.inner.quantize(w.detach())
        values = decode(c, s, self.inner.decode_mode, w.dtype)
        self.fixed.copy_(torch.where(newly, values, self.fixed))
        self.frozen |= newly

    def forward(self, w: Tensor) -> Tensor:
        return torch.where(self.frozen, self.fixed, w)

    def quantize(self, w: Tensor) -> tuple[Tensor, Tensor]:
        return self.inner.quantize(torch.where(self.frozen, self.fixed, w))


# -------------------------------------------------------------------------------------------- activation quantizers
@packable
class ClipQuant(nn.Module):
    """DoReFa/SYQ activations: ``q = floor(clip(x, 0, 1) * n + 0.5) / n``, ``n = 2^bits - 1``; gradient 1 on
    [0, 1], 0 outside. Replaces a ReLU."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = int(bits)

    def grid(self) -> tuple[float, int]:
        """``(step, levels)``: outputs are ``step * i`` for ``i`` in ``0..levels``."""
        n = 2 ** self.bits - 1
        return 1.0 / n, n

    def forward(self, x: Tensor) -> Tensor:
        n = 2 ** self.bits - 1
        y = torch.clamp(x, 0.0, 1.0)
        return ste(y, torch.floor(y.detach() * n + 0.5) / n)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def sparse_quantize(x: Tensor, eps: float, step: float, levels: int) -> Tensor:
    """TSQ's sparse quantizer (forward): 0 where ``x < eps``, else ``step * clamp(round(x / step), 1, levels)``."""
    q = torch.clamp(torch.floor(x / step + 0.5), 1, levels) * step
    return torch.where(x < eps, torch.zeros_like(x), q)


@packable
class SparseQuant(nn.Module):
    """TSQ step 1 (code learning): sparse activation quantization, ``2^bits - 1`` nonzero levels.

    Values below the threshold ``eps`` become 0; the rest go to the nearest of ``step * {1, ..., 2^bits - 1}``.
    ``eps`` and ``step`` are fitted to the float activations by :func:`fit_sparse`. Choices (TSQ's full text was
    not at hand): the levels are multiples of ``step`` (so 0 and the levels form one uniform grid that the integer
    engine can carry), and the backward pass is that of a ReLU clipped at the top level (HWGQ-style), 1 on
    ``(0, levels * step]`` and 0 elsewhere.
    """

    def __init__(self, bits: int, eps: float = 0.0, step: float = 1.0) -> None:
        super().__init__()
        self.bits, self.eps, self.step = int(bits), float(eps), float(step)

    def grid(self) -> tuple[float, int]:
        return self.step, 2 ** self.bits - 1

    def forward(self, x: Tensor) -> Tensor:
        levels = 2 ** self.bits - 1
        y = torch.clamp(x, 0.0, levels * self.step)
        return ste(y, sparse_quantize(x.detach(), self.eps, self.step, levels))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, eps={self.eps:.4g}, step={self.step:.4g}"


@torch.no_grad()
def fit_sparse(x: Tensor, bits: int, grid: int = 48, max_samples: int = 200_000) -> tuple[float, float, float]:
    """Fit TSQ's ``(eps, step)`` to activation samples ``x`` (pre-ReLU values) by minimising the mean squared error
    to ``relu(x)`` over a grid: ``step`` from ``(0.1 .. 1.5) * p99.9 / levels`` and ``eps`` in ``[0, step)``.

    Returns:
        ``(eps, step, mse)``.
    """
    x = x.detach().reshape(-1).double()
    if x.numel() > max_samples:
        x = x[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))[:max_samples]]
    r = torch.relu(x)
    levels = 2 ** bits - 1
    top = float(torch.quantile(r[r > 0], 0.999)) if bool((r > 0).any()) else 1.0
    best = (0.0, max(top, 1e-6) / levels, float("inf"))
    for f in torch.linspace(0.1, 1.5, grid).tolist():
        step = max(top * f / levels, 1e-8)
        for g in torch.linspace(0.0, 0.95, 20).tolist():
            eps = g * step
            err = float(((sparse_quantize(x, eps, step, levels) - r) ** 2).mean())
            if err < best[2]:
                best = (eps, step, err)
    return best


@packable
class LSQQuant(nn.Module):
    """LSQ activations (unsigned, replaces a ReLU): ``s * clamp(round(x / s), 0, 2^bits - 1)`` with a learned step
    ``s`` (initialised on the first training batch to ``2 mean|x| / sqrt(Qp)``; gradient scale ``1/sqrt(N Qp)``,
    ``N`` the features per example)."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = int(bits)
        self.step = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("initialized", torch.tensor(False))

    def grid(self) -> tuple[float, int]:
        return float(self.step.detach().abs()), 2 ** self.bits - 1

    def forward(self, x: Tensor) -> Tensor:
        qp = 2 ** self.bits - 1
        if not bool(self.initialized):
            with torch.no_grad():
                self.step.fill_(max(float(2 * x.detach().abs().mean() / math.sqrt(qp)), 1e-6))
                self.initialized.fill_(True)
        n = max(x[0].numel(), 1) if x.dim() > 1 else x.numel()
        s = grad_scale(self.step, 1.0 / math.sqrt(n * qp))
        return ste_round(torch.clamp(x / s, 0, qp)) * s

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
