"""Plain NumPy int64 reference kernels of the integer-only model (Jacob et al., CVPR 2018; TFLite uint8 kernels).

This is the definition of the integer model: given integer codes and precomputed integer parameters (zero points,
``(M0, shift)`` multipliers from :mod:`.qparams`), every kernel uses integer NumPy operations only, no float op.
Activations are uint8 (asymmetric, zero point Z), weights int8 symmetric (zero point 0), biases int32 with scale
``s_in·s_w``. Requantization is :func:`.fixedpoint.requantize` (TFLite's default double-rounding requantizer).

Int32 overflow of an accumulator is undefined behaviour in TFLite; here it raises instead of wrapping silently.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from compactnn.errors import ModelError
from compactnn.graph import pair

from . import ir
from .fixedpoint import INT32_MAX, INT32_MIN, multiply_by_quantized_multiplier, rdbpot, requantize

__all__ = ["KERNELS", "add", "avg_pool2d", "bicubic_taps", "clamp", "concat", "conv2d", "conv2d_acc",
           "conv_transpose2d", "conv_transpose2d_acc", "conv_transpose_resize_add", "leaky_requantize", "linear",
           "linear_acc", "max_pool2d", "mul", "resize_bicubic", "run_program"]


# ------------------------------------------------------------------------------------------------------------- checks


def _arr(a, name: str, dtype, ndim: int | None = None) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.dtype(dtype):
        raise ModelError(f"{name} must have dtype {np.dtype(dtype)}, got {a.dtype}; quantize it first")
    if ndim is not None and a.ndim != ndim:
        raise ModelError(f"{name} must be {ndim}-D, got shape {a.shape}")
    return a


def _code(v, name: str, lo: int = 0, hi: int = 255) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not lo <= int(v) <= hi:
        raise ModelError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
    return int(v)


def _range(qmin, qmax, lo: int = 0, hi: int = 255) -> tuple[int, int]:
    qmin, qmax = _code(qmin, "qmin", lo, hi), _code(qmax, "qmax", lo, hi)
    if qmin > qmax:
        raise ModelError(f"need qmin <= qmax, got qmin={qmin}, qmax={qmax}")
    return qmin, qmax


def _bias(q_b, n_out: int) -> np.ndarray:
    if q_b is None:
        return np.zeros(n_out, dtype=np.int64)
    b = _arr(q_b, "q_b", np.int32, 1)
    if b.shape[0] != n_out:
        raise ModelError(f"q_b must have {n_out} entries (one per output channel), got {b.shape[0]}")
    return b.astype(np.int64)


def _int32(acc: np.ndarray, what: str) -> np.ndarray:
    if acc.size and (acc.min() < INT32_MIN or acc.max() > INT32_MAX):
        raise ModelError(f"{what} overflows int32; reduce the layer's fan-in or the bias")
    return acc


# ------------------------------------------------------------------------------------------------------------- layers


def linear_acc(q_x, z_x: int, q_w, q_b=None) -> np.ndarray:
    """int32 accumulators of a quantized linear layer: ``Σ_k (q_x − Z_x)·q_w + q_b`` (weights symmetric, Z_w = 0).

    Args:
        q_x: uint8 input ``(N, K)``.
        z_x: input zero point in [0, 255].
        q_w: int8 weight ``(O, K)``.
        q_b: int32 bias ``(O,)`` or None.

    Returns:
        int64 array ``(N, O)`` of int32 values.
    """
    x, w = _arr(q_x, "q_x", np.uint8, 2), _arr(q_w, "q_w", np.int8, 2)
    if x.shape[1] != w.shape[1]:
        raise ModelError(f"q_x has {x.shape[1]} features but q_w expects {w.shape[1]}")
    acc = (x.astype(np.int64) - _code(z_x, "z_x")) @ w.astype(np.int64).T + _bias(q_b, w.shape[0])
    return _int32(acc, "the linear accumulator")


def linear(q_x, z_x: int, q_w, q_b, M0, shift, z_y: int, qmin: int = 0, qmax: int = 255) -> np.ndarray:
    """Quantized linear layer: :func:`linear_acc`, then requantize to uint8.

    Args:
        q_x: uint8 input ``(N, K)``.
        z_x: input zero point.
        q_w: int8 weight ``(O, K)``.
        q_b: int32 bias ``(O,)`` or None.
        M0: multiplier of ``s_x·s_w/s_y``, scalar or per output channel ``(O,)``.
        shift: its shift (positive = left), scalar or ``(O,)``.
        z_y: output zero point.
        qmin: lowest output code (fused activation, see :func:`.qparams.relu_range`).
        qmax: highest output code.

    Returns:
        uint8 array ``(N, O)``.
    """
    qmin, qmax = _range(qmin, qmax)
    acc = linear_acc(q_x, z_x, q_w, q_b)
    return requantize(acc, M0, shift, _code(z_y, "z_y"), qmin, qmax, axis=1).astype(np.uint8)


def conv2d_acc(q_x, z_x: int, q_w, q_b=None, stride=1, padding=0, dilation=1, groups: int = 1) -> np.ndarray:
    """int32 accumulators of a quantized 2-D convolution (PyTorch geometry); padding uses Z_x, i.e. real 0.

    Args:
        q_x: uint8 input ``(N, C, H, W)``.
        z_x: input zero point.
        q_w: int8 weight ``(O, C/groups, kh, kw)``.
        q_b: int32 bias ``(O,)`` or None.
        stride: int or (sh, sw).
        padding: int or (ph, pw), added on both sides.
        dilation: int or (dh, dw).
        groups: channel groups (``groups == C == O`` is depthwise).

    Returns:
        int64 array ``(N, O, Ho, Wo)`` of int32 values.
    """
    x, w = _arr(q_x, "q_x", np.uint8, 4), _arr(q_w, "q_w", np.int8, 4)
    z_x = _code(z_x, "z_x")
    n, c, _, _ = x.shape
    o, cg, kh, kw = w.shape
    if not isinstance(groups, (int, np.integer)) or groups < 1 or c % groups or o % groups or c // groups != cg:
        raise ModelError(f"groups={groups!r} does not fit input channels {c} and weight shape {w.shape}")
    sh, sw = pair(stride, "stride", 1)
    ph, pw = pair(padding, "padding", 0)
    dh, dw = pair(dilation, "dilation", 1)
    b = _bias(q_b, o)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=z_x).astype(np.int64) - z_x
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if xp.shape[2] < eh or xp.shape[3] < ew:
        raise ModelError(f"input {x.shape[2:]} (padded {xp.shape[2:]}) is smaller than the dilated kernel {(eh, ew)}")
    win = sliding_window_view(xp, (eh, ew), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]  # (N, C, Ho, Wo, kh, kw)
    ho, wo = win.shape[2], win.shape[3]
    win = win.reshape(n, groups, cg, ho, wo, kh, kw)
    wg = w.astype(np.int64).reshape(groups, o // groups, cg, kh, kw)
    parts = [np.tensordot(win[:, g], wg[g], axes=([1, 4, 5], [1, 2, 3])) for g in range(groups)]  # (N, Ho, Wo, O/g)
    acc = np.concatenate(parts, axis=3).transpose(0, 3, 1, 2) + b.reshape(1, o, 1, 1)
    return _int32(np.ascontiguousarray(acc), "the conv2d accumulator")


def conv2d(q_x, z_x: int, q_w, q_b, M0, shift, z_y: int, stride=1, padding=0, dilation=1, groups: int = 1,
           qmin: int = 0, qmax: int = 255) -> np.ndarray:
    """Quantized 2-D convolution: :func:`conv2d_acc`, then requantize (per output channel along axis 1) to uint8.

    Args:
        q_x: uint8 input ``(N, C, H, W)``.
        z_x: input zero point (also the padding value).
        q_w: int8 weight ``(O, C/groups, kh, kw)``.
        q_b: int32 bias ``(O,)`` or None.
        M0: multiplier of ``s_x·s_w/s_y``, scalar or ``(O,)``.
        shift: its shift (positive = left), scalar or ``(O,)``.
        z_y: output zero point.
        stride: int or pair.
        padding: int or pair.
        dilation: int or pair.
        groups: channel groups.
        qmin: lowest output code (fused activation).
        qmax: highest output code.

    Returns:
        uint8 array ``(N, O, Ho, Wo)``.
    """
    qmin, qmax = _range(qmin, qmax)
    acc = conv2d_acc(q_x, z_x, q_w, q_b, stride, padding, dilation, groups)
    return requantize(acc, M0, shift, _code(z_y, "z_y"), qmin, qmax, axis=1).astype(np.uint8)


# ------------------------------------------------------------------------------------------------------------- pools


def _pool_geometry(q, kernel, stride, padding):
    a = np.asarray(q)
    if a.dtype not in (np.uint8, np.int8) or a.ndim != 4:
        raise ModelError(f"pooling needs a uint8 or int8 (N, C, H, W) array, got {a.dtype} {a.shape}")
    k = pair(kernel, "kernel", 1)
    s = k if stride is None else pair(stride, "stride", 1)
    p = pair(padding, "padding", 0)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ModelError(f"padding {p} must be at most half the kernel {k}")
    if a.shape[2] + 2 * p[0] < k[0] or a.shape[3] + 2 * p[1] < k[1]:
        raise ModelError(f"input {a.shape[2:]} is smaller than the pooling kernel {k}")
    return a, k, s, p


def max_pool2d(q, kernel, stride=None, padding=0) -> np.ndarray:
    """Max pooling on codes (the map q → S(q − Z) is increasing, so no requantization); padding is ignored.

    Args:
        q: uint8 or int8 ``(N, C, H, W)``.
        kernel: int or (kh, kw).
        stride: int or pair; defaults to ``kernel``.
        padding: int or pair, at most half the kernel (padded cells take the dtype minimum, so never win).

    Returns:
        array of the input dtype.
    """
    a, k, s, p = _pool_geometry(q, kernel, stride, padding)
    fill = np.iinfo(a.dtype).min
    ap = np.pad(a, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])), constant_values=fill)
    return sliding_window_view(ap, k, axis=(2, 3))[:, :, :: s[0], :: s[1]].max(axis=(4, 5))


def avg_pool2d(q, kernel, stride=None, padding=0, qmin: int | None = None, qmax: int | None = None) -> np.ndarray:
    """Average pooling with TFLite's integer rounding of the mean.

    TFLite's uint8 ``AveragePool`` computes ``(sum + count/2) / count`` (C division; the sum is non-negative, so
    this rounds half up). Its int8 kernel uses ``(sum − count/2) / count`` for negative sums, i.e. half away from
    zero; both are implemented. ``count`` is the number of in-bounds cells (padding excluded, as TFLite).

    Args:
        q: uint8 or int8 ``(N, C, H, W)``.
        kernel: int or (kh, kw).
        stride: int or pair; defaults to ``kernel``.
        padding: int or pair, at most half the kernel; padded cells are left out of sum and count.
        qmin: lowest output code (defaults to the dtype minimum).
        qmax: highest output code (defaults to the dtype maximum).

    Returns:
        array of the input dtype.
    """
    a, k, s, p = _pool_geometry(q, kernel, stride, padding)
    info = np.iinfo(a.dtype)
    qmin, qmax = _range(info.min if qmin is None else qmin, info.max if qmax is None else qmax, info.min, info.max)
    pad = ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1]))
    ap = np.pad(a.astype(np.int64), pad)
    ones = np.pad(np.ones(a.shape[2:], dtype=np.int64), pad[2:])
    total = sliding_window_view(ap, k, axis=(2, 3))[:, :, :: s[0], :: s[1]].sum(axis=(4, 5))
    count = sliding_window_view(ones, k)[:: s[0], :: s[1]].sum(axis=(2, 3))
    mean = np.sign(total) * ((np.abs(total) + count // 2) // count)
    return np.clip(mean, qmin, qmax).astype(a.dtype)


# ------------------------------------------------------------------------------------------------------------- others


def add(q1, z1: int, M0_1: int, shift_1: int, q2, z2: int, M0_2: int, shift_2: int, z_y: int, M0_y: int,
        shift_y: int, left_shift: int = 20, qmin: int = 0, qmax: int = 255) -> np.ndarray:
    """Quantized elementwise add, exactly as TFLite's uint8 ``AddElementwise``.

    ``x_i = (q_i − Z_i)·2^left_shift``; ``s_i = MBQM(x_i, M0_i, shift_i)``;
    ``y = clamp(MBQM(s_1 + s_2, M0_y, shift_y) + Z_y, qmin, qmax)``. Get the multipliers from
    :func:`.qparams.add_multipliers`. Inputs broadcast as NumPy does.

    Args:
        q1: uint8 first input.
        z1: its zero point.
        M0_1: its multiplier.
        shift_1: its shift.
        q2: uint8 second input.
        z2: its zero point.
        M0_2: its multiplier.
        shift_2: its shift.
        z_y: output zero point.
        M0_y: output multiplier.
        shift_y: output shift.
        left_shift: input left shift in [0, 23] (20 in TFLite for 8-bit).
        qmin: lowest output code (fused activation).
        qmax: highest output code.

    Returns:
        uint8 array of the broadcast shape.
    """
    a, b = _arr(q1, "q1", np.uint8), _arr(q2, "q2", np.uint8)
    qmin, qmax = _range(qmin, qmax)
    ls = _code(left_shift, "left_shift", 0, 23)  # (255 · 2^23) still fits in int32
    x1 = (a.astype(np.int64) - _code(z1, "z1")) << ls
    x2 = (b.astype(np.int64) - _code(z2, "z2")) << ls
    raw = multiply_by_quantized_multiplier(x1, M0_1, shift_1) + multiply_by_quantized_multiplier(x2, M0_2, shift_2)
    _int32(raw, "the add's rescaled sum")
    return requantize(raw, M0_y, shift_y, _code(z_y, "z_y"), qmin, qmax).astype(np.uint8)


def concat(inputs, zero_points, multipliers, z_y: int, axis: int = 1, left_shift: int = 20, qmin: int = 0,
           qmax: int = 255) -> np.ndarray:
    """Concatenate uint8 tensors into one output scale, requantizing each input with integers only.

    TFLite passes inputs with the output's (scale, zero point) through unchanged (``multipliers[i] is None``) and
    otherwise requantizes; its reference does that in float (``round(q·s_i/s_y + bias)``). Here, integer-only, and
    like Add for precision: ``clamp(Z_y + MBQM((q − Z_i)·2^L, M0_i, shift_i − L))`` with ``(M0_i, shift_i)`` the
    multiplier of ``s_i/s_y`` (:func:`.qparams.concat_multipliers`), ``L = min(left_shift, shift_i + 31)`` so that the
    right shift stays <= 31. The result is ``round((q − Z_i)·s_i/s_y)`` except at the rare near-ties that the
    two-step rounding moves.

    Args:
        inputs: uint8 arrays with equal shapes except along ``axis``.
        zero_points: their zero points.
        multipliers: per input, ``(M0, shift)`` or None (pass-through; needs ``Z_i == z_y``).
        z_y: output zero point.
        axis: concatenation axis.
        left_shift: precision left shift in [0, 23].
        qmin: lowest output code.
        qmax: highest output code.

    Returns:
        uint8 array.
    """
    inputs, zero_points, multipliers = list(inputs), list(zero_points), list(multipliers)
    if not inputs or not len(inputs) == len(zero_points) == len(multipliers):
        raise ModelError("concat needs one zero point and one multiplier (or None) per input, and >= 1 input")
    qmin, qmax = _range(qmin, qmax)
    z_y, ls = _code(z_y, "z_y"), _code(left_shift, "left_shift", 0, 23)
    parts = []
    for i, (q, z, m) in enumerate(zip(inputs, zero_points, multipliers)):
        a, z = _arr(q, f"inputs[{i}]", np.uint8), _code(z, f"zero_points[{i}]")
        if m is None:
            if z != z_y:
                raise ModelError(f"inputs[{i}] passes through (multiplier None) but its zero point {z} != z_y {z_y}")
            parts.append(np.clip(a, qmin, qmax))
            continue
        m0, sh = int(m[0]), int(m[1])
        if sh < -31:
            raise ModelError(f"multipliers[{i}] has shift {sh} < -31; build it with quantize_multiplier")
        L = min(ls, sh + 31)
        y = multiply_by_quantized_multiplier((a.astype(np.int64) - z) << L, m0, sh - L) + z_y
        parts.append(np.clip(y, qmin, qmax).astype(np.uint8))
    try:
        return np.concatenate(parts, axis=axis)
    except ValueError as err:
        raise ModelError(f"concat inputs do not fit along axis {axis}: {err}") from None


def leaky_requantize(acc, M0, shift, M0_neg, shift_neg, z_y: int, qmin: int = 0, qmax: int = 255,
                     axis: int | None = 1) -> np.ndarray:
    """Requantization with a fused LeakyReLU: ``acc >= 0`` uses ``(M0, shift)`` (of ``s_in·s_w/s_out``), ``acc < 0``
    uses ``(M0_neg, shift_neg)`` (of ``slope·s_in·s_w/s_out``), then ``+ Z_out`` and the clamp. ``acc`` is the int32
    accumulator with the bias (the sign test is on it, before any rounding), so the negative side keeps the
    resolution of the output scale (a LeakyReLU after an unclamped requantization would need the output scale to
    cover the negative range at full slope). Both sides are TFLite's MultiplyByQuantizedMultiplier; at ``acc = 0``
    both give 0, so the map is non-decreasing in ``acc`` when both multipliers are >= 0.

    Returns:
        int64 array in ``[qmin, qmax]``.
    """
    acc = np.asarray(acc, dtype=np.int64)
    pos = requantize(acc, M0, shift, _code(z_y, "z_y"), qmin, qmax, axis=axis)
    neg = requantize(acc, M0_neg, shift_neg, z_y, qmin, qmax, axis=axis)
    return np.where(acc < 0, neg, pos)


def conv_transpose2d_acc(q_x, z_x: int, q_w, q_b=None, stride=1, padding=0, padding_end=None) -> np.ndarray:
    """int32 accumulators of a quantized transposed convolution (groups 1), by scatter-adding every input pixel's
    contribution into the full output, then cropping (see :class:`.ir.ConvTranspose2d`).

    Args:
        q_x: uint8 input ``(N, C, H, W)``.
        z_x: input zero point (contributions are ``(q − Z_x)·w``; positions no input reaches get 0).
        q_w: int8 weight ``(C, O, kh, kw)``.
        q_b: int32 bias ``(O,)`` or None.
        stride: int or pair.
        padding: rows/columns removed at the top/left (int or pair).
        padding_end: removed at the bottom/right (default: ``padding``).

    Returns:
        int64 array ``(N, O, Ho, Wo)`` of int32 values.
    """
    x, w = _arr(q_x, "q_x", np.uint8, 4), _arr(q_w, "q_w", np.int8, 4)
    n, c, h, wd = x.shape
    ci, o, kh, kw = w.shape
    if ci != c:
        raise ModelError(f"q_w {w.shape} does not fit {c} input channels")
    sh, sw = pair(stride, "stride", 1)
    pt, pl = pair(padding, "padding", 0)
    pb, pr = (pt, pl) if padding_end is None else pair(padding_end, "padding_end", 0)
    full = np.zeros((n, o, (h - 1) * sh + kh, (wd - 1) * sw + kw), dtype=np.int64)
    xc = x.astype(np.int64) - _code(z_x, "z_x")
    # (N, H, W, O, kh, kw): each input pixel's contribution, summed over input channels
    contrib = np.tensordot(xc, w.astype(np.int64), axes=([1], [0]))  # (N, H, W, O, kh, kw)
    for i in range(kh):
        for j in range(kw):
            full[:, :, i: i + (h - 1) * sh + 1: sh, j: j + (wd - 1) * sw + 1: sw] += contrib[..., i, j].transpose(
                0, 3, 1, 2)
    ho, wo = full.shape[2] - pt - pb, full.shape[3] - pl - pr
    if ho < 1 or wo < 1:
        raise ModelError(f"the paddings remove the whole {full.shape[2]}x{full.shape[3]} output")
    acc = full[:, :, pt: pt + ho, pl: pl + wo] + _bias(q_b, o).reshape(1, o, 1, 1)
    return _int32(np.ascontiguousarray(acc), "the conv_transpose2d accumulator")


def conv_transpose2d(q_x, z_x: int, q_w, q_b, M0, shift, z_y: int, stride=1, padding=0, padding_end=None,
                     qmin: int = 0, qmax: int = 255) -> np.ndarray:
    """Quantized transposed convolution: :func:`conv_transpose2d_acc`, then requantize (per output channel) to uint8."""
    qmin, qmax = _range(qmin, qmax)
    acc = conv_transpose2d_acc(q_x, z_x, q_w, q_b, stride, padding, padding_end)
    return requantize(acc, M0, shift, _code(z_y, "z_y"), qmin, qmax, axis=1).astype(np.uint8)


_TAPS: dict = {}


def bicubic_taps(n_in: int, scale: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-point taps of MATLAB's bicubic upscaling by an integer ``scale`` along one axis of length ``n_in``:
    ``(index, weight)`` int64 arrays ``(n_in·scale, P)``.

    From :func:`compactnn.sr.matlab.contributions` (a = −0.5, mirrored indices): weights of equal indices are summed,
    each weight is rounded to ``bits`` fractional bits (half away from zero), and the largest weight of each output
    sample absorbs the rounding so that every row sums to exactly ``2^bits``. Cached (geometry only)."""
    key = (int(n_in), int(scale), int(bits))
    if key not in _TAPS:
        from compactnn.sr.matlab import contributions

        idx, wt = contributions(int(n_in), int(n_in) * int(scale), float(scale))
        # merge the weights of repeated (mirrored) indices onto the first occurrence
        merged = np.zeros_like(wt)
        for p in range(idx.shape[1]):
            first = np.argmax(idx == idx[:, p:p + 1], axis=1)
            np.add.at(merged, (np.arange(idx.shape[0]), first), wt[:, p])
        q = np.sign(merged) * np.floor(np.abs(merged) * (1 << bits) + 0.5)
        q = q.astype(np.int64)
        rows = np.arange(q.shape[0])
        q[rows, np.argmax(np.abs(q), axis=1)] += (1 << bits) - q.sum(axis=1)
        if len(_TAPS) > 64:
            _TAPS.clear()
        _TAPS[key] = (idx.astype(np.int64), q)
    return _TAPS[key]


