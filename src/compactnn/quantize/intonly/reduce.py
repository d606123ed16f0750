"""7-bit activations (``IntegerOnly(reduce_range=True)``): every activation code in [0, 127].

This is what torch's x86 int8 configuration does by default (``reduce_range=True`` on the activation observers), and
for the same reason: on CPUs without VNNI, ``vpmaddubsw`` (unsigned 8-bit times signed 8-bit, pairs summed into a
saturating int16) multiplies twice as many values an instruction as the exact 16-bit ``vpmaddwd``, and with codes of
at most 127 its pair sums (|a0·w0 + a1·w1| <= 127·128·2 = 32512) cannot saturate: the result is exact. The price is
one bit of activation resolution (each scale is about twice as coarse).

The activation observers quantize on [0, 127] (``ActQuant.qmax``), so every value's scale and zero point are those of
7-bit codes; :func:`restrict_codes` then makes the program produce codes of at most 127 everywhere it clamps: each
op's ``qmax``, each lookup table, and the input quantizer (the input entry's ``qmax``). Ops that only move or average
codes keep the bound. Softmax has no clamp of its own and keeps [0, 255] (a conv reading its output uses the 16-bit
kernels: the native engine picks the 8-bit products only where a conv's input codes are provably at most 127).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ...errors import ModelError
from . import ir
from .fakequant import ActQuant

#: The highest activation code with 7-bit activations.
QMAX7 = 127


def has_clamp(op: ir.Op) -> bool:
    """Whether ``op`` clamps its output codes to ``[qmin, qmax]`` (fields of its own)."""
    return any(f.name == "qmax" for f in dataclasses.fields(op))


def check_input_codes(q: torch.Tensor, qmax: int) -> None:
    """Refuse input codes above ``qmax`` (a model with 7-bit activations; the 8-bit products of the AVX2 path need
    the bound), with one line."""
    if qmax < 255 and q.numel() and int(q.max()) > qmax:
        raise ModelError(f"input codes go up to {int(q.max())}, above this model's input qmax {qmax} (7-bit "
                         "activations); quantize with quantize_input, or clamp the codes")


def set_activation_qmax(model: nn.Module, qmax: int) -> None:
    """Every activation observer of a prepared model quantizes on [0, ``qmax``] (before calibration)."""
    for m in model.modules():
        if isinstance(m, ActQuant):
            m.qmax = int(qmax)


def restrict_codes(model, qmax: int = QMAX7) -> None:
    """Make an :class:`.model.IntegerModel` (in place) produce codes of at most ``qmax``: ops with a clamp get
    ``qmax = min(qmax, op.qmax)`` (and ``qmin`` no higher), lookup tables are clamped, the input quantizer gets
    ``qmax``. Its scales must already be those of ``qmax`` codes (the observers' ``qmax``)."""
    if not 0 < qmax <= 255:
        raise ModelError(f"qmax must be in [1, 255], got {qmax}")
    if int(model.input["zero_point"]) > qmax:
        raise ModelError(f"the input zero point {model.input['zero_point']} is above qmax {qmax}; calibrate with "
                         f"the observers' qmax set to {qmax}")
    ops = []
    for op in model.ops:
        if has_clamp(op):
            op = dataclasses.replace(op, qmin=min(op.qmin, qmax), qmax=min(op.qmax, qmax))
        elif isinstance(op, ir.Lut):
            with torch.no_grad():
                getattr(model, op.table).clamp_(max=qmax)
        ops.append(op)
    model.ops = ops
    model.input = {**model.input, "qmax": int(qmax)}
    model._fast = None


__all__ = ["QMAX7", "check_input_codes", "has_clamp", "restrict_codes", "set_activation_qmax"]
