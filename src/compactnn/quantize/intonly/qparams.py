"""Choosing quantization parameters for integer-only inference (Jacob et al., CVPR 2018): r = S·(q − Z).

This is the float side that runs once, at conversion time; the kernels in :mod:`.reference` then use only the
integers it produces. All arithmetic here is float64 (TensorFlow does the same steps in float32, so a last bit of a
scale can differ; the integer results agree except at exact float ties).

Rounding: every real → integer rounding rounds **half away from zero**, as TFLite's ``TfLiteRound`` /
``std::round`` used by its reference ``Quantize``, ``QuantizeMultiplier`` and ``CalculateActivationRangeQuantized``,
and TF's ``StdRound`` in the fake-quant nudging. (NumPy's ``np.round`` is half-to-even and is not used.)
"""

from __future__ import annotations

import math

import numpy as np

from compactnn.errors import ModelError

from .fixedpoint import INT32_MAX, INT32_MIN, quantize_multiplier

__all__ = [
    "add_multipliers",
    "asymmetric_uint8",
    "bias_int32",
    "concat_multipliers",
    "dequantize",
    "nudged_range",
    "output_multiplier",
    "quantize",
    "relu_range",
    "round_half_away",
    "symmetric_int8",
]


def round_half_away(x) -> np.ndarray:
    """Round to the nearest integer, ties away from zero (``std::round``); float64 array out."""
    a = np.asarray(x, dtype=np.float64)
    m = np.abs(a)
    fl = np.floor(m)
    r = fl + (m - fl >= 0.5)  # m - fl is exact, unlike floor(m + 0.5)
    return np.copysign(r, a)


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _along(p: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    if axis is None or p.ndim == 0:
        return p
    return p.reshape((-1,) + (1,) * (ndim - 1 - axis % ndim))


def nudged_range(rmin: float, rmax: float, qmin: int = 0, qmax: int = 255) -> tuple[float, int, float, float]:
    """Scale, zero point and nudged range as TensorFlow's ``FakeQuantWithMinMaxVars`` ``Nudge``.

    First ``rmin = min(rmin, 0)`` and ``rmax = max(rmax, 0)`` (the range always holds 0, as gemmlowp's
    ``ChooseQuantizationParams``; TF's op alone would instead slide a range that misses 0). Then
    ``scale = (rmax − rmin)/(qmax − qmin)``, ``Z = round(qmin − rmin/scale)`` clamped to [qmin, qmax], and
    ``nudged_min = (qmin − Z)·scale``, ``nudged_max = (qmax − Z)·scale``: real 0 is exactly the code Z and the
    nudged range has width ``scale·(qmax − qmin)``. A degenerate range (both 0, or a width so small the scale
    would be subnormal) gives ``scale = 1``, ``Z = qmin``.

    Args:
        rmin: observed minimum (finite).
        rmax: observed maximum (finite, ``>= rmin``).
        qmin: lowest integer code (0 for uint8).
        qmax: highest integer code (255 for uint8), ``> qmin``.

    Returns:
        ``(scale, zero_point, nudged_min, nudged_max)``.
    """
    rmin, rmax, qmin, qmax = float(rmin), float(rmax), int(qmin), int(qmax)
    if not (math.isfinite(rmin) and math.isfinite(rmax)) or rmin > rmax:
        raise ModelError(f"nudged_range needs finite rmin <= rmax, got rmin={rmin}, rmax={rmax}")
    if qmin >= qmax:
        raise ModelError(f"nudged_range needs qmin < qmax, got qmin={qmin}, qmax={qmax}")
    rmin, rmax = min(rmin, 0.0), max(rmax, 0.0)
    scale = (rmax - rmin) / (qmax - qmin)
    if scale < np.finfo(np.float64).tiny:  # empty (or subnormal-width) range: anything represents it
        scale, zp = 1.0, qmin
    else:
        zp_from_min = qmin - rmin / scale
        zp = qmin if zp_from_min < qmin else qmax if zp_from_min > qmax else int(round_half_away(zp_from_min))
    return scale, zp, (qmin - zp) * scale, (qmax - zp) * scale


def asymmetric_uint8(rmin: float, rmax: float) -> tuple[float, int]:
    """Activation parameters: :func:`nudged_range` on [0, 255]; returns ``(scale, zero_point)``.

    Args:
        rmin: observed minimum of the activation (e.g. its EMA).
        rmax: observed maximum.
    """
    scale, zp, _, _ = nudged_range(rmin, rmax, 0, 255)
    return scale, zp


def symmetric_int8(w, per_channel: bool = False, axis: int = 0):
    """Weight parameters: symmetric narrow range [-127, 127], ``scale = max|w|/127``, zero point 0.

    An all-zero tensor or channel gets ``scale = 1.0`` (any scale represents it exactly; 1.0 keeps the layer's
    multiplier and bias scale finite and ordinary).

    Args:
        w: weight array or torch tensor.
        per_channel: one scale per slice along ``axis`` (output channels) instead of one per tensor.
        axis: the output-channel axis, used when ``per_channel``.

    Returns:
        ``(scale, zero_point)``: a float and 0, or a float64 array ``(C,)`` and an int64 zeros array ``(C,)``.
    """
    a = _to_numpy(w)
    if not np.all(np.isfinite(a)):
        raise ModelError("symmetric_int8 got NaN or infinite weights; fix the model before quantizing")
    if per_channel:
        if a.ndim == 0:
            raise ModelError("symmetric_int8(per_channel=True) needs at least a 1-D weight")
        ax = axis % a.ndim
        amax = np.abs(np.moveaxis(a, ax, 0).reshape(a.shape[ax], -1)).max(axis=1) if a.size else np.zeros(0)
        scale = np.where(amax > 0, amax / 127.0, 1.0)
        return scale, np.zeros(scale.shape, dtype=np.int64)
    amax = float(np.abs(a).max()) if a.size else 0.0
    return (amax / 127.0 if amax > 0 else 1.0), 0


def quantize(r, scale, zero_point, qmin: int, qmax: int, axis: int | None = None) -> np.ndarray:
    """``q = clamp(round(r / scale) + Z, qmin, qmax)`` with round half away from zero (TFLite ``AffineQuantize``).

    The quotient ``r / scale`` is the rounded float64 division (TFLite: float32), then rounded to an integer.

    Args:
        r: real values (array or torch tensor).
        scale: scale, scalar or per-channel 1-D along ``axis``.
        zero_point: zero point(s), same layout as ``scale``.
        qmin: lowest code (e.g. 0 uint8, -127 narrow int8).
        qmax: highest code.
        axis: axis of ``r`` that per-channel parameters run along; ``None`` broadcasts as NumPy does.

    Returns:
        int64 array; cast to uint8/int8 as needed.
    """
    a = _to_numpy(r)
    s = _along(np.asarray(scale, dtype=np.float64), a.ndim, axis)
    z = _along(np.asarray(zero_point, dtype=np.int64), a.ndim, axis)
    if np.any(s <= 0) or not np.all(np.isfinite(s)):
        raise ModelError("quantize needs finite scales > 0")
    if not np.all(np.isfinite(a)):
        raise ModelError("quantize got NaN or infinite values")
    q = round_half_away(a / s).astype(np.int64) + z
    return np.clip(q, int(qmin), int(qmax))


def dequantize(q, scale, zero_point, axis: int | None = None) -> np.ndarray:
    """``r = scale·(q − Z)`` in float64.

    Args:
        q: integer codes.
        scale: scale, scalar or per-channel along ``axis``.
        zero_point: zero point(s), same layout as ``scale``.
        axis: axis of ``q`` that per-channel parameters run along; ``None`` broadcasts as NumPy does.
    """
    a = np.asarray(q).astype(np.int64)
    s = _along(np.asarray(scale, dtype=np.float64), a.ndim, axis)
    z = _along(np.asarray(zero_point, dtype=np.int64), a.ndim, axis)
    return s * (a - z).astype(np.float64)


def bias_int32(bias_float, s_in: float, s_w) -> np.ndarray:
    """Quantize a bias to int32 with scale ``s_in·s_w`` (per channel if ``s_w`` is an array) and zero point 0.

    Args:
        bias_float: float bias ``(O,)`` (array or torch tensor).
        s_in: input activation scale.
        s_w: weight scale, a float or per-output-channel array ``(O,)``.

    Returns:
        int32 array ``(O,)``, rounded half away from zero and clamped to the int32 range.
    """
    b = _to_numpy(bias_float)
    s = float(s_in) * np.asarray(s_w, dtype=np.float64)
    if np.any(s <= 0) or not np.all(np.isfinite(s)):
        raise ModelError("bias_int32 needs finite scales s_in·s_w > 0")
    q = np.clip(round_half_away(b / s), INT32_MIN, INT32_MAX)
    return q.astype(np.int32)


def output_multiplier(s_in: float, s_w, s_out: float) -> tuple:
    """``(M0, shift)`` for ``M = s_in·s_w/s_out`` (conv/linear requantization), per channel if ``s_w`` is an array.

    Args:
        s_in: input scale.
        s_w: weight scale(s).
        s_out: output scale.

    Returns:
        Python ints, or two int64 arrays of the shape of ``s_w``.
    """
    m = float(s_in) * np.asarray(s_w, dtype=np.float64) / float(s_out)
    if m.ndim == 0:
        return quantize_multiplier(float(m))
    pairs = [quantize_multiplier(float(v)) for v in m.ravel()]
    m0 = np.array([p[0] for p in pairs], dtype=np.int64).reshape(m.shape)
    sh = np.array([p[1] for p in pairs], dtype=np.int64).reshape(m.shape)
    return m0, sh


def add_multipliers(s1: float, s2: float, s_y: float, left_shift: int = 20) -> dict:
    """Multipliers of TFLite's quantized Add (``PrepareGeneralSubOp``/``Prepare`` for uint8/int8).

    ``twice_max = 2·max(s1, s2)``; input multipliers ``s_i / twice_max``; output multiplier
    ``twice_max / (2^left_shift · s_y)``.

    Args:
        s1: first input scale.
        s2: second input scale.
        s_y: output scale.
        left_shift: the input left shift (20 for 8-bit in TFLite).

    Returns:
        dict with keys ``M0_1, shift_1, M0_2, shift_2, M0_y, shift_y, left_shift`` (keyword arguments of
        :func:`compactnn.quantize.intonly.reference.add`).
    """
    twice_max = 2.0 * max(float(s1), float(s2))
    m1, sh1 = quantize_multiplier(float(s1) / twice_max)
    m2, sh2 = quantize_multiplier(float(s2) / twice_max)
    my, shy = quantize_multiplier(twice_max / ((1 << left_shift) * float(s_y)))
    return dict(M0_1=m1, shift_1=sh1, M0_2=m2, shift_2=sh2, M0_y=my, shift_y=shy, left_shift=left_shift)


def concat_multipliers(scales, zero_points, s_y: float, z_y: int) -> list:
    """Per-input ``(M0, shift)`` of ``M_i = s_i/s_y`` for concatenation, or ``None`` where ``(s_i, Z_i) == (s_y, Z_y)``.

    Args:
        scales: input scales.
        zero_points: input zero points.
        s_y: output scale.
        z_y: output zero point.
    """
    return [
        None if (float(s) == float(s_y) and int(z) == int(z_y)) else quantize_multiplier(float(s) / float(s_y))
        for s, z in zip(scales, zero_points, strict=True)
    ]


def relu_range(z_y: int, s_y: float, kind: str = "none", qmin: int = 0, qmax: int = 255) -> tuple[int, int]:
    """Clamp range of a fused activation, as TFLite ``CalculateActivationRangeQuantized``.

    ``quantize(f) = Z + round(f / S)`` (half away from zero). ``"relu"`` → ``[max(qmin, Z), qmax]``; ``"relu6"`` →
    ``[max(qmin, Z), min(qmax, Z + round(6/S))]``; ``"relu_n1_to_1"`` → ``[max(qmin, q(−1)), min(qmax, q(1))]``;
    ``"none"`` → ``[qmin, qmax]``.

    Args:
        z_y: output zero point.
        s_y: output scale (> 0).
        kind: ``"none"``, ``"relu"``, ``"relu6"`` or ``"relu_n1_to_1"``.
        qmin: lowest code of the output dtype.
        qmax: highest code of the output dtype.
    """
    if not s_y > 0:
        raise ModelError(f"relu_range needs a scale > 0, got {s_y}")

    def q(f: float) -> int:
        return int(z_y) + int(round_half_away(f / float(s_y)))

    kinds = {
        "none": (qmin, qmax),
        "relu": (max(qmin, q(0.0)), qmax),
        "relu6": (max(qmin, q(0.0)), min(qmax, q(6.0))),
        "relu_n1_to_1": (max(qmin, q(-1.0)), min(qmax, q(1.0))),
    }
    if kind not in kinds:
        raise ModelError(f"unknown activation kind {kind!r}; use one of {', '.join(kinds)}")
    return kinds[kind]