def resize_bicubic(q_x, z_x: int, scale: int, M0: int, shift: int, z_y: int, weight_bits: int = 14,
                   mid_shift: int = 6, qmin: int = 0, qmax: int = 255) -> np.ndarray:
    """Integer MATLAB bicubic upscaling (see :class:`.ir.ResizeBicubic`): rows pass with a rounding right shift by
    ``mid_shift`` (RDBPOT: halves away from zero), columns pass, then requantize.

    Args:
        q_x: uint8 ``(N, C, H, W)``.
        z_x: input zero point.
        scale: integer upscaling factor.
        M0: output multiplier (of ``S_in / (S_out·2^(2·weight_bits − mid_shift))``).
        shift: its shift.
        z_y: output zero point.
        weight_bits: fractional bits of the weights.
        mid_shift: right shift after the rows pass.
        qmin: lowest output code.
        qmax: highest output code.

    Returns:
        uint8 ``(N, C, H·scale, W·scale)``.
    """
    qmin, qmax = _range(qmin, qmax)
    acc = resize_bicubic_acc(q_x, z_x, scale, weight_bits, mid_shift)
    return requantize(acc, M0, shift, _code(z_y, "z_y"), qmin, qmax).astype(np.uint8)


def resize_bicubic_acc(q_x, z_x: int, scale: int, weight_bits: int = 14, mid_shift: int = 6) -> np.ndarray:
    """The int32 accumulators of :func:`resize_bicubic` (before its requantization), int64 ``(N, C, Hs, Ws)``."""
    x = _arr(q_x, "q_x", np.uint8, 4)
    ir_, wr = bicubic_taps(x.shape[2], scale, weight_bits)
    ic, wc = bicubic_taps(x.shape[3], scale, weight_bits)
    xc = x.astype(np.int64) - _code(z_x, "z_x")
    t = np.einsum("nchpw,hp->nchw", xc[:, :, ir_, :], wr)  # rows: (N, C, Ho, W)
    t = rdbpot(_int32(t, "the resize rows pass"), mid_shift) if mid_shift else t
    acc = np.einsum("nchwp,wp->nchw", t[:, :, :, ic], wc)  # columns: (N, C, Ho, Wo)
    return _int32(acc, "the resize columns pass")


