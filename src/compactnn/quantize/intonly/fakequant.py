"""Simulated quantization for training (Jacob et al., CVPR 2018, section 3): fake-quant ops and activation observers.

- :func:`fake_quant` is TensorFlow's ``FakeQuantWithMinMaxVars``: the range is nudged so real 0 is exact
  (:func:`.qparams.nudged_range`), values are clamped to it and rounded to the grid,
  ``round((clamp(r) − a)/s)·s + a`` with ``round = floor(· + 0.5)`` (the argument is ``>= 0``, so this is
  round half away from zero, as the converter's :func:`.qparams.quantize`). The gradient is straight through
  inside the nudged range and zero outside.
- :func:`fake_quant_weight` is the symmetric narrow-range int8 weight quantizer (``s = max|w|/127``, per tensor or
  per output channel), identical to the conversion's :func:`.qparams.symmetric_int8` + :func:`.qparams.quantize`.
- :class:`ActQuant` observes an activation (EMA of batch min/max in training, or min/max / percentile while
  calibrating) and fake-quantizes it once its range is known and the delay is over.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from compactnn.errors import ConfigError, ModelError

from .qparams import nudged_range

__all__ = ["ActQuant", "fake_quant", "fake_quant_weight", "round_half_away_t", "weight_scale"]


def round_half_away_t(x: Tensor) -> Tensor:
    """Round a float tensor to integers, ties away from zero (``std::round``), keeping the dtype."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def fake_quant(x: Tensor, rmin: float, rmax: float, qmin: int = 0, qmax: int = 255) -> Tensor:
    """TF ``FakeQuantWithMinMaxVars`` on ``x`` with range ``[rmin, rmax]`` (nudged), straight-through gradient.

    Args:
        x: float tensor.
        rmin: range minimum (clipped to <= 0 by the nudge).
        rmax: range maximum (clipped to >= 0).
        qmin: lowest code (0 for uint8).
        qmax: highest code (255 for uint8).

    Returns:
        the fake-quantized tensor; its gradient w.r.t. ``x`` is 1 inside the nudged range, 0 outside.
    """
    scale, _, nmin, nmax = nudged_range(rmin, rmax, qmin, qmax)
    xc = torch.clamp(x, nmin, nmax)  # clamp's gradient: 1 on [nmin, nmax], 0 outside
    q = torch.floor((xc - nmin) / scale + 0.5) * scale + nmin
    return xc + (q - xc).detach()


def weight_scale(w: Tensor, per_channel: bool) -> Tensor:
    """Symmetric int8 scale ``max|w|/127`` (1.0 where all zero), per output channel (dim 0) or per tensor.

    Args:
        w: weight tensor, output channels first.
        per_channel: one scale per output channel instead of one per tensor.

    Returns:
        a detached float tensor shaped to broadcast against ``w`` (``(O, 1, ...)`` or ``()``).
    """
    w = w.detach()
    amax = w.abs().reshape(w.shape[0], -1).amax(dim=1).reshape((-1,) + (1,) * (w.dim() - 1)) if per_channel \
        else w.abs().max()
    return torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))


def fake_quant_weight(w: Tensor, per_channel: bool = True) -> Tensor:
    """Fake-quantize weights to symmetric narrow-range int8 ``[-127, 127]`` from their min/max (STE gradient).

    Args:
        w: weight tensor (output channels first).
        per_channel: one scale per output channel (else one per tensor).
    """
    s = weight_scale(w, per_channel)
    q = torch.clamp(round_half_away_t(w / s), -127, 127) * s
    return w + (q - w).detach()


class ActQuant(nn.Module):
    """Observe an activation and fake-quantize it to uint8 (asymmetric, nudged range).

    Observers (``self.observer``): ``"ema"`` (training: ``m ← decay·m + (1 − decay)·batch_min``, same for max; the
    first batch sets the range), ``"minmax"`` (calibration: running min and max over all batches) and
    ``"percentile"`` (calibration: the mean over batches of the ``100 − p`` and ``p`` percentiles). Observation
    happens in training mode, or in any mode while ``self.calibrating`` is True. Fake quantization happens once the
    range is known, when ``self.enabled`` is True and, in training mode, after ``act_delay`` training steps.

    Args:
        ema_decay: EMA decay of the min/max, in [0, 1) (0.999 as TF and Distiller).
        act_delay: training steps (forward passes in training mode) before fake quantization starts.

    ``self.qmax`` is the highest code (255; 127 for 7-bit activations, ``IntegerOnly(reduce_range=True)``).
    """

    def __init__(self, ema_decay: float = 0.999, act_delay: int = 0) -> None:
        super().__init__()
        self.qmax = 255
        if not 0.0 <= ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {ema_decay}")
        self.ema_decay = float(ema_decay)
        self.act_delay = int(act_delay)
        self.observer = "ema"
        self.percentile = 99.99
        self.calibrating = False
        self.enabled = True
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("batches", torch.tensor(0, dtype=torch.int64))  # batches observed
        self.register_buffer("steps", torch.tensor(0, dtype=torch.int64))  # training forwards seen

    @property
    def observed(self) -> bool:
        """True once at least one batch has been observed."""
        return bool(self.batches > 0)

    def reset(self) -> None:
        """Forget the observed range."""
        self.min_val.zero_()
        self.max_val.zero_()
        self.batches.zero_()

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        """Update the range from one batch ``x`` with the current observer."""
        if self.observer == "percentile":
            flat = x.detach().reshape(-1).float()
            if flat.numel() > 1 << 22:  # torch.quantile's size limit; a strided subsample keeps it cheap
                flat = flat[:: math.ceil(flat.numel() / (1 << 22))]
            p = self.percentile / 100.0
            lo, hi = torch.quantile(flat, torch.tensor([1.0 - p, p])).tolist()
        else:
            lo, hi = float(x.min()), float(x.max())
        n = int(self.batches)
        if n == 0:
            self.min_val.fill_(lo)
            self.max_val.fill_(hi)
        elif self.observer == "ema":
            d = self.ema_decay
            self.min_val.mul_(d).add_((1 - d) * lo)
            self.max_val.mul_(d).add_((1 - d) * hi)
        elif self.observer == "minmax":
            self.min_val.fill_(min(lo, float(self.min_val)))
            self.max_val.fill_(max(hi, float(self.max_val)))
        elif self.observer == "percentile":  # running mean of the per-batch percentiles
            self.min_val.mul_(n / (n + 1)).add_(lo / (n + 1))
            self.max_val.mul_(n / (n + 1)).add_(hi / (n + 1))
        else:
            raise ConfigError(f"unknown observer {self.observer!r}; use 'ema', 'minmax' or 'percentile'")
        self.batches += 1

    def qparams(self) -> tuple[float, int]:
        """``(scale, zero_point)`` of the observed range: :func:`.qparams.nudged_range` on [0, ``qmax``]."""
        if not self.observed:
            raise ModelError("an activation range was never observed; calibrate the model (run data through it) "
                             "before converting")
        scale, zp, _, _ = nudged_range(float(self.min_val), float(self.max_val), 0, getattr(self, "qmax", 255))
        return scale, zp

    def forward(self, x: Tensor) -> Tensor:
        if self.training or self.calibrating:
            self.observe(x)
        if self.training:
            self.steps += 1
            if int(self.steps) <= self.act_delay:
                return x
        if self.enabled and not self.calibrating and self.observed:
            return fake_quant(x, float(self.min_val), float(self.max_val), 0, getattr(self, "qmax", 255))
        return x

    def extra_repr(self) -> str:
        return f"observer={self.observer}, ema_decay={self.ema_decay}, act_delay={self.act_delay}"
