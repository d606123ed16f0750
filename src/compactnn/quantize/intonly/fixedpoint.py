"""Fixed-point primitives of integer-arithmetic-only inference (Jacob et al., CVPR 2018), as in gemmlowp/TFLite.

Every primitive exists twice: a plain NumPy int64 version (the definition) and a vectorized torch version
(``*_torch``) that agrees with it bit for bit. Values are int32 quantities held in int64, so no intermediate
overflows; results are returned as int64 (NumPy arrays or torch tensors) holding int32 values. Cast as needed.

We follow TFLite's default (double-rounding) requantizer: RDBPOT(SRDHM(x·2^left, M0), right), i.e.
``MultiplyByQuantizedMultiplier`` built without ``TFLITE_SINGLE_ROUNDING``. Its single-rounding variant and
fbgemm's float requantizer differ from it on a few percent of inputs by one step.

Conventions, all checked against exact rational arithmetic in the tests:

- a real multiplier M is stored as ``M ≈ M0 · 2^(shift − 31)`` with ``M0`` in [2^30, 2^31). The shift follows
  TFLite: **positive shift = left shift** (M ≥ 1), negative = right shift;
- ``srdhm(a, b)`` = the integer nearest to a·b / 2^31, **ties toward +∞** (this is what the nudge and C
  truncation amount to: SRDHM(−3, 2^30) = −1), except that INT32_MIN·INT32_MIN saturates to INT32_MAX;
- ``rdbpot(x, e)`` = the integer nearest to x / 2^e, **ties away from zero**;
- the left shift x·2^left saturates to int32. TFLite's reference multiplies in int32, where overflow is undefined
  behaviour, so saturation only gives a defined value to inputs outside TFLite's contract.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from compactnn.errors import ModelError

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

__all__ = [
    "INT32_MAX",
    "INT32_MIN",
    "multiply_by_quantized_multiplier",
    "multiply_by_quantized_multiplier_torch",
    "quantize_multiplier",
    "rdbpot",
    "rdbpot_torch",
    "requantize",
    "requantize_torch",
    "srdhm",
    "srdhm_torch",
]


def quantize_multiplier(M: float) -> tuple[int, int]:
    """Split a real multiplier into ``(M0, shift)``, ``M ≈ M0 · 2^(shift − 31)``, as TFLite ``QuantizeMultiplier``.

    ``q, shift = frexp(M)``; ``M0 = round(q · 2^31)`` rounding half away from zero (``TfLiteRound`` = ``std::round``);
    if ``M0 == 2^31`` then ``M0 = 2^30`` and ``shift += 1``. So ``M0`` is in [2^30, 2^31) and the relative error is
    at most 2^-31. Positive ``shift`` means a left shift. Like TFLite, ``M == 0`` gives ``(0, 0)`` and a multiplier
    so small that ``shift < -31`` (about M < 2^-32) is flushed to ``(0, 0)``.

    Args:
        M: the real multiplier, finite and ``>= 0`` (e.g. ``s_in · s_w / s_out``).

    Returns:
        ``(M0, shift)`` as Python ints.

    Raises:
        ModelError (a ValueError): if ``M`` is negative, NaN or infinite.
    """
    M = float(M)
    if not math.isfinite(M) or M < 0:
        raise ModelError(f"quantize_multiplier needs a finite multiplier >= 0, got {M!r}; check the scales")
    if M == 0.0:
        return 0, 0
    q, shift = math.frexp(M)  # M = q * 2**shift, q in [0.5, 1)
    v = q * 2.0**31  # exact: only the exponent changes
    fl = math.floor(v)
    m0 = int(fl) + (1 if v - fl >= 0.5 else 0)  # v - fl is exact; half away from zero (v > 0)
    if m0 == 2**31:
        m0 //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return m0, shift


# ------------------------------------------------------------------------------------------------ NumPy (definition)


def _int_array(value, name: str, lo: int = INT32_MIN, hi: int = INT32_MAX) -> np.ndarray:
    """``value`` as an int64 array after checking it is integer and inside [lo, hi]."""
    a = np.asarray(value)
    if a.dtype.kind not in "iu":
        raise ModelError(f"{name} must be an integer array or int, got dtype {a.dtype}; round and cast it first")
    if a.size:
        amin, amax = int(a.min()), int(a.max())
        if amin < lo or amax > hi:
            raise ModelError(f"{name} must lie in [{lo}, {hi}], got values in [{amin}, {amax}]")
    return a.astype(np.int64, copy=False)


def _trunc_div_pow2(n: np.ndarray, e: int) -> np.ndarray:
    """``n / 2^e`` truncated toward zero, as C integer division (NumPy's ``//`` floors instead)."""
    return np.where(n >= 0, n >> e, -((-n) >> e))


def srdhm(a, b) -> np.ndarray:
    """gemmlowp ``SaturatingRoundingDoublingHighMul``: nearest integer to a·b/2^31, ties toward +∞.

    ``ab = int64(a)·b``; ``nudge = 2^30`` if ``ab >= 0`` else ``1 − 2^30``; result ``(ab + nudge) / 2^31`` with C
    truncation. ``a == b == INT32_MIN`` saturates to ``INT32_MAX``.

    Args:
        a: int32 values (int or integer array); broadcast with ``b``.
        b: int32 values (int or integer array).

    Returns:
        int64 array of int32 values.
    """
    a64, b64 = _int_array(a, "srdhm a"), _int_array(b, "srdhm b")
    ab = a64 * b64
    nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    res = _trunc_div_pow2(ab + nudge, 31)
    overflow = (a64 == INT32_MIN) & (b64 == INT32_MIN)
    return np.where(overflow, np.int64(INT32_MAX), res)


def rdbpot(x, exponent) -> np.ndarray:
    """gemmlowp ``RoundingDivideByPOT``: nearest integer to x / 2^exponent, ties away from zero.

    ``mask = 2^e − 1``; ``threshold = (mask >> 1) + (x < 0)``; ``(x >> e) + ((x & mask) > threshold)``.

    Args:
        x: int32 values (int or integer array).
        exponent: shift in [0, 31] (int or integer array broadcast with ``x``).

    Returns:
        int64 array of int32 values.
    """
    x64, e = _int_array(x, "rdbpot x"), _int_array(exponent, "rdbpot exponent", 0, 31)
    mask = (np.int64(1) << e) - 1
    remainder = x64 & mask
    threshold = (mask >> 1) + (x64 < 0)
    return (x64 >> e) + (remainder > threshold)


def _along(p: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    """Reshape a 1-D per-channel parameter so it broadcasts along ``axis`` of an ``ndim``-D array."""
    if axis is None or p.ndim == 0:
        return p
    if p.ndim != 1:
        raise ModelError(f"per-channel parameters must be 1-D when axis is given, got shape {p.shape}")
    axis = axis % ndim
    return p.reshape((-1,) + (1,) * (ndim - 1 - axis))


def multiply_by_quantized_multiplier(x, M0, shift, axis: int | None = None) -> np.ndarray:
    """TFLite ``MultiplyByQuantizedMultiplier`` (double rounding): ``RDBPOT(SRDHM(sat(x·2^left), M0), right)``.

    ``left = max(shift, 0)``, ``right = max(−shift, 0)``; ``x·2^left`` saturates to int32 (see module docstring).
    The result approximates ``x · M0 · 2^(shift − 31)``.

    Args:
        x: int32 values (int or integer array), e.g. int32 accumulators.
        M0: int32 multiplier(s) from :func:`quantize_multiplier`; scalar or per-channel 1-D array.
        shift: shift(s) in [-31, ∞), positive = left; scalar or per-channel 1-D array.
        axis: the axis of ``x`` that per-channel ``M0``/``shift`` run along; ``None`` uses plain NumPy broadcasting.

    Returns:
        int64 array of int32 values.
    """
    x64 = _int_array(x, "x")
    m0 = _along(_int_array(M0, "M0"), x64.ndim, axis)
    sh = _along(_int_array(shift, "shift", -31, 2**62), x64.ndim, axis)
    left = np.minimum(np.maximum(sh, 0), 31)  # with |x| <= 2^31, any left shift >= 31 saturates the same way
    right = np.maximum(-sh, 0)
    shifted = np.clip(x64 << left, INT32_MIN, INT32_MAX)
    return rdbpot(srdhm(shifted, m0), right)


def requantize(acc, M0, shift, out_zero_point: int, qmin: int, qmax: int, axis: int | None = None) -> np.ndarray:
    """Requantize int32 accumulators: ``clamp(MultiplyByQuantizedMultiplier(acc) + Z_out, qmin, qmax)``.

    The addition is exact (int64), so it also matches a saturating int32 add followed by the clamp.

    Args:
        acc: int32 accumulators (int or integer array).
        M0: multiplier(s) from :func:`quantize_multiplier` (scalar or per-channel along ``axis``).
        shift: shift(s), positive = left (scalar or per-channel along ``axis``).
        out_zero_point: output zero point ``Z_out``.
        qmin: lowest output code (a fused ReLU/ReLU6 passes a narrower range than the dtype's).
        qmax: highest output code.
        axis: the axis of ``acc`` per-channel parameters run along; ``None`` broadcasts as NumPy does.

    Returns:
        int64 array with values in [qmin, qmax].
    """
    qmin, qmax = int(qmin), int(qmax)
    if qmin > qmax:
        raise ModelError(f"requantize needs qmin <= qmax, got qmin={qmin}, qmax={qmax}")
    y = multiply_by_quantized_multiplier(acc, M0, shift, axis) + int(out_zero_point)
    return np.clip(y, qmin, qmax)


# ------------------------------------------------------------------------------------------------- torch (fast path)


def _t(value, name: str, lo: int = INT32_MIN, hi: int = INT32_MAX, device=None) -> torch.Tensor:
    """``value`` as an int64 tensor after checking it is integer and inside [lo, hi]."""
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value), device=device)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ModelError(f"{name} must be an integer tensor or int, got dtype {t.dtype}; round and cast it first")
    t = t.to(torch.int64)
    if t.numel():
        tmin, tmax = int(t.min()), int(t.max())
        if tmin < lo or tmax > hi:
            raise ModelError(f"{name} must lie in [{lo}, {hi}], got values in [{tmin}, {tmax}]")
    return t