def combine_fraction(acc_t, M_t, shift_t, acc_b, M_b, shift_b, frac_bits: int, z_y: int, qmin: int, qmax: int,
                     axis: int | None = 1, acc_f=None, M_f: int = 0, shift_f: int = 0) -> np.ndarray:
    """``clamp(RDBPOT(sat32(MBQM(acc_t) + MBQM(acc_b) [+ MBQM(acc_f)]), frac_bits) + Z_y, qmin, qmax)`` (see
    :class:`.ir.ConvTransposeResizeAdd`; ``acc_f``: the fine plane's bicubic accumulators, or None)."""
    u = multiply_by_quantized_multiplier(acc_t, M_t, shift_t, axis) + multiply_by_quantized_multiplier(
        acc_b, M_b, shift_b)
    if acc_f is not None:
        u = u + multiply_by_quantized_multiplier(acc_f, M_f, shift_f)
    u = np.clip(u, INT32_MIN, INT32_MAX)
    y = rdbpot(u, frac_bits) if frac_bits else u
    return np.clip(y + int(z_y), qmin, qmax)


def conv_transpose_resize_add(q_f, z_f: int, q_w, q_b, M0, shift, q_x, z_x: int, scale: int, M0_b: int,
                              shift_b: int, z_y: int, stride=1, padding=0, padding_end=None, weight_bits: int = 14,
                              mid_shift: int = 6, frac_bits: int = 8, qmin: int = 0, qmax: int = 255,
                              planes: int = 1, M0_f: int = 0, shift_f: int = 0, z_fine: int = 0) -> np.ndarray:
    """The definition of :class:`.ir.ConvTransposeResizeAdd`: the transposed conv of ``q_f`` plus the bicubic of
    ``q_x``, summed at ``2^-frac_bits`` output codes, rounded once.

    Returns:
        uint8 ``(N, O, Ho, Wo)``.
    """
    qmin, qmax = _range(qmin, qmax)
    acc_t = conv_transpose2d_acc(q_f, z_f, q_w, q_b, stride, padding, padding_end)
    x = _arr(q_x, "q_x", np.uint8, 4)
    o = x.shape[1] // planes
    acc_b = resize_bicubic_acc(x[:, :o], z_x, scale, weight_bits, mid_shift)
    acc_f = resize_bicubic_acc(x[:, o:], z_fine, scale, weight_bits, mid_shift) if planes == 2 else None
    if acc_t.shape != acc_b.shape:
        raise ModelError(f"the transposed conv gives {acc_t.shape[1:]}, the bicubic {acc_b.shape[1:]}")
    return combine_fraction(acc_t, M0, shift, acc_b, M0_b, shift_b, frac_bits, _code(z_y, "z_y"), qmin,
                            qmax, acc_f=acc_f, M_f=M0_f, shift_f=shift_f).astype(np.uint8)


