"""INQ: incremental network quantization (Zhou et al., ICLR 2017), power-of-two weights.

Per layer, with ``s = max|W|``: ``n1 = floor(log2(4 s / 3))`` and ``n2 = n1 + 1 - 2^(b-1) / 2``; the weights take
values in ``{0, +-2^n2, ..., +-2^n1}`` (one of the ``b`` bits stands for zero, so ``2^(b-2)`` magnitudes and
``2^(b-1) + 1`` values: 17 at 5 bits, stored at 5 bits). Rule: ``beta * sign(w)`` where
``(alpha + beta)/2 <= |w| < 3 beta / 2`` for adjacent ``alpha < beta``, else 0.

Incremental: the accumulated portions (0.5, 0.75, 0.875, 1.0) of each layer's weights, largest ``|w|`` first, are
frozen at their power-of-two values; after each portion below 1.0 the remaining float weights are retrained
(``finetune``). The exponent range is fixed from the float weights at the start.

Layers: Conv2d, ConvTranspose2d (stored as :class:`.modules.LowBitConvTranspose2d`) and Linear; the first and last
of them stay float by default. The integer engine (``to_integer``) does not take transposed convs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ...api import register_method
from ...config import Bits, FineTune, check
from ...layers import Target
from .base import LowBitConfig
from .incremental import check_portions, run_incremental
from .quantizers import Pow2Weight

__all__ = ["INQ"]


@dataclasses.dataclass(frozen=True)
class INQ(LowBitConfig):
    """Incremental power-of-two weights.

    Args:
        weight_bits: 5 (the paper's default); 2 to 6 supported (2 bits: ``{0, +-2^n1}``).
        portions: accumulated fractions of each layer quantized at each step, increasing, ending at 1.0.
        finetune: the retraining after each step (the weights still float).
        act_bits: optional [0, 1]-clipped activations (None: float, as the paper).
    """

    method = "inq"
    #: INQ's power-of-two codes work for any weight tensor; transposed convs (FCN decoders) are quantized too.
    kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
    description = "Incremental power-of-two weight quantization, 5 bits by default (INQ, Zhou et al. 2017)"
    example = {"weight_bits": 3, "portions": [0.5, 1.0], "finetune": {"epochs": 1}}

    weight_bits: Bits = 5
    portions: tuple[float, ...] = (0.5, 0.75, 0.875, 1.0)
    finetune: FineTune | None = FineTune(epochs=2)

    def validate(self) -> None:
        super().validate()
        check(2 <= self.weight_bits <= 6, f"inq supports weight_bits 2 to 6, got {self.weight_bits}")
        problem = check_portions(self.portions)
        check(problem is None, problem or "")


@register_method(INQ)
def _inq(model: nn.Module, config: INQ, data: Any, target: Target) -> nn.Module:
    return run_incremental(model, config, data, target, lambda n, m: Pow2Weight(m.weight, config.weight_bits),
                           config.portions, config.finetune, config.act_bits)