def srdhm_torch(a, b) -> torch.Tensor:
    """Torch version of :func:`srdhm` (int32 or int64 tensors / ints in, int64 tensor out, bit-identical)."""
    dev = a.device if isinstance(a, torch.Tensor) else b.device if isinstance(b, torch.Tensor) else None
    a64, b64 = _t(a, "srdhm a", device=dev), _t(b, "srdhm b", device=dev)
    ab = a64 * b64
    nudge = torch.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    n = ab + nudge
    res = torch.where(n >= 0, n >> 31, -((-n) >> 31))
    overflow = (a64 == INT32_MIN) & (b64 == INT32_MIN)
    return torch.where(overflow, torch.full_like(res, INT32_MAX), res)


def rdbpot_torch(x, exponent) -> torch.Tensor:
    """Torch version of :func:`rdbpot` (bit-identical)."""
    dev = x.device if isinstance(x, torch.Tensor) else None
    x64, e = _t(x, "rdbpot x", device=dev), _t(exponent, "rdbpot exponent", 0, 31, device=dev)
    mask = torch.bitwise_left_shift(torch.ones_like(e), e) - 1
    remainder = x64 & mask
    threshold = (mask >> 1) + (x64 < 0).to(torch.int64)
    return (x64 >> e) + (remainder > threshold).to(torch.int64)


