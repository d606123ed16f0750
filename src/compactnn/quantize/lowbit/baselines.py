"""Baselines as configs of the low-bit core: BWN, TWN, DoReFa and LSQ.

- **BWN** (Rastegari et al. 2016, binary-weight networks): ``alpha * sign(W)``, ``alpha = mean|W|``. Choice: one
  scale per layer (the issue's setting), not XNOR-Net's one per output channel.
- **TWN** (Li et al. 2016): ``delta = 0.7 * mean|W|`` per layer, ``alpha = mean|W|`` over ``|W| > delta``.
- **DoReFa** (Zhou et al. 2016): k-bit weights through ``tanh`` normalisation (1 bit: ``E|W| sign(W)``) and k-bit
  activations clipped to [0, 1].
- **LSQ** (Esser et al., ICLR 2020): uniform weights and activations with learned step sizes (per layer), gradient
  scale ``1/sqrt(N Qp)``; the modern peer. Weights are signed ``[-2^(k-1), 2^(k-1)-1]``, activations unsigned.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from torch import nn

from ...api import register_method
from ...config import Bits, FineTune, Range, check
from ...layers import Target
from .base import LowBitConfig, run_lowbit
from .quantizers import BinaryWeight, ClipQuant, DoReFaWeight, LSQQuant, LSQWeight, TernaryWeight

__all__ = ["BWN", "TWN", "DoReFa", "LSQ"]

_TINY = {"finetune": {"epochs": 1}}


@dataclasses.dataclass(frozen=True)
class BWN(LowBitConfig):
    """Binary-weight network: ``alpha * sign(W)`` with ``alpha = mean|W|`` per layer (weight_bits must be 1)."""

    method = "bwn"
    description = "Binary weights with a per-layer mean-|W| scale (BWN, Rastegari et al. 2016); baseline"
    example = _TINY

    weight_bits: Bits = 1

    def validate(self) -> None:
        super().validate()
        check(self.weight_bits == 1, f"binary weights are 1 bit; got weight_bits={self.weight_bits}")


@dataclasses.dataclass(frozen=True)
class TWN(LowBitConfig):
    """Ternary weight network: ``delta = ratio * mean|W|``, ``alpha`` = mean of the kept ``|W|`` (per layer).

    Args:
        ratio: threshold factor (0.7 in the paper).
    """

    method = "twn"
    description = "Ternary weights, threshold 0.7 mean|W|, per-layer scale (TWN, Li et al. 2016); baseline"
    example = _TINY

    weight_bits: Bits = 2
    ratio: Annotated[float, Range(0.0, 10.0, lo_open=True)] = 0.7

    def validate(self) -> None:
        super().validate()
        check(self.weight_bits == 2, f"ternary weights take 2 bits (3 levels); got weight_bits={self.weight_bits}")


@dataclasses.dataclass(frozen=True)
class DoReFa(LowBitConfig):
    """DoReFa-Net: k-bit weights (tanh-normalised; 1 bit: mean|W| sign) and k-bit activations clipped to [0, 1]."""

    method = "dorefa"
    description = "k-bit tanh-normalised weights and [0,1]-clipped k-bit activations (DoReFa-Net); baseline"
    example = {"weight_bits": 2, "act_bits": 2, **_TINY}

    weight_bits: Bits = 2
    act_bits: Bits | None = 2

    def validate(self) -> None:
        super().validate()
        check(self.weight_bits <= 8, f"dorefa supports weight_bits 1 to 8, got {self.weight_bits}")


@dataclasses.dataclass(frozen=True)
class LSQ(LowBitConfig):
    """Learned step size quantization: uniform weights (signed) and activations (unsigned) with learned steps."""

    method = "lsq"
    description = "Uniform weights/activations with learned step sizes (LSQ, Esser et al. 2020); modern baseline"
    example = {"weight_bits": 2, "act_bits": 2, **_TINY}

    weight_bits: Bits = 4
    act_bits: Bits | None = 4
    finetune: FineTune | None = FineTune(epochs=5, optimizer="adam", lr=1e-3)

    def validate(self) -> None:
        super().validate()
        check(2 <= self.weight_bits <= 8, f"lsq supports weight_bits 2 to 8 (use bwn for 1 bit), got "
              f"{self.weight_bits}")


@register_method(BWN)
def _bwn(model: nn.Module, config: BWN, data: Any, target: Target) -> nn.Module:
    return run_lowbit(model, config, data, target, lambda n, m: BinaryWeight(m.weight, "layer", "mean"),
                      config.act_bits)


@register_method(TWN)
def _twn(model: nn.Module, config: TWN, data: Any, target: Target) -> nn.Module:
    return run_lowbit(model, config, data, target,
                      lambda n, m: TernaryWeight(m.weight, "layer", "mean", config.ratio, "mean"), config.act_bits)


@register_method(DoReFa)
def _dorefa(model: nn.Module, config: DoReFa, data: Any, target: Target) -> nn.Module:
    return run_lowbit(model, config, data, target, lambda n, m: DoReFaWeight(m.weight, config.weight_bits),
                      config.act_bits)


@register_method(LSQ)
def _lsq(model: nn.Module, config: LSQ, data: Any, target: Target) -> nn.Module:
    bits = config.act_bits
    return run_lowbit(model, config, data, target, lambda n, m: LSQWeight(m.weight, config.weight_bits),
                      (lambda name: LSQQuant(bits)) if bits is not None else None)