def clamp(q, qmin: int, qmax: int) -> np.ndarray:
    """Clamp codes to a fused-activation range (see :func:`.qparams.relu_range`); keeps the dtype.

    Args:
        q: integer array.
        qmin: lowest code.
        qmax: highest code.
    """
    a = np.asarray(q)
    if a.dtype.kind not in "iu":
        raise ModelError(f"clamp needs an integer array, got {a.dtype}")
    info = np.iinfo(a.dtype)
    qmin, qmax = _range(qmin, qmax, info.min, info.max)
    return np.clip(a, qmin, qmax).astype(a.dtype)


# ------------------------------------------------------------------------------------------------------ programs
#: The reference backend's kernel table (see :mod:`.ir`): ``kernel(model, op, env, zp) -> uint8 array``.
KERNELS = ir.Kernels("reference")


def _buf(model, name: str) -> np.ndarray:
    return getattr(model, name).numpy()


def _weighted_args(model, op, zp: dict) -> dict:
    m0, sh = _buf(model, op.multiplier), _buf(model, op.shift)
    m0, sh = (m0[0], sh[0]) if m0.shape == (1,) else (m0, sh)
    return dict(q_b=_buf(model, op.bias), M0=m0, shift=sh, z_y=zp[op.output], qmin=op.qmin, qmax=op.qmax)