def _along_t(p: torch.Tensor, ndim: int, axis: int | None) -> torch.Tensor:
    if axis is None or p.ndim == 0:
        return p
    if p.ndim != 1:
        raise ModelError(f"per-channel parameters must be 1-D when axis is given, got shape {tuple(p.shape)}")
    axis = axis % ndim
    return p.reshape((-1,) + (1,) * (ndim - 1 - axis))


def multiply_by_quantized_multiplier_torch(x, M0, shift, axis: int | None = None) -> torch.Tensor:
    """Torch version of :func:`multiply_by_quantized_multiplier` (same arguments, bit-identical)."""
    dev = x.device if isinstance(x, torch.Tensor) else None
    x64 = _t(x, "x", device=dev)
    m0 = _along_t(_t(M0, "M0", device=dev), x64.ndim, axis)
    sh = _along_t(_t(shift, "shift", -31, 2**62, device=dev), x64.ndim, axis)
    left = sh.clamp(0, 31)
    right = (-sh).clamp_min(0)
    shifted = torch.bitwise_left_shift(x64, left).clamp(INT32_MIN, INT32_MAX)
    return rdbpot_torch(srdhm_torch(shifted, m0), right)


def requantize_torch(acc, M0, shift, out_zero_point: int, qmin: int, qmax: int, axis: int | None = None):
    """Torch version of :func:`requantize` (same arguments, bit-identical); returns an int64 tensor."""
    qmin, qmax = int(qmin), int(qmax)
    if qmin > qmax:
        raise ModelError(f"requantize needs qmin <= qmax, got qmin={qmin}, qmax={qmax}")
    y = multiply_by_quantized_multiplier_torch(acc, M0, shift, axis) + int(out_zero_point)
    return y.clamp(qmin, qmax)
