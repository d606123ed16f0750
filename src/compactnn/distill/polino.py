"""Polino, Pascanu & Alistarh, "Model compression via distillation and quantization" (ICLR 2018).

**Uniform quantization with buckets** (:func:`quantize`, :func:`encode`, :func:`decode`). A weight tensor is
flattened and cut into buckets of ``bucket_size`` consecutive values (``None``: one bucket, the whole tensor; the
last bucket may be shorter). Each bucket is scaled to [0, 1]:

- ``"linear"`` (min-max): ``alpha = max - min``, ``beta = min``, ``sc(v) = (v - beta) / alpha``;
- ``"absmax"``: ``sc(v) = (v / m + 1) / 2`` with ``m = max |v|``, i.e. ``alpha = 2m``, ``beta = -m``. The authors'
  absmax quantizes ``|v| / m`` on ``s`` levels and keeps the sign apart, which spends one more bit; here the
  ``2^bits`` levels span ``[-m, m]`` so that ``bits`` is the real width.

then rounded to one of ``s + 1 = 2^bits`` levels ``q / s`` (``q = 0 .. s``): deterministically ``round(sc * s)``
(half to even, as ``torch.round``), or stochastically ``floor(sc * s) + Bernoulli(frac(sc * s))``, which is unbiased:
``E[q / s] = sc``. The value is ``alpha * q / s + beta``. A constant bucket (``alpha = 0``) decodes to its value.

**Quantized distillation** (:class:`QuantizedDistill`): float weights are kept; each step the selected layers'
weights are quantized, the forward and backward passes run on the quantized weights, and the optimizer applies the
gradient taken there to the float weights (a straight-through parametrization: ``W_q = W + (Q(W) - W).detach()``,
whose gradient in ``W`` is the gradient at ``W_q``: the authors' quantize / forward-backward / restore / step loop).
Loss: ``0.7 * T^2 * KL + 0.3 * CE`` at ``T = 2`` (the authors' code), or plain cross-entropy without a teacher
(the "plain quantized training" baseline). The result's weights are the deterministic quantization of the final
float weights.

**Differentiable quantization** (:class:`DifferentiableQuantize`): the weights stay fixed; each layer gets ``2^bits``
non-uniform points ``p`` in the scaled domain [0, 1] (one set per layer, shared by its buckets, each bucket keeping
its min-max scaling; or one set per bucket), initialised at the quantiles ``linspace(0, 100, k)`` of the scaled
weights. Every step each weight takes its nearest point, ``Q = alpha_b * p[idx] + beta_b``, and the points follow
the gradient of the distillation loss, ``dL/dp_j = sum over the weights assigned to p_j of alpha_b * dL/dQ``
(autograd of that expression). Only the points are trained; as in the authors' code the network runs in training
mode, so BatchNorm running statistics follow the quantized weights.

**Packing**: either result is a :class:`QuantizedLayer` per selected layer, holding ``codes`` (uint8, the
weight's shape, values below ``2^bits``: the packer's codebook codec stores them at ``ceil(log2 k)`` bits for the
``k`` values present), the per-bucket ``alpha`` (and ``beta`` for min-max scaling) as float32 and, for DQ, the
points; so the file size is the real bit width plus the scales.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..api import register_method
from ..config import FineTune, MethodConfig, Patterns, PositiveInt, Range, TeacherSpec, check
from ..errors import ConfigError
from ..graph import set_module
from ..layers import Target, require_data, run_finetune, strip_parametrizations
from ..pack.spec import packable
from .kd import load_teacher

Scaling = Literal["linear", "absmax"]
QBits = Annotated[int, Range(1, 8, note="bits per weight")]
BucketSize = Annotated[int, Range(1, 1 << 30, note="weights per bucket")] | None
QUANT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


# --------------------------------------------------------------------------------------------- the quantizer
def buckets(w: Tensor, bucket_size: int | None) -> tuple[Tensor, int]:
    """``w`` flattened into ``(n_buckets, size)`` rows, the last padded with the last value (which changes no
    bucket's min, max or absmax), and the number of real values."""
    flat = w.reshape(-1)
    n = flat.numel()
    if n == 0:
        raise ConfigError("cannot quantize an empty tensor")
    size = n if bucket_size is None else min(int(bucket_size), n)
    nb = math.ceil(n / size)
    if nb * size > n:
        flat = torch.cat([flat, flat[-1:].expand(nb * size - n)])
    return flat.reshape(nb, size), n


def scales(rows: Tensor, scaling: Scaling) -> tuple[Tensor, Tensor]:
    """Per-bucket ``(alpha, beta)`` of shape ``(n_buckets,)``: ``v = alpha * sc + beta`` (see the module docstring)."""
    if scaling == "linear":
        lo, hi = rows.min(dim=1).values, rows.max(dim=1).values
        return hi - lo, lo
    if scaling == "absmax":
        m = rows.abs().max(dim=1).values
        return 2.0 * m, -m
    raise ConfigError(f"scaling must be 'linear' or 'absmax', got {scaling!r}")


def scaled(rows: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """``(rows - beta) / alpha`` clamped to [0, 1] (a constant bucket, ``alpha = 0``, scales to 0)."""
    safe = torch.where(alpha > 0, alpha, torch.ones_like(alpha))
    return ((rows - beta[:, None]) / safe[:, None]).clamp(0.0, 1.0)


def encode(w: Tensor, bits: int, bucket_size: int | None = 256, scaling: Scaling = "linear",
           stochastic: bool = False, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Uniform quantization codes of ``w``: ``(codes, alpha, beta)``.

    ``codes`` is int64 of ``w``'s shape with values ``0 .. 2^bits - 1``; ``alpha``, ``beta`` are per bucket.
    ``stochastic`` rounds up with probability equal to the fractional part (draws from ``generator``).
    """
    s = 2**bits - 1
    rows, n = buckets(w.detach(), bucket_size)
    alpha, beta = scales(rows, scaling)
    x = scaled(rows, alpha, beta) * s
    if stochastic:
        low = torch.floor(x)
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device) if generator is not None \
            else torch.rand_like(x)
        q = low + (u < (x - low)).to(x.dtype)
    else:
        q = torch.round(x)
    q = q.clamp(0, s).to(torch.int64)
    return q.reshape(-1)[:n].reshape(w.shape), alpha, beta


def decode(codes: Tensor, alpha: Tensor, beta: Tensor, bits: int, bucket_size: int | None,
           levels: Tensor | None = None) -> Tensor:
    """Weights from codes: ``alpha_b * level[code] + beta_b`` with ``level[q] = q / (2^bits - 1)`` (uniform) or
    ``levels`` (``(k,)`` shared, or ``(n_buckets, k)`` one row per bucket) for non-uniform points."""
    rows, n = buckets(codes, bucket_size)
    if levels is None:
        v = rows.to(alpha.dtype) / (2**bits - 1)
    elif levels.dim() == 1:
        v = levels[rows]
    else:
        v = torch.gather(levels, 1, rows)
    out = alpha[:, None] * v + beta[:, None]
    return out.reshape(-1)[:n].reshape(codes.shape)


def quantize(w: Tensor, bits: int, bucket_size: int | None = 256, scaling: Scaling = "linear",
             stochastic: bool = False, generator: torch.Generator | None = None) -> Tensor:
    """Polino's uniform quantization of ``w`` with buckets: the dequantized tensor (same shape and dtype)."""
    codes, alpha, beta = encode(w, bits, bucket_size, scaling, stochastic, generator)
    return decode(codes, alpha, beta, bits, bucket_size).to(w.dtype)


def nearest(x: Tensor, points: Tensor) -> Tensor:
    """Index of the nearest of ``points`` (sorted ascending; ``(k,)`` or one row per row of ``x``) for each entry
    of ``x`` ``(rows, size)``; ties go to the lower point."""
    if points.dim() == 1:
        mids = (points[1:] + points[:-1]) / 2
        return torch.searchsorted(mids, x.contiguous(), right=False)
    mids = (points[:, 1:] + points[:, :-1]) / 2
    return torch.searchsorted(mids.contiguous(), x.contiguous(), right=False)


def quantile_points(w: Tensor, bits: int, bucket_size: int | None, per_bucket: bool = False) -> Tensor:
    """Initial DQ points: the quantiles ``linspace(0, 1, 2^bits)`` of the min-max-scaled weights (per layer, or per
    bucket)."""
    rows, n = buckets(w.detach(), bucket_size)
    alpha, beta = scales(rows, "linear")
    x = scaled(rows, alpha, beta)
    q = torch.linspace(0, 1, 2**bits, dtype=x.dtype, device=x.device)
    if per_bucket:
        return torch.quantile(x, q, dim=1).T.contiguous()
    return torch.quantile(x.reshape(-1)[:n], q)


# -------------------------------------------------------------------------------------------- packed module
@packable
class QuantizedLayer(nn.Module):
    """A Linear/Conv layer whose weight is stored as integer codes with per-bucket scales (and DQ points).

    Attributes: ``layer`` (the original layer without its weight; it keeps its bias and settings), buffers ``codes``
    (uint8, the weight's shape), ``alpha`` and ``beta`` (float32 per bucket; ``beta`` is None for absmax scaling,
    where it is ``-alpha / 2``) and ``points`` (None for uniform levels), plain attributes ``bits``, ``bucket_size``.
    """

    def __init__(self, layer: nn.Module, codes: Tensor, alpha: Tensor, beta: Tensor | None, bits: int,
                 bucket_size: int | None, points: Tensor | None = None) -> None:
        super().__init__()
        if "weight" in layer._parameters:
            layer._parameters["weight"] = None  # kept as a None slot: the layer stays a well-formed Linear/Conv
        self.layer = layer
        self.bits = int(bits)
        self.bucket_size = None if bucket_size is None else int(bucket_size)
        self.register_buffer("codes", codes.to(torch.uint8))
        self.register_buffer("alpha", alpha.detach().float().clone())
        self.register_buffer("beta", None if beta is None else beta.detach().float().clone())
        self.register_buffer("points", None if points is None else points.detach().float().clone())

    @property
    def weight(self) -> Tensor:
        """The dequantized weight (a property, so code that reads ``layer.weight`` keeps working)."""
        beta = self.beta if self.beta is not None else -0.5 * self.alpha
        return decode(self.codes.to(torch.int64), self.alpha, beta, self.bits, self.bucket_size, self.points)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        return self.layer._conv_forward(x, w, self.layer.bias)

    def macs(self, inputs: tuple, output: Tensor) -> int:
        from ..report.macs import module_macs

        return module_macs(self.layer, inputs, output)

    def extra_repr(self) -> str:
        kind = "points" if self.points is not None else "uniform"
        return f"{type(self.layer).__name__}, bits={self.bits}, bucket_size={self.bucket_size}, {kind}"


# -------------------------------------------------------------------------------- training parametrizations
class StraightThrough(nn.Module):
    """Parametrization ``W -> W + (Q(W) - W).detach()``: forward on the quantized weights, gradient to ``W``."""

    def __init__(self, bits: int, bucket_size: int | None, scaling: Scaling, stochastic: bool) -> None:
        super().__init__()
        self.bits, self.bucket_size, self.scaling, self.stochastic = bits, bucket_size, scaling, stochastic

    def forward(self, w: Tensor) -> Tensor:
        q = quantize(w, self.bits, self.bucket_size, self.scaling, self.stochastic and self.training)
        return w + (q - w).detach()


class LearnedPoints(nn.Module):
    """Parametrization for DQ: ``W -> alpha_b * p[nearest(sc(W))] + beta_b`` with trainable points ``p``."""

    def __init__(self, w: Tensor, bits: int, bucket_size: int | None, per_bucket: bool) -> None:
        super().__init__()
        self.bucket_size = bucket_size
        self.points = nn.Parameter(quantile_points(w, bits, bucket_size, per_bucket))

    def forward(self, w: Tensor) -> Tensor:
        rows, n = buckets(w.detach(), self.bucket_size)
        alpha, beta = scales(rows, "linear")
        x = scaled(rows, alpha, beta)
        p, _ = torch.sort(self.points, dim=-1)
        idx = nearest(x, p)
        v = p[idx] if p.dim() == 1 else torch.gather(p, 1, idx)
        q = alpha[:, None] * v + beta[:, None]
        return q.reshape(-1)[:n].reshape(w.shape)

    def codes(self, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(codes, alpha, beta, sorted points)`` of ``w`` for packing."""
        with torch.no_grad():
            rows, n = buckets(w.detach(), self.bucket_size)
            alpha, beta = scales(rows, "linear")
            p, _ = torch.sort(self.points.detach(), dim=-1)
            idx = nearest(scaled(rows, alpha, beta), p)
            return idx.reshape(-1)[:n].reshape(w.shape), alpha, beta, p


# ---------------------------------------------------------------------------------------------- the methods
Teacher = str | TeacherSpec | nn.Module | None
POLINO_FINETUNE = FineTune(epochs=5, optimizer="sgd", lr=1e-3, momentum=0.9, nesterov=True, weight_decay=2.2e-4,
                           temperature=2.0, alpha=0.7)
DQ_FINETUNE = FineTune(epochs=5, optimizer="sgd", lr=1e-5, momentum=0.9, nesterov=True, weight_decay=0.0,
                       temperature=2.0, alpha=0.7)


def _teacher_finetune(finetune: FineTune, teacher: Any, data: Any, method: str) -> FineTune:
    if finetune.nesterov and (finetune.optimizer not in (None, "sgd") or finetune.momentum == 0):
        finetune = dataclasses.replace(finetune, nesterov=False)  # the default's Nesterov only applies to SGD
    if finetune.teacher is not None and teacher is not None:
        raise ConfigError(f"{method}: teacher is set both on the method and in its finetune; give it once")
    teacher = teacher if teacher is not None else finetune.teacher
    if teacher is None:
        return finetune
    return dataclasses.replace(finetune, teacher=load_teacher(teacher, data))


def _replace(model: nn.Module, name: str, layer: nn.Module, codes: Tensor, alpha: Tensor, beta: Tensor | None,
             bits: int, bucket_size: int | None, points: Tensor | None = None) -> None:
    set_module(model, name, QuantizedLayer(layer, codes, alpha, beta, bits, bucket_size, points))


@dataclasses.dataclass(frozen=True)
class QuantizedDistill(MethodConfig):
    """Polino et al.'s quantized distillation: train with the weights quantized each step, distilling from a teacher.

    Args:
        teacher: a ``.cnz`` path, an ``nn.Module`` or ``{model: ..., train: {...}}``; ``None`` = plain quantized
            training with cross-entropy (the baseline the paper compares with).
        bits: bits per weight (``2^bits`` uniform levels per bucket).
        bucket_size: weights per bucket (``None`` = one bucket per tensor).
        scaling: ``"linear"`` (min-max per bucket) or ``"absmax"``.
        stochastic: stochastic rounding during training (the final weights are rounded deterministically).
        layers: Linear/Conv layers to quantize (``None`` = all); the paper leaves the first and last layers of deep
            students in float: ``exclude: [conv1, fc]``.
        exclude: patterns left in float.
        finetune: the training run; default the authors' SGD (Nesterov 0.9, lr 1e-3, weight decay 2.2e-4, 5
            epochs) and their loss weights ``alpha = 0.7``, ``temperature = 2``.
    """

    method = "quantized-distill"
    description = "Quantized distillation (Polino et al.): uniform bucketed quantization trained against a teacher"
    kinds = QUANT_LAYERS
    replaces = True
    example = {"bits": 4, "teacher": {"model": "lenet300", "train": {"epochs": 1}}, "finetune": {"epochs": 1}}

    teacher: Teacher = None
    bits: QBits = 4
    bucket_size: BucketSize = 256
    scaling: Scaling = "linear"
    stochastic: bool = False
    layers: Patterns = None
    exclude: Patterns = None
    finetune: FineTune | None = POLINO_FINETUNE

    def validate(self) -> None:
        check(self.finetune is not None or self.teacher is None,
              "a teacher needs a training run; set finetune (or drop the teacher to only quantize)")


@register_method(QuantizedDistill)
def quantized_distill(model: nn.Module, config: QuantizedDistill, data: Any, target: Target) -> nn.Module:
    """Quantized distillation of ``model`` in place; the selected layers become :class:`QuantizedLayer` s."""
    layers = target.layers
    if config.finetune is not None:
        require_data(data, config.method)
        finetune = _teacher_finetune(config.finetune, config.teacher, data, config.method)
        try:
            for m in layers.values():
                parametrize.register_parametrization(
                    m, "weight", StraightThrough(config.bits, config.bucket_size, config.scaling, config.stochastic),
                    unsafe=True)
            run_finetune(model, data, finetune, config.method)
        finally:
            for m in layers.values():
                if parametrize.is_parametrized(m, "weight"):
                    parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
    for name, m in layers.items():
        codes, alpha, beta = encode(m.weight, config.bits, config.bucket_size, config.scaling)
        _replace(model, name, m, codes, alpha, beta if config.scaling == "linear" else None, config.bits,
                 config.bucket_size)
    return model


@dataclasses.dataclass(frozen=True)
class DifferentiableQuantize(MethodConfig):
    """Polino et al.'s differentiable quantization: learn non-uniform quantization points, the weights held fixed.

    Args:
        teacher: as for :class:`QuantizedDistill`; ``None`` = cross-entropy (the authors' code distils from the
            float model itself: pass it as the teacher for that).
        bits: ``2^bits`` points per layer (or per bucket).
        bucket_size: weights per bucket for the min-max scaling (``None`` = one per tensor).
        points: ``"layer"`` (one set of points per layer, the authors' code) or ``"bucket"``.
        layers: Linear/Conv layers to quantize (``None`` = all).
        exclude: patterns left in float.
        finetune: the training of the points; default the authors' SGD (Nesterov 0.9) at lr 1e-5 for 5 epochs,
            ``alpha = 0.7``, ``temperature = 2``; ``None`` = quantize at the quantile points without training.
    """

    method = "differentiable-quantize"
    description = "Differentiable quantization (Polino et al.): learned non-uniform points per layer, weights fixed"
    kinds = QUANT_LAYERS
    replaces = True
    example = {"bits": 2, "teacher": {"model": "lenet300", "train": {"epochs": 1}}, "finetune": {"epochs": 1}}

    teacher: Teacher = None
    bits: QBits = 4
    bucket_size: BucketSize = 256
    points: Literal["layer", "bucket"] = "layer"
    layers: Patterns = None
    exclude: Patterns = None
    finetune: FineTune | None = DQ_FINETUNE


@register_method(DifferentiableQuantize)
def differentiable_quantize(model: nn.Module, config: DifferentiableQuantize, data: Any, target: Target
                            ) -> nn.Module:
    """Learn quantization points for ``model``'s selected layers in place; they become :class:`QuantizedLayer` s."""
    layers = target.layers
    per_bucket = config.points == "bucket"
    params = {}
    try:
        for name, m in layers.items():
            parametrize.register_parametrization(
                m, "weight", LearnedPoints(m.weight, config.bits, config.bucket_size, per_bucket), unsafe=True)
        if config.finetune is not None:
            require_data(data, config.method)
            finetune = _teacher_finetune(config.finetune, config.teacher, data, config.method)
            points = {id(m.parametrizations.weight[0].points) for m in layers.values()}
            for p in model.parameters():
                if id(p) not in points:
                    params[p] = p.requires_grad
                    p.requires_grad_(False)
            run_finetune(model, data, finetune, config.method)
        for name, m in layers.items():
            codes, alpha, beta, p = m.parametrizations.weight[0].codes(m.parametrizations.weight.original)
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
            _replace(model, name, m, codes, alpha, beta, config.bits, config.bucket_size, p)
    finally:
        for p, flag in params.items():
            p.requires_grad_(flag)
        for m in layers.values():
            if parametrize.is_parametrized(m, "weight"):
                strip_parametrizations(m, "weight")
    return model


__all__ = ["QuantizedDistill", "DifferentiableQuantize", "QuantizedLayer", "quantize", "encode", "decode", "buckets",
           "scales", "nearest", "quantile_points", "StraightThrough", "LearnedPoints", "quantized_distill",
           "differentiable_quantize"]