@KERNELS.register(ir.Conv2d)
def _conv2d(model, op: ir.Conv2d, env: dict, zp: dict) -> np.ndarray:
    x = op.inputs[0]
    if op.activation == "leaky_relu":
        a = _weighted_args(model, op, zp)
        acc = conv2d_acc(env[x], zp[x], _buf(model, op.weight), a["q_b"], op.stride, op.padding, op.dilation,
                         op.groups)
        mn, sn = _buf(model, op.multiplier_neg), _buf(model, op.shift_neg)
        mn, sn = (mn[0], sn[0]) if mn.shape == (1,) else (mn, sn)
        return leaky_requantize(acc, a["M0"], a["shift"], mn, sn, a["z_y"], op.qmin, op.qmax).astype(np.uint8)
    return conv2d(env[x], zp[x], _buf(model, op.weight), stride=op.stride, padding=op.padding,
                  dilation=op.dilation, groups=op.groups, **_weighted_args(model, op, zp))


@KERNELS.register(ir.ConvTranspose2d)
def _conv_transpose2d(model, op: ir.ConvTranspose2d, env: dict, zp: dict) -> np.ndarray:
    x = op.inputs[0]
    return conv_transpose2d(env[x], zp[x], _buf(model, op.weight), stride=op.stride, padding=op.padding,
                            padding_end=op.padding_end, **_weighted_args(model, op, zp))


