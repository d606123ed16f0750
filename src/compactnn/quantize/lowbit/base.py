"""The config base and the handler every low-bit method shares (attach, quantize activations, train, harden)."""

from __future__ import annotations

import contextvars
import dataclasses
from typing import Any, Callable

from torch import nn

from ...config import Bits, FineTune, MethodConfig, Patterns, check
from ...layers import Target, require_data, run_finetune
from .core import KINDS, attach, check_act_bits, choose_layers, harden, quantize_activations
from .quantizers import WeightQuantizer

__all__ = ["LowBitConfig", "run_lowbit"]


@dataclasses.dataclass(frozen=True)
class LowBitConfig(MethodConfig):
    """Fields every low-bit method has.

    Args:
        weight_bits: bits per weight code (1 binary, 2 ternary or 2-bit, ...).
        act_bits: bits of the activations that replace the ReLUs; None keeps float activations.
        layers: Conv/Linear layers to quantize (patterns); None: all but the first and last (see
            ``float_first_last``).
        exclude: patterns left float.
        float_first_last: with ``layers`` unset, keep the model's first and last weight layers float (the papers do).
        finetune: training with the quantizers in place (None: no training).
    """

    kinds = KINDS
    example_model = "lenet300"

    weight_bits: Bits = 2
    act_bits: Bits | None = None
    layers: Patterns = None
    exclude: Patterns = None
    float_first_last: bool = True
    finetune: FineTune | None = FineTune(epochs=5)

    def validate(self) -> None:
        check(self.act_bits is None or self.act_bits <= 16,
              f"act_bits must be <= 16 (or null for float activations), got {self.act_bits}")


#: Set by :func:`compactnn.prepare`: ``run_lowbit`` stops once the quantizers are in (no training, no hardening).
PREPARE_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("lowbit_prepare_only", default=False)


def run_lowbit(model: nn.Module, config: LowBitConfig, data: Any, target: Target,
               make_weight: Callable[[str, nn.Module], WeightQuantizer],
               make_act: Callable[[str], nn.Module] | int | None,
               finetune: FineTune | None = None, before: Callable[[nn.Module, dict], None] | None = None) -> nn.Module:
    """Attach weight quantizers to the chosen layers, replace ReLUs with activation quantizers, fine-tune, harden.

    Args:
        make_weight: ``make_weight(name, layer)`` -> weight quantizer for that layer.
        make_act: activation quantizer factory (or bits for :class:`.quantizers.ClipQuant`, or None).
        finetune: the training (default ``config.finetune``).
        before: ``before(model, layers)`` run after the quantizers are in and before training.
    """
    method = type(config).method
    check_act_bits(model, config)
    layers = choose_layers(model, config, target)
    finetune = config.finetune if finetune is None else finetune
    if PREPARE_ONLY.get():
        finetune = None  # compactnn.prepare: the user trains, then compactnn.convert hardens
    if finetune is not None:
        require_data(data, method)
    attach(layers, make_weight)
    quantize_activations(model, make_act if config.act_bits is not None else None)
    if before is not None:
        before(model, layers)
    if PREPARE_ONLY.get():
        return model
    if finetune is not None:
        run_finetune(model, data, finetune, method)
    return harden(model)
