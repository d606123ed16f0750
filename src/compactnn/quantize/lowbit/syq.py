"""SYQ: symmetric quantization (Faraone et al., CVPR 2018), binary or ternary weights with learned scales.

From the paper and the authors' TensorFlow code (``quantize.py``, read, not copied):

- threshold ``delta = eta * max|W|`` over the layer, held constant (no gradient); ``eta = 0`` is binary,
  ``eta = 0.05`` the ternary default;
- ``Q(W) = alpha_g * sign(W) * [|W| > delta]`` with one learned scale per group: per kernel position (``"pixel"``,
  ``kh * kw`` scales per conv layer, shared by all channels), or per row (``"row"``); one per FC layer;
- scales start at the group's mean ``|W|`` (warm start from the float model);
- gradients: the latent weights get ``dL/dQ`` straight through; ``alpha_g`` gets ``sum over its group of
  dL/dQ * sign(W) * mask``. Choice: this is the autograd of ``alpha_g * t`` and what the authors' code computes
  (its last ``w * masker`` multiply is a plain product); the project notes' "not multiplied by sign(W)" reading of
  the paper's formula would make a symmetric scale move the same way for positive and negative weights, which is not
  a gradient of anything, so it is not followed. (The authors' code also scales the latent gradient by
  ``alpha``; with Adam that is close to a per-group learning-rate change, and the straight-through identity is kept.)
- activations clipped to [0, 1] and quantized to ``act_bits`` (8 in the paper): ``floor(x (2^k-1) + 0.5)/(2^k-1)``;
- Adam (the official schedule) from the float model; the first conv and the last FC stay float.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from torch import nn

from ...api import register_method
from ...config import Bits, FineTune, Range, check
from ...layers import Target
from .base import LowBitConfig, run_lowbit
from .quantizers import BinaryWeight, TernaryWeight

__all__ = ["SYQ"]


@dataclasses.dataclass(frozen=True)
class SYQ(LowBitConfig):
    """SYQ: binary (``weight_bits=1``) or ternary (``weight_bits=2``) weights with learned symmetric scales.

    Args:
        eta: threshold factor, ``delta = eta * max|W|``; None: 0.05 for ternary, 0 for binary. A binary layer has
            no threshold: ``eta > 0`` with ``weight_bits=1`` (a ternary quantizer in 1 bit) is an error.
        scales: conv scale groups: ``"pixel"`` (one per kernel position, the paper's), ``"row"`` (one per output
            channel) or ``"layer"``. FC layers always get one scale.
        act_bits: activation bits (8 in the paper); None keeps float activations.
        finetune: Adam from the float model (the official schedule).
    """

    method = "syq"
    description = "Binary/ternary weights with learned pixel-wise symmetric scales, k-bit activations (SYQ, 2018)"
    example = {"weight_bits": 2, "act_bits": 8, "finetune": {"epochs": 1}}

    weight_bits: Bits = 2
    act_bits: Bits | None = 8
    eta: Annotated[float, Range(0.0, 1.0, hi_open=True, note="threshold factor, delta = eta * max|W|")] | None = None
    scales: Literal["pixel", "row", "layer"] = "pixel"
    finetune: FineTune | None = FineTune(epochs=5, optimizer="adam", lr=1e-4)

    def validate(self) -> None:
        super().validate()
        check(self.weight_bits in (1, 2), f"weight_bits must be 1 (binary) or 2 (ternary), got {self.weight_bits}")
        check(not (self.weight_bits == 1 and self.eta not in (None, 0.0)),
              f"eta={self.eta} makes ternary weights, which need weight_bits=2 (1 bit is binary, eta 0)")

    @property
    def threshold(self) -> float:
        """The ``eta`` in use (0.05 ternary, 0 binary when unset)."""
        return (0.05 if self.weight_bits == 2 else 0.0) if self.eta is None else self.eta


def _group(config: SYQ, layer: nn.Module) -> str:
    return config.scales if isinstance(layer, nn.Conv2d) else "layer"


@register_method(SYQ)
def _syq(model: nn.Module, config: SYQ, data: Any, target: Target) -> nn.Module:
    def make(name: str, layer: nn.Module):
        if config.weight_bits == 1:
            return BinaryWeight(layer.weight, _group(config, layer), "learned")
        return TernaryWeight(layer.weight, _group(config, layer), "max", config.threshold, "learned")

    return run_lowbit(model, config, data, target, make, config.act_bits)