@KERNELS.register(ir.ConvTransposeResizeAdd)
def _conv_transpose_resize_add(model, op: ir.ConvTransposeResizeAdd, env: dict, zp: dict) -> np.ndarray:
    f, x = op.inputs
    a = _weighted_args(model, op, zp)
    return conv_transpose_resize_add(env[f], zp[f], _buf(model, op.weight), a["q_b"], a["M0"], a["shift"], env[x],
                                     zp[x], op.scale, op.resize_multiplier, op.resize_shift, zp[op.output],
                                     op.stride, op.padding, op.padding_end, op.weight_bits, op.mid_shift,
                                     op.frac_bits, op.qmin, op.qmax, op.planes, op.fine_multiplier, op.fine_shift,
                                     op.fine_zero_point)


@KERNELS.register(ir.ResizeBicubic)
def _resize_bicubic(model, op: ir.ResizeBicubic, env: dict, zp: dict) -> np.ndarray:
    x = op.inputs[0]
    return resize_bicubic(env[x], zp[x], op.scale, op.multiplier, op.shift, zp[op.output], op.weight_bits,
                          op.mid_shift, op.qmin, op.qmax)


@KERNELS.register(ir.Linear)
def _linear(model, op: ir.Linear, env: dict, zp: dict) -> np.ndarray:
    x = op.inputs[0]
    q = env[x]
    y = linear(q.reshape(-1, q.shape[-1]), zp[x], _buf(model, op.weight), **_weighted_args(model, op, zp))
    return y.reshape(*q.shape[:-1], y.shape[-1])  # (N, F) or (N, T, F): every row alike


