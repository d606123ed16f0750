"""Putting the quantizers into a model and taking them out again: the part every low-bit method shares.

- :func:`choose_layers`: the ``Target`` that ``compress`` resolved, less the first and the last weight layer (module
  order) when the config leaves ``layers`` unset and ``float_first_last`` is on, as the papers do.
- :func:`attach`: parametrize each chosen layer's weight with a :class:`.quantizers.WeightQuantizer`.
- :func:`quantize_activations`: replace every ``nn.ReLU`` module with an activation quantizer (the quantizers act as
  the ReLU: they map negatives to 0). A model without ``nn.ReLU`` modules has no activation to clip: ConfigError.
  Choice: every ReLU is replaced, also the one that feeds the float last layer (so the last layer's input is
  low-bit too, which the integer engine needs anyway); an activation that is not a ReLU module is left float.
- :func:`harden`: after training, replace each parametrized layer by a :class:`.modules.LowBitConv2d` /
  :class:`.modules.LowBitLinear` holding the integer codes and scales (outputs unchanged, bit for bit).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from ...errors import ConfigError, ModelError
from ...graph import set_module
from ...layers import Target, weight_layers
from .modules import lowbit_from
from .quantizers import ClipQuant, WeightQuantizer

__all__ = ["KINDS", "choose_layers", "attach", "quantize_activations", "harden", "quantizers", "check_act_bits"]

KINDS: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


def choose_layers(model: nn.Module, config: Any, target: Target) -> dict[str, nn.Module]:
    """The layers to quantize: ``target.layers`` minus the first and last layer of the config's ``kinds`` (default
    Conv/Linear) of the model when ``config.layers`` is None and ``config.float_first_last`` is True.

    Raises:
        ModelError: nothing is left to quantize (e.g. a two-layer model with first and last kept float).
    """
    chosen = dict(target.layers)
    if getattr(config, "layers", None) is None and getattr(config, "float_first_last", True):
        names = list(weight_layers(model, getattr(type(config), "kinds", None) or KINDS))
        for name in {names[0], names[-1]} if names else set():
            chosen.pop(name, None)
    if not chosen:
        raise ModelError(f"{type(config).method}: no layer left to quantize (the first and last layers stay float "
                         "by default); set layers: [...] or float_first_last: false")
    return chosen


def attach(layers: dict[str, nn.Module], make: Callable[[str, nn.Module], WeightQuantizer]) -> None:
    """Parametrize ``weight`` of each layer with ``make(name, layer)`` (``unsafe``: no shape checks needed)."""
    for name, layer in layers.items():
        if parametrize.is_parametrized(layer, "weight"):
            raise ModelError(f"layer {name!r} already has a parametrized weight; harden or strip it first")
        q = make(name, layer)
        parametrize.register_parametrization(layer, "weight", q, unsafe=True)


def quantizers(model: nn.Module) -> dict[str, WeightQuantizer]:
    """``{layer name: weight quantizer}`` of the parametrized layers of ``model``."""
    out = {}
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m, "weight"):
            q = m.parametrizations.weight[0]
            if isinstance(q, WeightQuantizer):
                out[name] = q
    return out


def check_act_bits(model: nn.Module, config: Any) -> None:
    """ConfigError when ``act_bits`` is set on a model that has no ``nn.ReLU`` module to replace."""
    if getattr(config, "act_bits", None) is not None and not any(isinstance(m, nn.ReLU) for m in model.modules()):
        raise ConfigError(f"{type(config).method}: act_bits={config.act_bits} but {type(model).__name__} has no "
                          "nn.ReLU activation to clip and quantize; set act_bits: null")


def quantize_activations(model: nn.Module, make: Callable[[str], nn.Module] | int | None) -> list[str]:
    """Replace every ``nn.ReLU`` module by ``make(name)`` (an int: :class:`.quantizers.ClipQuant` of that many bits;
    None: nothing). Returns the replaced names."""
    if make is None:
        return []
    if isinstance(make, int):
        bits = make
        make = lambda name: ClipQuant(bits)  # noqa: E731
    names = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU) and n]
    for name in names:
        set_module(model, name, make(name))
    return names


@torch.no_grad()
def harden(model: nn.Module) -> nn.Module:
    """Replace every layer whose weight is parametrized by a weight quantizer with its low-bit module (in place).

    The latent float weights and the quantizers' training state are dropped; the model computes exactly what it
    computed with fake quantization (in eval mode)."""
    for name, q in quantizers(model).items():
        layer = model.get_submodule(name)
        latent = layer.parametrizations.weight.original
        codes, scale = q.codes(latent)
        bits = int(getattr(q, "bits", 8))
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
        new = lowbit_from(layer, codes, scale, q.decode_mode, bits)
        if name:
            set_module(model, name, new)
        else:
            raise ModelError("cannot harden a model that is itself a single layer; wrap it in nn.Sequential")
    return model
