"""The ``integer-only`` method (Jacob et al., CVPR 2018): config, handler, ``inspect`` and engine comparison.

``compress(model, IntegerOnly(), data=bundle)`` runs: :func:`.qat.prepare` (BN folding, fused activations,
observers) → :func:`.calibrate.calibrate` on a few training batches → quantization-aware fine-tuning with
:func:`compactnn.layers.run_finetune` (``mode="qat"`` with a ``finetune``) → :func:`.convert.convert`, and returns
the :class:`.model.IntegerModel`.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

import numpy as np
import torch
from torch import nn

from compactnn.api import register_method
from compactnn.config import FineTune, MethodConfig, NonNegativeInt, Range
from compactnn.errors import ConfigError, ModelError
from compactnn.layers import run_finetune

from .calibrate import calibrate, calibration_batches
from .convert import convert
from .model import IntegerModel, derived_weight_scales
from .qat import prepare
from .reduce import QMAX7, restrict_codes, set_activation_qmax

__all__ = ["IntegerOnly", "inspect", "int_mismatches", "integer_only"]


@dataclasses.dataclass(frozen=True)
class IntegerOnly(MethodConfig):
    """Integer-arithmetic-only inference: uint8 activations, int8 weights, int32 bias, fixed-point requantization.

    Args:
        bits: bit width; only 8 is supported.
        per_channel: one weight scale per output channel (``True``), one per tensor (``False``), or ``"conv"``:
            per channel for convolutions and per tensor for linear layers (TFLite's int8 spec: Conv2D per axis,
            FullyConnected per tensor). Per-tensor rows share one scale, so their codes use a narrower part of
            [-127, 127] and compress better in the packed file.
        mode: ``"qat"`` (calibrate, then fine-tune with simulated quantization) or ``"calibrate"`` (post-training
            calibration only, no training).
        calibration: activation-range observer used for calibration: ``"minmax"`` or ``"percentile"``.
        percentile: the upper percentile for ``calibration="percentile"``, in (50, 100].
        calibration_batches: training batches (of 128) used to calibrate.
        ema_decay: decay of the EMA of activation min/max during QAT, in [0, 1).
        act_delay: QAT training steps before activations are fake-quantized.
        freeze_bn_after: QAT training steps after which folded BN uses running statistics (None: never).
        finetune: QAT fine-tuning settings; used when ``mode="qat"``; None skips it.
        engine: default engine of the result, ``"fast"`` or ``"reference"``.
        mixed: convert the parts the integer engine supports and leave the rest in float, with quantize/dequantize
            at each border (post-training calibration only; see :mod:`.mixed`). False (the default) refuses a model
            that does not convert whole.
        reduce_range: 7-bit activations, codes in [0, 127] (torch's x86 default, ``reduce_range=True``): one bit of
            activation resolution traded for speed on CPUs without AVX-512 VNNI, where the native engine can then
            use ``vpmaddubsw`` exactly (see :mod:`.reduce`). Still bit-exact between the engines.
    """

    method = "integer-only"
    description = "Integer-arithmetic-only int8 inference (Jacob et al. 2018): QAT or calibration, exact int engine"
    example = {"mode": "calibrate", "calibration_batches": 1}

    bits: Literal[8] = 8
    per_channel: bool | Literal["conv"] = True
    mode: Literal["qat", "calibrate"] = "qat"
    calibration: Literal["minmax", "percentile"] = "minmax"
    percentile: Annotated[float, Range(50.0, 100.0, lo_open=True)] = 99.99
    calibration_batches: Annotated[int, Range(1, 100_000)] = 8
    ema_decay: Annotated[float, Range(0.0, 1.0, hi_open=True)] = 0.999
    act_delay: NonNegativeInt = 0
    freeze_bn_after: NonNegativeInt | None = 1000
    finetune: FineTune | None = FineTune(epochs=2)
    engine: Literal["fast", "reference"] = "fast"
    mixed: bool = False
    reduce_range: bool = False


def _input_shape(model: nn.Module, data: Any) -> tuple:
    shape = getattr(data, "input_shape", None) or getattr(model, "input_shape", None)
    if shape is None:
        raise ConfigError("integer-only: cannot tell the input shape; pass a DataBundle with input_shape")
    return tuple(int(s) for s in shape)


@register_method(IntegerOnly)
def integer_only(model: nn.Module, config: IntegerOnly, data: Any, target: Any = None) -> IntegerModel:
    """Handler of :class:`IntegerOnly`: prepare → calibrate → (QAT fine-tune) → convert.

    Args:
        model: the float model (a copy; ``compress`` deep-copies it).
        config: the settings.
        data: a :class:`compactnn.data.DataBundle` (required: calibration needs data).

    Raises:
        ConfigError: no data.
        ModelError: the model has a layer the integer model does not support.
    """
    if config.mixed and config.reduce_range:
        raise ConfigError("integer-only: reduce_range is not supported with mixed=True; drop one of them")
    if config.mixed:
        from .mixed import integer_mixed

        return integer_mixed(model, config, data)
    batches = calibration_batches(data, config.calibration_batches)  # ConfigError without data, before any work
    shape = _input_shape(model, data)
    prepared = prepare(model, per_channel=config.per_channel, ema_decay=config.ema_decay,
                       act_delay=config.act_delay, freeze_bn_after=config.freeze_bn_after)
    if config.reduce_range:
        set_activation_qmax(prepared, QMAX7)
    calibrate(prepared, batches, config.calibration, config.percentile)
    if config.mode == "qat" and config.finetune is not None:
        run_finetune(prepared, data, config.finetune, IntegerOnly.method)
    im = convert(prepared, shape, engine=config.engine)
    if config.reduce_range:
        restrict_codes(im, QMAX7)
    return im


def inspect(model: IntegerModel) -> list[dict]:
    """Each op's integer parameters and float scales, enough to recompute and audit it independently.

    Returns:
        one dict per op with ``op``, ``name``, ``inputs``, ``output``, ``input_scale``/``input_zero_point``
        (lists for ops with several inputs), ``output_scale``/``output_zero_point``, plus the op's own fields
        (stride, padding, qmin, qmax, multipliers, ...), and for ops with weights (conv2d, linear) the NumPy arrays
        ``weight`` (int8), ``bias`` (int32), ``M0`` and ``shift`` (int32, per channel or length 1),
        ``weight_scale`` (float64: the scales used at conversion, stored in the model; for files from before they
        were stored, derived from M0) and ``weight_scale_from_M0`` (float64, ``M0·2^(shift−31)·S_out/S_in``, to
        audit the multipliers against the stored scales).
    """
    if not isinstance(model, IntegerModel):
        raise ModelError(f"inspect() takes an IntegerModel, got {type(model).__name__}")
    renamed = {"multiplier": "M0"}
    rows = []
    for op in model.ops:
        bufs = op.buffers()
        row = {k: v for k, v in op.to_dict().items() if k not in op.buffer_fields}
        ins = [model.values[i] for i in op.inputs]
        row["input_scale"] = ins[0]["scale"] if len(ins) == 1 else [v["scale"] for v in ins]
        row["input_zero_point"] = ins[0]["zero_point"] if len(ins) == 1 else [v["zero_point"] for v in ins]
        row["output_scale"] = model.values[op.output]["scale"]
        row["output_zero_point"] = model.values[op.output]["zero_point"]
        for field, name in bufs.items():
            row[renamed.get(field, field)] = getattr(model, name).numpy().copy()
        if "multiplier" in bufs and "weight" in bufs:
            derived = derived_weight_scales(model, op)
            row["weight_scale_from_M0"] = derived
            if "weight_scale" in row:
                row["weight_scale"] = row["weight_scale"].astype(np.float64).reshape(-1)
            else:
                row["weight_scale"] = derived
        rows.append(row)
    return rows


@torch.no_grad()
def int_mismatches(model: IntegerModel, x: torch.Tensor, batch_size: int = 1024) -> int:
    """Number of output codes on which the fast and the reference engines differ for float inputs ``x``.

    Args:
        model: the integer model.
        x: float inputs ``(N, *input_shape)``.
        batch_size: inputs per run.
    """
    bad = 0
    for i in range(0, len(x), batch_size):
        q = model.quantize_input(x[i:i + batch_size])
        a = model.run_int(q, engine="fast").numpy()
        b = model.run_int(q, engine="reference").numpy()
        bad += int(np.count_nonzero(a != b))
    return bad