@KERNELS.register(ir.MaxPool2d)
def _max_pool2d(model, op: ir.MaxPool2d, env: dict, zp: dict) -> np.ndarray:
    return max_pool2d(env[op.inputs[0]], op.kernel, op.stride, op.padding)


@KERNELS.register(ir.AvgPool2d)
def _avg_pool2d(model, op: ir.AvgPool2d, env: dict, zp: dict) -> np.ndarray:
    return avg_pool2d(env[op.inputs[0]], op.kernel, op.stride)


@KERNELS.register(ir.GlobalAvgPool)
def _global_avg_pool(model, op: ir.GlobalAvgPool, env: dict, zp: dict) -> np.ndarray:
    x = env[op.inputs[0]]
    return avg_pool2d(x, x.shape[2:], x.shape[2:])


@KERNELS.register(ir.Flatten)
def _flatten(model, op: ir.Flatten, env: dict, zp: dict) -> np.ndarray:
    x = env[op.inputs[0]]
    return x.reshape(x.shape[0], -1)


@KERNELS.register(ir.Add)
def _add(model, op: ir.Add, env: dict, zp: dict) -> np.ndarray:
    a, b = op.inputs
    return add(env[a], zp[a], op.multiplier_a, op.shift_a, env[b], zp[b], op.multiplier_b, op.shift_b,
               zp[op.output], op.multiplier_out, op.shift_out, op.left_shift, op.qmin, op.qmax)


@KERNELS.register(ir.Concat)
def _concat(model, op: ir.Concat, env: dict, zp: dict) -> np.ndarray:
    return concat([env[i] for i in op.inputs], [zp[i] for i in op.inputs], op.multipliers, zp[op.output], op.axis,
                  op.left_shift, op.qmin, op.qmax)


@KERNELS.register(ir.Permute)
def _permute(model, op: ir.Permute, env: dict, zp: dict) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(env[op.inputs[0]], op.dims))


@KERNELS.register(ir.Reshape)
def _reshape(model, op: ir.Reshape, env: dict, zp: dict) -> np.ndarray:
    x = env[op.inputs[0]]
    return x.reshape(x.shape[0], *op.shape)


