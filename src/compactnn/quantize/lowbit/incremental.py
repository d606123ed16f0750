"""Incremental quantization shared by INQ and ELQ: freeze a growing portion of each layer at its quantized value,
retrain the rest, until everything is quantized."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn
from tqdm.auto import tqdm

from ...config import FineTune
from ...layers import Target, require_data, run_finetune
from .core import attach, check_act_bits, choose_layers, harden, quantize_activations, quantizers
from .quantizers import Incremental, WeightQuantizer

__all__ = ["run_incremental", "check_portions"]


def check_portions(portions: tuple[float, ...]) -> str | None:
    """The problem with ``portions`` (accumulated fractions), or None: increasing, in (0, 1], ending at 1."""
    if not portions:
        return "portions must not be empty"
    if any(not 0.0 < p <= 1.0 for p in portions):
        return f"portions must be in (0, 1], got {list(portions)}"
    if any(b <= a for a, b in zip(portions, portions[1:])):
        return f"portions must increase (accumulated fractions), got {list(portions)}"
    if portions[-1] != 1.0:
        return f"the last portion must be 1.0 (everything quantized), got {portions[-1]}"
    return None


def run_incremental(model: nn.Module, config: Any, data: Any, target: Target,
                    make_inner: Callable[[str, nn.Module], WeightQuantizer], portions: tuple[float, ...],
                    finetune: FineTune | None, act: Any = None,
                    prepare: Callable[[nn.Module, dict], None] | None = None) -> nn.Module:
    """Freeze ``portions[0]``, retrain, freeze ``portions[1]``, ... up to 1.0 (no retraining after the last), harden.

    Args:
        make_inner: the quantizer giving each layer's values (its scale fixed from the start).
        finetune: the retraining after each portion below 1.0 (None: none).
        act: activation quantizer factory or bits (see :func:`.core.quantize_activations`), or None.
        prepare: ``prepare(model, layers)`` before the quantizers go in (e.g. ELQ's curvature pass).
    """
    method = type(config).method
    check_act_bits(model, config)
    layers = choose_layers(model, config, target)
    if finetune is not None and len(portions) > 1:
        require_data(data, method)
    if prepare is not None:
        prepare(model, layers)
    attach(layers, lambda n, m: Incremental(m.weight, make_inner(n, m)))
    quantize_activations(model, act)
    for p in tqdm(portions, desc=f"{method} portions", leave=False, disable=None):
        for name, q in quantizers(model).items():
            q.freeze(model.get_submodule(name).parametrizations.weight.original, p)
        if p < 1.0 and finetune is not None:
            run_finetune(model, data, finetune, method)
    return harden(model)
