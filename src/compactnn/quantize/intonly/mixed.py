"""Mixed integer/float models: ``IntegerOnly(mixed=True)`` converts every part of a model that the integer engine
supports and leaves the rest in float, with a quantize at the entry and a dequantize at the exit of each integer
part (an :class:`~.model.IntegerModel` takes and returns float tensors).

The parts are found top-down over the module tree: the whole model is tried first; a module that cannot be
converted (an op the engine lacks, inputs that are not one tensor) is split into its children, and so on down to
the layers. Each part is calibrated after training (the ``mode`` is always ``"calibrate"`` here) on the inputs it
sees when the model runs on the calibration batches. The float parts are listed, with the reason, in
``model.compactnn_skipped`` and in a warning. This is never the default: ``IntegerOnly()`` refuses a model it cannot
convert whole, naming the first unsupported op and its source line.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ...errors import CompactnnError, ConfigError
from ...graph import first_line, set_module
from .calibrate import calibration_batches


def _captured_inputs(model: nn.Module, batches: list[torch.Tensor], limit: int = 512) -> dict[str, torch.Tensor]:
    """``{module name: its inputs over the calibration batches}`` for every module called once per forward with
    one tensor argument (at most ``limit`` rows each)."""
    seen: dict[str, list[torch.Tensor]] = {}
    calls: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        def hook(mod, args, kwargs, _name=name):
            calls[_name] = calls.get(_name, 0) + 1
            if len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
                seen.setdefault(_name, []).append(args[0].detach())
        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        was = model.training
        model.eval()
        with torch.no_grad():
            for x in batches:
                model(x)
        model.train(was)
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v)[:limit] for n, v in seen.items() if calls[n] == len(batches) and len(v) == len(batches)}


def integer_mixed(model: nn.Module, config: Any, data: Any) -> nn.Module:
    """Convert the parts of ``model`` that the integer engine supports (see the module docstring); returns the
    model with :class:`~.model.IntegerModel` parts, or the whole :class:`~.model.IntegerModel` if all of it
    converts."""
    from ...data import as_bundle
    from .method import integer_only

    batches = calibration_batches(data, config.calibration_batches)
    inputs = _captured_inputs(model, batches)
    part_config = dataclasses.replace(config, mode="calibrate", mixed=False, finetune=None)
    reasons: dict[str, str] = {}
    converted: list[str] = []

    def convert(module: nn.Module, name: str):
        x = inputs.get(name)
        if x is None:
            reasons[name] = "its forward takes more than one tensor, or it runs more than once per call"
            return None
        try:
            bundle = as_bundle(TensorDataset(x, torch.zeros(len(x), dtype=torch.int64)))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # in a Sequential, a bare layer is a leaf of the trace (not traced through into F.conv2d)
                return integer_only(nn.Sequential(copy.deepcopy(module)), part_config, bundle)
        except CompactnnError as err:
            reasons[name] = first_line(err)
            return None

    whole = convert(model, "")
    if whole is not None:
        return whole

    def visit(module: nn.Module, prefix: str) -> None:
        for child_name, child in list(module.named_children()):
            name = f"{prefix}.{child_name}" if prefix else child_name
            if not any(True for _ in child.parameters()):
                continue  # nothing to quantize: stays float
            part = convert(child, name)
            if part is not None:
                set_module(model, name, part)
                converted.append(name)
            else:
                visit(child, name)

    visit(model, "")
    if not converted:
        raise ConfigError(f"integer-only (mixed): no part of {type(model).__name__} converts; the model itself: "
                          f"{reasons.get('', 'unknown')}")
    floats = {}
    for name, module in model.named_modules():
        if name and any(True for _ in module.parameters(recurse=False)) and \
                not any(name == c or name.startswith(c + ".") for c in converted):
            owner = max((r for r in reasons if r and (name == r or name.startswith(r + "."))), key=len, default="")
            floats[name] = f"left in float: {reasons.get(owner) or reasons.get('', '')}"
    left = f"{len(floats)} layer(s) left in float: {', '.join(list(floats)[:6])}" if floats else \
        "no layer with weights left in float"
    warnings.warn(f"integer-only (mixed): {len(converted)} integer part(s) ({', '.join(converted[:6])}); {left}; "
                  f"the whole model did not convert: {reasons.get('', '')}", stacklevel=3)
    model.compactnn_skipped = {**getattr(model, "compactnn_skipped", {}), **floats}
    model.compactnn_integer_parts = converted
    return model


__all__ = ["integer_mixed"]