@KERNELS.register(ir.Slice)
def _slice(model, op: ir.Slice, env: dict, zp: dict) -> np.ndarray:
    x = env[op.inputs[0]]
    return np.ascontiguousarray(x[(slice(None),) * op.axis + (slice(op.start, op.stop, op.step),)])


@KERNELS.register(ir.Pad)
def _pad(model, op: ir.Pad, env: dict, zp: dict) -> np.ndarray:
    x = env[op.inputs[0]]
    widths = [(0, 0)] * x.ndim
    widths[op.axis] = (op.before, op.after)
    return np.pad(x, widths, constant_values=zp[op.inputs[0]])  # real 0 is the zero point


@KERNELS.register(ir.Lut)
def _lut(model, op: ir.Lut, env: dict, zp: dict) -> np.ndarray:
    return _buf(model, op.table)[env[op.inputs[0]]]


def mul(q1, z1: int, q2, z2: int, M0: int, shift: int, z_y: int, qmin: int = 0, qmax: int = 255) -> np.ndarray:
    """Quantized elementwise product, as TFLite's uint8 ``Mul``:
    ``clamp(MBQM((q1 − Z1)·(q2 − Z2), M0, shift) + Z_y, qmin, qmax)`` (``|acc| <= 255² fits int32``); inputs
    broadcast as NumPy does.

    Args:
        q1: uint8 first input.
        z1: its zero point.
        q2: uint8 second input.
        z2: its zero point.
        M0: multiplier of ``s1·s2/s_y``.
        shift: its shift (positive = left).
        z_y: output zero point.
        qmin: lowest output code (fused activation).
        qmax: highest output code.

    Returns:
        uint8 array of the broadcast shape.
    """
    a, b = _arr(q1, "q1", np.uint8), _arr(q2, "q2", np.uint8)
    qmin, qmax = _range(qmin, qmax)
    acc = (a.astype(np.int64) - _code(z1, "z1")) * (b.astype(np.int64) - _code(z2, "z2"))
    return requantize(acc, M0, shift, _code(z_y, "z_y"), qmin, qmax).astype(np.uint8)


@KERNELS.register(ir.Mul)
def _mul(model, op: ir.Mul, env: dict, zp: dict) -> np.ndarray:
    a, b = op.inputs
    return mul(env[a], zp[a], env[b], zp[b], op.multiplier, op.shift, zp[op.output], op.qmin, op.qmax)


def run_program(model, q: np.ndarray) -> dict[str, np.ndarray]:
    """Interpret an integer model's ops with the kernels above; returns every value by name.

    Args:
        model: an ``IntegerModel`` (checked with :func:`.ir.check_program` first).
        q: uint8 input codes ``(N, *input_shape)``.
    """
    if not isinstance(q, np.ndarray) or q.dtype != np.uint8:
        raise ModelError(f"the reference engine takes uint8 codes, got {getattr(q, 'dtype', type(q).__name__)}")
    ir.check_program(model, metadata=False)
    if tuple(q.shape[1:]) != tuple(model.input_shape):
        raise ModelError(f"the reference engine expects input codes of shape (N, {tuple(model.input_shape)}), got "
                         f"{q.shape}")
    env = {model.input["value"]: q}
    zp = {k: int(v["zero_point"]) for k, v in model.values.items()}
    for op in model.ops:
        y = KERNELS.get(op)(model, op, env, zp)
        if y.dtype != np.uint8:
            raise ModelError(f"op {op.label} produced {y.dtype}, expected uint8")
        env[op.output] = y
    return env


def softmax(q, table, multiplier: int, z_y: int) -> np.ndarray:
    """Integer softmax over the last axis (the definition of :class:`.ir_more.Softmax`).

    Args:
        q: uint8 codes.
        table: int32 ``(256,)``: ``round(2^16·exp(−S_in·d))`` for ``d = 0..255``, ``table[0] >= 1``.
        multiplier: ``round(2^16 / S_out)``.
        z_y: output zero point.

    Returns:
        uint8 array of the input's shape.
    """
    x = _arr(q, "q", np.uint8).astype(np.int64)
    t = _arr(table, "table", np.int32, 1).astype(np.int64)
    if t.shape != (256,) or t[0] < 1 or t.min() < 0:
        raise ModelError("the softmax table must hold 256 non-negative entries, the first >= 1")
    e = t[x.max(axis=-1, keepdims=True) - x]
    den = e.sum(axis=-1, keepdims=True) << 16
    y = (e * int(multiplier) + (den >> 1)) // den + _code(z_y, "z_y")
    return np.clip(y, 0, 255).astype(np.uint8)


@KERNELS.register(ir.Softmax)
def _softmax(model, op: ir.Softmax, env: dict, zp: dict) -> np.ndarray:
    return softmax(env[op.inputs[0]], _buf(model, op.table), op.multiplier, zp[op.output])
